"""The daemon's memory of images and pods: one spelling per image, bounded, copies out."""

from __future__ import annotations

from lazypull.snapshot.imagebook import FALLBACK, LAZY, ImageBook, image_name


def test_one_record_per_image_however_it_is_spelled() -> None:
    book = ImageBook()
    book.prepared("busybox")
    book.layer("docker.io/library/busybox:latest", "sha256:" + "a" * 64, LAZY)
    book.layer("busybox:latest", "sha256:" + "b" * 64, FALLBACK, "not_lazy", "neither eStargz nor SOCI")
    [img] = book.images()
    assert img.ref == image_name("busybox") == "docker.io/library/busybox:latest"
    assert img.prepared_at is not None
    assert [(x.mode, x.reason) for x in img.layers.values()] == [(LAZY, ""), (FALLBACK, "not_lazy")]


def test_first_prepare_starts_the_clock_and_the_first_read_is_kept_once() -> None:
    book = ImageBook()
    book.prepared("reg:5000/a:1")
    t0 = book.images()[0].prepared_at
    book.prepared("reg:5000/a:1")
    assert book.images()[0].prepared_at == t0
    assert book.first_read("reg:5000/a:1", 1.5)
    assert not book.first_read("reg:5000/a:1", 9.0)
    assert not book.first_read("reg:5000/unknown:1", 1.0)
    assert book.images()[0].first_read_seconds == 1.5


def test_pods_link_to_images_and_carry_their_hint_state() -> None:
    book = ImageBook()
    key = book.pod_pull("reg:5000/app:1", "default", "web", "uid-1")
    book.pod_pull("reg:5000/sidecar:1", "default", "web", "uid-1")
    book.hint(key, "done", files=4, bytes_fetched=100)
    [pod] = book.pods()
    assert pod.images == ["reg:5000/app:1", "reg:5000/sidecar:1"]
    assert (pod.hint, pod.hint_detail) == ("done", {"files": 4, "bytes_fetched": 100})
    assert {i.ref: i.pods for i in book.images()} == {"reg:5000/app:1": ["uid-1"], "reg:5000/sidecar:1": ["uid-1"]}
    book.hint("no-such-pod", "failed")  # a pod forgotten meanwhile: nothing happens


def test_bounded_oldest_forgotten_and_copies_go_out() -> None:
    book = ImageBook(max_images=3, max_pods=2)
    for i in range(5):
        book.layer(f"reg:5000/img{i}:1", "sha256:" + "c" * 64, LAZY, detail="x" * 10_000)
        book.pod_pull(f"reg:5000/img{i}:1", "ns", f"p{i}", f"u{i}")
    assert [i.ref for i in book.images()] == [f"reg:5000/img{i}:1" for i in (2, 3, 4)]
    assert [p.name for p in book.pods()] == ["p3", "p4"]
    img = book.images()[0]
    assert len(next(iter(img.layers.values())).detail) <= 300
    img.layers.clear()
    assert book.images()[0].layers  # the caller's copy, not the book's
