"""The operator's per-task policy (taskstate.decide, plan_assignments) and the status builders."""

from __future__ import annotations

import dataclasses
import datetime
import random
from typing import Any

import pytest

from legacygpu.core import lifecycle
from legacygpu.core.errors import ConflictError
from legacygpu.core.kube import contract
from legacygpu.core.kube.contract import (
    assigned_status,
    format_time,
    parse_time,
    report_status,
    requeue_status,
    running_status,
    terminal_status,
)
from legacygpu.core.scheduling import Requirements, WorkerInfo, make_strategy
from legacygpu.core.tasks import Phase, Reason, RetryPolicy
from legacygpu.operator.clusterstate import PodView
from legacygpu.operator.taskstate import (
    TaskView,
    decide,
    plan_assignments,
    scheduled_heads,
    task_view,
    validate_inputs,
)

T0 = datetime.datetime(2026, 1, 1, 12, 0, 0, tzinfo=datetime.UTC)
POLICY = RetryPolicy(base_seconds=1.0, cap_seconds=8.0)
READY = PodView(name="w1", phase="Running", ready=True, node="n1")


def body(phase: str | None = None, **spec: Any) -> dict[str, Any]:
    status: dict[str, Any] = {}
    if phase:
        status["phase"] = phase
    base = {
        "clusterRef": "c", "model": "digits", "maxRetries": 2, "timeoutSeconds": 600,
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}],
    }
    base.update(spec)
    return {
        "metadata": {"name": "t", "namespace": "ns", "uid": "u", "resourceVersion": "7",
                     "creationTimestamp": format_time(T0)},
        "spec": base,
        "status": status,
    }


def view(phase: str | None = None, status: dict[str, Any] | None = None, **spec: Any) -> TaskView:
    b = body(phase, **spec)
    b["status"].update(status or {})
    return task_view(b)


def run(
    task: TaskView, *, at: float = 1.0, exists: bool = True, pods: dict[str, PodView] | None = None,
    heads: dict[str, str] | None = None,
) -> Any:
    return decide(
        task, cluster_exists=exists, pods=pods if pods is not None else {"w1": READY},
        now=T0 + datetime.timedelta(seconds=at), policy=POLICY, grace_seconds=5.0, rng=random.Random(1),
        heads=heads,
    )


def test_pending_task_for_an_existing_cluster_is_queued() -> None:
    action = run(view())
    assert action.status["phase"] == "Queued" and action.status["reason"] == "Accepted"


def test_deferred_admission_leaves_the_queued_status_to_the_caller_but_not_the_checks() -> None:
    """The reconciler's form: a valid Pending task is marked to admit, nothing built; invalid ones still fail."""
    now = T0 + datetime.timedelta(seconds=1)
    deferred = decide(view(), cluster_exists=True, pods={}, now=now, policy=POLICY, defer_admission=True)
    assert deferred is not None and deferred.admit and deferred.status is None
    eager = run(view())
    assert eager.admit and eager.status["phase"] == "Queued"
    bad = [{"name": "input", "datatype": "FP32", "shape": [1, 3], "data": [1, 2]}]
    failed = decide(view(inputs=bad), cluster_exists=True, pods={}, now=now, policy=POLICY, defer_admission=True)
    assert failed is not None and not failed.admit and failed.status["reason"] == "InvalidInput"
    cancelled = decide(view(cancel=True), cluster_exists=True, pods={}, now=now, policy=POLICY, defer_admission=True)
    assert cancelled is not None and not cancelled.admit and cancelled.status["phase"] == "Cancelled"


def test_missing_cluster_waits_out_the_grace_then_fails() -> None:
    waiting = run(view(), at=1.0, exists=False)
    assert waiting.status is None and waiting.wake_at == T0 + datetime.timedelta(seconds=5)
    failed = run(view(), at=6.0, exists=False)
    assert failed.status["phase"] == "Failed" and failed.status["reason"] == "ClusterNotFound"
    assert "'c' does not exist" in failed.status["message"]


