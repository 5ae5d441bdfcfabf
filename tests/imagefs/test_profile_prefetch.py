"""``open_image(..., prefetch=True)``: the image's published profile is fetched in the
background, so what it names is local before it is read."""

from __future__ import annotations

import json
import os
from pathlib import Path

from lazypull import open_image
from lazypull.cli.main import main
from lazypull.prefetch.profile import FileAccess, Profile
from lazypull.registry.options import RegistryOptions
from lazypull.registry.repository import RegistryStore
from tests.support.images import Entry, write_image
from tests.support.registry import Registry

OTHER = os.urandom(1 << 20)
BIG = os.urandom(2 << 20)


def test_prefetch_fetches_the_published_profile(registry: Registry, tmp_path: Path) -> None:
    data = [Entry("data/other.bin", data=OTHER), Entry("data/big.bin", data=BIG)]
    write_image(tmp_path / "src", [data])
    plain, ref = f"{registry.host}/api/img:orig", f"{registry.host}/api/img:esgz"
    assert main(["copy", "--plain-http", f"oci:{tmp_path / 'src'}:latest", plain]) == 0
    assert main(["convert", "--plain-http", "--oci", plain, ref]) == 0
    with open_image(ref, plain_http=True, cache_dir=tmp_path / "c0", prefetch=True) as img:
        assert img.wait_prefetch(30) == 0  # no profile: nothing happens
    store = RegistryStore.open(ref, RegistryOptions(plain_http=True))
    image = store.resolve()
    layer = json.loads(store.fetch(image))["layers"][0]["digest"]
    profile = Profile(image.digest, {layer: [FileAccess("data/other.bin", 0.0, ((0, len(OTHER)),))]})
    (tmp_path / "p.json").write_bytes(profile.to_bytes())
    assert main(["profile", "push", "--plain-http", ref, str(tmp_path / "p.json")]) == 0

    with open_image(ref, plain_http=True, cache_dir=tmp_path / "c1", prefetch=True) as img:
        assert len(OTHER) // 2 < img.wait_prefetch(30) < len(OTHER) + len(BIG) // 2
        before = img.stats().bytes_fetched
        assert img.read_bytes("data/other.bin") == OTHER
        assert img.stats().bytes_fetched == before  # all of it was local
