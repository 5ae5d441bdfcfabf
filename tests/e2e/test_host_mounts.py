"""Host-side mounts made by `lazypull mount`: untrusted images get nosuid,nodev; the
foreground mount's life cycle (unmount from elsewhere, Ctrl-C while starting); umount
errors; credentials kept out of argv."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lazypull.cli.main import main
from tests.support.images import Entry, busybox_layer, write_image
from tests.support.processes import layer_servers
from tests.support.proxy import Proxy, start_proxy
from tests.support.registry import Registry, start_registry

pytestmark = pytest.mark.e2e

ID = Path("/usr/bin/id").read_bytes()  # runs with the host's loader and libraries


@dataclass
class World:
    registry: Registry
    proxy: Proxy
    root: Path
    ref: str  # eStargz image (two layers: an overlay) through the proxy
    one_layer: str  # eStargz image of one layer (a bind mount)

    def args(self, name: str) -> list[str]:
        return [
            "--plain-http",
            "--no-background-fetch",
            "--cache-dir",
            str(self.root / "cache" / name),
            "--state-dir",
            str(self.root / "state"),
        ]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    reg = start_registry(tmp_path / "registry")
    proxy = start_proxy(reg.url)
    hostile = [
        Entry("bin", "dir", mode=0o755),
        Entry("bin/rootid", data=ID, mode=0o4755),  # setuid root
        Entry("bin/groupid", data=ID, mode=0o2755, gid=0),  # setgid root
        Entry("dev", "dir", mode=0o755),
        Entry("dev/null", "char", devmajor=1, devminor=3, mode=0o666),  # what dev/sda would be
    ]
    try:
        write_image(tmp_path / "src", [busybox_layer(), hostile])
        write_image(tmp_path / "src1", [hostile])
        for name, src in (("img", "src"), ("one", "src1")):
            plain = f"{reg.host}/host/{name}:orig"
            assert main(["copy", "--plain-http", f"oci:{tmp_path / src}:latest", plain]) == 0
            assert main(["convert", "--plain-http", "--oci", plain, f"{reg.host}/host/{name}:esgz"]) == 0
        yield World(reg, proxy, tmp_path, f"{proxy.host}/host/img:esgz", f"{proxy.host}/host/one:esgz")
    finally:
        for m in sorted(_our_mounts(tmp_path), key=len, reverse=True):
            subprocess.run(["umount", "-l", m], capture_output=True)
        proxy.stop()
        reg.stop()


def _mountinfo(root: Path) -> dict[str, set[str]]:
    """Mount point -> its per-mount options, for mounts under *root*."""
    out = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            if parts[4].startswith(str(root)):
                out[parts[4]] = set(parts[5].split(","))
    return out


def _our_mounts(root: Path) -> list[str]:
    return list(_mountinfo(root))


def _mount_procs(root: Path) -> list[int]:
    return layer_servers(root)


def _as_nobody(*cmd: str) -> str:
    res = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd], capture_output=True, text=True
    )
    assert res.returncode == 0, res
    return res.stdout


def _open_device(path: Path) -> int:
    try:
        os.close(os.open(path, os.O_WRONLY))
    except OSError as e:
        return e.errno
    return 0


@pytest.mark.parametrize("image", ["overlay", "bind"])
def test_image_setuid_binaries_and_devices_give_nothing_by_default(world: World, image: str) -> None:
    mnt = world.root / f"mnt-{image}"
    ref = world.ref if image == "overlay" else world.one_layer
    assert main(["mount", "--daemon", *world.args(image), ref, str(mnt)]) == 0
    try:
        mounts = _mountinfo(world.root)
        assert {"nosuid", "nodev", "ro"} <= mounts[str(mnt)]
        layers = [m for m in mounts if m.endswith("/fs")]
        assert layers and all({"nosuid", "nodev"} <= mounts[m] for m in layers), mounts
        assert (mnt / "bin/rootid").stat().st_mode & 0o4000  # the bit is shown, not honoured
        assert _as_nobody(str(mnt / "bin/rootid"), "-u").strip() == "65534"  # euid stays nobody
        assert _as_nobody(str(mnt / "bin/groupid"), "-g").strip() == "65534"
        assert _open_device(mnt / "dev/null") == errno.EACCES
    finally:
        assert main(["umount", "--state-dir", str(world.root / "state"), str(mnt)]) == 0


def test_suid_and_dev_are_explicit_opt_ins(world: World) -> None:
    mnt = world.root / "mnt-optin"
    assert main(["mount", "--daemon", "--suid", "--dev", *world.args("optin"), world.ref, str(mnt)]) == 0
    try:
        opts = _mountinfo(world.root)[str(mnt)]
        assert "nosuid" not in opts and "nodev" not in opts
        assert _as_nobody(str(mnt / "bin/rootid"), "-u").strip() == "0"
        assert _open_device(mnt / "dev/null") == 0
    finally:
        assert main(["umount", "--state-dir", str(world.root / "state"), str(mnt)]) == 0


def test_umount_of_a_path_lazypull_did_not_mount_is_an_error(world: World, tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    for path in (tmp_path / "plain", Path("/proc")):
        res = subprocess.run(
            [sys.executable, "-m", "lazypull.cli.main", "umount", "--state-dir", str(world.root / "state"), str(path)],
            capture_output=True,
            text=True,
        )
        assert res.returncode == 1 and res.stderr.strip() == f"lazypull: error: {path} is not mounted by lazypull"
    assert os.path.ismount("/proc")


def _foreground(world: World, mnt: Path, *extra: str, ref: str | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "lazypull.cli.main", "mount", *world.args(mnt.name), *extra, ref or world.ref, str(mnt)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_mounted(proc: subprocess.Popen[str], mnt: Path) -> None:
    deadline = time.monotonic() + 60
    while not (mnt / "bin/rootid").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)


def _children(pid: int) -> list[str]:
    """States of *pid*'s child processes ("Z" for zombies)."""
    out = []
    for d in Path("/proc").iterdir():
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            out.append(fields[0])
    return out


