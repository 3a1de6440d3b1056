"""The batch step of a cluster's reconcile pass: split batch tasks, count their shards, end them.

The design is :mod:`legacygpu.operator.batchplan`'s docstring; this module
does its I/O. :func:`reconcile_batches` takes the pass's task snapshot,
handles every unfinished batch task in it and hands back the rest (shards
and ordinary tasks, and finished batch tasks, whose TTL the ordinary path
applies). Everything it decides from is in the API (the batch task's
status, its shard tasks' statuses), so a new leader carries on where a
dead one stopped: a split cut short is redone (the shard names are fixed;
creates that happened already answer 409, and a task there counts as made
only when this batch, by uid, owns it: an older batch of the same name may
not be collected yet), and a shard task that is absent from the index for
longer than :data:`MISSING_GRACE_SECONDS` after the split, and that the API
server does not have either, is created again, from a second read of the
source; when that read does not give the split's count of inputs (the
source changed or is gone) the batch fails ``InvalidInput`` instead, its
unfinished shards cancelled.

Before its split a batch task ends like any task when cancelled or past its
deadline (:func:`legacygpu.operator.taskstate.ending`). Its source's keys
are read so:

* ``configmap://``: the ConfigMap, in the pass (one GET);
* ``http(s)://``: the listing URL, fetched *outside* the pass by a
  background task (a slow server must not hold up the cluster's other
  tasks); the pass runs again when it has answered;
* ``pvc://``: the operator cannot mount the claim, so a worker lists the
  folder: the batch's listing task, a child task placed like a shard, whose
  result holds the keys. Its claim (and a ``pvc://`` output's) must be in
  the cluster's ``spec.batchClaims``, which every worker mounts; a batch
  naming another claim fails at once (``InvalidInput``) with a message
  naming that field. Mounting claims per batch instead would change the pod
  template, so every batch would roll the cluster's workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any, cast

from legacygpu.core.errors import ValidationError
from legacygpu.core.kube.batch import (
    check_file_key,
    check_unique_keys,
    chunks,
    configmap_keys,
    output_uri,
    parse_pvc,
    shard_name,
    url_listing,
)
from legacygpu.core.kube.contract import (
    GROUP,
    TASK_PLURAL,
    VERSION,
    TaskStatus,
    deadline_time,
    parse_time,
    terminal_status,
)
from legacygpu.core.kube.errors import ApiConflictError, ApiError, ApiNotFoundError, ApiUnavailableError
from legacygpu.core.tasks import Phase, Reason
from legacygpu.operator.batchplan import (
    BatchFacts,
    Tally,
    claims_needed,
    finished_status,
    listing_manifest,
    owner_uid,
    progress_status,
    running_status,
    shard_manifest,
    tally,
)
from legacygpu.operator.runtime import OperatorRuntime
from legacygpu.operator.taskstate import TaskView, ending

__all__ = ["MISSING_GRACE_SECONDS", "reconcile_batches"]

log = logging.getLogger(__name__)

MISSING_GRACE_SECONDS = 15.0
"""How long after the split a shard task may be absent from the index before it is created again."""

_SOURCE_RETRY_SECONDS = 5.0


def is_open_batch(task: TaskView) -> bool:
    """An unfinished batch task (not a shard): this module's to move."""
    return task.batch is not None and not task.batch.is_shard and not task.terminal


