"""Batch tasks, decided from a snapshot (pure functions; the I/O is :mod:`legacygpu.operator.batch`).

Design. A batch task (``spec.batch``) is split into **child InferenceTasks,
one per shard** of ``shardSize`` inputs, owned by the batch task. A shard is
an ordinary task to everything else: it is admitted and placed with the
cluster's strategy in one write, claimed and reported by a worker, retried
elsewhere when its worker is lost, cancelled and expired by the same rules.
Child objects rather than a ``status.shards`` list because they keep every
guarantee the single-task path already has (one assignment write the
worker's field selector sees, resourceVersion-guarded claims and reports, a
new leader adopting whatever is in flight) and need no second worker
protocol; they cost one create per shard, so per input the writes are
``(1 create + 3 status writes + 1 result ConfigMap) / shardSize`` plus the
batch task's own progress writes, one per shard at most.

The batch task itself is never placed on a worker. The operator moves it:

* ``Pending`` → ``Running`` once every shard task exists (created with
  deterministic names, so a split cut short by a crash is simply redone:
  the creates that already happened answer 409);
* while ``Running``, ``status.progress`` (total, completed, failed, shards)
  and the first failed inputs are rebuilt from the shards' own statuses and
  written when they change, i.e. at most once per finished shard;
* ``Succeeded`` (``Completed``) when every shard has ended and no more
  inputs failed than ``maxFailedInputs`` allows; ``Failed``
  (``InputsFailed``) as soon as more did, cancelling the unfinished shards;
  ``Cancelled`` on ``spec.cancel``, cancelling them too. A shard that ends
  ``Failed`` as a whole (its retries spent, its deadline passed) counts each
  of its inputs as failed with the shard's reason. A failed input never
  fails the job by itself.

A shard's worker writes one result ConfigMap per shard, one entry per input
key (:mod:`legacygpu.core.kube.batch`); a retried shard rewrites the same
entries, so no input ever has two results.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from legacygpu.core.kube.batch import (
    CHILD_TTL_SECONDS,
    LABEL_BATCH,
    MAX_FAILURES_LISTED,
    listing_name,
    output_uri,
    parse_pvc,
    result_configmap,
    shard_name,
)
from legacygpu.core.kube.contract import API_VERSION, TASK_KIND, deadline_time, format_time
from legacygpu.core.tasks import TERMINAL_PHASES, Phase, Reason

__all__ = ["BatchFacts", "Failure", "Tally", "batch_facts", "claims_needed", "finished_status", "listing_manifest",
           "owner_uid", "progress_status", "running_status", "shard_manifest", "tally"]

Failure = Mapping[str, str]
"""``{key, reason, message}`` of one failed input."""


@dataclass(frozen=True)
class BatchFacts:
    """What the operator indexes about a batch task or a shard (never the inputs themselves)."""

    parent: str | None = None
    """Shards: their batch task's name; None for the batch task itself."""
    parent_uid: str = ""
    """Shards: their batch task's uid (controller owner reference): a batch deleted and made again under
    the same name is another parent, whose children these are not."""
    index: int = 0
    keys: tuple[str, ...] = ()
    """Shards: the keys of their inputs."""
    completed: int = 0
    failed: int = 0
    failures: tuple[Failure, ...] = ()
    """Shards: what the worker reported (status.result.batch)."""
    reason: str = ""
    message: str = ""
    """Shards that ended without a report of their inputs: why."""
    total: int | None = None
    shards: int | None = None
    max_failed: int | None = None
    progress: Mapping[str, Any] | None = None
    """Batch tasks: the progress written last (None before the split)."""
    failures_written: tuple[Failure, ...] = ()
    listing: bool = False
    """The listing task of a ``pvc://`` source (a child, but not a shard)."""
    source: str = ""
    output: str = ""
    """Batch tasks: ``spec.batch.source`` and ``output`` (for the claims they need)."""

    @property
    def is_shard(self) -> bool:
        return self.parent is not None


