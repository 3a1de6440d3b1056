"""The batch step of a cluster's reconcile pass: split batch tasks, count their shards, end them.

The design is :mod:`legacygpu.operator.batchplan`'s docstring; this module
does its I/O. :func:`reconcile_batches` takes the pass's task snapshot,
handles every unfinished batch task in it and hands back the rest (shards
and ordinary tasks, and finished batch tasks, whose TTL the ordinary path
applies). Everything it decides from is in the API (the batch task's
status, its shard tasks' statuses), so a new leader carries on where a
dead one stopped: a split cut short is redone (the shard names are fixed;
creates that happened already answer 409), and a shard task that is
missing for longer than :data:`MISSING_GRACE_SECONDS` after the split is
created again.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
from collections import defaultdict
from collections.abc import Sequence
from typing import Any, cast

from legacygpu.core.errors import ValidationError
from legacygpu.core.kube.batch import check_unique_keys, chunks, configmap_keys, output_prefix, url_listing
from legacygpu.core.kube.contract import (
    GROUP,
    TASK_PLURAL,
    VERSION,
    TaskStatus,
    cancelled_status,
    deadline_time,
    expired_status,
    parse_time,
    terminal_status,
)
from legacygpu.core.kube.errors import ApiConflictError, ApiError, ApiNotFoundError, ApiUnavailableError
from legacygpu.core.tasks import Phase, Reason
from legacygpu.operator.batchplan import (
    BatchFacts,
    finished_status,
    progress_status,
    running_status,
    shard_manifest,
    tally,
)
from legacygpu.operator.runtime import OperatorRuntime
from legacygpu.operator.taskstate import TaskView, task_view

__all__ = ["MISSING_GRACE_SECONDS", "reconcile_batches"]

log = logging.getLogger(__name__)

MISSING_GRACE_SECONDS = 15.0
"""How long after the split a shard task may be absent from the index before it is created again."""

_SOURCE_RETRY_SECONDS = 5.0


def is_open_batch(task: TaskView) -> bool:
    """An unfinished batch task (not a shard): this module's to move."""
    return task.batch is not None and not task.batch.is_shard and not task.terminal


async def reconcile_batches(
    rt: OperatorRuntime, tasks: Sequence[TaskView], now: datetime.datetime
) -> tuple[list[TaskView], list[datetime.datetime]]:
    """Move every unfinished batch task in ``tasks``; (the other tasks, when to look again)."""
    batches = [t for t in tasks if is_open_batch(t)]
    if not batches:
        return list(tasks), []
    shards: dict[tuple[str, str], list[tuple[str, Phase, BatchFacts]]] = defaultdict(list)
    for task in tasks:
        if task.batch is not None and task.batch.parent is not None:
            shards[task.namespace, task.batch.parent].append((task.name, task.phase, task.batch))
    wakes: list[datetime.datetime] = []
    for task in batches:
        try:
            wake = await _reconcile_batch(rt, task, shards.get((task.namespace, task.name), []), now)
        except ApiUnavailableError:
            raise  # the cluster loop backs off and tries the whole pass again
        except ApiError as exc:
            rt.metrics.reconcile_errors.labels("InferenceTask").inc()
            log.warning("batch task %s/%s: %s", task.namespace, task.name, exc)
            continue
        if wake is not None:
            wakes.append(wake)
    return [t for t in tasks if not is_open_batch(t)], wakes


async def _reconcile_batch(
    rt: OperatorRuntime, task: TaskView, shards: list[tuple[str, Phase, BatchFacts]], now: datetime.datetime
) -> datetime.datetime | None:
    facts = task.batch
    assert facts is not None
    if facts.shards is None:  # not split yet
        if task.cancel:
            await write_task(rt, task, cancelled_status(task.status, created=task.created, now=now))
            return None
        deadline = deadline_time(task.created, task.timeout_seconds)
        if deadline is not None and now >= deadline:  # e.g. its source URL never answered
            expired = expired_status(task.status, created=task.created, timeout_seconds=task.timeout_seconds, now=now)
            await write_task(rt, task, expired, event=("Warning", expired["reason"], expired["message"]))
            return None
        return await _split(rt, task, now)
    counted = tally(facts.shards, shards)
    final = finished_status(facts, counted, now=now, cancelled=task.cancel)
    if final is not None:
        await asyncio.gather(*(_cancel(rt, task.namespace, name) for name in counted.unfinished))
        event = None
        if final["phase"] != Phase.SUCCEEDED.value:
            event = ("Normal" if final["phase"] == Phase.CANCELLED.value else "Warning", final["reason"],
                     final["message"])
        await write_task(rt, task, cast(TaskStatus, final), event=event)
        return None
    wake = None
    if counted.missing:
        started = parse_time(task.start_time) or now
        due = started + datetime.timedelta(seconds=MISSING_GRACE_SECONDS)
        if now >= due:
            log.info("batch task %s/%s: shards %s missing; creating them again", task.namespace, task.name,
                     list(counted.missing))
            await _split(rt, task, now, only=set(counted.missing))
        else:
            wake = due
    update = progress_status(facts, counted)
    if update is not None:
        await _write_progress(rt, task, update)
    return wake


