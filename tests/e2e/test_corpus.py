"""A corpus of images made by real tools, each checked four ways.

Tools: buildah (Containerfile with RUN, COPY --chown, USER, a symlinked directory, files of a
lower layer deleted; pushed as OCI and as Docker schema2), skopeo (re-compressed to zstd),
GNU tar (a layer listing ``tmp/`` twice, as ``tar -r`` appends), debootstrap + tar (Debian
minbase). Per image:

1. containerd's overlayfs unpack of the original == ``lazypull unpack`` of the original
   == ``lazypull unpack`` of lazypull's conversion == the tree ``lazypull mount`` serves;
2. the reference daemon (containerd-stargz-grpc) mounts lazypull's conversion lazily through
   containerd (``ctr-remote image rpull --snapshotter stargz``) and serves the same tree;
3. lazypull's daemon mounts the reference converter's (``ctr-remote image convert``) output
   lazily through containerd and serves the same tree;
4. ``lazypull check --full`` passes on both converters' output.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from lazypull.cli.main import main
from lazypull.format.estargz_reader import read_toc_member
from lazypull.format.footer import parse_footer
from lazypull.oci import mediatypes as mt
from lazypull.oci.resolve import select_manifest
from lazypull.oci.types import ImageConfig, Manifest
from lazypull.registry.options import RegistryOptions
from lazypull.registry.repository import RegistryStore
from tests.e2e.interop import export_layout, snapshot_tree
from tests.support.containerd import Containerd, start_containerd
from tests.support.corpus import Buildah, busybox_rootfs, debootstrap_tar, run
from tests.support.daemon import Daemon, start_daemon
from tests.support.layouts import raw_image
from tests.support.net import wait_for
from tests.support.registry import Registry, start_registry

pytestmark = pytest.mark.e2e

Tree = dict[str, tuple[object, ...]]


def same(got: Tree, want: Tree) -> bool:
    """Equal trees, mtimes within the second a TOC carries (debootstrap's PAX tar has
    nanosecond mtimes; containerd keeps them, TOCs round them to whole seconds)."""
    assert got.keys() == want.keys(), sorted(got.keys() ^ want.keys())[:20]
    diff = {
        k: (got[k], want[k])
        for k in got
        if got[k][:-1] != want[k][:-1] or abs(int(got[k][-1]) - int(want[k][-1])) >= 1_000_000_000  # type: ignore[call-overload]
    }
    assert not diff, list(diff.items())[:10]
    return True


def reference_binary() -> Path | None:
    here = Path(__file__).resolve()
    for c in (
        os.environ.get("LAZYPULL_REFERENCE_SNAPSHOTTER", ""),
        str(here.parents[3] / "shared/anchors/containerd-stargz-grpc"),
        "/work/shared/anchors/containerd-stargz-grpc",
        shutil.which("containerd-stargz-grpc") or "",
    ):
        if c and Path(c).is_file():
            return Path(c)
    return None


CONTAINERFILE = """\
FROM corpus-base
RUN mkdir -p /app/data /opt/real && echo hello > /app/data/hello.txt \\
 && ln -s /opt/real /app/linkdir && echo inside > /opt/real/x && ln /app/data/hello.txt /app/data/hard
