"""Scheduling strategies: which worker gets a task.

Written once for both backends. The local coordinator builds
:class:`WorkerInfo` from SQLite rows, the operator from worker pods and their
reported stats; both hand the candidates to the strategy named by the cluster
(``spec.schedulingStrategy`` in Kubernetes, ``--strategy`` locally).

Every strategy first drops workers that cannot take the task at all
(:func:`eligible`: not accepting work, full, or short of the task's
requirements) and then ranks what is left. A strategy returns ``None`` when
no worker can take the task now; the task then stays queued.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = [
    "LATENCY_SMOOTHING",
    "PREFETCH_COVER_MS",
    "STRATEGIES",
    "AdaptiveStrategy",
    "CapabilityMatchStrategy",
    "LeastLoadedStrategy",
    "Requirements",
    "RoundRobinStrategy",
    "Strategy",
    "WorkerInfo",
    "WorkerStats",
    "cold",
    "eligible",
    "make_strategy",
    "prefetch",
]


@dataclass(frozen=True)
class Requirements:
    """What a task needs from the worker that runs it."""

    min_vram_mib: int = 0
    gpu_family: str | None = None
    model: str | None = None


@dataclass(frozen=True)
class WorkerInfo:
    """A scheduler's view of one worker."""

    id: str
    accepting: bool = True
    assigned: int = 0
    """Tasks scheduled to or running on this worker."""
    capacity: int = 1
    """How many tasks the worker holds at once (running plus prefetched); the most, for its fastest model."""
    model_capacity: Mapping[str, int] = field(default_factory=dict)
    """Lower capacities for tasks of these models (longer ones): such a task is placed only while the worker
    holds fewer tasks than this, so what a worker holds stays bounded in time whatever mix of models it ran."""
    default_capacity: int | None = None
    """Capacity for a task of a model not in :attr:`model_capacity` (its time here unknown); None: :attr:`capacity`."""
    vram_mib: int = 0
    gpu_family: str | None = None
    recent_latency_ms: float | None = None
    """Moving average of recent task latency; None before the first task."""
    models: frozenset[str] = field(default_factory=frozenset)
    """Models known to be loadable here; empty means any model in the repository."""
    warm_models: frozenset[str] = field(default_factory=frozenset)
    """Models already loaded here (from :class:`WorkerStats`): preferred among equals, never required."""

    def capacity_for(self, model: str | None) -> int:
        """How many tasks the worker may hold for one more task of ``model`` to be placed on it."""
        if model and model in self.model_capacity:
            return self.model_capacity[model]
        return self.capacity if self.default_capacity is None else self.default_capacity

    @property
    def load(self) -> float:
        return self.assigned / self.capacity if self.capacity > 0 else 1.0


LATENCY_SMOOTHING = 0.3
"""Weight of the newest task in a worker's moving latency average."""

PREFETCH_COVER_MS = 25.0
"""How long the tasks a worker holds should keep it busy: longer than its report of a finished task and the
coordinator's next push take under load, so a worker of short tasks never waits for that round trip."""


def prefetch(recent_latency_ms: float | None, *, floor: int, cap: int) -> int:
    """Tasks a worker may hold per slot: enough for :data:`PREFETCH_COVER_MS` of work at its recent task time.

    At least ``floor`` (also while its time is unknown) and at most ``cap``: a worker of one-second tasks
    holds ``floor``, one of 0.1 ms tasks ``cap``. What a worker holds is so bounded in time rather than in
    count: a task of a higher priority, a worker that joins, a drain wait about as long for either.
    """
    if not recent_latency_ms or recent_latency_ms <= 0:
        return floor
    return max(floor, min(cap, math.ceil(PREFETCH_COVER_MS / recent_latency_ms)))


@dataclass(frozen=True)
class WorkerStats:
    """What a worker says about its own work: one type, two wire spellings.

    Local workers send it in heartbeats with snake_case keys
    (:meth:`to_local`); worker pods publish it as a camelCase JSON annotation
    (:meth:`to_annotation`). Both backends read it back the same way and turn
    it into the scheduler's :class:`WorkerInfo` with :meth:`worker_info`, so
    the models a worker has loaded reach :func:`eligible` on both.
    """

    completed: int = 0
    failed: int = 0
    recent_latency_ms: float | None = None
    """Moving average of the model time of recent successful tasks."""
    models: tuple[str, ...] = ()

    def observe(self, *, ok: bool, latency_ms: float | None) -> WorkerStats:
        """The stats after one more finished task."""
        average = self.recent_latency_ms
        if ok and latency_ms is not None:
            average = latency_ms if average is None else average + LATENCY_SMOOTHING * (latency_ms - average)
        return WorkerStats(
            completed=self.completed + int(ok), failed=self.failed + int(not ok),
            recent_latency_ms=average, models=self.models,
        )

    def to_local(self) -> dict[str, Any]:
        return {
            "tasks_succeeded": self.completed, "tasks_failed": self.failed,
            "recent_latency_ms": self.recent_latency_ms, "models_loaded": list(self.models),
        }

    @classmethod
    def from_local(cls, raw: Mapping[str, Any]) -> WorkerStats:
        return cls(
            completed=int(raw.get("tasks_succeeded") or 0), failed=int(raw.get("tasks_failed") or 0),
            recent_latency_ms=raw.get("recent_latency_ms"), models=tuple(raw.get("models_loaded") or ()),
        )

    def to_annotation(self) -> dict[str, Any]:
        out: dict[str, Any] = {"completed": self.completed, "failed": self.failed, "models": list(self.models)}
        if self.recent_latency_ms is not None:
            out["recentLatencyMs"] = round(self.recent_latency_ms, 3)
        return out

    @classmethod
    def from_annotation(cls, raw: Mapping[str, Any]) -> WorkerStats:
        return cls(
            completed=int(raw.get("completed") or 0), failed=int(raw.get("failed") or 0),
            recent_latency_ms=raw.get("recentLatencyMs"), models=tuple(raw.get("models") or ()),
        )

    def worker_info(
        self, id: str, *, assigned: int, capacity: int, vram_mib: int = 0, gpu_family: str | None = None,
        accepting: bool = True, model_capacity: Mapping[str, int] | None = None, default_capacity: int | None = None,
    ) -> WorkerInfo:
        """The scheduler's view of the worker these stats describe."""
        return WorkerInfo(
            id=id, accepting=accepting, assigned=assigned, capacity=capacity, vram_mib=vram_mib,
            gpu_family=gpu_family, recent_latency_ms=self.recent_latency_ms, warm_models=frozenset(self.models),
            model_capacity=model_capacity or {}, default_capacity=default_capacity,
        )