@pytest.mark.parametrize("how", ["lazypull-umount", "umount"])
def test_foreground_mount_exits_when_its_mount_point_is_unmounted(world: World, how: str) -> None:
    mnt = world.root / f"fg-{how}"
    proc = _foreground(world, mnt)
    try:
        _wait_mounted(proc, mnt)
        if how == "umount":
            subprocess.run(["umount", str(mnt)], check=True)
        else:
            assert main(["umount", "--state-dir", str(world.root / "state"), str(mnt)]) == 0
            assert "Z" not in _children(proc.pid) or _wait_no_zombies(proc.pid)
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, (out, err)
        assert "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not _our_mounts(world.root) and not _mount_procs(world.root)


def _wait_no_zombies(pid: int) -> bool:
    deadline = time.monotonic() + 5
    while "Z" in _children(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_interrupt_during_start_up_is_one_line_and_leaves_nothing_mounted(world: World) -> None:
    mnt = world.root / "fg-int"
    world.proxy.faults.match = "/blobs/"
    world.proxy.faults.stall = "accept"  # start-up hangs fetching the layers' TOCs
    proc = _foreground(world, mnt)
    try:
        deadline = time.monotonic() + 30
        while not _mount_procs(world.root):  # layer processes spawned and waiting for their TOC
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        world.proxy.heal()
    assert proc.returncode == 130
    assert err.strip().count("\n") == 0 and "interrupted" in err and "Traceback" not in err, err
    assert not _our_mounts(world.root) and not _mount_procs(world.root)


def test_password_from_stdin_or_environment_not_argv(world: World, tmp_path: Path) -> None:
    reg = start_registry(tmp_path / "authreg", users={"alice": "s3cret-pw"})
    try:
        ref = f"{reg.host}/auth/img:esgz"
        env = {**os.environ, "LAZYPULL_PASSWORD": "s3cret-pw"}
        subprocess.run(
            [sys.executable, "-m", "lazypull.cli.main", "copy", "--plain-http", "--user", "alice",
             f"oci:{world.root / 'src1'}:latest", f"{reg.host}/auth/img:orig"],
            env=env, check=True, capture_output=True,
        )  # fmt: skip
        mnt = tmp_path / "authmnt"
        proc = _foreground(world, mnt, "--user", "alice", "--password-stdin", ref=f"{reg.host}/auth/img:orig")
        assert proc.stdin is not None
        proc.stdin.write("s3cret-pw\n")
        proc.stdin.close()
        proc.stdin = None
        try:
            deadline = time.monotonic() + 60
            while not _mountinfo(tmp_path).get(str(mnt)):
                assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
                time.sleep(0.1)
            argv = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
            assert b"s3cret" not in argv
            assert (mnt / "bin/rootid").read_bytes() == ID
        finally:
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=30)
        del ref
        res = subprocess.run(
            [sys.executable, "-m", "lazypull.cli.main", "check", "--plain-http", "--user", "alice",
             f"{reg.host}/auth/img:orig"],
            env={k: v for k, v in os.environ.items() if k != "LAZYPULL_PASSWORD"}, capture_output=True, text=True,
        )  # fmt: skip
        assert res.returncode == 1 and "LAZYPULL_PASSWORD" in res.stderr and "Traceback" not in res.stderr
    finally:
        reg.stop()