def batch_facts(
    spec: Mapping[str, Any], status: Mapping[str, Any], owners: Sequence[Mapping[str, Any]] = ()
) -> BatchFacts | None:
    """The batch facts of a task body's spec, status and ``metadata.ownerReferences``; None for an ordinary task."""
    batch = spec.get("batch")
    if not isinstance(batch, Mapping):
        return None
    shard = batch.get("shard")
    if isinstance(shard, Mapping):
        keys = shard.get("keys") or [item.get("key", "") for item in batch.get("inputs") or ()]
        report = (status.get("result") or {}).get("batch") or {}
        return BatchFacts(
            parent=str(shard.get("parent", "")),
            parent_uid=owner_uid(owners),
            index=int(shard.get("index") or 0),
            keys=tuple(keys),
            completed=int(report.get("completed") or 0),
            failed=int(report.get("failed") or 0),
            failures=tuple(report.get("failures") or ()),
            reason=str(status.get("reason") or ""),
            message=str(status.get("message") or "")[:512],
            listing=bool(shard.get("listing")),
        )
    progress = status.get("progress")
    max_failed = batch.get("maxFailedInputs")
    return BatchFacts(
        total=int(progress["total"]) if progress and "total" in progress else None,
        shards=int(progress["shards"]) if progress and "shards" in progress else None,
        max_failed=int(max_failed) if max_failed is not None else None,
        progress=dict(progress) if progress else None,
        failures_written=tuple(status.get("failures") or ()),
        source=str(batch.get("source") or ""),
        output=str(batch.get("output") or ""),
    )


def owner_uid(owners: Sequence[Mapping[str, Any]]) -> str:
    """The uid of the InferenceTask that controls an object with ``owners`` (its ownerReferences); "" if none."""
    for ref in owners:
        if ref.get("kind") == TASK_KIND and ref.get("controller"):
            return str(ref.get("uid") or "")
    return ""


def claims_needed(facts: BatchFacts) -> list[str]:
    """The claims a batch task's ``pvc://`` source and output are on."""
    return sorted({parse_pvc(uri)[0] for uri in (facts.source, facts.output) if uri.startswith("pvc://")})


def _child(parent: Mapping[str, Any], name: str, batch: dict[str, Any], now: datetime.datetime) -> dict[str, Any]:
    """A child task of ``parent`` (a shard or its listing task): the parent's model, placement and deadline."""
    meta, spec = parent["metadata"], parent["spec"]
    deadline = deadline_time(meta.get("creationTimestamp") or format_time(now), spec.get("timeoutSeconds"))
    child_spec: dict[str, Any] = {
        "clusterRef": spec["clusterRef"],
        "model": spec["model"],
        "batch": batch,
        "priority": int(spec.get("priority") or 0),
        "maxRetries": int(spec.get("maxRetries", 3)),
        "ttlSecondsAfterFinished": CHILD_TTL_SECONDS,
    }
    if deadline is not None:  # the parent's deadline, not a new one
        child_spec["timeoutSeconds"] = max(1, math.ceil((deadline - now).total_seconds()))
    for passed in ("parameters", "requirements"):
        if spec.get(passed) is not None:
            child_spec[passed] = spec[passed]
    labels = {LABEL_BATCH: meta["name"]} if len(meta["name"]) <= 63 else {}
    return {
        "apiVersion": API_VERSION,
        "kind": TASK_KIND,
        "metadata": {
            "name": name,
            "namespace": meta["namespace"],
            "labels": labels,
            "ownerReferences": [{"apiVersion": API_VERSION, "kind": TASK_KIND, "name": meta["name"],
                                 "uid": meta["uid"], "controller": True}],
        },
        "spec": child_spec,
    }


def listing_manifest(parent: Mapping[str, Any], *, now: datetime.datetime) -> dict[str, Any]:
    """The task that lists the ``pvc://`` source folder of the batch task ``parent`` on a worker."""
    batch = parent["spec"]["batch"]
    child_batch = {"source": batch["source"], "shard": {"parent": parent["metadata"]["name"], "index": 0,
                                                        "listing": True}}
    return _child(parent, listing_name(parent["metadata"]["name"]), child_batch, now)