async def reconcile_batches(
    rt: OperatorRuntime, tasks: Sequence[TaskView], now: datetime.datetime, *, cluster_spec: Mapping[str, Any]
) -> tuple[list[TaskView], list[datetime.datetime]]:
    """Move every unfinished batch task in ``tasks`` (of a cluster with ``cluster_spec``).

    Returns the other tasks, and when to look again.
    """
    batches = [t for t in tasks if is_open_batch(t)]
    _prune_source_listings(rt, tasks, batches)
    if not batches:
        return list(tasks), []
    # children by their batch's namespace, name and uid: those of an older batch of the same name are not its own
    shards: dict[tuple[str, str, str], list[tuple[str, Phase, BatchFacts]]] = defaultdict(list)
    listings: dict[tuple[str, str, str], TaskView] = {}
    for task in tasks:
        if task.batch is not None and task.batch.parent is not None:
            parent = (task.namespace, task.batch.parent, task.batch.parent_uid)
            if task.batch.listing:
                listings[parent] = task
            else:
                shards[parent].append((task.name, task.phase, task.batch))
    claims = set(cluster_spec.get("batchClaims") or ())
    wakes: list[datetime.datetime] = []
    for task in batches:
        key = (task.namespace, task.name, task.uid)
        try:
            wake = await _reconcile_batch(rt, task, shards.get(key, []), listings.get(key), claims, now)
        except ApiUnavailableError:
            raise  # the cluster loop backs off and tries the whole pass again
        except Exception as exc:  # one batch's trouble must not stop the cluster's pass (nothing would be placed)
            rt.metrics.reconcile_errors.labels("InferenceTask").inc()
            log.warning("batch task %s/%s: %s", task.namespace, task.name, exc,
                        exc_info=not isinstance(exc, ApiError))
            continue
        if wake is not None:
            wakes.append(wake)
    return [t for t in tasks if not is_open_batch(t)], wakes


async def _reconcile_batch(
    rt: OperatorRuntime, task: TaskView, shards: list[tuple[str, Phase, BatchFacts]], listing: TaskView | None,
    claims: set[str], now: datetime.datetime,
) -> datetime.datetime | None:
    facts = task.batch
    assert facts is not None
    if facts.shards is None:  # not split yet
        ended = ending(task, now)
        if ended is not None:
            assert ended.status is not None
            _forget_source(rt, task)
            if listing is not None and not listing.terminal:
                await _cancel(rt, task.namespace, listing.name)
            await write_task(rt, task, ended.status, event=ended.event)
            return None
        await _split(rt, task, now, listing=listing, claims=claims)
        return deadline_time(task.created, task.timeout_seconds)  # a source that never answers ends then
    counted = tally(facts.shards, shards)
    final = finished_status(facts, counted, now=now, cancelled=task.cancel)
    if final is not None:
        await _finish(rt, task, counted, final)
        return None
    wake = None
    if counted.missing:
        started = parse_time(task.start_time) or now
        due = started + datetime.timedelta(seconds=MISSING_GRACE_SECONDS)
        if now < due:
            wake = due
        else:
            gone = await _really_missing(rt, task, counted.missing)
            if gone:
                log.info("batch task %s/%s: shards %s missing; creating them again", task.namespace, task.name, gone)
                problem = await _split(rt, task, now, listing=listing, claims=claims, only=set(gone))
                if problem is not None:
                    final = finished_status(facts, counted, now=now, problem=problem)
                    assert final is not None
                    await _finish(rt, task, counted, final)
                    return None
    update = progress_status(facts, counted)
    if update is not None:
        await write_task(rt, task, cast(TaskStatus, update), transition=False)
    return wake


def _check_file_keys(keys: Sequence[str], output: str) -> None:
    """Refuse keys that cannot name a result file in a ``pvc://`` output (else each shard would fail whole)."""
    for key in keys:
        try:
            check_file_key(key)
        except ValidationError:
            raise ValidationError(f"spec.batch: input key {key!r} cannot name a result file in {output} (letters, "
                                  "digits, '-', '_' and '.', at most 200, not '.' or '..')") from None


def _forget_source(rt: OperatorRuntime, task: TaskView) -> None:
    """Drop what was read of ``task``'s source URL (the batch is split, ended or refused)."""
    for key in [k for k in rt.source_listings if k[2] == task.uid and k[0] == task.namespace]:
        del rt.source_listings[key]


