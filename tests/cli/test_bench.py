"""``lazypull bench`` without matplotlib (an extra): the tables are written and one line
says how to get the chart, instead of a traceback after the whole benchmark ran."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from lazypull.bench.report import write_csv
from lazypull.bench.runner import RunResult

RESULTS = [
    RunResult("python", "overlayfs", 1, 4.0, 0.1, 0.4, 80_000_000),
    RunResult("python", "lazypull", 1, 0.5, 0.05, 0.2, 1_500_000),
]
# matplotlib made unimportable, as in an install without the bench extra.
WITHOUT_MATPLOTLIB = (
    "import sys; sys.modules['matplotlib'] = None; from lazypull.cli.main import main; sys.exit(main(sys.argv[1:]))"
)


def test_report_without_matplotlib_writes_the_tables_and_says_how_to_get_the_chart(tmp_path: Path) -> None:
    write_csv(RESULTS, tmp_path / "results.csv")
    res = subprocess.run(
        [sys.executable, "-c", WITHOUT_MATPLOTLIB, "bench", "--report-only", str(tmp_path / "results.csv")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    assert "| python | lazypull | 1 |" in (tmp_path / "results.md").read_text()
    assert not (tmp_path / "chart.png").exists()
    (line,) = [x for x in res.stderr.splitlines() if "chart" in x]
    assert "matplotlib is not installed" in line and "lazypull[bench]" in line
    assert res.stdout.rstrip().endswith("(results.csv, results.md)")
