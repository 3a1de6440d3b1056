"""Faults: workers lost mid-task, retries and their limit, stale results, operator restarts and failover.

The API server and the nodes are stand-ins (see operator_harness). A killed
worker is played by cutting its loop off from the API (a thread cannot be
killed) while the simulated kubelet reports its pod Failed; a slow task is
played by holding the real runner behind a gate.
"""

from __future__ import annotations

import asyncio
from typing import Any

from operator_harness import FAST, NS, Deployment, cluster_manifest, events_when, eventually, phase, task_manifest

FLAT = {"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0.0] * 64}


async def _when(dep: Deployment, name: str, *phases: str) -> dict[str, Any] | None:
    body = await dep.task(name)
    return body if phase(body) in phases else None


async def _ready(dep: Deployment, cluster: str, count: int) -> bool:
    body = await dep.cluster(cluster)
    return ((body or {}).get("status") or {}).get("readyWorkers") == count


async def test_lost_worker_task_is_retried_elsewhere(dep: Deployment) -> None:
    await dep.start_operator()
    await dep.create(cluster_manifest("c", replicas=2, tasksPerWorker=1))
    await eventually(lambda: _ready(dep, "c", 2), what="2 ready workers")
    dep.gate.clear()
    await dep.create(task_manifest("t", "c", [FLAT], maxRetries=2))
    running = await eventually(lambda: _when(dep, "t", "Running"), what="task running")
    first = running["status"]["workerRef"]["pod"]
    await dep.kill_worker(first)
    requeued = await eventually(lambda: _when(dep, "t", "Queued", "Scheduled", "Running", "Succeeded"), what="requeue")
    dep.gate.set()
    done = await eventually(lambda: _when(dep, "t", "Succeeded", "Failed"), what="task finished")
    status = done["status"]
    assert phase(done) == "Succeeded" and status["attempts"] == 2, status
    assert status["workerRef"]["pod"] != first
    assert requeued["status"]["attempts"] >= 1
    events = await events_when(dep, "t", lambda evs: any(e["reason"] == "WorkerLost" for e in evs),
                               what="a WorkerLost Event")
    assert [e["reason"] for e in events].count("WorkerLost") == 1  # and no Event for the success
    assert "Completed" not in [e["reason"] for e in events]


async def test_retries_run_out(dep: Deployment) -> None:
    await dep.start_operator()
    await dep.create(cluster_manifest("c", replicas=1, tasksPerWorker=1))
    await eventually(lambda: _ready(dep, "c", 1), what="1 ready worker")
    dep.gate.clear()
    await dep.create(task_manifest("t", "c", [FLAT], maxRetries=0))
    running = await eventually(lambda: _when(dep, "t", "Running"), what="task running")
    await dep.kill_worker(running["status"]["workerRef"]["pod"])
    done = await eventually(lambda: _when(dep, "t", "Failed", "Succeeded"), what="task failed")
    dep.gate.set()
    assert (phase(done), done["status"]["reason"]) == ("Failed", "WorkerLost")
    assert "no retries left after 1 attempt(s)" in done["status"]["message"]


async def test_unready_worker_gives_back_its_tasks_and_its_late_result_is_refused(dep: Deployment) -> None:
    await dep.start_operator()
    await dep.create(cluster_manifest("c", replicas=2, tasksPerWorker=2))
    await eventually(lambda: _ready(dep, "c", 2), what="2 ready workers")
    dep.gate.clear()
    names = [f"t{i}" for i in range(4)]
    for name in names:
        await dep.create(task_manifest(name, "c", [FLAT]))

    async def one_pod_with_running_and_scheduled() -> tuple[str, str, str] | None:
        bodies = [await dep.task(n) for n in names]
        for body in bodies:
            if phase(body) != "Running":
                continue
            pod = body["status"]["workerRef"]["pod"]
            waiting = [b for b in bodies if phase(b) == "Scheduled" and b["status"]["workerRef"]["pod"] == pod]
            if waiting:
                return pod, body["metadata"]["name"], waiting[0]["metadata"]["name"]
        return None

    pod, was_running, was_scheduled = await eventually(one_pod_with_running_and_scheduled, what="a busy worker")
    assert dep.nodes is not None
    await dep.nodes.unready_pod(NS, pod)
    await eventually(lambda: _when(dep, was_scheduled, "Queued", "Scheduled", "Running"), what="given back")
    await eventually(lambda: _when(dep, was_running, "Queued"), what="running task requeued")
    dep.gate.set()  # the unready worker now finishes its run, too late: its result must be refused
    for name in names:
        await eventually(lambda n=name: _when(dep, n, "Succeeded", "Failed"), what=f"{name} finished")
    bodies = {n: await dep.task(n) for n in names}
    assert all(phase(b) == "Succeeded" for b in bodies.values())
    # The worker was running its Running task, not the one waiting: only the Running one spends an
    # attempt (tests/operator/test_operator_taskstate.py has the Scheduled head a lost pod is charged).
    assert bodies[was_scheduled]["status"]["attempts"] == 1
    assert all(h["worker"] != pod for h in bodies[was_scheduled]["status"]["history"])
    assert bodies[was_running]["status"]["attempts"] == 2
    assert bodies[was_running]["status"]["workerRef"]["pod"] != pod
    assert [e["reason"] for e in await dep.events(was_running)] == ["WorkerLost"]  # no success Event, no second report


async def test_operator_restart_resumes_without_duplicates(dep: Deployment) -> None:
    first = await dep.start_operator()
    await dep.create(cluster_manifest("c", replicas=2, tasksPerWorker=2))
    await eventually(lambda: _ready(dep, "c", 2), what="2 ready workers")
    pods = {p["metadata"]["name"] for p in await dep.pods("c")}
    dep.gate.clear()
    names = [f"t{i}" for i in range(6)]
    for name in names:
        await dep.create(task_manifest(name, "c", [FLAT]))

    async def four_assigned() -> bool:
        phases = [phase(await dep.task(n)) for n in names]
        return sum(p in ("Scheduled", "Running") for p in phases) == 4

    await eventually(four_assigned, what="4 tasks on workers, 2 queued")
    await first.close()
    dep.gate.set()  # the workers go on without the operator
    await eventually(lambda: _when(dep, "t0", "Succeeded"), what="a task done while the operator is down")
    await dep.start_operator()
    for name in names:
        await eventually(lambda n=name: _when(dep, n, "Succeeded", "Failed"), what=f"{name} finished")
    bodies = [await dep.task(n) for n in names]
    assert [phase(b) for b in bodies] == ["Succeeded"] * 6
    assert [b["status"]["attempts"] for b in bodies] == [1] * 6
    assert {p["metadata"]["name"] for p in await dep.pods("c")} == pods
    assert [e["reason"] for e in await dep.events("c")].count("WorkerCreated") == 2


async def test_only_the_lease_holder_acts_and_a_standby_takes_over(dep: Deployment) -> None:
    from dataclasses import replace

    leader = await dep.start_operator(replace(FAST, leader_election=True, identity="replica-a"))
    standby = await dep.start_operator(replace(FAST, leader_election=True, identity="replica-b"), wait_ready=False)
    await dep.create(cluster_manifest("c", replicas=1))
    await eventually(lambda: _ready(dep, "c", 1), what="cluster reconciled by the leader")
    await dep.create(task_manifest("before-failover", "c", [FLAT]))
    await eventually(lambda: _when(dep, "before-failover", "Succeeded"), what="task before failover")
    lease = await dep.api.get("coordination.k8s.io", "v1", "leases", NS, "legacygpu-operator")
    assert lease["spec"]["holderIdentity"] == "replica-a"
    assert not standby.ready.is_set() and standby.runtime is not None and not standby.runtime.wakers
    assert leader.runtime is not None and leader.runtime.metrics.leader._value.get() == 1
    # Only the leader watches tasks (the operator's own watch runs with kopf, after the Lease).
    assert leader.runtime.tasks.synced.is_set() and len(leader.runtime.tasks) == 1
    assert not standby.runtime.tasks.synced.is_set() and len(standby.runtime.tasks) == 0

    await leader.close()
    await standby.wait_ready()
    await dep.create(task_manifest("after-failover", "c", [FLAT]))
    done = await eventually(lambda: _when(dep, "after-failover", "Succeeded", "Failed"), what="task after failover")
    assert phase(done) == "Succeeded"
    assert len(standby.runtime.tasks) == 2  # the new leader listed the task from before the failover
    lease = await dep.api.get("coordination.k8s.io", "v1", "leases", NS, "legacygpu-operator")
    assert lease["spec"]["holderIdentity"] == "replica-b" and lease["spec"]["leaseTransitions"] == 1
    assert len(await dep.pods("c")) == 1


async def test_a_leader_that_loses_its_lease_ends_with_an_error_and_a_stopped_one_does_not(dep: Deployment) -> None:
    """Lease lost: run_operator raises, so `legacygpu operator run` exits non-zero and its pod restarts."""
    from dataclasses import replace

    from legacygpu.core.kube.contract import format_time, now_utc
    from legacygpu.operator.errors import LeadershipLostError

    leader = await dep.start_operator(replace(FAST, leader_election=True, identity="replica-a"))
    leases = ("coordination.k8s.io", "v1", "leases", NS, "legacygpu-operator")
    lease = await dep.api.get(*leases)
    stolen = {"holderIdentity": "intruder", "renewTime": format_time(now_utc()), "leaseDurationSeconds": 3600}
    await dep.api.patch(*leases, {"spec": stolen})
    await eventually(leader.done.is_set, what="the leader to stop after losing its lease")
    assert isinstance(leader.error, LeadershipLostError), leader.error
    assert "legacygpu-operator" in str(leader.error) and lease["spec"]["holderIdentity"] == "replica-a"

    await dep.api.patch(*leases, {"spec": {"holderIdentity": None}})
    other = await dep.start_operator(replace(FAST, leader_election=True, identity="replica-b"))
    await other.close()  # a stop (SIGTERM) is a clean exit
    assert other.done.is_set() and other.error is None


async def test_a_leader_that_loses_its_lease_stops_acting_before_kopf_stops(
    dep: Deployment, monkeypatch: Any
) -> None:
    """kopf takes a while to wind down: meanwhile the old leader must neither watch nor write anything.

    kopf here is slow to take its stop flag (its daemons, pod events and finalizers go on), so the
    cluster's loop could still act on its frozen index: a lost worker must not be replaced, nor its
    task taken back, by a replica that no longer leads.
    """
    import threading
    from dataclasses import replace

    import kopf

    from legacygpu.core.kube.contract import format_time, now_utc
    from legacygpu.operator import task_handlers
    from legacygpu.operator.taskwatch import TaskWatch

    watches: list[TaskWatch] = []
    listed: list[str | None] = []  # the scopes of the listings the watch delivered
    make = task_handlers.make_task_watch

    def counting(rt: Any) -> TaskWatch:
        watch = make(rt)
        deliver = watch.on_listing

        def listing(scope: str | None, *rest: Any) -> None:
            listed.append(scope)
            deliver(scope, *rest)

        watch.on_listing = listing
        watches.append(watch)
        return watch

    def alive() -> bool:
        return any(thread.is_alive() for thread in watches[0]._threads)

    monkeypatch.setattr(task_handlers, "make_task_watch", counting)
    told_to_stop, may_stop = threading.Event(), threading.Event()
    at_stop: list[tuple[bool, bool]] = []  # (watch halted, runtime closing) when kopf was told to stop
    run_kopf = kopf.operator

    async def slow_kopf(**options: Any) -> None:
        told, slow_flag = options["stop_flag"], asyncio.Event()

        async def relay() -> None:
            await told.wait()
            at_stop.append((watches[0]._stop.is_set(), leader.runtime is not None and leader.runtime.closing))
            told_to_stop.set()
            await asyncio.to_thread(may_stop.wait, 30)
            slow_flag.set()

        relaying = asyncio.ensure_future(relay())
        try:
            await run_kopf(**{**options, "stop_flag": slow_flag})
        finally:
            relaying.cancel()

    monkeypatch.setattr(kopf, "operator", slow_kopf)
    leader = await dep.start_operator(replace(FAST, leader_election=True, identity="replica-a"))
    try:
        rt = leader.runtime
        assert rt is not None and watches and alive()
        await dep.create(cluster_manifest("c", replicas=1, tasksPerWorker=1))
        await eventually(lambda: _ready(dep, "c", 1), what="1 ready worker")
        dep.gate.clear()
        await dep.create(task_manifest("t", "c", [FLAT]))
        running = await eventually(lambda: _when(dep, "t", "Running"), what="task running")
        pod = running["status"]["workerRef"]["pod"]
        late: list[str] = []  # the leader's writes once it closed
        for method in ("patch_task_status", "delete_task", "create_pod", "delete_pod", "patch_cluster_status"):
            real = getattr(rt.api, method)

            def noted(*args: Any, _real: Any = real, _method: str = method, **kwargs: Any) -> Any:
                if rt.closing:
                    late.append(_method)
                return _real(*args, **kwargs)

            monkeypatch.setattr(rt.api, method, noted)
        listings = len(listed)
        leases = ("coordination.k8s.io", "v1", "leases", NS, "legacygpu-operator")
        stolen = {"holderIdentity": "intruder", "renewTime": format_time(now_utc()), "leaseDurationSeconds": 3600}
        await dep.api.patch(*leases, {"spec": stolen})
        await eventually(told_to_stop.is_set, what="kopf to be told to stop after the lease was lost")
        assert at_stop == [(True, True)]  # the watch halted and the runtime closed before kopf was told
        await eventually(lambda: not alive(), what="the task watch's threads to end")
        # While kopf winds down: the worker dies (its pod event still reaches kopf), and a task of no
        # known cluster is created. No replica leads: nobody replaces the pod or settles either task.
        await dep.kill_worker(pod)
        await dep.create(task_manifest("unled", "nowhere", [FLAT]))
        await asyncio.sleep(FAST.cluster_not_found_grace_seconds + 1.0)
        assert phase(await dep.task("unled")) in (None, "Pending")
        after = await dep.task("t")
        assert after is not None and phase(after) == "Running" and after["status"]["workerRef"]["pod"] == pod
        assert [p["metadata"]["name"] for p in await dep.pods("c")] == [pod]
        assert late == [] and len(listed) == listings and not rt.orphan_checks
    finally:
        may_stop.set()
        dep.gate.set()
    await eventually(leader.done.is_set, what="the old leader to end")


async def test_the_operator_is_ready_only_once_its_tasks_are_listed(dep: Deployment, monkeypatch: Any) -> None:
    import threading

    from legacygpu.operator.taskwatch import TaskWatch

    listable = threading.Event()
    list_tasks = TaskWatch._list

    def gated(self: TaskWatch, *args: Any) -> str:
        if not listable.is_set():
            raise RuntimeError("refused on purpose")
        return list_tasks(self, *args)

    monkeypatch.setattr(TaskWatch, "_list", gated)
    operator = await dep.start_operator(wait_ready=False)
    await eventually(lambda: operator.runtime is not None, what="the runtime")
    rt = operator.runtime
    assert rt is not None
    await eventually(lambda: rt.metrics.task_watch_restarts.labels("list_failed")._value.get() >= 3,
                     what="a few refused listings")
    assert not operator.ready.is_set() and not rt.tasks.synced.is_set()
    listable.set()
    await operator.wait_ready()
    assert rt.tasks.synced.is_set()


def test_operator_run_exits_non_zero_when_the_lease_is_lost(monkeypatch: Any) -> None:
    """The CLI's exit status: 1 after a lost Lease (the pod restarts), 0 after a clean stop."""
    from click.testing import CliRunner

    import legacygpu.operator.app as app
    from legacygpu.cli import main
    from legacygpu.operator.errors import LeadershipLostError

    async def lost(*_: Any, **__: Any) -> None:
        raise LeadershipLostError("lost the lease default/legacygpu-operator")

    async def stopped(*_: Any, **__: Any) -> None:
        return None

    args = ["operator", "run", "--server", "http://127.0.0.1:9", "--no-metrics"]
    monkeypatch.setattr(app, "run_operator", lost)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and "Error: lost the lease default/legacygpu-operator" in result.output, result.output
    assert "Traceback" not in result.output
    monkeypatch.setattr(app, "run_operator", stopped)
    assert CliRunner().invoke(main, args).exit_code == 0


async def test_tasks_of_a_cluster_removed_past_its_finalizer_fail_cluster_not_found(dep: Deployment) -> None:
    """A cluster that vanishes without the operator's finalizer running (removed by hand, then deleted)."""
    from legacygpu.core.kube.contract import CLUSTER_PLURAL

    await dep.start_operator()
    await dep.create(cluster_manifest("c", replicas=1, suspend=True))  # suspended: its tasks wait in Queued
    for name in ("q1", "q2"):
        await dep.create(task_manifest(name, "c", [FLAT]))
    for name in ("q1", "q2"):
        await eventually(lambda n=name: _when(dep, n, "Queued"), what=f"{name} queued")
    await asyncio.to_thread(dep.emulator.force_delete, CLUSTER_PLURAL, NS, "c")
    for name in ("q1", "q2"):
        body = await eventually(lambda n=name: _when(dep, n, "Failed"), what=f"{name} failed")
        assert body["status"]["reason"] == "ClusterNotFound" and "'c'" in body["status"]["message"], body["status"]
