"""The CRI proxy writes down which pod sandbox pulled which image, and its hint's fate."""

from __future__ import annotations

from lazypull.service.cri.hints import ANNOTATION, Pattern
from lazypull.service.cri.prefetch import PrefetchResult
from lazypull.service.cri.proto import api_pb2
from lazypull.service.cri.proxy import ImageServiceProxy
from lazypull.snapshot.imagebook import ImageBook


class _Prefetcher:
    def __init__(self, result: PrefetchResult | None) -> None:
        self.result = result

    def run_for_pod(self, pod: str, image: str, patterns: list[Pattern]) -> PrefetchResult | None:
        return self.result


def _request(hint: str | None) -> api_pb2.PullImageRequest:
    md = api_pb2.PodSandboxMetadata(name="web", namespace="shop", uid="u-1")
    cfg = api_pb2.PodSandboxConfig(metadata=md, annotations={ANNOTATION: hint} if hint is not None else {})
    return api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image="reg.example/app:1"), sandbox_config=cfg)


def _hint_after_pull(result: PrefetchResult | None, hint: str | None) -> tuple[str, dict[str, object]]:
    book = ImageBook()
    proxy = ImageServiceProxy("/nonexistent.sock", None, _Prefetcher(result), book=book)  # type: ignore[arg-type]
    req = _request(hint)
    key = book.pod_pull(req.image.image, "shop", "web", "u-1")
    future = proxy._start_hint("shop/web", req.image.image, req, key)
    if future is not None:
        future.result(timeout=10)
    proxy.close()
    [pod] = book.pods()
    assert pod.images == ["reg.example/app:1"]
    return pod.hint, pod.hint_detail


def test_hint_states() -> None:
    done = PrefetchResult(files=2, bytes_fetched=100, bytes_cached=5)
    assert _hint_after_pull(done, '["/app/*"]') == (
        "done",
        {"patterns": 1, "files": 2, "bytes_fetched": 100, "bytes_cached": 5},
    )
    assert _hint_after_pull(PrefetchResult(complete=False), '["/a", "/b"]')[0] == "partial"
    assert _hint_after_pull(None, '["/app/*"]') == ("failed", {"patterns": 1})
    state, detail = _hint_after_pull(done, "{not json")
    assert state == "malformed" and "not JSON" in str(detail["error"])
    assert _hint_after_pull(done, None) == ("none", {})