COPY --chown=1000:1000 files/ /app/files/
RUN rm -f /bin/md5sum && rm -rf /var/empty && mkdir -m 1777 /app/tmp && echo more >> /app/linkdir/x
USER 1000
RUN echo from-user > /home/app/who || true
"""


@dataclass
class Image:
    name: str
    tool: str
    ref: str  # the original, in the test registry
    truth: Tree = field(default_factory=dict)


@dataclass
class Node:
    cd: Containerd
    daemon: Daemon
    reference: subprocess.Popen[bytes]
    reference_root: Path


@dataclass
class Corpus:
    registry: Registry
    node: Node
    images: dict[str, Image]
    root: Path


def _start_reference(binary: Path, root: Path, registry: str) -> tuple[subprocess.Popen[bytes], Path]:
    root.mkdir(parents=True)
    cfg = root / "config.toml"
    cfg.write_text(
        f'no_background_fetch = true\n[[resolver.host."{registry}".mirrors]]\nhost = "{registry}"\ninsecure = true\n'
    )
    sock = root / "stargz.sock"
    log = open(root / "stargz.log", "wb")  # noqa: SIM115 - owned by the process
    proc = subprocess.Popen(
        [str(binary), "--address", str(sock), "--root", str(root / "state"), "--config", str(cfg)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    wait_for(lambda: sock.exists() or proc.poll() is not None, 30, "reference snapshotter socket")
    if proc.poll() is not None:
        raise RuntimeError((root / "stargz.log").read_text(errors="replace"))
    return proc, sock


def _build_corpus(root: Path, reg: Registry) -> dict[str, Image]:
    host = reg.host
    images: dict[str, Image] = {}
    b = Buildah(root / "buildah")
    b.base_image("corpus-base", busybox_rootfs(root / "busybox-root"))
    ctx = root / "ctx"
    (ctx / "files/sub").mkdir(parents=True)
    (ctx / "files/a.txt").write_text("a\n")
    (ctx / "files/sub/b.txt").write_text("b\n")
    (ctx / "Containerfile").write_text(CONTAINERFILE)
    b("bud", "--layers", "-f", "Containerfile", "-t", "corpus-app", str(ctx), cwd=ctx)
    b("push", "--tls-verify=false", "corpus-app", f"docker://{host}/corpus/buildah:oci")
    images["buildah-oci"] = Image("buildah-oci", "buildah bud + push (OCI)", f"{host}/corpus/buildah:oci")
    b("push", "--tls-verify=false", "--format", "v2s2", "corpus-app", f"docker://{host}/corpus/buildah:v2s2")
    images["buildah-v2s2"] = Image("buildah-v2s2", "buildah push --format v2s2", f"{host}/corpus/buildah:v2s2")
    run(
        "skopeo", "copy", "--src-tls-verify=false", "--dest-tls-verify=false", "--dest-compress-format", "zstd",
        f"docker://{host}/corpus/buildah:oci", f"docker://{host}/corpus/skopeo:zstd",
    )  # fmt: skip
    images["skopeo-zstd"] = Image(
        "skopeo-zstd", "skopeo copy --dest-compress-format zstd", f"{host}/corpus/skopeo:zstd"
    )

    # GNU tar appending a directory again: the later entry (mode 01777) wins on extraction.
    t = root / "duptree"
    (t / "tmp").mkdir(parents=True, mode=0o755)
    (t / "tmp/inside").write_text("kept\n")
    layer = root / "dup.tar"
    run("tar", "--numeric-owner", "-C", str(t), "-cf", str(layer), "tmp")
    (t / "tmp").chmod(0o1777)
    run("tar", "--numeric-owner", "--no-recursion", "-C", str(t), "-rf", str(layer), "tmp")
    base_tar = run_bytes("tar", "--numeric-owner", "-C", str(root / "busybox-root"), "-cf", "-", ".")
    raw_image(root / "dup", [(base_tar, mt.OCI_LAYER_GZIP), (layer.read_bytes(), mt.OCI_LAYER_GZIP)])
    run("skopeo", "copy", "--dest-tls-verify=false", f"oci:{root / 'dup'}:latest", f"docker://{host}/corpus/dup:tmp")
    images["tar-dup"] = Image("tar-dup", "GNU tar -c then -r (tmp/ twice)", f"{host}/corpus/dup:tmp")

    deb = debootstrap_tar()
    raw_image(root / "deb", [(deb.read_bytes(), mt.OCI_LAYER_GZIP)])
    run(
        "skopeo", "copy", "--dest-tls-verify=false", f"oci:{root / 'deb'}:latest", f"docker://{host}/corpus/deb:minbase"
    )
    images["debootstrap"] = Image("debootstrap", "debootstrap --variant=minbase + tar", f"{host}/corpus/deb:minbase")
    return images


def run_bytes(*cmd: str) -> bytes:
    return subprocess.run(cmd, check=True, capture_output=True).stdout


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Corpus]:
    binary = reference_binary()
    if binary is None:
        pytest.skip("the reference snapshotter (containerd-stargz-grpc) is not available")
    for tool in ("buildah", "skopeo", "debootstrap"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} is not installed")
    root = tmp_path_factory.mktemp("corpus")
    reg = start_registry(root / "registry")
    ref_proc: subprocess.Popen[bytes] | None = None
    daemon: Daemon | None = None
    cd: Containerd | None = None
    try:
        images = _build_corpus(root, reg)
        ref_proc, ref_sock = _start_reference(binary, root / "reference", reg.host)
        daemon = start_daemon(root / "lazypull", f'plain_http_hosts = ["{reg.host}"]\nno_background_fetch = true\n')
        cd = start_containerd(root / "containerd", proxy_plugins={"stargz": ref_sock, "lazypull": daemon.address})
        yield Corpus(reg, Node(cd, daemon, ref_proc, root / "reference"), images, root)
    finally:
        if cd is not None:
            cd.stop()
        if daemon is not None:
            daemon.stop()
            daemon.stop_layers()
        if ref_proc is not None and ref_proc.poll() is None:
            ref_proc.send_signal(signal.SIGTERM)
            try:
                ref_proc.wait(20)
            except subprocess.TimeoutExpired:
                ref_proc.kill()
                ref_proc.wait()
        _umount_under(root)
        reg.stop()


def _umount_under(root: Path) -> None:
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split()[4] for line in f if line.split()[4].startswith(str(root))]
    for m in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", m], capture_output=True)


def top_chain_id(ref: str) -> str:
    """The chain ID of the image's top layer (the snapshot a container of it starts from)."""
    store = RegistryStore.open(ref, RegistryOptions(plain_http=True))
    m = Manifest.parse(store.fetch(select_manifest(store, store.resolve())))
    chain = ""
    for d in ImageConfig.parse(store.fetch(m.config)).diff_ids:
        chain = d if not chain else "sha256:" + hashlib.sha256(f"{chain} {d}".encode()).hexdigest()
    return chain