def _prune_source_listings(rt: OperatorRuntime, tasks: Sequence[TaskView], batches: Sequence[TaskView]) -> None:
    """Drop source reads of this cluster's batches that are gone or ended some other way (deleted)."""
    if not tasks or not rt.source_listings:
        return
    cluster = (tasks[0].namespace, tasks[0].cluster)
    open_uids = {t.uid for t in batches}
    for key in [k for k in rt.source_listings if k[:2] == cluster and k[2] not in open_uids]:
        del rt.source_listings[key]


async def _finish(rt: OperatorRuntime, task: TaskView, counted: Tally, final: dict[str, Any]) -> None:
    """End a split batch with ``final``: its unfinished shards are cancelled first."""
    await asyncio.gather(*(_cancel(rt, task.namespace, name) for name in counted.unfinished))
    event = None
    if final["phase"] != Phase.SUCCEEDED.value:
        event = ("Normal" if final["phase"] == Phase.CANCELLED.value else "Warning", final["reason"], final["message"])
    await write_task(rt, task, cast(TaskStatus, final), event=event)


async def _really_missing(rt: OperatorRuntime, task: TaskView, indices: Sequence[int]) -> list[int]:
    """The shard numbers among ``indices`` whose task the API server does not have (not just the index lagging)."""

    async def gone(index: int) -> bool:
        try:
            await rt.api.get_task(task.namespace, shard_name(task.name, index))
        except ApiNotFoundError:
            return True
        return False

    answers = await asyncio.gather(*(gone(i) for i in indices))
    return [i for i, missing in zip(indices, answers, strict=True) if missing]


async def _split(
    rt: OperatorRuntime, task: TaskView, now: datetime.datetime, *, listing: TaskView | None, claims: set[str],
    only: set[int] | None = None,
) -> str | None:
    """Create the shard tasks (``only`` those numbers, if given); then, on the first split, mark it Running.

    ``only`` re-creates missing shards of a running batch from a second read of its source: that
    read must give the inputs of the split (as many, in as many shards), or shard ``i`` would run other
    inputs than the lost one (some twice, some never). When it cannot, the answer is why (the caller
    ends the batch, cancelling its shards); the first split writes its own refusal.
    """
    try:
        body = await rt.api.get_task(task.namespace, task.name)
    except ApiNotFoundError:
        return None
    spec = body.get("spec") or {}
    batch = spec.get("batch") or {}
    size = int(batch.get("shardSize") or 25)
    source = str(batch.get("source", ""))
    manifests: list[dict[str, Any]] = []
    try:
        output = output_uri(task.name, str(batch.get("output") or ""))
        assert task.batch is not None
        unmounted = [claim for claim in claims_needed(task.batch) if claim not in claims]
        if source.startswith("pvc://") and output.startswith("pvc://") and parse_pvc(source) == parse_pvc(output):
            raise ValidationError(f"spec.batch.output {output!r} is the source folder: its .json results would be "
                                  "inputs of the next batch over it; write them to another folder")
        if unmounted:
            raise ValidationError(f"InferenceCluster {task.cluster!r} does not mount claim {unmounted[0]!r}: add it "
                                  "to the cluster's spec.batchClaims (every worker mounts those)")
        if batch.get("inputs"):
            items = list(batch["inputs"])
            names = [str(item["key"]) for item in items]
            check_unique_keys(names)
            total = len(items)
            for index, piece in enumerate(chunks(items, size)):
                if only is None or index in only:
                    manifests.append(shard_manifest(body, index, now=now, inputs=piece))
        else:
            keys = await _source_keys(rt, task, body, source, listing, now)
            if keys is None:
                return None  # the listing task or the URL's answer wakes the pass
            if not keys:
                raise ValidationError(f"spec.batch.source {source!r} holds no inputs")
            check_unique_keys(keys)
            names, total = keys, len(keys)
            for index, piece in enumerate(chunks(keys, size)):
                if only is None or index in only:
                    manifests.append(shard_manifest(body, index, now=now, keys=piece))
        if output.startswith("pvc://"):
            _check_file_keys(names, output)
        if only is not None and (total, math.ceil(total / max(1, size))) != (task.batch.total, task.batch.shards):
            raise ValidationError(f"the source changed since the split: it holds {total} inputs now, not the "
                                  f"{task.batch.total} in {task.batch.shards} shards it was split into")
    except ValidationError as exc:
        _forget_source(rt, task)
        if only is not None:
            return f"shards {sorted(only)} are missing and cannot be made again: {exc}"
        status = terminal_status(task.status, created=task.created, phase=Phase.FAILED, reason=Reason.INVALID_INPUT,
                                 message=str(exc), now=now)
        await write_task(rt, task, status, event=("Warning", Reason.INVALID_INPUT.value, str(exc)))
        return None
    made = await asyncio.gather(*(_create(rt, manifest) for manifest in manifests))
    if not all(made):
        return None  # an old batch's child is in the way: its deletion wakes the pass
    _forget_source(rt, task)  # a later re-creation of missing shards reads the source afresh
    if only is None:
        # only is None: every shard was made
        running = running_status(total=total, shards=len(manifests), output=output, now=now,
                                 previous=body.get("status") or {})
        event = ("Normal", Reason.STARTED.value, running["message"])
        await write_task(rt, task, cast(TaskStatus, running), event=event)
    return None