@pytest.mark.parametrize(
    "task",
    [
        view("Queued"),
        view("Queued", status={"attempts": 1, "retryAfter": format_time(T0 + datetime.timedelta(seconds=60))}),
        view("Scheduled", status={"workerRef": {"pod": "w1"}}),
        view("Running", status={"attempts": 1, "workerRef": {"pod": "w1"}}),
    ],
    ids=["queued", "queued in backoff", "scheduled", "running"],
)
def test_a_task_whose_cluster_vanished_fails_cluster_not_found_after_the_grace(task: TaskView) -> None:
    """Not left to its deadline (timeoutSeconds=600 here): a cluster deleted without its cleanup."""
    waiting = run(task, at=1.0, exists=False)
    assert waiting.status is None and waiting.wake_at == T0 + datetime.timedelta(seconds=5)
    failed = run(task, at=6.0, exists=False)
    assert (failed.status["phase"], failed.status["reason"]) == ("Failed", "ClusterNotFound")
    assert failed.status["message"] == "InferenceCluster 'c' was deleted"
    assert failed.event[:2] == ("Warning", "ClusterNotFound")


def test_inconsistent_tensor_fails_with_invalid_input_naming_it() -> None:
    bad = [{"name": "input", "datatype": "FP32", "shape": [1, 3], "data": [1, 2]}]
    action = run(view(inputs=bad))
    assert action.status["phase"] == "Failed" and action.status["reason"] == "InvalidInput"
    assert action.status["message"].startswith("spec.inputs[0]:") and "needs 3 values" in action.status["message"]
    assert validate_inputs({"inputs": [{"name": "i", "datatype": "BYTES", "shape": [1], "data": ["aGk="]}]}) is None


RUNNING = {"attempts": 1, "workerRef": {"pod": "w1"}, "startTime": format_time(T0),
           "history": [{"attempt": 1, "worker": "w1", "startTime": format_time(T0)}]}


def test_deadline_fails_an_unfinished_task() -> None:
    """The move is the lifecycle's expire: same reason and message as the local backend, the attempt closed."""
    action = run(view("Running", status=RUNNING, timeoutSeconds=10), at=11)
    message = lifecycle.deadline_message(10)  # in the user's terms: "timeout of 10 s", never the API field
    assert (action.status["phase"], action.status["reason"], action.status["message"]) == (
        "Failed", "DeadlineExceeded", message)
    assert action.event == ("Warning", "DeadlineExceeded", message)
    assert action.status["completionTime"] == format_time(T0 + datetime.timedelta(seconds=11))
    assert [a.get("outcome") for a in action.status["history"]] == ["DeadlineExceeded"]
    assert run(view("Queued", timeoutSeconds=10), at=3).wake_at == T0 + datetime.timedelta(seconds=10)
    assert run(view("Queued", timeoutSeconds=None), at=3) is None


def test_cancel_ends_the_task() -> None:
    action = run(view("Running", status=RUNNING, cancel=True), at=2)
    assert (action.status["phase"], action.status["reason"], action.status["message"]) == (
        "Cancelled", "Cancelled", "cancelled on request")
    assert action.event == ("Normal", "Cancelled", "cancelled on request")
    assert [a.get("outcome") for a in action.status["history"]] == ["Cancelled"]
    assert action.status["latency"]["runSeconds"] == 2.0


@pytest.mark.parametrize(
    ("pods", "words"),
    [
        ({}, "is gone"),
        ({"w1": PodView(name="w1", phase="Running", ready=False)}, "is not ready"),
        ({"w1": PodView(name="w1", phase="Running", ready=True, deleting=True)}, "is terminating"),
        ({"w1": PodView(name="w1", phase="Failed")}, "ended in phase Failed"),
    ],
)
def test_lost_worker_sends_a_running_task_back_with_backoff(pods: dict[str, PodView], words: str) -> None:
    task = view("Running", status={"attempts": 1, "workerRef": {"pod": "w1"}, "startTime": format_time(T0)})
    action = run(task, pods=pods)
    assert action.status["phase"] == "Queued" and action.status["reason"] == "WorkerLost"
    assert words in action.status["message"] and action.status["workerRef"] is None
    delay = (parse_time(action.status["retryAfter"]) - (T0 + datetime.timedelta(seconds=1))).total_seconds()
    assert 0.5 <= delay <= 1.0  # after attempt 1: nominal 1 s, equal jitter
    assert run(task, pods={"w1": READY}).status is None


