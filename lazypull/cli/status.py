"""``lazypull status``: what the node's lazypull daemon did, per image and pod sandbox.

For each image: mounted lazily or pulled in full (and why), its layers' state and health,
bytes fetched and prefetched, the time to its first read, where its registry credentials
came from (never the credentials); for each pod: its images and its prefetch hint. Asks
the running daemon on its status socket (root's, beside its containerd socket)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from lazypull.service.args import DEFAULT_ADDRESS, status_socket


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("status", help="what the node's daemon did, per image and pod", description=__doc__)
    p.add_argument(
        "--address", default=DEFAULT_ADDRESS, help=f"the daemon's containerd socket (default {DEFAULT_ADDRESS})"
    )
    p.add_argument("--json", action="store_true", help="the daemon's report as JSON (for scripts)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lazypull.service.statusapi import fetch_status

    report = fetch_status(status_socket(args.address))  # StatusUnavailable: "not running", exit 1
    if args.json:
        json.dump(report, sys.stdout, indent=1)
        print()
        return 0
    from rich.console import Console

    # Piped (grep, less), a line per row: rich would otherwise fold it to 80 columns.
    render(report, Console() if sys.stdout.isatty() else Console(width=400, color_system=None))
    return 0


def render(report: dict[str, Any], console: Any) -> None:
    """Tables for a person: images, their layers, pods."""
    from rich.table import Table

    d, ls = report.get("daemon", {}), report.get("layer_server", {})
    server = f"up (pid {ls.get('pid')})" if ls.get("up") else "[red]down[/red]"
    console.print(
        f"daemon pid {d.get('pid')}, root {d.get('root')}; layer server {server}, {ls.get('restarts', 0)} restarts"
    )
    images = report.get("images", [])
    if not images:
        console.print("no images prepared since the daemon started")
    else:
        t = Table(title="Images", title_justify="left")
        for col in ("image", "mode", "reason", "layers", "fetched", "prefetched", "first read", "credentials", "pods"):
            right = col in ("fetched", "prefetched", "first read")
            t.add_column(col, justify="right" if right else "left", no_wrap=col == "image")
        for img in images:
            lazy = sum(1 for x in img["layers"] if x["mode"] == "lazy")
            t.add_row(
                img["ref"],
                _mode(img["mode"]),
                ", ".join(img.get("reasons") or []) or "-",
                f"{lazy}/{len(img['layers'])} lazy",
                human_bytes(img.get("fetched_bytes")),
                human_bytes(img.get("prefetched_bytes")),
                seconds(img.get("first_read_seconds")),
                img.get("credentials") or "-",
                ", ".join(img.get("pods") or []) or "-",
            )
        console.print(t)
        lt = Table(title="Layers", title_justify="left")
        for col in ("image", "layer", "mode", "state", "health", "size", "fetched", "prefetched", "first read"):
            right = col in ("size", "fetched", "prefetched", "first read")
            lt.add_column(col, justify="right" if right else "left", no_wrap=col in ("image", "layer"))
        for img in images:
            for x in img["layers"]:
                lt.add_row(
                    img["ref"],
                    x["digest"].removeprefix("sha256:")[:12],
                    _mode(x["mode"]) + (f" ({x['reason']})" if x.get("reason") else ""),
                    x.get("state", "-"),
                    _health(x.get("healthy")),
                    human_bytes(x.get("size")),
                    human_bytes(x.get("fetched_bytes")),
                    human_bytes(x.get("prefetched_bytes")),
                    seconds(x.get("first_read_latency_seconds")),
                )
        console.print(lt)
    pods = report.get("pods", [])
    if pods:
        modes = {img["ref"]: img["mode"] for img in images}
        pt = Table(title="Pod sandboxes", title_justify="left")
        for col in ("pod", "uid", "images", "prefetch hint"):
            pt.add_column(col)
        for p in pods:
            shown = [f"{ref} ({modes[ref]})" if ref in modes else ref for ref in p["images"]]
            pt.add_row(f"{p['namespace']}/{p['name']}", p.get("uid") or "-", "\n".join(shown), hint(p["hint"]))
        console.print(pt)


def _mode(mode: str) -> str:
    return {"lazy": "[green]lazy[/green]", "fallback": "[yellow]fallback[/yellow]"}.get(mode, mode)


def _health(healthy: bool | None) -> str:
    return "-" if healthy is None else ("ok" if healthy else "[red]unhealthy[/red]")


def hint(h: dict[str, Any]) -> str:
    state = str(h.get("state", "none"))
    if "files" in h:
        return f"{state}: {h['files']} files, {human_bytes(h.get('bytes_fetched'))} fetched"
    if h.get("error"):
        return f"{state}: {h['error']}"
    return state


def human_bytes(n: object) -> str:
    if n is None:
        return "-"
    v = float(n)  # type: ignore[arg-type]
    for unit in ("B", "KiB", "MiB", "GiB"):
        if v < 1024 or unit == "GiB":
            return f"{v:.0f} {unit}" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1024
    return f"{v:.1f} GiB"


def seconds(s: object) -> str:
    if s is None:
        return "-"
    v = float(s)  # type: ignore[arg-type]
    return f"{v * 1000:.0f} ms" if v < 1 else f"{v:.2f} s"
