"""Drive a pod over CRI the way the kubelet does: PullImage on the image service, then
RunPodSandbox, CreateContainer and StartContainer on the runtime service, and wait for the
container's first output in its CRI log file. Used by the end-to-end tests and by the
benchmark's ``cri`` mode; host network only (no CNI needed).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from lazypull.errors import LazypullError
from lazypull.service.cri.hints import ANNOTATION
from lazypull.service.cri.proto import api_pb2, api_pb2_grpc


@dataclass
class PodTimes:
    pull_s: float = 0.0
    sandbox_s: float = 0.0
    create_s: float = 0.0
    start_s: float = 0.0
    first_output_s: float = 0.0  # from StartContainer's return to the first log line
    total_s: float = 0.0  # PullImage to first output
    output: str = ""
    image_ref: str = ""


@dataclass
class Pod:
    name: str
    log_dir: Path
    annotations: dict[str, str] = field(default_factory=dict)
    namespace: str = "default"
    uid: str = field(default_factory=lambda: uuid.uuid4().hex)

    def sandbox_config(self) -> api_pb2.PodSandboxConfig:
        return api_pb2.PodSandboxConfig(
            metadata=api_pb2.PodSandboxMetadata(name=self.name, uid=self.uid, namespace=self.namespace),
            log_directory=str(self.log_dir),
            annotations=self.annotations,
            linux=api_pb2.LinuxPodSandboxConfig(
                security_context=api_pb2.LinuxSandboxSecurityContext(
                    namespace_options=api_pb2.NamespaceOption(network=api_pb2.NODE)
                )
            ),
        )

    def with_prefetch(self, paths: list[str] | str) -> Pod:
        import json

        self.annotations[ANNOTATION] = paths if isinstance(paths, str) else json.dumps(paths)
        return self


def auth_config(user: str | None) -> api_pb2.AuthConfig | None:
    if not user:
        return None
    name, _, password = user.partition(":")
    return api_pb2.AuthConfig(username=name, password=password)


class Kubelet:
    """CRI client: *image_endpoint* is the kubelet's --image-service-endpoint, *runtime_endpoint*
    its --container-runtime-endpoint (unix socket paths)."""

    def __init__(self, image_endpoint: Path | str, runtime_endpoint: Path | str, timeout: float = 300.0) -> None:
        self._image_ch = grpc.insecure_channel(f"unix://{image_endpoint}")
        self._runtime_ch = grpc.insecure_channel(f"unix://{runtime_endpoint}")
        self.images = api_pb2_grpc.ImageServiceStub(self._image_ch)
        self.runtime = api_pb2_grpc.RuntimeServiceStub(self._runtime_ch)
        self.timeout = timeout
        self.sandboxes: list[str] = []

    def close(self) -> None:
        for sid in self.sandboxes:
            try:
                self.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=sid), timeout=60)
                self.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=sid), timeout=60)
            except grpc.RpcError:
                pass
        self.sandboxes.clear()
        self._image_ch.close()
        self._runtime_ch.close()

    def __enter__(self) -> Kubelet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def pull(self, image: str, pod: Pod, user: str | None = None) -> str:
        req = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=image), sandbox_config=pod.sandbox_config())
        auth = auth_config(user)
        if auth is not None:
            req.auth.CopyFrom(auth)
        return str(self.images.PullImage(req, timeout=self.timeout).image_ref)

    def run(
        self,
        image: str,
        pod: Pod,
        command: list[str],
        user: str | None = None,
        wait_for: str = "",
        wait_s: float = 120,
        pull: bool = True,
    ) -> PodTimes:
        """Pull (unless *pull* is False: the image is there), start the pod and one container;
        return when its log has *wait_for* (or any line)."""
        t = PodTimes()
        t0 = time.monotonic()
        t.image_ref = self.pull(image, pod, user) if pull else image
        t.pull_s = time.monotonic() - t0
        pod.log_dir.mkdir(parents=True, exist_ok=True)
        cfg = pod.sandbox_config()
        t1 = time.monotonic()
        sid = self.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=cfg), timeout=self.timeout).pod_sandbox_id
        self.sandboxes.append(sid)
        t.sandbox_s = time.monotonic() - t1
        t2 = time.monotonic()
        ccfg = api_pb2.ContainerConfig(
            metadata=api_pb2.ContainerMetadata(name="main"),
            image=api_pb2.ImageSpec(image=t.image_ref),
            command=command,
            log_path="main/0.log",
        )
        cid = self.runtime.CreateContainer(
            api_pb2.CreateContainerRequest(pod_sandbox_id=sid, config=ccfg, sandbox_config=cfg), timeout=self.timeout
        ).container_id
        t.create_s = time.monotonic() - t2
        t3 = time.monotonic()
        self.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=cid), timeout=self.timeout)
        t4 = time.monotonic()
        t.start_s = t4 - t3
        log_file = pod.log_dir / "main" / "0.log"
        deadline = t4 + wait_s
        while True:
            text = log_file.read_text(errors="replace") if log_file.exists() else ""
            out = "".join(_cri_log_text(line) for line in text.splitlines(keepends=True))
            if (wait_for and wait_for in out) or (not wait_for and out):
                break
            if time.monotonic() > deadline:
                st = self.runtime.ContainerStatus(api_pb2.ContainerStatusRequest(container_id=cid), timeout=30).status
                raise LazypullError(
                    f"container of pod {pod.name} gave no output in {wait_s}s "
                    f"(state {st.state}, exit {st.exit_code}, {st.reason} {st.message}); log: {out[-500:]!r}"
                )
            time.sleep(0.01)
        t.first_output_s = time.monotonic() - t4
        t.total_s = time.monotonic() - t0
        t.output = out
        return t


def _cri_log_text(line: str) -> str:
    """The payload of one CRI log line: ``TIMESTAMP STREAM P|F TEXT``."""
    parts = line.split(" ", 3)
    return parts[3] if len(parts) == 4 else ""
