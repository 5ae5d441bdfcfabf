"""Benchmark output: one CSV row per run, a markdown table of medians, a stacked-bar chart."""

from __future__ import annotations

import csv
import statistics
from collections.abc import Iterable
from pathlib import Path
from typing import TypedDict

from lazypull.bench.runner import RunResult

COLUMNS = ["image", "mode", "run", "pull_s", "create_s", "run_s", "total_s", "bytes"]


def write_csv(results: Iterable[RunResult], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for r in results:
            w.writerow(
                [
                    r.image,
                    r.mode,
                    r.run,
                    f"{r.pull_s:.3f}",
                    f"{r.create_s:.3f}",
                    f"{r.run_s:.3f}",
                    f"{r.total_s:.3f}",
                    r.bytes,
                ]
            )


def read_csv(path: Path) -> list[RunResult]:
    with open(path, newline="") as f:
        return [
            RunResult(
                row["image"],
                row["mode"],
                int(row["run"]),
                float(row["pull_s"]),
                float(row["create_s"]),
                float(row["run_s"]),
                int(row["bytes"]),
            )
            for row in csv.DictReader(f)
        ]


class Summary(TypedDict):
    """One image and mode's row: medians of its runs (seconds; MB fetched)."""

    image: str
    mode: str
    runs: int
    pull_s: float
    create_s: float
    run_s: float
    total_s: float
    min_s: float
    max_s: float
    mb: float


def summarize(results: list[RunResult]) -> list[Summary]:
    """Medians (and min/max of total) per image and mode, in first-seen order."""
    groups: dict[tuple[str, str], list[RunResult]] = {}
    for r in results:
        groups.setdefault((r.image, r.mode), []).append(r)
    rows: list[Summary] = []
    for (image, mode), rs in groups.items():
        totals = [r.total_s for r in rs]
        rows.append(
            {
                "image": image,
                "mode": mode,
                "runs": len(rs),
                "pull_s": statistics.median(r.pull_s for r in rs),
                "create_s": statistics.median(r.create_s for r in rs),
                "run_s": statistics.median(r.run_s for r in rs),
                "total_s": statistics.median(totals),
                "min_s": min(totals),
                "max_s": max(totals),
                "mb": statistics.median(r.bytes for r in rs) / 1e6,
            }
        )
    return rows


def markdown(results: list[RunResult]) -> str:
    lines = [
        "| image | mode | runs | pull s | create s | run s | total s (min-max) | MB fetched |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in summarize(results):
        lines.append(
            f"| {s['image']} | {s['mode']} | {s['runs']} | {s['pull_s']:.2f} | {s['create_s']:.2f} | "
            f"{s['run_s']:.2f} | {s['total_s']:.2f} ({s['min_s']:.2f}-{s['max_s']:.2f}) | {s['mb']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def chart(results: list[RunResult], path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summarize(results)
    labels = [f"{r['image']}\n{r['mode']}" for r in rows]
    pull = [float(r["pull_s"]) for r in rows]
    create = [float(r["create_s"]) for r in rows]
    run = [float(r["run_s"]) for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(rows)), 4.5))
    x = range(len(rows))
    ax.bar(x, pull, label="pull", color="#4e79a7")
    ax.bar(x, create, bottom=pull, label="create", color="#f28e2b")
    ax.bar(x, run, bottom=[p + c for p, c in zip(pull, create, strict=True)], label="run", color="#59a14f")
    for i, r in enumerate(rows):
        ax.text(
            i,
            float(r["total_s"]) * 1.01,
            f"{float(r['total_s']):.1f}s\n{float(r['mb']):.{1 if float(r['mb']) < 10 else 0}f} MB",
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_xticks(list(x), labels, fontsize=8)
    ax.set_ylabel("seconds (median)")
    ax.set_title(title or "time to start: pull + create + run")
    ax.legend()
    ax.margins(y=0.2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
