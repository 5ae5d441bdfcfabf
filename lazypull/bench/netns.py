"""A registry host in its own network namespace, reached over a veth pair whose
registry-to-node direction is shaped with ``tc tbf`` (the bandwidth a node sees).

Addresses come from a private /30 that exists only between this machine's namespaces.
Bytes served are read from the host side's interface counters (exact, includes headers).
"""

from __future__ import annotations

import atexit
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from lazypull.errors import LazypullError


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(list(cmd), capture_output=True, text=True)
    if check and res.returncode != 0:
        raise LazypullError(f"{' '.join(cmd)} failed: {res.stderr.strip()}")
    return res


@dataclass
class ShapedNet:
    name: str = field(default_factory=lambda: f"lpb{os.getpid() % 100000}")
    rate: str = "150mbit"
    subnet: int = 213  # 10.<subnet>.0.0/30
    up: bool = False

    @property
    def host_if(self) -> str:
        return f"{self.name}h"

    @property
    def ns_if(self) -> str:
        return f"{self.name}n"

    @property
    def host_ip(self) -> str:
        return f"10.{self.subnet}.0.1"

    @property
    def registry_ip(self) -> str:
        return f"10.{self.subnet}.0.2"

    def create(self) -> ShapedNet:
        self.destroy()
        _run("ip", "netns", "add", self.name)
        self.up = True
        atexit.register(self.destroy)
        _run("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
        _run("ip", "link", "set", self.ns_if, "netns", self.name)
        _run("ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
        _run("ip", "link", "set", self.host_if, "up")
        ns = ("ip", "netns", "exec", self.name)
        _run(*ns, "ip", "addr", "add", f"{self.registry_ip}/30", "dev", self.ns_if)
        _run(*ns, "ip", "link", "set", self.ns_if, "up")
        _run(*ns, "ip", "link", "set", "lo", "up")
        if self.rate and self.rate != "0":
            # Shape what the registry sends (egress of its interface): the node's download speed.
            _run(
                *ns,
                "tc",
                "qdisc",
                "add",
                "dev",
                self.ns_if,
                "root",
                "tbf",
                "rate",
                self.rate,
                "burst",
                "256kb",
                "latency",
                "100ms",
            )
        return self

    def destroy(self) -> None:
        """Idempotent: safe after a crash, a Ctrl-C or a second call."""
        _run("ip", "netns", "del", self.name, check=False)
        _run("ip", "link", "del", self.host_if, check=False)
        self.up = False

    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def rx_bytes(self) -> int:
        """Bytes the node has received from the registry so far."""
        return int(Path(f"/sys/class/net/{self.host_if}/statistics/rx_bytes").read_text())