def _fuse_mountpoints() -> set[str]:
    with open("/proc/self/mountinfo") as f:
        return {line.split()[4] for line in f if " - fuse" in line}


def snapshot_view(cd: Containerd, ref: str, snapshotter: str, where: Path, *, lazy: bool = False) -> Tree:
    """The tree of the image's snapshots in *snapshotter*, mounted as containerd mounts a
    container's rootfs (a view on the top chain ID). With *lazy*, every layer must be a FUSE
    mount (served lazily, not downloaded and unpacked)."""
    where.mkdir(parents=True)
    key = f"corpus-view-{where.name}-{snapshotter}"
    sn = ["snapshots", "--snapshotter", snapshotter]
    # The view has no lease: take its mounts from the call that creates it, and pin it
    # with a GC root label at once (containerd's collector removes unreferenced views).
    out = cd.ctr(*sn, "view", "--target", str(where), key, top_chain_id(ref)).stdout
    try:
        cd.ctr(*sn, "label", key, "containerd.io/gc.root=corpus", check=False)
        cmd = shlex.split(next(line for line in out.splitlines() if line.startswith("mount ")))
        if lazy:
            opts = cmd[cmd.index("-o") + 1].split(",")
            lowers = [d for o in opts if o.startswith("lowerdir=") for d in o[len("lowerdir=") :].split(":")]
            if not lowers:  # one layer: a bind mount of its directory
                lowers = [cmd[3]]  # mount -t bind SRC DST -o ro,rbind
            fuse = _fuse_mountpoints()
            assert lowers and all(d in fuse for d in lowers), (lowers, "not all layers are lazily mounted")
        run(*cmd)
        try:
            return snapshot_tree(where)
        finally:
            run("umount", str(where))
    finally:
        cd.ctr(*sn, "rm", key, check=False)


def truth(c: Corpus, img: Image) -> Tree:
    """containerd's own pull and overlayfs unpack of the original image."""
    if not img.truth:
        c.node.cd.ctr("images", "pull", "--plain-http", img.ref, timeout=600)
        img.truth = snapshot_view(c.node.cd, img.ref, "overlayfs", c.root / "truth" / img.name)
    return img.truth


def ours(c: Corpus, img: Image) -> str:
    """lazypull's conversion, pushed next to the original (converted once per image)."""
    ref = img.ref.rsplit(":", 1)[0] + f":{img.name}-lazypull"
    if not (c.root / "converted" / img.name).exists():
        (c.root / "converted" / img.name).mkdir(parents=True)
        assert main(["convert", "--plain-http", "--oci", img.ref, ref]) == 0
    return ref


def reference_conversion(c: Corpus, img: Image) -> str:
    """``ctr-remote image convert --estargz --oci`` of containerd's copy, pushed to the registry."""
    ref = img.ref.rsplit(":", 1)[0] + f":{img.name}-reference"
    if not (c.root / "refconv" / img.name).exists():
        truth(c, img)  # the original is in containerd now
        c.node.cd.ctr("image", "convert", "--estargz", "--oci", img.ref, ref, tool="ctr-remote", timeout=900)
        c.node.cd.ctr("images", "push", "--plain-http", ref, ref, timeout=600)
        (c.root / "refconv" / img.name).mkdir(parents=True)
    return ref


NAMES = ["buildah-oci", "buildah-v2s2", "skopeo-zstd", "tar-dup", "debootstrap"]


