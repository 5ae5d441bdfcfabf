"""Point a node's containerd at lazypull without editing its config blindly.

Appending ``deploy/containerd-config.toml`` to a full config (``containerd config default``)
repeats its tables and containerd no longer starts. Instead the lazypull tables go into a
drop-in that the main config imports (containerd 1.6+, config version 2), and nothing is
installed or restarted before the real containerd has loaded the result.

containerd merges an import by replacing whole plugin sections: a drop-in that only set the
CRI plugin's ``snapshotter`` would reset everything else the node configured for CRI
(``SystemdCgroup``, ``sandbox_image``, mirrors). So the drop-in carries the CRI section as the
node's files define it, plus lazypull's two keys, and the install is refused unless
``containerd config dump`` of the new files equals the old dump plus exactly those changes.

Run by the DaemonSet's init container (``--host-root /host``, containerd through nsenter)::

    python -m lazypull.service.containerdconf [--config /etc/containerd/config.toml] \\
        [--containerd 'nsenter -t 1 -m -- containerd'] [--restart 'systemctl restart containerd']
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lazypull.errors import LazypullError

CONFIG = "/etc/containerd/config.toml"
DROP_IN = "/etc/containerd/conf.d/lazypull.toml"
ADDRESS = "/run/containerd-lazypull-grpc/containerd-lazypull-grpc.sock"
CRI = "io.containerd.grpc.v1.cri"
CRI_KEYS: dict[str, Any] = {"snapshotter": "lazypull", "disable_snapshot_annotations": False}
NEW = ".lazypull-new"
EMPTY = "# Created by lazypull: containerd's defaults, and the files imported below.\nversion = 2\n"
BACKUP = ".lazypull-backup"
Owner = tuple[int, int, int]  # mode, uid, gid of the node's config file


class MergeRefused(LazypullError):
    """The config is left as it is: lazypull cannot be added to it safely."""


@dataclass
class Result:
    changed: bool
    message: str
    saved: dict[Path, str | None] | None = None  # the files as they were, to put back
    like: Owner = (0o644, 0, 0)

    def restore(self) -> None:
        """Put the node's files back as they were before :func:`configure` changed them."""
        if self.saved:
            _restore(self.saved, self.like)


# --- TOML out (tomllib only reads) -------------------------------------------------------

_BARE = re.compile(r"[A-Za-z0-9_-]+")


def _key(k: str) -> str:
    return k if _BARE.fullmatch(k) else json.dumps(k)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise MergeRefused(f"cannot write the float {v!r} back")
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # JSON's escapes are TOML basic-string escapes
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + "}"
    raise MergeRefused(f"cannot write a {type(v).__name__} value back ({v!r})")


def dumps(table: dict[str, Any], path: tuple[str, ...] = ()) -> str:
    """A TOML document for *table*: scalars and arrays first, then one [header] per sub-table."""
    out = [f"{_key(k)} = {_value(v)}\n" for k, v in table.items() if not isinstance(v, dict)]
    for k, v in table.items():
        if isinstance(v, dict):
            sub = (*path, k)
            if not v or any(not isinstance(x, dict) for x in v.values()):  # a header only where it holds keys
                out.append(f"\n[{'.'.join(_key(p) for p in sub)}]\n")
            out.append(dumps(v, sub))
    return "".join(out)