def shard_manifest(
    parent: Mapping[str, Any], index: int, *, now: datetime.datetime,
    inputs: Sequence[Mapping[str, Any]] | None = None, keys: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Shard ``index`` of the batch task ``parent``: its inline ``inputs``, or the ``keys`` of its source."""
    name, batch = parent["metadata"]["name"], parent["spec"]["batch"]
    child_batch: dict[str, Any] = {
        "inputName": batch.get("inputName", "input"),
        "output": output_uri(name, batch.get("output")),
        "shard": {"parent": name, "index": index},
    }
    if inputs is not None:
        child_batch["inputs"] = list(inputs)
    else:
        child_batch["source"] = batch["source"]
        child_batch["shard"]["keys"] = list(keys or ())
    return _child(parent, shard_name(name, index), child_batch, now)


@dataclass(frozen=True)
class Tally:
    """The batch's progress as its shards tell it."""

    completed: int
    failed: int
    finished: int
    failures: tuple[Failure, ...]
    unfinished: tuple[str, ...]
    """Names of the shard tasks still running or waiting."""
    missing: tuple[int, ...]
    """Shard numbers with no task (deleted by someone, or not seen yet)."""


def tally(shards: int, children: Sequence[tuple[str, Phase, BatchFacts]]) -> Tally:
    """Count ``children`` (name, phase, facts) of a batch of ``shards`` shards, one per shard number."""
    by_index = {facts.index: (name, phase, facts) for name, phase, facts in children}
    completed = failed = finished = 0
    failures: list[Failure] = []
    unfinished: list[str] = []
    for index in sorted(by_index):
        name, phase, facts = by_index[index]
        if phase not in TERMINAL_PHASES:
            unfinished.append(name)
            continue
        finished += 1
        if phase == Phase.SUCCEEDED:
            completed += facts.completed
            failed += facts.failed
            failures.extend(facts.failures)
        else:  # the shard ended as a whole: each of its inputs failed for its reason
            failed += len(facts.keys)
            failures.extend({"key": key, "reason": facts.reason or phase.value, "message": facts.message}
                            for key in facts.keys)
    missing = tuple(i for i in range(shards) if i not in by_index)
    return Tally(completed, failed, finished, tuple(failures[:MAX_FAILURES_LISTED]), tuple(unfinished), missing)


def _progress(total: int, shards: int, counted: Tally | None) -> dict[str, Any]:
    completed = counted.completed if counted else 0
    failed = counted.failed if counted else 0
    summary = f"{completed}/{total}" + (f" ({failed} failed)" if failed else "")
    return {"total": total, "completed": completed, "failed": failed, "shards": shards,
            "shardsFinished": counted.finished if counted else 0, "summary": summary}


def running_status(
    *, total: int, shards: int, output: str, now: datetime.datetime, previous: Mapping[str, Any]
) -> dict[str, Any]:
    """Pending → Running: the batch is split into ``shards`` shard tasks writing to ``output`` (a URI)."""
    moment = format_time(now)
    if output.startswith("pvc://"):
        where: dict[str, Any] = {"uri": output}
    else:
        prefix = output.removeprefix("configmap://")
        where = {"configMaps": [result_configmap(prefix, i) for i in range(shards)]}
    return {
        "phase": Phase.RUNNING.value,
        "reason": Reason.STARTED.value,
        "message": f"{total} inputs in {shards} shards",
        "queuedTime": previous.get("queuedTime") or moment,
        "startTime": moment,
        "progress": _progress(total, shards, None),
        "output": where,
    }


def progress_status(facts: BatchFacts, counted: Tally) -> dict[str, Any] | None:
    """The progress to write while running; None when nothing changed since the last write."""
    assert facts.total is not None and facts.shards is not None
    progress = _progress(facts.total, facts.shards, counted)
    if progress == dict(facts.progress or {}) and counted.failures == facts.failures_written:
        return None
    return {"progress": progress, "failures": [dict(f) for f in counted.failures]}


def finished_status(
    facts: BatchFacts, counted: Tally, *, now: datetime.datetime, cancelled: bool = False, problem: str | None = None
) -> dict[str, Any] | None:
    """The batch's final status if it is over (all shards ended, too many failures, cancelled), else None.

    ``problem``: why the batch cannot go on (a missing shard cannot be made again): it fails ``InvalidInput``.
    """
    assert facts.total is not None and facts.shards is not None
    over_limit = facts.max_failed is not None and counted.failed > facts.max_failed
    done = not counted.unfinished and not counted.missing
    if not (cancelled or over_limit or done or problem):
        return None
    if problem:
        phase, reason = Phase.FAILED, Reason.INVALID_INPUT
        message = f"{problem}; unfinished shards cancelled"
    elif cancelled:
        phase, reason = Phase.CANCELLED, Reason.CANCELLED
        message = f"cancelled with {counted.completed} of {facts.total} inputs done"
    elif over_limit:
        phase, reason = Phase.FAILED, Reason.INPUTS_FAILED
        message = (f"{counted.failed} inputs failed, more than spec.batch.maxFailedInputs ({facts.max_failed}); "
                   "unfinished shards cancelled")
    else:
        phase, reason = Phase.SUCCEEDED, Reason.COMPLETED
        message = f"{counted.completed} of {facts.total} inputs succeeded, {counted.failed} failed"
    status = {"phase": phase.value, "reason": reason.value, "message": message,
              "completionTime": format_time(now), "progress": _progress(facts.total, facts.shards, counted),
              "failures": [dict(f) for f in counted.failures]}
    return status