def test_lost_worker_spends_an_attempt_of_a_scheduled_task_it_may_have_been_running() -> None:
    # A worker runs a short task unclaimed (no Running write): the Scheduled task a lost pod was
    # running (its head) counts as an attempt started at its assignment.
    scheduled = format_time(T0 + datetime.timedelta(seconds=0.5))
    task = view("Scheduled", status={"attempts": 0, "workerRef": {"pod": "w1"}, "scheduledTime": scheduled})
    action = run(task, pods={}, heads=scheduled_heads([task]))
    assert (action.status["phase"], action.status["reason"], action.status["attempts"]) == ("Queued", "WorkerLost", 1)
    assert action.status["retryAfter"] is not None and action.status["workerRef"] is None
    assert [(h["attempt"], h["worker"], h["startTime"], h["outcome"]) for h in action.status["history"]] == [
        (1, "w1", scheduled, "WorkerLost")]


@pytest.mark.parametrize("pods", [{}, {"w1": PodView(name="w1", phase="Failed")},
                                  {"w1": PodView(name="w1", phase="Running", ready=False, node="n1")}])
def test_a_lost_pod_charges_only_the_scheduled_task_its_worker_was_running(pods: dict[str, PodView]) -> None:
    # Two waiting on a crashed pod: the worker runs the higher priority one first (then the older,
    # then by name), so only that one spends an attempt; the other goes back as it was.
    status = {"attempts": 0, "workerRef": {"pod": "w1"}, "scheduledTime": format_time(T0)}
    low = dataclasses.replace(view("Scheduled", status=status, maxRetries=0), name="a-low")
    high = dataclasses.replace(view("Scheduled", status=status, maxRetries=0, priority=5), name="z-high")
    heads = scheduled_heads([low, high])
    assert heads == {"w1": "z-high"}
    charged, spared = run(high, pods=pods, heads=heads), run(low, pods=pods, heads=heads)
    assert (charged.status["phase"], charged.status["reason"], charged.status["attempts"]) == (
        "Failed", "WorkerLost", 1)
    assert (spared.status["phase"], spared.status["reason"], spared.status["attempts"]) == ("Queued", "WorkerLost", 0)
    assert spared.status.get("retryAfter") is None and not spared.status.get("history")
    # Same priority: the older first, then the name (the worker's own pick order).
    older = dataclasses.replace(low, name="b", created=format_time(T0 - datetime.timedelta(seconds=1)))
    assert scheduled_heads([low, older]) == {"w1": "b"}
    assert scheduled_heads([dataclasses.replace(low, name="b"), low]) == {"w1": "a-low"}


def test_a_lost_pod_running_a_claimed_task_charges_none_of_its_scheduled_ones() -> None:
    # X ran past the claim (Running): the worker runs X, not the waiting Y. X spends its attempt;
    # Y goes back as it was, even with maxRetries 0.
    x = dataclasses.replace(view("Running", status={
        "attempts": 1, "workerRef": {"pod": "w1"}, "startTime": format_time(T0)}, priority=0), name="x")
    y = dataclasses.replace(view("Scheduled", status={
        "attempts": 0, "workerRef": {"pod": "w1"}, "scheduledTime": format_time(T0)}, maxRetries=0, priority=5),
        name="y")
    heads = scheduled_heads([x, y])
    assert heads == {}
    charged, spared = run(x, pods={}, heads=heads), run(y, pods={}, heads=heads)
    assert (charged.status["phase"], charged.status["reason"], charged.status["attempts"]) == (
        "Queued", "WorkerLost", 1)
    assert charged.status["retryAfter"] is not None  # its attempt (counted at its claim) is spent
    assert (spared.status["phase"], spared.status["reason"], spared.status["attempts"]) == ("Queued", "WorkerLost", 0)
    assert spared.status.get("retryAfter") is None and not spared.status.get("history")
    # Another pod's Running task does not spare this pod's head.
    elsewhere = dataclasses.replace(x, worker="w2")
    assert scheduled_heads([elsewhere, y]) == {"w1": "y"}