async def _write_progress(rt: OperatorRuntime, task: TaskView, update: dict[str, Any]) -> None:
    """A progress-only write: guarded like a move, but no phase transition to count."""
    try:
        body = await rt.api.patch_task_status(task.namespace, task.name, update,
                                              resource_version=task.resource_version or None)
    except ApiConflictError:
        rt.poke((task.namespace, task.cluster))
        return
    except ApiNotFoundError:
        return
    rt.wrote_task(task, task_view(body))


async def _split(
    rt: OperatorRuntime, task: TaskView, now: datetime.datetime, *, only: set[int] | None = None
) -> datetime.datetime | None:
    """Create the shard tasks (``only`` those numbers, if given); then, on the first split, mark it Running."""
    try:
        body = await rt.api.get_task(task.namespace, task.name)
    except ApiNotFoundError:
        return None
    spec = body.get("spec") or {}
    batch = spec.get("batch") or {}
    size = int(batch.get("shardSize") or 25)
    manifests: list[dict[str, Any]] = []
    try:
        prefix = output_prefix(task.name, batch.get("output"))
        if batch.get("inputs"):
            items = list(batch["inputs"])
            check_unique_keys(item["key"] for item in items)
            total = len(items)
            for index, piece in enumerate(chunks(items, size)):
                if only is None or index in only:
                    manifests.append(shard_manifest(body, index, now=now, inputs=piece))
        else:
            keys = await _source_keys(rt, task.namespace, str(batch.get("source", "")))
            if keys is None:
                return now + datetime.timedelta(seconds=_SOURCE_RETRY_SECONDS)
            if not keys:
                raise ValidationError(f"spec.batch.source {batch.get('source')!r} holds no inputs")
            total = len(keys)
            for index, piece in enumerate(chunks(keys, size)):
                if only is None or index in only:
                    manifests.append(shard_manifest(body, index, now=now, keys=piece))
    except ValidationError as exc:
        status = terminal_status(task.status, created=task.created, phase=Phase.FAILED, reason=Reason.INVALID_INPUT,
                                 message=str(exc), now=now)
        await write_task(rt, task, status, event=("Warning", Reason.INVALID_INPUT.value, str(exc)))
        return None
    await asyncio.gather(*(_create(rt, manifest) for manifest in manifests))
    if only is None:
        # only is None: every shard was made
        running = running_status(total=total, shards=len(manifests), prefix=prefix, now=now,
                                 previous=body.get("status") or {})
        event = ("Normal", Reason.STARTED.value, running["message"])
        await write_task(rt, task, cast(TaskStatus, running), event=event)
    return None


async def _source_keys(rt: OperatorRuntime, namespace: str, source: str) -> list[str] | None:
    """The input keys ``source`` holds; None when it cannot be read just now (try again later)."""
    if source.startswith("configmap://"):
        name = source[len("configmap://"):]
        try:
            configmap = await rt.api.get("", "v1", "configmaps", namespace, name)
        except ApiNotFoundError as exc:
            raise ValidationError(f"spec.batch.source: ConfigMap {name!r} not found in {namespace!r}") from exc
        return configmap_keys(configmap)
    if source.startswith(("http://", "https://")):
        import httpx

        try:
            response = await asyncio.to_thread(httpx.get, source, timeout=30.0, follow_redirects=True)
        except httpx.HTTPError as exc:
            log.warning("batch source %s unreachable (%s); trying again", source, exc)
            return None
        if response.status_code >= 500:
            return None
        if response.status_code >= 400:
            raise ValidationError(f"spec.batch.source: {source} answered {response.status_code}")
        try:
            listing = response.json()
        except ValueError as exc:
            raise ValidationError(f"spec.batch.source: {source} did not serve JSON: {exc}") from exc
        return [key for key, _ in url_listing(listing)]
    raise ValidationError(f"spec.batch.source: unsupported {source!r}")


async def write_task(
    rt: OperatorRuntime, task: TaskView, status: TaskStatus, *, event: tuple[str, str, str] | None = None
) -> bool:
    """:func:`legacygpu.operator.reconciler.write_task` (imported late: the reconciler imports this module)."""
    from legacygpu.operator.reconciler import write_task as write

    return await write(rt, task, status, event=event)


async def _create(rt: OperatorRuntime, manifest: dict[str, Any]) -> None:
    with contextlib.suppress(ApiConflictError):  # created by an earlier try of this split
        await rt.api.create(GROUP, VERSION, TASK_PLURAL, manifest["metadata"]["namespace"], manifest)


async def _cancel(rt: OperatorRuntime, namespace: str, name: str) -> None:
    with contextlib.suppress(ApiNotFoundError):
        await rt.api.patch(GROUP, VERSION, TASK_PLURAL, namespace, name, {"spec": {"cancel": True}})
