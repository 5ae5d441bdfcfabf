"""Every series the Grafana dashboard and the recording rules query is one the daemon
exports (or a recording rule made of such): a renamed or dropped metric fails here, not
as an empty panel on a node."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from prometheus_client.metrics_core import Metric

import lazypull.service.main  # noqa: F401 - the daemon's modules, with every series they register
from lazypull.service.metrics import LayerStatsCollector
from lazypull.snapshot.snapshotter import RemoteSettings, Snapshotter

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana-dashboard.json"
RULES = DEPLOY / "prometheus" / "lazypull-rules.yaml"

# PromQL words that look like series names but are not.
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset"}
KEYWORDS |= {"inf", "nan"}
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
}


def series_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals (label values, label_replace args)
    e = re.sub(r"\{[^}]*\}", " ", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", " ", e)  # range and subquery windows
    e = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)  # label lists
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        before = e[m.start() - 1] if m.start() else " "
        if before.isdigit() or before == ".":  # the exponent of a number (1e3)
            continue
        if e[m.end() :].lstrip().startswith("("):  # a function or aggregation
            continue
        if m.group().lower() not in KEYWORDS:
            names.add(m.group())
    return names


def dashboard_exprs(dashboard: dict) -> list[str]:
    out = []
    for panel in dashboard["panels"]:
        for inner in [panel, *panel.get("panels", [])]:  # rows may nest panels
            out += [t["expr"] for t in inner.get("targets", []) if t.get("expr")]
    return out


def recording_rules(text: str) -> dict[str, str]:
    """record name -> expr, from the rules file (one-line exprs, as it is written)."""
    return dict(re.findall(r"-\s*record:\s*(\S+)\s*\n\s*expr:\s*(.+)", text))


def _sample_names(families: Iterable[Metric]) -> set[str]:
    names = set()
    for fam in families:
        names.update(fam.name + s for s in SUFFIXES.get(fam.type, ("",)))
        names.update(s.name for s in fam.samples)
    return names


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """What a daemon's /metrics holds: the process-wide registry and the layer collector's families."""
    root = tmp_path_factory.mktemp("dash")
    sn = Snapshotter(root / "root", None, RemoteSettings(cache_dir=root / "cache", registry={}))
    sn.layers.server_stats = lambda: {}  # type: ignore[method-assign]  # no layer server: the families are there anyway
    try:
        return _sample_names(REGISTRY.collect()) | _sample_names(LayerStatsCollector(sn).collect())
    finally:
        sn.close()


def unknown_series(exprs: Iterable[str], exported: set[str], rules: dict[str, str]) -> set[str]:
    known = set(exported) | set(rules)
    return {name for e in exprs for name in series_names(e)} - known


def test_series_names_are_parsed_out_of_promql() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (host, le) (rate(a_bucket{op="read",x=~"b|c"}[5m]))) '
        "/ ignoring(le) group_left sum without (i) (b_total offset 1h) > 1e3 and on(host) c unless bool 2"
    )
    assert series_names(expr) == {"a_bucket", "b_total", "c"}
    assert series_names("sum(rate(x_total[5m])) by (reason)") == {"x_total"}
    assert series_names('label_replace(up, "a", "$1", "b", "(.*)")') == {"up"}


def test_recording_rules_are_made_of_exported_series(exported: set[str]) -> None:
    rules = recording_rules(RULES.read_text())
    assert len(rules) >= 3
    for name, expr in rules.items():
        assert series_names(expr), name
        assert not unknown_series([expr], exported, {}), (name, unknown_series([expr], exported, {}))


def test_every_dashboard_series_is_exported_or_recorded(exported: set[str]) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = dashboard_exprs(dashboard)
    rules = recording_rules(RULES.read_text())
    assert len(exprs) >= 12
    assert not unknown_series(exprs, exported, rules)
    used = {n for e in exprs for n in series_names(e)}
    for new in (
        "lazypull_fallback_total",
        "lazypull_fetch_duration_seconds_bucket",
        "lazypull_image_first_read_seconds_bucket",
        "lazypull_layer_first_read_seconds_bucket",
    ):
        assert new in used and new in exported, new
    # ... and a panel querying a series nobody exports is caught.
    bad = {"panels": [{"targets": [{"expr": "sum(rate(lazypull_no_such_series_total[5m]))"}]}]}
    assert unknown_series(dashboard_exprs(bad), exported, rules) == {"lazypull_no_such_series_total"}
