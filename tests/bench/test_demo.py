"""The demo says what it is about to do and what each phase does as it starts (the demo
itself runs for minutes: only its words are checked here)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from lazypull.bench.demo import explain, plan

ROOT = Path(__file__).resolve().parents[2]


def test_plan_names_the_phases_the_workload_and_background_fetch_off() -> None:
    text = "\n".join(plan(0.1, "150mbit", background_fetch=False))
    assert "sh -c 'echo ready'" in text and "'ready'" in text
    assert "~100 MB of data" in text
    for phase in ("build the image", "convert it to eStargz", "full pull", "lazy pull"):
        assert phase in text, text
    assert "background fetch is off" in text


def test_each_phase_is_explained_as_it_starts() -> None:
    said = {
        "[images] building seed-large (scale 1)": "debootstrap",
        "[images] converting seed-large to eStargz": "eStargz",
        "[run] seed-large   overlayfs     #1: pulling and starting the container": "full pull",
        "[run] seed-large   lazypull      #1: pulling and starting the container": "lazy pull",
    }
    for msg, word in said.items():
        assert word in (explain(msg, "150mbit") or ""), msg
    assert explain("[images] converted in 3.0s", "150mbit") is None


def test_demo_script_parses() -> None:
    assert subprocess.run(["bash", "-n", str(ROOT / "demo.sh")]).returncode == 0
