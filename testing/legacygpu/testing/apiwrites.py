"""API writes counted by the API server itself: ``apiserver_request_total`` before and after.

The operator benchmark's e2e mode and the e2e writes-per-task test read the
kube-apiserver's own ``/metrics`` (as a client allowed ``get`` on the
``/metrics`` non-resource URL, e.g. the cluster admin) before and after a run,
and take the difference of the request counters by resource and verb. Every
write request counts, refused ones (409 conflicts, 422s) included: each one
cost the API server and etcd a round trip. Nothing is sampled or estimated;
the counters cover every client of that API server, so a run should be the
only thing writing while it is measured.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping

__all__ = ["WRITE_VERBS", "WriteCounts", "parse_request_totals", "per_task"]

WRITE_VERBS = frozenset({"POST", "PUT", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION"})
"""The request verbs (as the metric labels them) that change stored objects."""

_SAMPLE = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')

WriteCounts = Counter[tuple[str, str, str]]
"""Write requests by (resource, subresource, verb), e.g. ``("inferencetasks", "status", "PATCH")``."""


def parse_request_totals(text: str) -> WriteCounts:
    """The write requests in a Prometheus text exposition of the API server's metrics."""
    counts: WriteCounts = Counter()
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None:
            continue
        labels = dict(_LABEL.findall(match["labels"]))
        verb = labels.get("verb", "")
        if verb not in WRITE_VERBS:
            continue
        key = (labels.get("resource", ""), labels.get("subresource", ""), verb)
        counts[key] += int(float(match["value"]))
    return counts


def per_task(before: WriteCounts, after: WriteCounts, tasks: int) -> dict[str, object]:
    """The writes a run of ``tasks`` tasks cost, from two snapshots.

    ``task_writes_per_task`` is what the "at most 3 writes per successful task
    besides its creation" target is about: writes to InferenceTasks (status
    included), less the creates and the deletes (the two ends of a task's
    life, counted apart: a finished task's TTL deletion, or a namespace being
    emptied). Events cannot be told apart by namespace or subject here
    (``event_writes`` counts every Event written meanwhile, the cluster's and
    other namespaces' too): callers count the Events about their tasks from
    the Events themselves. The rest (pods, leases,
    the cluster's status, ConfigMaps) is reported by resource as overhead
    shared by all tasks.
    """
    delta = after - before
    by_resource: Counter[str] = Counter()
    for (resource, subresource, _), count in delta.items():
        by_resource[f"{resource}/{subresource}" if subresource else resource] += count
    task_creates = delta[("inferencetasks", "", "POST")]
    task_deletes = sum(c for (r, _, v), c in delta.items() if r == "inferencetasks" and v.startswith("DELETE"))
    task_writes = sum(c for (r, _, _), c in delta.items() if r == "inferencetasks") - task_creates - task_deletes
    events = sum(c for (r, _, v), c in delta.items() if r == "events" and not v.startswith("DELETE"))
    total = sum(delta.values())

    def ratio(count: int) -> float:
        return round(count / tasks, 3) if tasks else float("nan")

    return {
        "tasks": tasks,
        "task_creates": task_creates,
        "task_deletes": task_deletes,
        "task_writes_besides_create": task_writes,
        "event_writes": events,
        "task_writes_per_task": ratio(task_writes),
        "all_writes": total,
        "all_writes_per_task": ratio(total - task_creates),
        "by_resource": {k: v for k, v in sorted(by_resource.items()) if v},
        "by_verb": _by_verb(delta),
    }


def _by_verb(delta: Mapping[tuple[str, str, str], int]) -> dict[str, int]:
    return {f"{r}{'/' + s if s else ''} {v}": c for (r, s, v), c in sorted(delta.items()) if c}
