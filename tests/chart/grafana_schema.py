"""A strict JSON Schema for the part of Grafana's dashboard JSON model our dashboards use.

Grafana publishes its dashboard model as CUE/TypeScript (the "Dashboard JSON model" and
panel option docs, schemaVersion 39), not as a JSON Schema that installs offline, so this
module spells out the fields ``legacygpu.core.monitoring.grafana`` writes, with their
types and allowed values from that reference. Objects refuse unknown fields, so a
misspelt key fails the tests instead of being silently ignored by Grafana.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DASHBOARD_SCHEMA"]

_STR = {"type": "string"}
_BOOL = {"type": "boolean"}
_INT = {"type": "integer", "minimum": 0}
_DATASOURCE = {"type": "object", "properties": {"type": {"const": "prometheus"}, "uid": {"const": "${datasource}"}},
               "required": ["type", "uid"], "additionalProperties": False}  # fmt: skip


def _obj(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "additionalProperties": False,
            "required": required if required is not None else list(properties)}  # fmt: skip


_TARGET = _obj({"refId": {"type": "string", "pattern": "^[A-J]$"}, "datasource": _DATASOURCE,
                "expr": {"type": "string", "minLength": 1}, "legendFormat": _STR})  # fmt: skip
_UNITS = ["short", "s", "ops", "reqps", "bytes", "percentunit", "celsius", "watt", "hertz"]
_MAPPING = _obj({"type": {"const": "value"}, "options": {"type": "object", "additionalProperties": _obj(
    {"text": _STR, "index": _INT})}})
_DEFAULTS = _obj({
    "unit": {"enum": _UNITS},
    "mappings": {"type": "array", "items": _MAPPING},
    "custom": _obj({"fillOpacity": _INT, "lineWidth": _INT, "showPoints": {"enum": ["auto", "never", "always"]},
                    "stacking": _obj({"mode": {"enum": ["none", "normal", "percent"]}, "group": _STR})}),
}, ["unit"])
_TIMESERIES_OPTIONS = _obj({
    "legend": _obj({"displayMode": {"enum": ["list", "table", "hidden"]}, "placement": {"enum": ["bottom", "right"]},
                    "showLegend": _BOOL}),
    "tooltip": _obj({"mode": {"enum": ["single", "multi", "none"]}, "sort": {"enum": ["none", "asc", "desc"]}}),
})
_STAT_OPTIONS = _obj({
    "reduceOptions": _obj({"calcs": {"type": "array", "items": {"enum": ["lastNotNull", "last", "mean", "max"]}},
                           "fields": _STR, "values": _BOOL}),
    "colorMode": {"enum": ["value", "background", "none"]}, "graphMode": {"enum": ["area", "none"]},
    "textMode": {"enum": ["auto", "value", "value_and_name", "name", "none"]},
    "justifyMode": {"enum": ["auto", "center"]}, "orientation": {"enum": ["auto", "horizontal", "vertical"]},
})
_PANEL = _obj({
    "id": {"type": "integer", "minimum": 1},
    "type": {"enum": ["timeseries", "stat"]},
    "title": {"type": "string", "minLength": 1},
    "description": {"type": "string", "minLength": 1},
    "datasource": _DATASOURCE,
    "gridPos": _obj({"h": {"type": "integer", "minimum": 1}, "w": {"type": "integer", "minimum": 1, "maximum": 24},
                     "x": {"type": "integer", "minimum": 0, "maximum": 23}, "y": _INT}),
    "fieldConfig": _obj({"defaults": _DEFAULTS, "overrides": {"type": "array", "maxItems": 0}}),
    "options": {"oneOf": [_TIMESERIES_OPTIONS, _STAT_OPTIONS]},
    "targets": {"type": "array", "minItems": 1, "items": _TARGET},
})
_VARIABLE = {"oneOf": [
    _obj({"name": {"const": "datasource"}, "label": _STR, "type": {"const": "datasource"},
          "query": {"const": "prometheus"}, "refresh": {"enum": [1, 2]}, "hide": {"enum": [0, 1, 2]},
          "includeAll": _BOOL, "multi": _BOOL, "current": {"type": "object"}, "options": {"type": "array"}}),
    _obj({"name": {"type": "string", "pattern": "^[a-z][a-z_]*$"}, "label": _STR, "type": {"const": "query"},
          "datasource": _DATASOURCE, "definition": {"type": "string", "pattern": r"^label_values\("},
          "query": _obj({"query": {"type": "string", "pattern": r"^label_values\("}, "refId": _STR}),
          "refresh": {"enum": [1, 2]}, "sort": {"enum": [0, 1, 2, 3, 4, 5, 6, 7, 8]}, "includeAll": _BOOL,
          "multi": _BOOL, "hide": {"enum": [0, 1, 2]}, "current": {"type": "object"}, "options": {"type": "array"}}),
]}

DASHBOARD_SCHEMA: dict[str, Any] = _obj({
    "uid": {"type": "string", "pattern": "^[a-zA-Z0-9_-]{1,40}$"},
    "title": {"type": "string", "minLength": 1},
    "description": _STR,
    "tags": {"type": "array", "items": _STR},
    "editable": _BOOL,
    "graphTooltip": {"enum": [0, 1, 2]},
    "refresh": _STR,
    "schemaVersion": {"const": 39},
    "time": _obj({"from": _STR, "to": _STR}),
    "timezone": {"enum": ["browser", "utc", ""]},
    "version": _INT,
    "annotations": _obj({"list": {"type": "array"}}),
    "links": {"type": "array"},
    "templating": _obj({"list": {"type": "array", "items": _VARIABLE}}),
    "panels": {"type": "array", "minItems": 1, "items": _PANEL},
})
