"""The benchmark harness's own logic: results files, summaries, chart, network teardown."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lazypull.bench.netns import ShapedNet
from lazypull.bench.report import chart, markdown, read_csv, summarize, write_csv
from lazypull.bench.runner import RunResult
from lazypull.cli.main import main

RESULTS = [
    RunResult("seed-large", "overlayfs", 1, 40.0, 0.1, 0.4, 800_000_000),
    RunResult("seed-large", "overlayfs", 2, 50.0, 0.1, 0.4, 800_000_100),
    RunResult("seed-large", "overlayfs", 3, 45.0, 0.2, 0.3, 800_000_050),
    RunResult("seed-large", "lazypull", 1, 0.5, 0.05, 0.2, 1_500_000),
    RunResult("seed-large", "lazypull", 2, 0.7, 0.05, 0.2, 1_700_000),
]


def test_csv_roundtrip_and_columns(tmp_path: Path) -> None:
    write_csv(RESULTS, tmp_path / "results.csv")
    header = (tmp_path / "results.csv").read_text().splitlines()[0]
    assert header == "image,mode,run,pull_s,create_s,run_s,total_s,bytes"
    back = read_csv(tmp_path / "results.csv")
    assert [(r.image, r.mode, r.run, r.bytes) for r in back] == [(r.image, r.mode, r.run, r.bytes) for r in RESULTS]
    assert back[0].total_s == pytest.approx(40.5)


def test_summary_uses_medians_and_min_max() -> None:
    rows = summarize(RESULTS)
    full = rows[0]
    assert full["mode"] == "overlayfs" and full["runs"] == 3
    assert full["pull_s"] == 45.0 and full["min_s"] == pytest.approx(40.5) and full["max_s"] == pytest.approx(50.5)
    assert rows[1]["mb"] == pytest.approx(1.6)
    table = markdown(RESULTS)
    assert "| seed-large | lazypull | 2 | 0.60 |" in table


def test_chart_is_a_png(tmp_path: Path) -> None:
    chart(RESULTS, tmp_path / "c.png")
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_only_cli(tmp_path: Path) -> None:
    write_csv(RESULTS, tmp_path / "results.csv")
    assert main(["bench", "--report-only", str(tmp_path / "results.csv")]) == 0
    assert (tmp_path / "results.md").exists() and (tmp_path / "chart.png").exists()


@pytest.mark.e2e
def test_shaped_namespace_counts_bytes_and_tears_down() -> None:
    net = ShapedNet(name=f"lpt{os.getpid() % 10000}", rate="50mbit", subnet=214).create()
    try:
        srv = subprocess.Popen(
            [
                *net.exec_prefix(),
                sys.executable,
                "-c",
                "import socket;s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);"
                f"s.bind(('{net.registry_ip}',9999));s.listen();c,_=s.accept();"
                "c.sendall(b'x'*2_000_000);c.close()",
            ]
        )
        before = net.rx_bytes()
        data = b""
        deadline = time.monotonic() + 60  # an interpreter starting on a busy machine
        while True:
            try:
                with socket.create_connection((net.registry_ip, 9999), timeout=5) as c:
                    while chunk := c.recv(65536):
                        data += chunk
                break
            except ConnectionRefusedError:
                assert srv.poll() is None and time.monotonic() < deadline, "the sender never listened"
                threading.Event().wait(0.1)
        srv.wait(30)
        assert len(data) == 2_000_000
        assert 2_000_000 <= net.rx_bytes() - before < 2_300_000
    finally:
        net.destroy()
        net.destroy()  # idempotent
    links = subprocess.run(["ip", "link"], capture_output=True, text=True).stdout
    assert net.host_if not in links
    assert net.name not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def test_delay_proxy_adds_latency_and_relays_bytes() -> None:
    import time

    from lazypull.bench.delayproxy import DelayProxy

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    port = srv.getsockname()[1]

    def echo() -> None:
        c, _ = srv.accept()
        while data := c.recv(65536):
            c.sendall(data)
        c.close()

    threading.Thread(target=echo, daemon=True).start()
    proxy = DelayProxy("127.0.0.1", ("127.0.0.1", port), rtt_ms=100).start()
    try:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as c:
            t0 = time.monotonic()
            c.sendall(b"ping" * 1000)
            got = b""
            while len(got) < 4000:
                got += c.recv(65536)
            rtt = time.monotonic() - t0
        assert got == b"ping" * 1000
        assert 0.09 <= rtt < 2.0  # 50 ms there, 50 ms back (generous upper bound: shared CPUs)
    finally:
        proxy.stop()
        srv.close()
