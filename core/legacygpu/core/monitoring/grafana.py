"""A small builder for Grafana dashboard JSON (schemaVersion 39), enough for our four dashboards.

Design: plain dictionaries in Grafana's dashboard JSON model, built by a few functions
(:func:`target`, :func:`timeseries`, :func:`stat`, :func:`query_variable`) and laid
out by :func:`dashboard`, which numbers the panels and places them left to right in
rows of 24 grid units. Every panel reads from the ``datasource`` template variable,
so the dashboards work with whatever Prometheus data source a Grafana has. No
dependency: grafana-foundation-sdk would add a package for what is a handful of
fields here; tests/chart checks the output against a strict schema of the fields we
use instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["DATASOURCE", "Panel", "dashboard", "query_variable", "stat", "target", "timeseries"]

SCHEMA_VERSION = 39
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
_REF_IDS = "ABCDEFGHIJ"


def target(expr: str, legend: str = "__auto") -> dict[str, Any]:
    """One PromQL query of a panel (its refId is set by the panel)."""
    return {"expr": expr, "legendFormat": legend}


@dataclass
class Panel:
    """A panel before layout: its JSON less id and position, and its width in grid units."""

    body: dict[str, Any]
    width: int = 12
    height: int = 8
    targets: list[dict[str, Any]] = field(default_factory=list)


def _panel(kind: str, title: str, description: str, targets: list[dict[str, Any]], unit: str,
           width: int, height: int, options: dict[str, Any], defaults: dict[str, Any]) -> Panel:
    refs = [{"refId": _REF_IDS[i], "datasource": DATASOURCE, **t} for i, t in enumerate(targets)]
    body = {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "fieldConfig": {"defaults": {"unit": unit, **defaults}, "overrides": []},
        "options": options,
        "targets": refs,
    }
    return Panel(body, width, height, refs)


def timeseries(title: str, description: str, targets: list[dict[str, Any]], *, unit: str = "short",
               width: int = 12, height: int = 8, stack: bool = False) -> Panel:
    defaults: dict[str, Any] = {"custom": {"fillOpacity": 10, "lineWidth": 1, "showPoints": "never",
                                           "stacking": {"mode": "normal" if stack else "none", "group": "A"}}}
    options = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
               "tooltip": {"mode": "multi", "sort": "desc"}}
    return _panel("timeseries", title, description, targets, unit, width, height, options, defaults)


def stat(title: str, description: str, expr: str, *, unit: str = "short", width: int = 6, height: int = 4,
         mappings: dict[str, str] | None = None) -> Panel:
    defaults: dict[str, Any] = {}
    if mappings:
        defaults["mappings"] = [{"type": "value", "options": {
            value: {"text": text, "index": i} for i, (value, text) in enumerate(mappings.items())}}]
    options = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
               "colorMode": "value", "graphMode": "area", "textMode": "auto", "justifyMode": "auto",
               "orientation": "auto"}
    return _panel("stat", title, description, [target(expr, title)], unit, width, height, options, defaults)


def query_variable(name: str, label: str, query: str) -> dict[str, Any]:
    """A single-value variable filled from ``label_values(...)``."""
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "definition": query,
        "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "refresh": 2,
        "sort": 1,
        "includeAll": False,
        "multi": False,
        "hide": 0,
        "current": {},
        "options": [],
    }


_DATASOURCE_VARIABLE = {
    "name": "datasource",
    "label": "Data source",
    "type": "datasource",
    "query": "prometheus",
    "refresh": 1,
    "hide": 0,
    "includeAll": False,
    "multi": False,
    "current": {},
    "options": [],
}


def dashboard(uid: str, title: str, description: str, panels: list[Panel],
              variables: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The dashboard JSON: panels numbered from 1 and flowed into rows 24 units wide."""
    laid_out: list[dict[str, Any]] = []
    x = y = row_height = 0
    for number, panel in enumerate(panels, start=1):
        if x + panel.width > 24:
            x, y, row_height = 0, y + row_height, 0
        laid_out.append({"id": number, "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
                         **panel.body})
        x += panel.width
        row_height = max(row_height, panel.height)
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["legacygpu"],
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": SCHEMA_VERSION,
        "time": {"from": "now-1h", "to": "now"},
        "timezone": "browser",
        "version": 1,
        "annotations": {"list": []},
        "links": [],
        "templating": {"list": [_DATASOURCE_VARIABLE, *(variables or [])]},
        "panels": laid_out,
    }