async def _source_keys(
    rt: OperatorRuntime, task: TaskView, body: Mapping[str, Any], source: str, listing: TaskView | None,
    now: datetime.datetime,
) -> list[str] | None:
    """The input keys ``source`` holds; None when they are not known yet (the pass runs again when they are)."""
    if source.startswith("configmap://"):
        name = source[len("configmap://"):]
        try:
            configmap = await rt.api.get("", "v1", "configmaps", task.namespace, name)
        except ApiNotFoundError as exc:
            raise ValidationError(f"spec.batch.source: ConfigMap {name!r} not found in {task.namespace!r}") from exc
        return configmap_keys(configmap)
    if source.startswith("pvc://"):
        return await _listed_keys(rt, task, body, listing, now)
    if source.startswith(("http://", "https://")):
        key = (task.namespace, task.cluster, task.uid, source)
        if key not in rt.source_listings:
            rt.source_listings[key] = None
            rt.spawn(_fetch_listing(rt, key, (task.namespace, task.cluster)))
            return None
        answer = rt.source_listings[key]
        if isinstance(answer, ValidationError):
            raise answer
        return cast("list[str] | None", answer)
    raise ValidationError(f"spec.batch.source: unsupported {source!r}")


async def _fetch_listing(rt: OperatorRuntime, key: tuple[str, str, str, str], cluster: tuple[str, str]) -> None:
    """Read a source URL's listing in the background; the answer waits in ``rt.source_listings``.

    Whatever goes wrong ends as an answer (the pass fails the batch with it) or, for a server that
    is down or failing, as another try: never as a read that stays under way until the deadline.
    """
    import httpx

    source = key[3]
    answer: list[str] | ValidationError
    try:
        async with httpx.AsyncClient(timeout=30.0, follow_redirects=True) as http:
            response = await http.get(source)
        if response.status_code >= 500:
            response.raise_for_status()
        if response.status_code >= 400:
            raise ValidationError(f"spec.batch.source: {source} answered {response.status_code}")
        try:
            listing = response.json()
        except ValueError as exc:
            raise ValidationError(f"spec.batch.source: {source} did not serve JSON: {exc}") from exc
        answer = [k for k, _ in url_listing(listing)]
    except ValidationError as exc:
        answer = exc
    except httpx.HTTPError as exc:
        log.warning("batch source %s unreachable (%s); trying again in %.0f s", source, exc, _SOURCE_RETRY_SECONDS)
        await asyncio.sleep(_SOURCE_RETRY_SECONDS)
        rt.source_listings.pop(key, None)  # the next pass starts another read
        rt.poke(cluster)
        return
    except Exception as exc:  # httpx.InvalidURL (not an HTTPError), an unsupported URL, ...
        log.warning("batch source %s cannot be read: %r", source, exc)
        answer = ValidationError(f"spec.batch.source: cannot read {source!r}: {exc or type(exc).__name__}")
    if key in rt.source_listings:  # else the batch ended (or went) while this read was under way
        rt.source_listings[key] = answer
    rt.poke(cluster)


