"""One reconcile pass of an InferenceCluster: workers, tasks, status, in that order.

A pass is level-triggered and idempotent: it reads a snapshot (kopf's index
of the cluster's pods, the operator's own index of its tasks, plus the
runtime's read-your-writes overlays), decides with the pure functions of :mod:`clusterstate` and
:mod:`taskstate`, and writes only differences:

1. **workers**: ensure the headless Service; create, replace or delete
   worker pods per :func:`~legacygpu.operator.clusterstate.plan_scale`. A
   create the API server refuses (a quota's 403, a 422 for an invalid
   pass-through field such as ``affinity``) does not end the pass: it shows
   as ``Degraded``/``PodCreateFailed`` (or ``ServiceCreateFailed``) with the
   server's message, counts as a reconcile error, and is tried again on the
   next pass, while tasks keep being cancelled, timed out and cleaned up;
2. **tasks**: apply :func:`~legacygpu.operator.taskstate.decide` to every
   task (admit, requeue from lost workers, deadlines, cancellation, TTL),
   then place queued tasks with the cluster's strategy. A valid new task is
   admitted and placed in one write (Pending → Queued → Scheduled, each move
   checked by the state machine); while no worker slot is free it stays
   ``Pending`` unwritten, so a successful task costs the operator one write
   whether or not it waited (only a cluster that places nothing, suspended
   or invalid, marks its new tasks ``Queued``). Every write carries the
   resourceVersion it was decided on: a 409 means the object moved on (a
   worker claimed it, a user cancelled it) and the pass is simply run again;
3. **status**: written only when it changed (counts at most once a second).

It returns how long the loop may sleep before the next timed event (a retry
backoff ending, a deadline, a TTL).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from typing import Any

import kopf

from legacygpu.core.kube.contract import (
    CLUSTER_PLURAL,
    GROUP,
    VERSION,
    TaskStatus,
    assigned_status,
    format_time,
    now_utc,
    parse_time,
    queued_status,
)
from legacygpu.core.kube.errors import ApiConflictError, ApiError, ApiNotFoundError, ApiUnavailableError
from legacygpu.core.scheduling import STRATEGIES
from legacygpu.core.tasks import ASSIGNED_PHASES, Phase
from legacygpu.operator import events
from legacygpu.operator.autoscaling import ScaleReason, autoscale, autoscaling_spec, requests_in_flight
from legacygpu.operator.batch import reconcile_batches
from legacygpu.operator.clusterstate import PodView, cluster_status, desired_workers, plan_scale, worker_infos
from legacygpu.operator.conditions import ClusterCondition, ConditionReason, Desired, conditions_changed, find
from legacygpu.operator.events import EventReason
from legacygpu.operator.pods import build_service, build_worker_pod, new_pod_name, selector_labels, template_hash
from legacygpu.operator.runtime import ClusterKey, OperatorRuntime
from legacygpu.operator.taskstate import TaskView, decide, plan_assignments, scheduled_heads, task_view

__all__ = ["cluster_problem", "reconcile_cluster", "write_task"]

_STATUS_COUNTS_EVERY = 1.0
_SERVICE_CHECK_EVERY = 60.0
_STARTUP_REASONS = (ConditionReason.NO_READY_WORKERS, ConditionReason.WORKERS_NOT_READY)


def cluster_problem(spec: Mapping[str, Any]) -> str | None:
    """What the operator refuses in a spec the schema let through (e.g. applied without CEL)."""
    low, high = int(spec.get("minReplicas", 0)), int(spec.get("maxReplicas", 64))
    replicas = int(spec.get("replicas", 1))
    if low > high:
        return f"spec.minReplicas ({low}) is greater than spec.maxReplicas ({high})"
    if not low <= replicas <= high:
        return f"spec.replicas ({replicas}) is outside [spec.minReplicas, spec.maxReplicas] = [{low}, {high}]"
    strategy = spec.get("schedulingStrategy", "least-loaded")
    if strategy not in STRATEGIES:
        return f"spec.schedulingStrategy {strategy!r} is not one of {', '.join(sorted(STRATEGIES))}"
    return None


async def write_task(
    rt: OperatorRuntime,
    task: TaskView,
    status: TaskStatus,
    *,
    event: tuple[str, str, str] | None = None,
    transition: bool = True,
) -> bool:
    """Write ``status`` if the task is still at the version it was decided on; True when written.

    ``transition=False`` for a write that moves no phase (a batch task's progress): not counted
    as a transition.

    One write per move, and that is the whole assignment: the worker selects
    its tasks on ``status.workerRef.pod``, so nothing else (a label, an
    Event) has to follow and nothing is left half done if the operator dies
    right after.

    Once the runtime closes (a stop, or a lost Lease: another replica may lead now) nothing is
    written: False.
    """
    if rt.closing:
        return False
    try:
        body = await rt.api.patch_task_status(
            task.namespace, task.name, dict(status), resource_version=task.resource_version or None
        )
    except ApiConflictError:
        rt.poke((task.namespace, task.cluster))
        return False
    except ApiNotFoundError:
        return False
    after = task_view(body)
    rt.wrote_task(task, after)
    if not transition:
        return True
    phase = Phase(status.get("phase", task.phase.value))
    rt.metrics.transitions.labels(phase.value, status.get("reason", "")).inc()
    if phase == Phase.SCHEDULED and after.attempts == 0:
        created = parse_time(task.created)
        if created is not None:
            rt.metrics.assignment.observe(max(0.0, (now_utc() - created).total_seconds()))
    if event is not None and rt.config.task_events and not events.post(task.ref(), *event):
        rt.spawn(events.create(rt.api, task.ref(), *event))  # outside kopf: the orphan check
    return True


def _refused(reason: str, what: str, exc: ApiError, generated_name: str = "") -> Desired:
    """The Degraded condition for a child object the API server would not create.

    The message must stay the same while the same refusal repeats: a changed
    condition is a status write, which wakes this cluster's loop again, so a
    message naming each attempt's generated pod name would spin the loop
    (the name is replaced by ``<generated>``).
    """
    detail = str(exc).replace(generated_name, "<generated>") if generated_name else str(exc)
    return Desired(ClusterCondition.DEGRADED, True, reason, f"cannot create {what}: {detail}")


async def _ensure_service(rt: OperatorRuntime, body: Mapping[str, Any], key: ClusterKey) -> Desired | None:
    """Create the headless Service unless it was checked recently; the refusal, if any."""
    if time.monotonic() - rt.service_checked.get(key, 0.0) <= _SERVICE_CHECK_EVERY:
        return None
    namespace, name = key
    service = build_service(cluster=name, namespace=namespace, health_port=rt.config.health_port)
    kopf.adopt(service, owner=dict(body))  # type: ignore[arg-type]
    try:
        created = await rt.api.ensure_service(service)
    except ApiUnavailableError:
        raise  # no answer is not a refusal: the cluster loop backs off and tries again
    except ApiError as exc:
        return _refused(ConditionReason.SERVICE_CREATE_FAILED, "the headless Service", exc)
    if created:
        message = f"created headless Service {service['metadata']['name']}"
        events.post(body, "Normal", EventReason.SERVICE_CREATED, message)
    rt.service_checked[key] = time.monotonic()
    return None


async def _children(
    rt: OperatorRuntime, body: Mapping[str, Any], pods: list[PodView], assigned: Mapping[str, int],
    logger: logging.Logger | logging.LoggerAdapter[Any],
) -> Desired | None:
    """Ensure the Service, then create and delete pods so the wanted number stay live.

    ``pods`` is the index merged with the runtime's overlay; every create and
    delete is recorded in that overlay, and the caller re-merges the index
    afterwards to see them.

    Returns the ``Degraded`` condition for a create the API server refused
    (the first refusal ends this pass's creates: the others would meet the same answer).
    """
    meta, spec = body["metadata"], body.get("spec") or {}
    namespace, name = meta["namespace"], meta["name"]
    key: ClusterKey = (namespace, name)
    refusal = await _ensure_service(rt, body, key)
    desired = desired_workers(spec)
    current = template_hash(cluster=name, namespace=namespace, spec=spec, config=rt.config)
    plan = plan_scale(desired, pods, assigned, current)
    for victim in plan.delete:
        if rt.closing:  # another replica may lead now: it decides about the pods
            return refusal
        await rt.api.delete_pod(namespace, victim)
        rt.deleted_pod(key, victim)
        if victim in plan.replaced:
            events.post(body, "Warning", EventReason.WORKER_REPLACED, f"worker pod {victim} failed; replacing it")
        elif victim in plan.rolled:
            message = f"worker pod {victim} was built from an older pod template; replacing it"
            events.post(body, "Normal", EventReason.WORKER_ROLLED, message)
        else:
            why = "cluster suspended" if spec.get("suspend") else f"scaling to {desired}"
            events.post(body, "Normal", EventReason.WORKER_DELETED, f"deleted worker pod {victim}: {why}")
    created = []
    for _ in range(plan.create):
        if rt.closing:
            break
        pod_name = new_pod_name(name)
        pod = build_worker_pod(cluster=name, namespace=namespace, name=pod_name, spec=spec, config=rt.config)
        kopf.adopt(pod, owner=dict(body))  # type: ignore[arg-type]
        try:
            await rt.api.create_pod(pod)
        except ApiUnavailableError:
            # As for the Service. After a 504 the pod may exist anyway: if the next pass runs before the
            # index shows it, one pod too many is created, and the scale-down after removes it.
            raise
        except ApiError as exc:
            logger.warning("the API server refused worker pod %s: %s", pod_name, exc)
            refusal = _refused(ConditionReason.POD_CREATE_FAILED, "a worker pod", exc, pod_name)
            break
        rt.created_pod(key, pod_name)
        created.append(pod_name)
        events.post(body, "Normal", EventReason.WORKER_CREATED, f"created worker pod {pod_name} ({desired} wanted)")
    if plan.create or plan.delete:
        logger.info("workers: created %s, deleted %s (%d wanted)", created, list(plan.delete), desired)
    return refusal


async def _tasks(
    rt: OperatorRuntime, body: Mapping[str, Any], tasks: Sequence[TaskView], pods: Sequence[PodView],
    *, schedule: bool, now: datetime.datetime,
) -> list[datetime.datetime]:
    meta, spec = body["metadata"], body.get("spec") or {}
    key: ClusterKey = (meta["namespace"], meta["name"])
    pod_map = {p.name: p for p in pods}
    wakes: list[datetime.datetime] = []
    writes: list[tuple[TaskView, TaskStatus, tuple[str, str, str] | None]] = []
    charges: list[tuple[TaskView, TaskStatus, tuple[str, str, str] | None]] = []  # Action.charge: written last
    deletes: list[TaskView] = []
    admitted: list[TaskView] = []
    unfinished: list[TaskView] = []  # what placement reads: finished tasks hold no slot and wait for none
    policy = rt.policy
    heads = scheduled_heads(tasks)  # which Scheduled task a lost pod was running (charged an attempt)
    for task in tasks:
        if not task.terminal:
            unfinished.append(task)
        action = decide(
            task, cluster_exists=True, pods=pod_map, now=now, policy=policy,
            grace_seconds=rt.config.cluster_not_found_grace_seconds,
            default_ttl_seconds=rt.config.finished_task_ttl_seconds, defer_admission=True, heads=heads,
        )
        if action is None:
            continue
        if action.wake_at is not None:
            wakes.append(action.wake_at)
        if action.delete:
            deletes.append(task)
        elif action.admit:
            admitted.append(task)  # its Queued status is built below, only if it is written
        elif action.status is not None:
            (charges if action.charge else writes).append((task, action.status, action.event))
    changing = {(t.namespace, t.name) for t, *_ in writes + charges}
    if schedule:
        still = [t for t in unfinished if (t.namespace, t.name) not in changing]
        assigned = Counter(t.worker for t in still if t.phase in ASSIGNED_PHASES and t.worker)
        # Admitted tasks are placed as they are (Pending): the plan reads their priority and age only.
        candidates = [t for t in still if t.phase == Phase.QUEUED] + admitted
        workers = worker_infos(pods, assigned, int(spec.get("tasksPerWorker", 2)))
        strategy = rt.strategy(key, spec.get("schedulingStrategy", "least-loaded"))
        for task, worker in plan_assignments(candidates, workers, strategy, now):
            status = queued_status(task.status, now) if task.phase == Phase.PENDING else TaskStatus()
            status.update(
                assigned_status({**task.status, **status}, pod=worker.id, node=pod_map[worker.id].node, now=now)
            )
            writes.append((task, status, None))
        # Tasks admitted but not placed yet stay Pending: a Queued write would be a second write for each.
    else:  # nothing places tasks now (suspended, invalid spec): say they were accepted
        writes.extend((task, queued_status(task.status, now), None) for task in admitted)
    if rt.closing:  # a stop or a lost Lease while this pass ran: no write (write_task checks again)
        return wakes
    results = await _all_then_raise(
        *(write_task(rt, t, s, event=e) for t, s, e in writes),
        *(rt.api.delete_task(t.namespace, t.name) for t in deletes),
    )
    if charges:
        # A lost pod's attempt is charged only once its other tasks went back: were one of theirs
        # not written (changed meanwhile), the next pass would find that one the pod's head and
        # charge it too. Deferred, the charge is decided again next pass, on the same head.
        unsettled = {t.worker for (t, *_), written in zip(writes, results, strict=False) if written is False}
        await _all_then_raise(*(write_task(rt, t, s, event=e) for t, s, e in charges if t.worker not in unsettled))
    return wakes


async def _all_then_raise(*writes: Awaitable[Any]) -> list[Any]:
    """Every write's answer, once all are done; the first error raised after the others have landed."""
    results = await asyncio.gather(*writes, return_exceptions=True)
    for outcome in results:
        if isinstance(outcome, BaseException):
            raise outcome
    return results


async def _autoscale(
    rt: OperatorRuntime, body: Mapping[str, Any], spec: dict[str, Any], tasks: Sequence[TaskView],
    pods: Sequence[PodView], previous: Mapping[str, Any], now: datetime.datetime,
) -> tuple[Desired, str | None]:
    """Apply :func:`~legacygpu.operator.autoscaling.autoscale`: write ``spec.replicas`` when it changes.

    The load is the queue (Pending, Queued), the tasks on workers (Scheduled, Running) and the
    real-time requests the live workers report in flight (their stats' ``inflightRequests``).

    ``spec`` is updated in place so the rest of the pass already works to the new number. The
    condition's message names the decision, not the counts (a message changing with every task
    would be a status write per pass).
    """
    meta = body["metadata"]
    autoscaling = autoscaling_spec(spec) or {}
    phases = Counter(t.phase for t in tasks)
    current = int(spec.get("replicas", 1))
    decision = autoscale(
        autoscaling, current=current,
        waiting=phases[Phase.PENDING] + phases[Phase.QUEUED],
        in_flight=phases[Phase.SCHEDULED] + phases[Phase.RUNNING] + requests_in_flight(pods),
        low_since=(previous.get("autoscaling") or {}).get("lowSince"), now=now,
    )
    if decision.changes(current) and not rt.closing:
        await rt.api.patch(GROUP, VERSION, CLUSTER_PLURAL, meta["namespace"], meta["name"],
                           {"spec": {"replicas": decision.replicas}})  # fmt: skip
        spec["replicas"] = decision.replicas
        events.post(body, "Normal", decision.reason, decision.message)
    target = autoscaling.get("targetLoadPerWorker", 4)
    last = find(previous.get("conditions"), ClusterCondition.AUTOSCALED)
    if decision.reason == ScaleReason.AT_TARGET and last and last.get("reason") in ScaleReason.CHANGES:
        # at the number the last scaling chose: that scaling stays the explanation
        return Desired(ClusterCondition.AUTOSCALED, True, last["reason"], last["message"]), None
    if decision.reason == ScaleReason.WAITING_TO_SCALE_DOWN:
        message = f"{decision.replicas} workers; fewer suffice: scaling down after the scale-down delay"
    else:
        message = f"{decision.replicas} workers for the load at {target} tasks per worker"
    return Desired(ClusterCondition.AUTOSCALED, True, decision.reason, message), decision.low_since


def _scale_event(body: Mapping[str, Any], previous: Mapping[str, Any], status: Mapping[str, Any]) -> None:
    """``Scaled`` when the number of wanted workers changed since the last status written."""
    old, new = previous.get("desiredWorkers"), status["desiredWorkers"]
    if old is not None and old != new:
        events.post(body, "Normal", EventReason.SCALED, f"desired workers {old} -> {new}")


def _condition_events(body: Mapping[str, Any], old: Any, new: list[dict[str, Any]]) -> None:
    for type_ in conditions_changed(old, new):
        condition = find(new, type_)
        assert condition is not None
        before = find(old, type_)
        if type_ == ClusterCondition.SUSPENDED and before is not None and before.get("status") != condition["status"]:
            suspended = condition["status"] == "True"
            events.post(
                body, "Normal", EventReason.SUSPENDED if suspended else EventReason.RESUMED,
                "cluster suspended: workers removed" if suspended else "cluster resumed: workers start",
            )
            continue
        bad = (type_ == ClusterCondition.DEGRADED and condition["status"] == "True") or (
            type_ != ClusterCondition.DEGRADED and condition["status"] == "False"
            and condition["reason"] not in (ConditionReason.SUSPENDED, ConditionReason.NOT_SUSPENDED)
        )
        if before is None and not (bad and condition["reason"] not in _STARTUP_REASONS):
            continue
        events.post(
            body, "Warning" if bad else "Normal", condition["reason"],
            f"{type_} is {condition['status']}: {condition['message']}",
        )


async def reconcile_cluster(
    rt: OperatorRuntime,
    body: Mapping[str, Any],
    *,
    tasks: Iterable[TaskView],
    pods: Iterable[PodView],
    logger: logging.Logger | logging.LoggerAdapter[Any],
) -> float:
    """One pass; returns the seconds the loop may sleep before the next timed event."""
    started = time.perf_counter()
    meta, spec = body["metadata"], dict(body.get("spec") or {})
    namespace, name = meta["namespace"], meta["name"]
    key: ClusterKey = (namespace, name)
    now = now_utc()
    placeholder = PodView(
        name="", phase="Pending", created=format_time(now),
        template_hash=template_hash(cluster=name, namespace=namespace, spec=spec, config=rt.config),
    )
    indexed_pods = list(pods)
    pod_list = rt.pods_seen(key, indexed_pods, placeholder)
    indexed_tasks = list(tasks)
    task_list, batch_wakes = await reconcile_batches(rt, rt.tasks_seen(indexed_tasks), now, cluster_spec=spec)
    problem = cluster_problem(spec)
    extra = []
    previous = rt.cluster_status.get(key) or dict(body.get("status") or {})
    low_since = None
    if problem is None and not spec.get("suspend") and autoscaling_spec(spec) is not None:
        scaled = await _autoscale(rt, body, spec, task_list, pod_list, previous, now)
        extra.append(scaled[0])
        low_since = scaled[1]
    if problem is None:
        assigned = Counter(t.worker for t in task_list if t.phase in ASSIGNED_PHASES and t.worker)
        refusal = await _children(rt, body, pod_list, assigned, logger)
        pod_list = rt.pods_seen(key, indexed_pods, placeholder)
        if refusal is not None:
            rt.metrics.reconcile_errors.labels("InferenceCluster").inc()
            extra.append(refusal)
        else:
            account = spec.get("serviceAccountName") or rt.config.worker_service_account or "default"
            forbidden = await rt.access.problem(namespace, account)
            if forbidden is not None:
                extra.append(Desired(ClusterCondition.DEGRADED, True, ConditionReason.WORKER_FORBIDDEN, forbidden))
    else:
        extra.append(Desired(ClusterCondition.READY, False, ConditionReason.INVALID_SPEC, problem))
    wakes = batch_wakes + await _tasks(
        rt, body, task_list, pod_list, schedule=problem is None and not spec.get("suspend"), now=now
    )
    final = rt.tasks_seen(indexed_tasks)
    phases = Counter(t.phase for t in final)
    assigned = Counter(t.worker for t in final if t.phase in ASSIGNED_PHASES and t.worker)
    status = cluster_status(
        spec=spec,
        generation=meta.get("generation"),
        pods=pod_list,
        assigned=assigned,
        queued=phases[Phase.PENDING] + phases[Phase.QUEUED],
        running=phases[Phase.SCHEDULED] + phases[Phase.RUNNING],
        previous_conditions=previous.get("conditions"),
        selector=",".join(f"{k}={v}" for k, v in selector_labels(name).items()),
        now=now,
        extra_conditions=extra,
    )
    if low_since is not None:
        status["autoscaling"] = {"lowSince": low_since}
    delay = rt.config.resync_seconds
    if status != {k: previous.get(k) for k in status}:
        counts_only = all(
            status[k] == previous.get(k) for k in status if k not in ("queuedTasks", "runningTasks", "workers")
        )
        last = rt.status_written.get(key, 0.0)
        if counts_only and time.monotonic() - last < _STATUS_COUNTS_EVERY:
            delay = min(delay, _STATUS_COUNTS_EVERY)
        elif not rt.closing:
            await rt.api.patch_cluster_status(namespace, name, status)
            rt.status_written[key] = time.monotonic()
            rt.cluster_status[key] = status
            _scale_event(body, previous, status)
            _condition_events(body, previous.get("conditions"), status["conditions"])
    ready = sum(1 for p in pod_list if p.ready and p.live)
    rt.metrics.observe_cluster(namespace, name, phases, ready, sum(1 for p in pod_list if p.live) - ready)
    if wakes:
        delay = min(delay, max(0.0, (min(wakes) - now_utc()).total_seconds()) + 0.01)
    rt.metrics.reconcile_duration.labels("InferenceCluster").observe(time.perf_counter() - started)
    return delay

