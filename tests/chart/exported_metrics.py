"""Every metric name and label the code exports, found by collecting the real registries.

The facade (:class:`legacygpu.api.metrics.Metrics`, with a snapshot holding one worker), the
operator (:class:`legacygpu.operator.metrics.OperatorMetrics`) and the node agent
(:class:`legacygpu.worker.nodeagent.metrics.GpuCollector`, with one fully read card) are
instantiated, every labelled metric gets one child, and the samples they then expose are the
exported names (``_bucket``/``_sum``/``_count`` and ``_total`` included) with their label
names. Alerts and dashboards may use only these, plus the labels Prometheus adds to every
series (:data:`TARGET_LABELS`).
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

__all__ = ["TARGET_LABELS", "exported", "metric_names", "problems_in"]

TARGET_LABELS = frozenset({"job", "instance", "node", "namespace", "pod"})
_NAME = re.compile(r"\blegacygpu_[a-z_]+\b")
_MATCHERS = re.compile(r"(legacygpu_[a-z_]+)\{([^}]*)\}")
_GROUPING = re.compile(r"\b(?:by|on|without|ignoring)\s*\(([^)]*)\)")


def _touch(registry: Any) -> None:
    for collector in list(registry._collector_to_names):
        names = getattr(collector, "_labelnames", ())
        if names and hasattr(collector, "labels"):
            collector.labels(*["x"] * len(names))


def _samples(registry: Any) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            out.setdefault(sample.name, set()).update(sample.labels)
    return out


@cache
def exported() -> dict[str, frozenset[str]]:
    """Sample name -> label names, across the facade, the operator and the node agent."""
    from legacygpu.api.metrics import Metrics
    from legacygpu.operator.metrics import OperatorMetrics
    from legacygpu.worker.nodeagent.health import CardStatus
    from legacygpu.worker.nodeagent.metrics import NodeAgentMetrics
    from legacygpu.worker.nodeagent.sysfs import CardInfo
    from legacygpu.worker.nodeagent.telemetry import GpuTelemetry

    facade = Metrics()
    _touch(facade.registry)
    facade.watch(lambda: {
        "tasks_by_phase": {"Queued": 1}, "workers_by_state": {"active": 1},
        "workers": [{"name": "w", "state": "active", "assigned": 1, "stats": {"memory_rss_bytes": 1},
                     "device": {"name": "d", "vram_mib": 1}}],
    })
    operator = OperatorMetrics()
    _touch(operator.registry)
    card = CardInfo(pci_address="0000:01:00.0", render_node="renderD128", render_minor=128, vendor_id=0x1002,
                    device_id=0x67DF, vram_bytes=1, temperature_c=1.0,
                    telemetry=GpuTelemetry(0.5, 1, 1.0, 1.0, 1.0))
    agent = NodeAgentMetrics(lambda: {card.pci_address: CardStatus(card, present=True, healthy=True)}, lambda: 1)
    found: dict[str, set[str]] = {}
    for registry in (facade.registry, operator.registry, agent.registry):
        for name, labels in _samples(registry).items():
            found.setdefault(name, set()).update(labels)
    return {name: frozenset(labels) for name, labels in found.items()}


def metric_names(expr: str) -> list[str]:
    return _NAME.findall(expr)


def problems_in(expr: str, where: str) -> list[str]:
    """What in a PromQL expression names a metric or label the code does not export."""
    known = exported()
    problems = []
    names = metric_names(expr)
    for name in names:
        if name not in known:
            problems.append(f"{where}: {name} is not exported")
    labels_of_names = set().union(*(known.get(n, frozenset()) for n in names)) | TARGET_LABELS | {"le"}
    for group in _GROUPING.findall(expr):
        for label in (g.strip() for g in group.split(",")):
            if label and label not in labels_of_names:
                problems.append(f"{where}: groups by {label!r}, which none of {names} carries")
    for name, matchers in _MATCHERS.findall(expr):
        for label in re.findall(r"([a-zA-Z_]+)\s*(?:=~|!=|!~|=)", matchers):
            if label not in TARGET_LABELS and label not in known.get(name, frozenset()):
                problems.append(f"{where}: {name} has no label {label!r}")
    return problems