def test_a_cancelled_task_is_never_a_pods_head() -> None:
    # The worker skips a cancelled task, so it runs the next one: that one is the head.
    status = {"attempts": 0, "workerRef": {"pod": "w1"}, "scheduledTime": format_time(T0)}
    first = dataclasses.replace(view("Scheduled", status=status, priority=5, cancel=True), name="a")
    second = dataclasses.replace(view("Scheduled", status=status), name="b")
    assert first.cancel
    assert scheduled_heads([first, second]) == {"w1": "b"}
    assert scheduled_heads([first]) == {}


def test_a_deleted_pod_gives_its_scheduled_tasks_back_without_spending_an_attempt() -> None:
    # Scale-down, a rolling update and suspend delete pods without a drain: the worker finishes what
    # it runs and leaves; the tasks waiting on it are innocent, even with maxRetries 0.
    status = {"attempts": 0, "workerRef": {"pod": "w1"}, "scheduledTime": format_time(T0)}
    task = view("Scheduled", status=status, maxRetries=0)
    for ready in (True, False):
        deleting = {"w1": PodView(name="w1", phase="Running", ready=ready, node="n1", deleting=True)}
        action = run(task, pods=deleting, heads=scheduled_heads([task]))
        assert (action.status["phase"], action.status["reason"], action.status["attempts"]) == (
            "Queued", "WorkerDrained", 0)
        assert "is terminating" in action.status["message"] and action.status.get("retryAfter") is None


def test_a_batch_shard_scheduled_on_a_lost_pod_spends_no_attempt() -> None:
    # A shard is claimed (Running) before it runs: Scheduled, it never ran.
    status = {"attempts": 0, "workerRef": {"pod": "w1"}, "scheduledTime": format_time(T0)}
    shard = view("Scheduled", status=status, maxRetries=0, batch={"shard": {"parent": "b", "index": 0}})
    assert scheduled_heads([shard]) == {}
    for heads in (None, {"w1": "t"}):
        action = run(shard, pods={}, heads=heads)
        assert (action.status["phase"], action.status["reason"], action.status["attempts"]) == (
            "Queued", "WorkerLost", 0)


def test_input_that_kills_every_worker_it_is_scheduled_on_ends_failed() -> None:
    # maxRetries=2: the third worker lost while the task is Scheduled on it is the last attempt.
    status: dict[str, Any] = {"attempts": 0}
    for attempt in (1, 2, 3):
        status = {**status, "phase": "Scheduled", "workerRef": {"pod": f"w{attempt}"},
                  "scheduledTime": format_time(T0)}  # fmt: skip
        action = run(view("Scheduled", status=status), pods={}, heads={f"w{attempt}": "t"})
        status = {**status, **action.status}
        assert status["attempts"] == attempt
    assert (status["phase"], status["reason"]) == ("Failed", "WorkerLost")
    assert "no retries left after 3 attempt(s)" in status["message"]


def test_retries_are_exhausted_after_max_retries() -> None:
    task = view("Running", status={"attempts": 3, "workerRef": {"pod": "w1"}})  # maxRetries=2: 3 attempts
    action = run(task, pods={})
    assert (action.status["phase"], action.status["reason"]) == ("Failed", "WorkerLost")
    assert "no retries left after 3 attempt(s)" in action.status["message"]