async def _listed_keys(
    rt: OperatorRuntime, task: TaskView, body: Mapping[str, Any], listing: TaskView | None, now: datetime.datetime
) -> list[str] | None:
    """The keys a worker listed for a ``pvc://`` source (the batch's listing task, created here if need be)."""
    if listing is None:
        await _create(rt, listing_manifest(body, now=now))
        return None
    if not listing.terminal:
        return None
    listed = await rt.api.get_task(task.namespace, listing.name)
    status = listed.get("status") or {}
    source = body["spec"]["batch"]["source"]
    if listing.phase != Phase.SUCCEEDED and status.get("reason") == Reason.RESULT_TOO_LARGE.value:
        raise ValidationError(f"{source} holds too many input files for one batch: their names, as one JSON list, "
                              f"must fit a result ConfigMap (about 900 KiB, some 921,600 / (name length + 3) "
                              f"files); split the folder into smaller ones, one batch each ({status.get('message')})")
    if listing.phase != Phase.SUCCEEDED:
        raise ValidationError(f"listing {source} failed ({status.get('reason')}): {status.get('message')}")
    result = status.get("result")
    ref = str(status.get("resultRef") or "")
    where = f"the listing task {listing.name}'s result"
    if not (isinstance(result, Mapping) and "keys" in result) and ref.startswith("configmap://"):
        name, _, entry = ref[len("configmap://"):].partition("/")
        where = f"the listing result ConfigMap {name!r}"
        try:
            configmap = await rt.api.get("", "v1", "configmaps", task.namespace, name)
        except ApiNotFoundError as exc:
            raise ValidationError(f"{where} is gone (deleted before the split); create the batch again") from exc
        try:
            result = json.loads((configmap.get("data") or {}).get(entry) or "")
        except ValueError as exc:
            raise ValidationError(f"{where}: entry {entry!r} is not JSON ({exc}); create the batch again") from exc
    keys = result.get("keys") if isinstance(result, Mapping) else None
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise ValidationError(f"{where} holds no list of keys; create the batch again")
    return keys


async def write_task(
    rt: OperatorRuntime, task: TaskView, status: TaskStatus, *, event: tuple[str, str, str] | None = None,
    transition: bool = True,
) -> bool:
    """:func:`legacygpu.operator.reconciler.write_task` (imported late: the reconciler imports this module)."""
    from legacygpu.operator.reconciler import write_task as write

    return await write(rt, task, status, event=event, transition=transition)


async def _create(rt: OperatorRuntime, manifest: dict[str, Any]) -> bool:
    """Create a child task; False when a child of another batch of the same name (not collected yet) has its name."""
    meta = manifest["metadata"]
    try:
        await rt.api.create(GROUP, VERSION, TASK_PLURAL, meta["namespace"], manifest)
        return True
    except ApiConflictError:
        pass
    try:
        there = await rt.api.get_task(meta["namespace"], meta["name"])
    except ApiNotFoundError:
        return False  # collected just now: the next pass creates it
    ours = owner_uid(meta["ownerReferences"])
    if owner_uid((there.get("metadata") or {}).get("ownerReferences") or ()) == ours:
        return True  # created by an earlier try of this split
    log.info("task %s/%s belongs to an earlier batch of that name; waiting for it to be collected",
             meta["namespace"], meta["name"])
    return False


async def _cancel(rt: OperatorRuntime, namespace: str, name: str) -> None:
    with contextlib.suppress(ApiNotFoundError):
        await rt.api.patch(GROUP, VERSION, TASK_PLURAL, namespace, name, {"spec": {"cancel": True}})
