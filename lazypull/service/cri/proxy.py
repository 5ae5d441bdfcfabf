"""The CRI ImageService in front of containerd's, on the daemon's socket.

The kubelet is pointed here with ``--image-service-endpoint``. Every call of
``runtime.v1.ImageService`` and ``runtime.v1alpha2.ImageService`` (same messages, older
package name) is forwarded to containerd's socket as raw bytes, and the answer or error
goes back unchanged. ``PullImage`` is also read on the way through: its credentials go
to the :class:`Keychain` before containerd starts preparing the layers (so the lazy mounts
can read a private registry), and the pod's prefetch hint is applied while containerd
pulls; the reply waits for the hinted files (bounded by the prefetch timeout), so they
are local before the kubelet creates the container.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from lazypull.errors import LazypullError
from lazypull.service.cri.hints import HintError, Pattern, hint_value, parse_hints
from lazypull.service.cri.keychain import Keychain, credential_from_auth
from lazypull.service.cri.prefetch import PODS, HintPrefetcher
from lazypull.service.cri.proto import api_pb2
from lazypull.snapshot.imagebook import ImageBook

log = logging.getLogger(__name__)

SERVICES = ("runtime.v1.ImageService", "runtime.v1alpha2.ImageService")
MAX_MESSAGE = 16 << 20  # the kubelet's limit for CRI messages


def _pod_name(cfg: api_pb2.PodSandboxConfig) -> str:
    md = cfg.metadata
    return f"{md.namespace}/{md.name}" if md.name else "(no pod)"


class ImageServiceProxy(grpc.GenericRpcHandler):
    def __init__(
        self,
        upstream: str,
        keychain: Keychain | None,
        prefetcher: HintPrefetcher | None = None,
        hint_wait_sec: float = 10.0,
        book: ImageBook | None = None,
    ) -> None:
        self.upstream = upstream  # containerd's socket path
        self.keychain = keychain
        self.prefetcher = prefetcher
        self.hint_wait_sec = hint_wait_sec
        self.book = book  # which pod pulled which image, its hint's fate (lazypull status)
        self._channel: grpc.Channel | None = None
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(4, thread_name_prefix="cri-hint")

    def channel(self) -> grpc.Channel:
        with self._lock:
            if self._channel is None:
                self._channel = grpc.insecure_channel(
                    f"unix://{self.upstream}",
                    options=[
                        ("grpc.max_receive_message_length", MAX_MESSAGE),
                        ("grpc.max_send_message_length", MAX_MESSAGE),
                    ],
                )
            return self._channel

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            if self._channel is not None:
                self._channel.close()
                self._channel = None

    # -- grpc.GenericRpcHandler ----------------------------------------------------------
    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[bytes, bytes] | None:
        method: str = handler_call_details.method
        service, _, name = method.lstrip("/").partition("/")
        if service not in SERVICES:
            return None
        return grpc.unary_unary_rpc_method_handler(self._handler(method, name))  # raw bytes both ways

    def _handler(self, method: str, name: str) -> Callable[[bytes, grpc.ServicerContext], bytes]:
        def handle(request: bytes, context: grpc.ServicerContext) -> bytes:
            if name == "PullImage":
                return self._pull(method, request, context)
            return self._forward(method, request, context)

        return handle

    def _forward(self, method: str, request: bytes, context: grpc.ServicerContext) -> bytes:
        call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = self.channel().unary_unary(method)
        try:
            return call(request, timeout=context.time_remaining())
        except grpc.RpcError as e:
            code: Any = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
            details = e.details() if hasattr(e, "details") else str(e)
            context.abort(code, details or "")
            raise  # abort raises; for type checkers

    def _pull(self, method: str, request: bytes, context: grpc.ServicerContext) -> bytes:
        try:
            req = api_pb2.PullImageRequest.FromString(request)
        except DecodeError:
            return self._forward(method, request, context)  # containerd will say what is wrong
        image = req.image.image
        pod = _pod_name(req.sandbox_config)
        if self.keychain is not None and req.HasField("auth"):
            try:
                cred = credential_from_auth(req.auth)
                if cred is not None:
                    self.keychain.add(image, cred)
            except LazypullError as e:
                log.warning("PullImage %s for pod %s: credentials not kept for lazy mounts: %s", image, pod, e)
        pod_key = ""
        md = req.sandbox_config.metadata
        if self.book is not None and md.name:
            pod_key = self.book.pod_pull(image, md.namespace, md.name, md.uid)
        hint = self._start_hint(pod, image, req, pod_key)
        reply = self._forward(method, request, context)
        if hint is not None:
            remaining = context.time_remaining()
            wait = self.hint_wait_sec if remaining is None else max(0.0, min(self.hint_wait_sec, remaining - 1))
            t0 = time.monotonic()
            try:
                hint.result(timeout=wait)
            except TimeoutError:
                log.info("pod %s: prefetch of hinted files goes on after %.1fs; starting anyway", pod, wait)
            log.debug("pod %s: waited %.2fs for hinted files", pod, time.monotonic() - t0)
        return reply

    def _start_hint(
        self, pod: str, image: str, req: api_pb2.PullImageRequest, pod_key: str = ""
    ) -> Future[object] | None:
        value = hint_value(req.sandbox_config.annotations, req.image.annotations)
        if value is None or self.prefetcher is None:
            return None
        try:
            patterns: list[Pattern] = parse_hints(value)
        except HintError as e:
            PODS.labels("malformed").inc()
            log.warning("pod %s: ignoring prefetch hint: %s", pod, e)
            self._hint_state(pod_key, "malformed", error=str(e)[:300])
            return None
        if not patterns:
            return None
        prefetcher = self.prefetcher
        self._hint_state(pod_key, "running", patterns=len(patterns))

        def run() -> object:
            res = prefetcher.run_for_pod(pod, image, patterns)
            if res is None:
                self._hint_state(pod_key, "failed", patterns=len(patterns))
            else:
                self._hint_state(
                    pod_key,
                    "done" if res.complete else "partial",
                    patterns=len(patterns),
                    files=res.files,
                    bytes_fetched=res.bytes_fetched,
                    bytes_cached=res.bytes_cached,
                )
            return res

        return self._pool.submit(run)

    def _hint_state(self, pod_key: str, state: str, **detail: object) -> None:
        if self.book is not None and pod_key:
            self.book.hint(pod_key, state, **detail)
