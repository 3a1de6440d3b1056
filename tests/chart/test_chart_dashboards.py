"""The Grafana dashboards: generated from code without drift, schema-valid, about exported series, shipped.

The committed ``charts/legacygpu/dashboards/*.json`` must equal what
``legacygpu.core.monitoring`` generates, validate against ``grafana_schema``, lay their
panels out without overlap, define every variable they use, and query only metric names
and labels the code exports (``exported_metrics``). tests/monitoring runs every query
against a live Prometheus.
"""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
import pytest

from legacygpu.core.monitoring import DASHBOARDS
from legacygpu.core.monitoring import render as render_dashboard

from .exported_metrics import problems_in
from .grafana_schema import DASHBOARD_SCHEMA
from .helmchart import CHART, render

FOLDER = CHART / "dashboards"
BUILTIN = {"__rate_interval", "__interval", "__range"}


def committed() -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(FOLDER.glob("*.json"))}


def test_committed_dashboards_match_the_code() -> None:
    assert sorted(p.stem for p in FOLDER.glob("*.json")) == sorted(DASHBOARDS), "a dashboard file is missing or extra"
    stale = [name for name in DASHBOARDS if (FOLDER / f"{name}.json").read_text() != render_dashboard(name)]
    assert stale == [], f"{stale} drifted from legacygpu.core.monitoring: run `python -m legacygpu.core.monitoring`"


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_dashboard_is_valid_and_well_formed(name: str) -> None:
    board = committed()[name]
    jsonschema.validate(board, DASHBOARD_SCHEMA)
    panels = board["panels"]
    assert [p["id"] for p in panels] == list(range(1, len(panels) + 1))
    cells: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, f"{p['title']} overlaps another panel"
        cells |= mine
    defined = {v["name"] for v in board["templating"]["list"]}
    for p in panels:
        for t in p["targets"]:
            used = set(re.findall(r"\$\{?([a-z_]+)", t["expr"]))
            assert used <= defined | BUILTIN, f"{p['title']} uses undefined variables {used - defined - BUILTIN}"
    assert len({board["uid"] for board in committed().values()}) == len(DASHBOARDS), "uids must be unique"


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_queries_use_only_exported_metrics_and_labels(name: str) -> None:
    board = committed()[name]
    queries = [(p["title"], t["expr"]) for p in board["panels"] for t in p["targets"]]
    queries += [(v["name"], v["query"]["query"]) for v in board["templating"]["list"] if v["type"] == "query"]
    problems = [p for title, expr in queries for p in problems_in(expr, f"{name}: {title}")]
    assert problems == []


def test_the_issue_asks_for_these_views() -> None:
    """Cluster overview, per-model, per-GPU and operator: each shows what it is for."""
    exprs = {name: " ".join(t["expr"] for p in b["panels"] for t in p["targets"]) for name, b in committed().items()}
    for metric in ("legacygpu_workers", "legacygpu_queue_depth", "legacygpu_tasks_finished_total",
                   "legacygpu_task_duration_seconds_bucket", "legacygpu_task_retries_total"):
        assert metric in exprs["cluster-overview"], metric
    for metric in ("legacygpu_task_queue_duration_seconds_bucket", "legacygpu_task_compute_duration_seconds_bucket"):
        assert metric in exprs["per-model"], metric
    for metric in ("legacygpu_gpu_busy_ratio", "legacygpu_gpu_vram_used_bytes", "legacygpu_gpu_temperature_celsius",
                   "legacygpu_gpu_power_watts", "legacygpu_gpu_healthy", "legacygpu_gpu_clock_hertz"):
        assert metric in exprs["per-gpu"], metric
    for metric in ("legacygpu_operator_reconcile_duration_seconds_count", "legacygpu_operator_reconcile_errors_total",
                   "legacygpu_operator_leader"):
        assert metric in exprs["operator"], metric


def test_chart_ships_each_dashboard_as_a_sidecar_configmap() -> None:
    assert not [d for d in render() if d["kind"] == "ConfigMap" and "dashboard" in d["metadata"]["name"]]
    docs = render({"metrics": {"grafanaDashboards": {"enabled": True, "annotations": {"grafana_folder": "GPU"}}}})
    maps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap" and "dashboard" in d["metadata"]["name"]}
    assert sorted(maps) == sorted(f"lg-legacygpu-dashboard-{n}" for n in DASHBOARDS)
    for name in DASHBOARDS:
        cm = maps[f"lg-legacygpu-dashboard-{name}"]
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert cm["metadata"]["annotations"] == {"grafana_folder": "GPU"}
        (content,) = cm["data"].values()
        assert json.loads(content) == committed()[name], "the ConfigMap carries the committed JSON unchanged"