# --- the merge ----------------------------------------------------------------------------


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _load(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except OSError as e:
        raise MergeRefused(f"cannot read {path}: {e.strerror}") from e
    except tomllib.TOMLDecodeError as e:
        raise MergeRefused(f"{path} is not valid TOML ({e}); containerd cannot load it either: fix it first") from e


def add_import(text: str, path: str) -> str:
    """*text* with *path* appended to its top-level ``imports``; the rest of the file, comments
    included, unchanged. Refused unless the edited file parses to exactly that change."""
    data = tomllib.loads(text)
    imports = [*data.get("imports", []), path]
    line = f"imports = {_value(imports)}\n"
    if "imports" not in data:
        new = line + text  # top-level keys may come first in any TOML document
    else:
        lines = text.splitlines(keepends=True)
        new = ""
        for i, ln in enumerate(lines):
            if re.match(r"\s*\[", ln):
                break  # the first table: top-level keys are above it
            if re.match(r"\s*imports\s*=", ln):
                for j in range(i, len(lines)):
                    try:
                        tomllib.loads("".join(lines[i : j + 1]))
                    except tomllib.TOMLDecodeError:
                        continue
                    new = "".join(lines[:i]) + line + "".join(lines[j + 1 :])
                    break
                break
    if not new:
        raise MergeRefused("cannot find the top-level `imports = [...]` line to extend")
    try:
        ok = tomllib.loads(new) == {**data, "imports": imports}
    except tomllib.TOMLDecodeError:
        ok = False
    if not ok:
        raise MergeRefused(f"adding {path} to `imports` would change more than that line")
    return new


def _cri_enabled(dump: dict[str, Any]) -> bool:
    return not {CRI, "cri"} & set(dump.get("disabled_plugins", []))


def _configured(dump: dict[str, Any], address: str) -> bool:
    proxy = dump.get("proxy_plugins", {}).get("lazypull", {})
    if proxy.get("type") != "snapshot" or proxy.get("address") != address:
        return False
    if not _cri_enabled(dump):
        return True
    ctd = dump.get("plugins", {}).get(CRI, {}).get("containerd", {})
    return all(ctd.get(k) == v for k, v in CRI_KEYS.items())


def _expected(old: dict[str, Any], address: str) -> dict[str, Any]:
    """The dump the new files must give: the old one plus lazypull's tables."""
    want = _merge(old, {"proxy_plugins": {"lazypull": {"type": "snapshot", "address": address}}})
    if _cri_enabled(old):
        want = _merge(want, {"plugins": {CRI: {"containerd": CRI_KEYS}}})
    want.pop("imports", None)
    return want


def _diff(a: Any, b: Any, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(a.keys() | b.keys()) for d in _diff(a.get(k), b.get(k), f"{path}.{k}".lstrip("."))]
    return [] if a == b else [f"{path}: {a!r} -> {b!r}"]


class Containerd:
    """The node's containerd binary (a command prefix: through nsenter from a pod)."""

    def __init__(self, cmd: str = "containerd") -> None:
        self.cmd = shlex.split(cmd)

    def dump(self, config: str) -> dict[str, Any]:
        """``containerd --config CONFIG config dump``: what containerd makes of the files."""
        try:
            res = subprocess.run(
                [*self.cmd, "--config", config, "config", "dump"], capture_output=True, text=True, timeout=60
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise MergeRefused(f"cannot run {shlex.join(self.cmd)}: {e}") from e
        if res.returncode != 0:
            err = (res.stderr or res.stdout).strip().splitlines()
            raise MergeRefused(f"containerd does not load {config}: {err[-1] if err else f'exit {res.returncode}'}")
        return tomllib.loads(res.stdout)


def configure(
    config: str = CONFIG,
    drop_in: str = DROP_IN,
    *,
    containerd: Containerd | None = None,
    host_root: str = "/",
    address: str = ADDRESS,
) -> Result:
    """Add lazypull to containerd's config through *drop_in*, if it is not there yet.

    Paths are as containerd sees them; *host_root* is where that filesystem is mounted here.
    Nothing is written unless containerd loads the new files and their dump differs from the
    old one only by lazypull's tables; on any doubt :class:`MergeRefused` and the node's files
    are as they were."""
    ctd = containerd or Containerd()

    def host(p: str) -> Path:
        return Path(host_root) / p.lstrip("/")

    main_path = host(config)
    missing = not main_path.exists()  # containerd runs on its defaults: an empty version 2 file
    main_text = EMPTY if missing else ""
    data = tomllib.loads(EMPTY) if missing else _load(main_path)
    if data.get("version", 1) != 2:
        raise MergeRefused(
            f"{config} is config version {data.get('version', 1)}; this needs version 2 (containerd 1.6/1.7): "
            "add deploy/containerd-config.toml's tables by hand"
        )
    if missing:
        try:
            host(config + NEW).write_text(EMPTY)
            old = ctd.dump(config + NEW)
        finally:
            host(config + NEW).unlink(missing_ok=True)
    else:
        old = ctd.dump(config)
    if _configured(old, address):
        return Result(False, f"{config} already has the lazypull snapshotter")

    # The CRI section as the node's files set it (containerd: a later file's section replaces
    # an earlier one's), without our own drop-in's.
    tables: dict[str, Any] = {"version": 2, "proxy_plugins": {"lazypull": {"type": "snapshot", "address": address}}}
    if _cri_enabled(old):
        cri: dict[str, Any] = {}
        files = [str(Path(config).parent / f) for f in old.get("imports", [])]  # as containerd resolved them
        mains = {os.path.normpath(config), os.path.normpath(config + NEW)}  # NEW: the stand-in for a missing file
        for f in [config] + [f for f in files if os.path.normpath(f) not in mains]:
            if os.path.normpath(f) != os.path.normpath(drop_in):
                table = data if f == config else _load(host(f))
                cri = table.get("plugins", {}).get(CRI, cri)
        tables["plugins"] = {CRI: _merge(cri, {"containerd": CRI_KEYS})}
    header = "# Written by lazypull (python -m lazypull.service.containerdconf), imported by " + config + ".\n"
    header += "# The CRI section repeats the node's own (containerd replaces a plugin's section per file).\n"
    drop_text = header + dumps(tables)

    main_text = main_text or main_path.read_text()
    owner = main_path.stat() if not missing else main_path.parent.stat()
    like = (owner.st_mode & 0o7777 if not missing else 0o644, owner.st_uid, owner.st_gid)
    imported = drop_in in data.get("imports", [])
    candidates = {host(config + NEW): add_import(main_text, drop_in + NEW), host(drop_in + NEW): drop_text}
    made_dir = not host(drop_in).parent.exists()
    diff = ["not loaded"]
    try:
        host(drop_in).parent.mkdir(parents=True, exist_ok=True)
        for p, text in candidates.items():
            p.write_text(text)
        new = ctd.dump(config + NEW)
        new.pop("imports", None)
        diff = _diff(_expected(old, address), new)
    finally:
        for p in candidates:
            p.unlink(missing_ok=True)
        if diff and made_dir:
            host(drop_in).parent.rmdir()  # refused: not even an empty directory stays
    if diff:
        diff = diff[:5] + ([f"... {len(diff) - 5} more"] if len(diff) > 5 else [])
        msg = "with the drop-in, containerd's config would change beyond lazypull's keys: "
        raise MergeRefused(msg + "; ".join(diff))

    # Install: the drop-in, then the main file (each renamed into place), and load them again.
    saved = {p: p.read_text() if p.exists() else None for p in (main_path, host(drop_in))}
    if not missing:
        shutil.copy2(main_path, host(config + BACKUP))
    try:
        _replace(host(drop_in), drop_text, like)
        if not imported:
            _replace(main_path, add_import(main_text, drop_in), like)
        ctd.dump(config)
    except BaseException:
        _restore(saved, like)
        raise
    old_file = "there was none" if missing else f"the old file is {config + BACKUP}"
    return Result(True, f"{config} imports {drop_in} (lazypull snapshotter); {old_file}", saved, like)


def _replace(path: Path, text: str, like: Owner) -> None:
    """*path* holds *text* (renamed into place: containerd never reads half a file)."""
    tmp = path.with_name(path.name + NEW)
    tmp.write_text(text)
    os.chmod(tmp, like[0])
    os.chown(tmp, like[1], like[2])
    os.replace(tmp, path)


def _restore(saved: dict[Path, str | None], like: Owner) -> None:
    for p, text in saved.items():
        if text is None:
            p.unlink(missing_ok=True)
        else:
            _replace(p, text, like)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lazypull.service.containerdconf", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=CONFIG, help="containerd's main config, as containerd sees it")
    p.add_argument("--drop-in", default=DROP_IN, help="the file lazypull's tables go to")
    p.add_argument("--address", default=ADDRESS, help="the snapshotter's socket")
    p.add_argument("--host-root", default="/", help="where containerd's filesystem is mounted here (/host in a pod)")
    p.add_argument("--containerd", default="containerd", help="command that runs the node's containerd binary")
    p.add_argument("--restart", default="", help="command that restarts containerd once the files are in place")
    args = p.parse_args(argv)
    prog = "containerdconf"
    try:
        res = configure(
            args.config, args.drop_in, containerd=Containerd(args.containerd), host_root=args.host_root,
            address=args.address,
        )
    except MergeRefused as e:
        print(f"{prog}: error: {e}; containerd's config is unchanged", file=sys.stderr)
        return 2
    print(f"{prog}: {res.message}")
    if res.changed and args.restart:
        rc = subprocess.run(shlex.split(args.restart)).returncode
        if rc != 0:
            # Never leave the node without containerd: the old files back, and start it on them.
            res.restore()
            again = subprocess.run(shlex.split(args.restart)).returncode
            print(f"{prog}: error: `{args.restart}` failed (exit {rc}) with lazypull's drop-in; the old config "
                  f"is back and containerd restarted on it (exit {again})", file=sys.stderr)
            return 1
        print(f"{prog}: containerd restarted")
    return 0


if __name__ == "__main__":
    sys.exit(main())