def test_queued_task_waits_for_its_backoff() -> None:
    retry = T0 + datetime.timedelta(seconds=4)
    action = run(view("Queued", status={"retryAfter": format_time(retry)}), at=2)
    assert action.status is None and action.wake_at == retry


def test_ttl_deletes_finished_tasks_only_when_due() -> None:
    finished = {"completionTime": format_time(T0 + datetime.timedelta(seconds=2))}
    task = view("Succeeded", status=finished, ttlSecondsAfterFinished=5)
    assert run(task, at=3).wake_at == T0 + datetime.timedelta(seconds=7)
    assert run(task, at=8).delete is True
    assert run(view("Succeeded", status=finished), at=1000) is None


def test_the_operator_default_ttl_applies_where_the_spec_sets_none() -> None:
    finished = {"completionTime": format_time(T0 + datetime.timedelta(seconds=2))}
    now = T0 + datetime.timedelta(seconds=100)

    def decided(task: TaskView, default: int | None) -> Any:
        return decide(task, cluster_exists=True, pods={}, now=now, policy=POLICY, default_ttl_seconds=default)

    assert decided(view("Succeeded", status=finished), 60).delete is True
    assert decided(view("Succeeded", status=finished), 600).wake_at == T0 + datetime.timedelta(seconds=602)
    assert decided(view("Succeeded", status=finished), None) is None  # --finished-task-ttl -1 keeps it
    assert decided(view("Succeeded", status=finished, ttlSecondsAfterFinished=1000), 60).delete is False  # spec wins
    same = view("Succeeded", status=finished)  # one view asked again and again, as on every pass: its memo
    assert [getattr(decided(same, ttl), "delete", None) for ttl in (600, 600, 60, None, 600)] == [
        False, False, True, None, False]
    assert decided(same, 600).wake_at == T0 + datetime.timedelta(seconds=602)


def _workers(*specs: tuple[str, int, int]) -> list[WorkerInfo]:
    return [WorkerInfo(id=i, assigned=a, capacity=c, vram_mib=8192, gpu_family="polaris") for i, a, c in specs]


def test_assignments_go_by_priority_then_age_and_respect_capacity() -> None:
    def queued(name: str, priority: int, second: int) -> TaskView:
        return TaskView(namespace="ns", name=name, phase=Phase.QUEUED, priority=priority,
                        created=format_time(T0 + datetime.timedelta(seconds=second)))

    tasks = [queued("old-low", 0, 0), queued("new-high", 5, 9), queued("old-high", 5, 1), queued("newest", 0, 10)]
    plan = plan_assignments(tasks, _workers(("a", 0, 1), ("b", 1, 2)), make_strategy("least-loaded"), T0)
    assert [t.name for t, _ in plan] == ["old-high", "new-high"]
    assert sorted(w.id for _, w in plan) == ["a", "b"]


def test_tasks_waiting_for_capabilities_do_not_block_others() -> None:
    needy = TaskView(namespace="ns", name="needy", phase=Phase.QUEUED, priority=9, created=format_time(T0),
                     requirements=Requirements(min_vram_mib=16384))
    plain = TaskView(namespace="ns", name="plain", phase=Phase.QUEUED, created=format_time(T0))
    plan = plan_assignments([needy, plain], _workers(("a", 0, 2)), make_strategy("capability-match"), T0)
    assert [t.name for t, _ in plan] == ["plain"]


def test_status_builders_follow_the_state_machine() -> None:
    created = format_time(T0)
    queued = {"phase": "Queued", "attempts": 0}
    scheduled = assigned_status(queued, pod="w1", node="n1", now=T0)
    assert scheduled["attempts"] == 0 and scheduled["workerRef"] == {"pod": "w1", "node": "n1"}
    running = running_status({**queued, **scheduled}, pod="w1", now=T0 + datetime.timedelta(seconds=2))
    assert running["attempts"] == 1
    done = terminal_status(
        {**queued, **scheduled, **running}, created=created, phase=Phase.SUCCEEDED, reason=Reason.COMPLETED,
        message="ok", now=T0 + datetime.timedelta(seconds=5), result={"top_k": []},
    )
    assert done["latency"] == {"queueSeconds": 2.0, "runSeconds": 3.0, "totalSeconds": 5.0}
    with pytest.raises(ConflictError):
        running_status({"phase": "Succeeded"}, pod="w1", now=T0)
    with pytest.raises(ConflictError):
        assigned_status({"phase": "Pending"}, pod="w1", node=None, now=T0)
    with pytest.raises(ConflictError):
        requeue_status({"phase": "Failed", "attempts": 1}, created=created, max_retries=3,
                       reason=Reason.WORKER_LOST, message="x", now=T0, policy=POLICY)


