"""A strict JSON Schema for the part of the prometheus-operator API the chart uses.

kubernetes-validate has no schema for ``monitoring.coreos.com`` kinds and no offline copy
of the prometheus-operator CRDs is installable here without side effects, so this module
spells out the fields the chart's ServiceMonitor and PrometheusRule templates use, with
their types, from the prometheus-operator API reference (``monitoring.coreos.com/v1``:
ServiceMonitorSpec, Endpoint, SafeAuthorization, PodMonitorSpec, PodMetricsEndpoint,
RelabelConfig, PrometheusRuleSpec, RuleGroup, Rule).
Every object refuses unknown fields, so a misspelt field in a template fails the tests.
The rendered objects were also checked once by a round trip through the
``cloudcoil-models-prometheus-operator`` 0.80 models (not kept: its pytest plugin breaks
the shared test run).
"""

from __future__ import annotations

from typing import Any

__all__ = ["MONITORING_SCHEMAS"]

_STR = {"type": "string"}
_DURATION = {
    "type": "string",
    "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
}
_LABELS = {"type": "object", "additionalProperties": _STR}


def _obj(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "additionalProperties": False, "required": required or []}


_META = {
    "type": "object",
    "required": ["name", "namespace"],
    "properties": {"name": _STR, "namespace": _STR, "labels": _LABELS, "annotations": _LABELS},
    "additionalProperties": False,
}
_SELECTOR = _obj({"matchLabels": _LABELS})
_ENDPOINT = _obj({
    "port": _STR, "path": _STR, "interval": _DURATION, "scrapeTimeout": _DURATION, "honorLabels": {"type": "boolean"},
    "authorization": _obj({"type": _STR, "credentials": _obj({"name": _STR, "key": _STR}, ["key"])}),
}, ["port"])  # fmt: skip
_RELABEL = _obj({
    "sourceLabels": {"type": "array", "items": _STR}, "separator": _STR, "targetLabel": _STR, "regex": _STR,
    "modulus": {"type": "integer"}, "replacement": _STR,
    "action": {"enum": ["replace", "Replace", "keep", "Keep", "drop", "Drop", "hashmod", "HashMod", "labelmap",
                        "LabelMap", "labeldrop", "LabelDrop", "labelkeep", "LabelKeep", "lowercase", "Lowercase",
                        "uppercase", "Uppercase", "keepequal", "KeepEqual", "dropequal", "DropEqual"]},
})
_POD_ENDPOINT = _obj({
    "port": _STR, "path": _STR, "interval": _DURATION, "scrapeTimeout": _DURATION, "honorLabels": {"type": "boolean"},
    "relabelings": {"type": "array", "items": _RELABEL},
}, ["port"])
_RULE = _obj({"alert": _STR, "record": _STR, "expr": _STR, "for": _DURATION, "labels": _LABELS,
              "annotations": _LABELS}, ["expr"])  # fmt: skip

MONITORING_SCHEMAS: dict[str, dict[str, Any]] = {
    "ServiceMonitor": _obj({
        "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "ServiceMonitor"}, "metadata": _META,
        "spec": _obj({
            "jobLabel": _STR,
            "namespaceSelector": _obj({"any": {"type": "boolean"}, "matchNames": {"type": "array", "items": _STR}}),
            "selector": _SELECTOR,
            "endpoints": {"type": "array", "minItems": 1, "items": _ENDPOINT},
        }, ["selector", "endpoints"]),
    }, ["apiVersion", "kind", "metadata", "spec"]),
    "PodMonitor": _obj({
        "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "PodMonitor"}, "metadata": _META,
        "spec": _obj({
            "jobLabel": _STR,
            "namespaceSelector": _obj({"any": {"type": "boolean"}, "matchNames": {"type": "array", "items": _STR}}),
            "selector": _SELECTOR,
            "podMetricsEndpoints": {"type": "array", "minItems": 1, "items": _POD_ENDPOINT},
        }, ["selector", "podMetricsEndpoints"]),
    }, ["apiVersion", "kind", "metadata", "spec"]),
    "PrometheusRule": _obj({
        "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "PrometheusRule"}, "metadata": _META,
        "spec": _obj({"groups": {"type": "array", "items": _obj({
            "name": _STR, "interval": _DURATION, "rules": {"type": "array", "items": _RULE},
        }, ["name", "rules"])}}, ["groups"]),
    }, ["apiVersion", "kind", "metadata", "spec"]),
}
