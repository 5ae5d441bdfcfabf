"""A published prefetch profile applied by the snapshotter daemon with a real containerd:
on the image's first Prepare the daemon finds the profile beside the image, and the layer
server fetches what it names, in order, within the budget, before the container reads it."""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path

import pytest

from lazypull.cli.main import main
from lazypull.prefetch.profile import FileAccess, Profile
from lazypull.registry.options import RegistryOptions
from lazypull.registry.repository import RegistryStore
from tests.e2e.test_snapshotter import md5
from tests.support.images import Entry, busybox_layer, write_image
from tests.support.net import free_port, wait_for
from tests.support.node import lazy_node
from tests.support.registry import Registry

pytestmark = pytest.mark.e2e

BIG = os.urandom(4 << 20)
OTHER = os.urandom(1 << 20)
BUDGET = 3 << 19  # 1.5 MiB: other.bin (1 MiB, first) fits, big.bin's 2 MiB after it does not


def test_the_daemon_applies_the_published_profile(
    registry: Registry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = [Entry("data", "dir", mode=0o755), Entry("data/big.bin", data=BIG), Entry("data/other.bin", data=OTHER)]
    write_image(tmp_path / "src", [busybox_layer(), data], cmd=["/bin/sh"])
    plain, ref = f"{registry.host}/prof/img:orig", f"{registry.host}/prof/img:esgz"
    assert main(["copy", "--plain-http", f"oci:{tmp_path / 'src'}:latest", plain]) == 0
    assert main(["convert", "--plain-http", "--oci", plain, ref]) == 0
    store = RegistryStore.open(ref, RegistryOptions(plain_http=True))
    image = store.resolve()
    top = json.loads(store.fetch(image))["layers"][1]["digest"]
    profile = Profile(
        image.digest,
        {
            top: [
                FileAccess("data/other.bin", 0.0, ((0, len(OTHER)),)),
                FileAccess("data/no-such-file", 0.1),
                FileAccess("data/big.bin", 0.2, ((0, 2 << 20),)),
            ]
        },
    )
    (tmp_path / "profile.json").write_bytes(profile.to_bytes())
    assert main(["profile", "push", "--plain-http", ref, str(tmp_path / "profile.json")]) == 0

    port = free_port()
    cfg = (
        f'plain_http_hosts = ["{registry.host}"]\nno_background_fetch = true\nmetrics_address = "127.0.0.1:{port}"\n'
        f"[prefetch_profile]\nbudget_bytes = {BUDGET}\n"
    )
    with lazy_node(tmp_path, cfg) as (daemon, cd):
        cd.ctr("image", "rpull", "--plain-http", "--snapshotter", "lazypull", ref, tool="ctr-remote")

        def row() -> dict[str, object]:
            (r,) = [x for x in daemon.fsd().stats()["layers"] if x["layer"] == top]
            return r

        wait_for(lambda: int(row().get("profile_chunk_bytes", 0)) >= len(OTHER), 30, "the profile's prefetch")
        r = row()
        assert len(OTHER) <= int(r["profile_chunk_bytes"]) < BUDGET  # big.bin is past the budget: cut
        assert r["profile_unknown_files"] == 1 and r["profile_read_bytes"] == 0
        fetched = int(r["fetched_bytes"])
        out = cd.ctr("run", "--rm", "--snapshotter", "lazypull", ref, "p1", "/bin/md5sum", "/data/other.bin").stdout
        assert md5(OTHER) in out
        r = row()
        assert int(r["profile_read_bytes"]) >= len(OTHER)  # every byte read was there already:
        assert int(r["fetched_bytes"]) == fetched  # nothing more came from the registry
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert 'lazypull_prefetch_profile_images_total{result="applied"} 1.0' in metrics
        assert "lazypull_profile_prefetched_read_bytes_total" in metrics
        assert "prefetch profile of" in daemon.log() and "beyond the" in daemon.log()
        capsys.readouterr()
        assert main(["status", "--json", "--address", str(daemon.address)]) == 0
        (img,) = [i for i in json.loads(capsys.readouterr().out)["images"] if i["ref"].endswith("prof/img:esgz")]
        assert img["profile_read_bytes"] >= len(OTHER) and img["profile_prefetched_bytes"] < BUDGET
