"""Read-only views of the local cluster's store: workers as the API shows them, counts for metrics, the summary.

Kept apart from the coordinator (:mod:`.backend`), which calls them on its
database thread: nothing here writes, and nothing here decides anything.
"""

from __future__ import annotations

from typing import Any

from legacygpu.api.backends.local.store import Store
from legacygpu.api.backends.records import percentile, utc
from legacygpu.api.schemas import DeviceInfoPublic, WorkerPublic
from legacygpu.core.tasks import Phase

__all__ = ["snapshot", "summary", "worker_public"]

_WINDOW_SECONDS = 60.0
"""Throughput counts the tasks that finished in the last minute."""
_LATENCY_WINDOW_SECONDS = 300
"""Latency percentiles cover the tasks that finished in the last five minutes."""


def worker_public(worker: dict[str, Any], counts: dict[str, int]) -> WorkerPublic:
    """A worker row as the API shows it; ``counts`` are the tasks assigned to each worker id."""
    return WorkerPublic(
        id=worker["id"],
        name=worker["name"],
        host=worker["host"],
        pid=worker["pid"],
        state=worker["state"],
        device=DeviceInfoPublic(**worker["device"]),
        concurrency=worker["concurrency"],
        assigned=counts.get(worker["id"], 0),
        registered_at=utc(worker["registered_at"]),
        last_heartbeat=utc(worker["last_heartbeat"]),
        tasks_succeeded=worker["tasks_succeeded"],
        tasks_failed=worker["tasks_failed"],
        stats=worker["stats"],
    )


def snapshot(store: Store) -> dict[str, Any]:
    """Counts for the metrics collector (synchronous, cheap)."""
    workers = store.list_workers()
    counts = store.assigned_counts()
    by_state: dict[str, int] = {state: 0 for state in ("active", "draining", "stopped", "lost")}
    for w in workers:
        by_state[w["state"]] = by_state.get(w["state"], 0) + 1
    phases = {str(p): 0 for p in Phase}
    phases.update(store.phase_counts())
    return {
        "tasks_by_phase": phases,
        "workers_by_state": by_state,
        "workers": [{**w, "assigned": counts.get(w["id"], 0)} for w in workers],
    }


def summary(store: Store, backend: str, now: float) -> dict[str, Any]:
    """Tasks by phase, workers by state, throughput (last minute) and latency percentiles (last five)."""
    snap = snapshot(store)
    recent = store.recent_finished(now - _LATENCY_WINDOW_SECONDS)
    succeeded = [t for t in recent if t["phase"] == Phase.SUCCEEDED]
    last_minute = [t for t in succeeded if t["finished_at"] >= now - _WINDOW_SECONDS]
    latencies = [t["latency_ms"] for t in succeeded if t["latency_ms"] is not None]
    compute = [t["compute_ms"] for t in succeeded if t["compute_ms"] is not None]
    return {
        "backend": backend,
        "tasks_by_phase": snap["tasks_by_phase"],
        "workers_by_state": snap["workers_by_state"],
        "queue_depth": snap["tasks_by_phase"].get("Queued", 0),
        "throughput_per_second": len(last_minute) / _WINDOW_SECONDS,
        "latency_ms": {f"p{q}": percentile(latencies, q) for q in (50, 90, 99)},
        "compute_ms": {f"p{q}": percentile(compute, q) for q in (50, 90, 99)},
        "window_seconds": {"throughput": _WINDOW_SECONDS, "latency": _LATENCY_WINDOW_SECONDS},
    }