@pytest.mark.parametrize("name", NAMES)
def test_unpacks_and_lazy_mount_equal_containerds_unpack(corpus: Corpus, name: str) -> None:
    img = corpus.images[name]
    want = truth(corpus, img)
    work = corpus.root / "views" / name
    assert main(["unpack", "--plain-http", img.ref, str(work / "orig")]) == 0
    assert same(snapshot_tree(work / "orig"), want)
    conv = ours(corpus, img)
    assert main(["unpack", "--plain-http", conv, str(work / "conv")]) == 0
    assert same(snapshot_tree(work / "conv"), want)
    mnt = work / "mnt"
    mnt.mkdir()
    state = ["--cache-dir", str(work / "cache"), "--state-dir", str(work / "state")]
    assert main(["mount", "--daemon", "--plain-http", "--no-background-fetch", *state, conv, str(mnt)]) == 0
    try:
        assert same(snapshot_tree(mnt), want)
    finally:
        main(["umount", "--state-dir", str(work / "state"), str(mnt)])


@pytest.mark.parametrize("name", NAMES)
def test_both_converters_output_checks(corpus: Corpus, name: str) -> None:
    img = corpus.images[name]
    assert main(["check", "--full", "--plain-http", ours(corpus, img)]) == 0
    assert main(["check", "--full", "--plain-http", reference_conversion(corpus, img)]) == 0


@pytest.mark.parametrize("name", NAMES)
def test_reference_daemon_serves_our_conversion_lazily(corpus: Corpus, name: str) -> None:
    img = corpus.images[name]
    want = truth(corpus, img)
    ref = ours(corpus, img)
    cd = corpus.node.cd
    cd.ctr("image", "rpull", "--plain-http", "--snapshotter", "stargz", ref, tool="ctr-remote", timeout=600)
    assert same(snapshot_view(cd, ref, "stargz", corpus.root / "refd" / name, lazy=True), want)


@pytest.mark.parametrize("name", NAMES)
def test_our_daemon_serves_the_reference_conversion_lazily(corpus: Corpus, name: str) -> None:
    img = corpus.images[name]
    want = truth(corpus, img)
    ref = reference_conversion(corpus, img)
    cd = corpus.node.cd
    cd.ctr("image", "rpull", "--plain-http", "--snapshotter", "lazypull", ref, tool="ctr-remote", timeout=600)
    assert same(snapshot_view(cd, ref, "lazypull", corpus.root / "ourd" / name, lazy=True), want)


def test_ctr_export_of_a_reference_conversion_is_read_as_is(corpus: Corpus, tmp_path: Path) -> None:
    """``ctr export`` writes a nested index whose only manifest has no platform."""
    img = corpus.images["buildah-oci"]
    ref = reference_conversion(corpus, img)
    export_layout(corpus.node.cd, ref, tmp_path / "exported")
    assert main(["check", "--full", f"oci:{tmp_path / 'exported'}"]) == 0
    assert main(["unpack", f"oci:{tmp_path / 'exported'}", str(tmp_path / "u")]) == 0
    assert same(snapshot_tree(tmp_path / "u"), truth(corpus, img))
    assert main(["convert", f"oci:{tmp_path / 'exported'}", f"docker-archive:{tmp_path / 'a.tar'}:corpus/a:1"]) == 0
    run("skopeo", "copy", f"docker-archive:{tmp_path / 'a.tar'}", f"oci:{tmp_path / 'sk'}:x")
    # Through docker-archive the TOC-digest annotations are gone (that format has none): every
    # byte still verifies, but without them no daemon mounts the layers lazily: exit 3 says so.
    assert main(["check", "--full", f"oci:{tmp_path / 'sk'}:x"]) == 3
    # containerd imports the archive too (it is a docker-save tarball and an OCI layout).
    corpus.node.cd.ctr("images", "import", "--base-name", "corpus/a", str(tmp_path / "a.tar"))


def test_duplicate_tmp_keeps_the_last_entry(corpus: Corpus) -> None:
    img = corpus.images["tar-dup"]
    want = truth(corpus, img)
    assert want["tmp"][0] == "drwxrwxrwt" and "tmp/inside" in want
    # Both converters' TOCs list the directory once (the last entry, mode 01777).
    for ref in (ours(corpus, img), reference_conversion(corpus, img)):
        tmp = [e for e in _toc_entries(ref)[-1] if e["name"].rstrip("/") in ("tmp", "./tmp")]
        assert len(tmp) == 1 and tmp[0]["mode"] & 0o7777 == 0o1777, (ref, tmp)


def _toc_entries(ref: str) -> list[list[dict[str, Any]]]:
    """The TOC entries of each layer of *ref*, as JSON."""
    store = RegistryStore.open(ref, RegistryOptions(plain_http=True))
    m = Manifest.parse(store.fetch(select_manifest(store, store.resolve())))
    out = []
    for layer in m.layers:
        src = store.blob_source(layer)
        footer = parse_footer(src.read_at(src.size - 51, 51), src.size)
        toc = read_toc_member(src, footer.toc_offset, src.size - footer.size, 1 << 26)
        out.append(json.loads(toc)["entries"])
    return out