def cold(worker: WorkerInfo, needs: Requirements) -> bool:
    """True when the task's model is not loaded on ``worker`` yet (a tie-breaker: warm workers first)."""
    return bool(needs.model) and needs.model not in worker.warm_models


def eligible(worker: WorkerInfo, needs: Requirements) -> bool:
    """Whether ``worker`` could take a task with ``needs`` right now."""
    if not worker.accepting or worker.assigned >= worker.capacity_for(needs.model):
        return False
    if needs.min_vram_mib and worker.vram_mib < needs.min_vram_mib:
        return False
    if needs.gpu_family and (worker.gpu_family or "").lower() != needs.gpu_family.lower():
        return False
    return not (needs.model and worker.models and needs.model not in worker.models)


class Strategy(Protocol):
    """Picks a worker for a task among candidates; ``None`` if none can take it."""

    name: str

    def pick(self, needs: Requirements, workers: Sequence[WorkerInfo]) -> WorkerInfo | None: ...


class RoundRobinStrategy:
    """Takes eligible workers in turn, by id order, remembering where it stopped."""

    name = "round-robin"

    def __init__(self) -> None:
        self._last: str | None = None

    def pick(self, needs: Requirements, workers: Sequence[WorkerInfo]) -> WorkerInfo | None:
        candidates = sorted((w for w in workers if eligible(w, needs)), key=lambda w: w.id)
        if not candidates:
            return None
        after = [w for w in candidates if self._last is not None and w.id > self._last]
        chosen = after[0] if after else candidates[0]
        self._last = chosen.id
        return chosen


class LeastLoadedStrategy:
    """Takes the eligible worker with the smallest share of its capacity in use."""

    name = "least-loaded"

    def pick(self, needs: Requirements, workers: Sequence[WorkerInfo]) -> WorkerInfo | None:
        candidates = [w for w in workers if eligible(w, needs)]
        return min(candidates, key=lambda w: (w.load, w.assigned, cold(w, needs), w.id), default=None)


class CapabilityMatchStrategy:
    """Best fit: the eligible worker with the least VRAM that still meets the task.

    Keeps the big cards free for the tasks that need them; ties go to the
    least loaded worker.
    """

    name = "capability-match"

    def pick(self, needs: Requirements, workers: Sequence[WorkerInfo]) -> WorkerInfo | None:
        candidates = [w for w in workers if eligible(w, needs)]
        return min(candidates, key=lambda w: (w.vram_mib, w.load, cold(w, needs), w.id), default=None)


class AdaptiveStrategy:
    """Lowest expected wait: recent latency scaled by how busy the worker is.

    The score is ``latency * (1 + assigned)``: a worker twice as fast may hold
    twice the queue before a slower one is preferred. A worker with no
    latency yet is scored with the mean of the others so new workers get
    tried rather than starved.
    """

    name = "adaptive"

    def pick(self, needs: Requirements, workers: Sequence[WorkerInfo]) -> WorkerInfo | None:
        candidates = [w for w in workers if eligible(w, needs)]
        if not candidates:
            return None
        known = [w.recent_latency_ms for w in candidates if w.recent_latency_ms is not None]
        default = sum(known) / len(known) if known else 1.0

        def score(w: WorkerInfo) -> tuple[float, bool, str]:
            latency = w.recent_latency_ms if w.recent_latency_ms is not None else default
            return (max(latency, 1e-3) * (1 + w.assigned), cold(w, needs), w.id)

        return min(candidates, key=score)


STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls
    for cls in (RoundRobinStrategy, LeastLoadedStrategy, CapabilityMatchStrategy, AdaptiveStrategy)
}


def make_strategy(name: str) -> Strategy:
    """A fresh strategy by name; ``ValueError`` naming the choices otherwise."""
    try:
        return STRATEGIES[name]()
    except KeyError:
        choices = ", ".join(sorted(STRATEGIES))
        raise ValueError(f"unknown scheduling strategy {name!r}; choose one of: {choices}") from None