def test_a_task_ending_on_the_requeue_path_needs_the_time_it_ended() -> None:
    # The requeue path's terminal branch writes completionTime from ``now``: without it, it fails
    # rather than writing a 1970 completionTime from a record that has none.
    spent = lifecycle.requeue_or_fail(
        lifecycle.start(contract.status_record({"phase": "Scheduled", "attempts": 0, "workerRef": {"pod": "w1"}},
                                               created=format_time(T0), max_retries=0),
                        worker_id="w1", now=T0.timestamp()),
        reason=Reason.WORKER_LOST, why="gone", now=T0.timestamp() + 1, policy=POLICY,
    )
    assert spent.terminal
    with pytest.raises(ValueError, match="needs the time it ended"):
        contract._requeued({}, dataclasses.replace(spent, finished_at=None), created=format_time(T0), now=None)
    ended = contract._requeued({}, spent, created=format_time(T0), now=T0 + datetime.timedelta(seconds=1))
    assert ended["phase"] == "Failed" and parse_time(ended["completionTime"]) == T0 + datetime.timedelta(seconds=1)


def test_draining_worker_gives_back_waiting_tasks_but_keeps_running_ones() -> None:
    draining = {"w1": PodView(name="w1", phase="Running", ready=True, node="n1", draining=True)}
    waiting = run(view("Scheduled", status={"attempts": 0, "workerRef": {"pod": "w1"}}), pods=draining)
    assert (waiting.status["phase"], waiting.status["reason"]) == ("Queued", "WorkerDrained")
    running = run(view("Running", status={"attempts": 1, "workerRef": {"pod": "w1"}}), pods=draining)
    assert running.status is None


def _merged(status: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """A JSON merge patch of status fields (None removes one), as the API server applies it."""
    out = dict(status)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


@pytest.mark.parametrize("error", [None, RuntimeError("the API went away"), ValueError("bad input")])
@pytest.mark.parametrize("attempts", [0, 2])
def test_a_start_reported_with_its_outcome_is_a_claim_then_a_report(error: Exception | None, attempts: int) -> None:
    # The worker's one write for an unclaimed run must leave exactly what the claim and the report
    # would have (the same attempts, history, times, backoff), drawn with the same seeded rng.
    created = format_time(T0)
    outcome = lifecycle.classify(error, worker="w1")
    assigned = _merged({"phase": "Queued", "attempts": attempts}, assigned_status(
        {"phase": "Queued", "attempts": attempts}, pod="w1", node="n1", now=T0 + datetime.timedelta(seconds=1)))
    started, ended = T0 + datetime.timedelta(seconds=2), T0 + datetime.timedelta(seconds=3)
    kwargs: dict[str, Any] = {"created": created, "max_retries": 2, "now": ended, "policy": POLICY,
                              "result": {"top_k": []}, "compute_ms": 5.0}  # fmt: skip
    claimed = _merged(assigned, running_status(assigned, pod="w1", now=started))
    two_writes = _merged(claimed, report_status(claimed, outcome, rng=random.Random(3), **kwargs))
    one_write = _merged(assigned, report_status(
        assigned, outcome, unclaimed=("w1", started), rng=random.Random(3), **kwargs))
    assert one_write == two_writes
    assert one_write["attempts"] == attempts + 1 and one_write["history"][-1]["reported"] is True
