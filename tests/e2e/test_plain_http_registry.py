"""A local plain-HTTP registry missing from the daemon's plain_http_hosts, end to end: with
``ctr-remote image rpull --plain-http`` the image is pulled in full, the daemon says once
what fixes it (the config key, not --insecure) and /metrics counts every layer's fallback."""

from __future__ import annotations

import contextlib
import os
import re
import urllib.request
from pathlib import Path

import pytest

from lazypull.cli.main import main
from tests.support.containerd import start_containerd
from tests.support.daemon import start_daemon
from tests.support.images import Entry, write_image
from tests.support.net import free_port
from tests.support.registry import Registry

pytestmark = pytest.mark.e2e


def fallbacks(metrics: str, reason: str) -> float:
    m = re.search(rf'^lazypull_fallback_layers_total{{reason="{reason}"}} (\S+)$', metrics, re.M)
    assert m, metrics[-3000:]
    return float(m[1])


def test_rpull_from_a_plain_http_registry_not_in_the_config(registry: Registry, tmp_path: Path) -> None:
    write_image(
        tmp_path / "src",
        [[Entry("a", "dir", mode=0o755), Entry("a/one", data=os.urandom(20_000))],
         [Entry("b", "dir", mode=0o755), Entry("b/two", data=os.urandom(20_000))]],
    )  # fmt: skip
    plain = f"{registry.host}/plain/img:orig"
    ref = f"{registry.host}/plain/img:esgz"
    assert main(["copy", "--plain-http", f"oci:{tmp_path / 'src'}:latest", plain]) == 0
    assert main(["convert", "--plain-http", "--oci", "--no-progress", plain, ref]) == 0
    port = free_port()
    with contextlib.ExitStack() as stack:
        daemon = start_daemon(tmp_path / "daemon", f'metrics_address = "127.0.0.1:{port}"\n')  # no plain_http_hosts
        stack.callback(daemon.stop_layers)
        stack.callback(daemon.stop)
        cd = start_containerd(tmp_path / "containerd", proxy_plugins={"lazypull": daemon.address})
        stack.callback(cd.stop)
        cd.ctr("image", "rpull", "--plain-http", "--snapshotter", "lazypull", ref, tool="ctr-remote")
        log = daemon.log()
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()

    warnings = [line for line in log.splitlines() if " WARNING " in line]
    assert len(warnings) == 1, log[-4000:]
    assert "normal pull" in warnings[0] and f'plain_http_hosts = ["{registry.host}"]' in warnings[0]
    assert "use --insecure" not in warnings[0] and "TLS verification failed" not in warnings[0]
    assert "mounted lazily" not in log  # pulled in full
    assert fallbacks(metrics, "plain_http") == 2  # one per layer
    assert fallbacks(metrics, "tls") == 0
