"""A node for one test: the daemon (with the layer server it starts) and a containerd that
uses it as its proxy snapshotter, torn down whatever way the test ends."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.containerd import Containerd, start_containerd
from tests.support.daemon import Daemon, start_daemon


def stop_node(daemon: Daemon, cd: Containerd, root: Path) -> None:
    """containerd and the daemon, then the layer server the daemon leaves running by design."""
    cd.stop()
    daemon.stop()
    daemon.stop_layers()
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split()[4] for line in f if str(root) in line.split()[4]]
    for m in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", m], capture_output=True)


@contextmanager
def lazy_node(root: Path, config_toml: str = "") -> Iterator[tuple[Daemon, Containerd]]:
    """The daemon under *root*/daemon with *config_toml*, containerd under *root*/containerd."""
    daemon = start_daemon(root / "daemon", config_toml)
    try:
        cd = start_containerd(root / "containerd", proxy_plugins={"lazypull": daemon.address})
    except BaseException:
        daemon.stop()
        raise
    try:
        yield daemon, cd
    finally:
        stop_node(daemon, cd, root)
