"""The pieces under the operator that talk to the API: the emulator's semantics, the Lease, the worker's claim.

These run against :class:`ApiServerEmulator` over HTTP (there is no kube-apiserver on these
machines); the e2e tier repeats the Lease and claim checks on the real one.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
from collections.abc import Iterator
from typing import Any

import kubernetes
import pytest
from operator_harness import eventually

from legacygpu.core.kube.client import KubeApi, load_configuration
from legacygpu.core.kube.contract import LABEL_WORKER, TASK_PLURAL, format_time, now_utc
from legacygpu.core.kube.errors import ApiConflictError, ApiNotFoundError
from legacygpu.operator.crdgen import all_crds
from legacygpu.operator.leader import LeaseElector
from legacygpu.testing.emulator import EmulatorThread

G, V, NS = "legacygpu.io", "v1alpha1", "default"


@pytest.fixture
def server() -> Iterator[EmulatorThread]:
    with EmulatorThread(all_crds()) as running:
        yield running


@pytest.fixture
async def api(server: EmulatorThread) -> Any:
    client = KubeApi(load_configuration(server=server.url))
    yield client
    client.close()


def task(name: str, **status: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{G}/{V}", "kind": "InferenceTask", "metadata": {"name": name},
        "spec": {"clusterRef": "c", "model": "digits",
                 "inputs": [{"name": "input", "datatype": "FP32", "shape": [1], "data": [1.0]}]},
        **({"status": status} if status else {}),
    }


async def test_emulator_versions_conflicts_and_subresources(api: KubeApi) -> None:
    created = await api.create(G, V, TASK_PLURAL, NS, task("t", phase="Running"))
    meta = created["metadata"]
    assert meta["uid"] and meta["generation"] == 1 and meta["creationTimestamp"]
    assert "status" not in created  # the status subresource ignores status on create... and on patch:
    patched = await api.patch(G, V, TASK_PLURAL, NS, "t", {"spec": {"priority": 5}, "status": {"phase": "X"}})
    assert patched["metadata"]["generation"] == 2 and "status" not in patched
    version = patched["metadata"]["resourceVersion"]
    status = await api.patch_task_status(NS, "t", {"phase": "Queued"}, resource_version=version)
    assert status["status"]["phase"] == "Queued" and status["metadata"]["generation"] == 2
    with pytest.raises(ApiConflictError, match="the object has been modified"):
        await api.patch_task_status(NS, "t", {"phase": "Failed"}, resource_version=version)
    await api.patch_task_labels(NS, "t", {LABEL_WORKER: "pod-a"})
    await api.create(G, V, TASK_PLURAL, NS, task("u"))

    async def names(selector: str) -> list[str]:
        return [t["metadata"]["name"] for t in await api.list(G, V, TASK_PLURAL, NS, label_selector=selector)]

    assert await names(f"{LABEL_WORKER}=pod-a") == ["t"]
    assert await names(f"!{LABEL_WORKER}") == ["u"]


async def test_emulator_collects_garbage_by_owner(api: KubeApi) -> None:
    owner = await api.create(G, V, TASK_PLURAL, NS, task("owner"))
    ref = {"apiVersion": f"{G}/{V}", "kind": "InferenceTask", "name": "owner", "uid": owner["metadata"]["uid"]}
    await api.create("", "v1", "configmaps", NS, {"metadata": {"name": "dep", "ownerReferences": [ref]}, "data": {}})
    await api.delete_task(NS, "owner")
    with pytest.raises(ApiNotFoundError):
        await api.get("", "v1", "configmaps", NS, "dep")


def elector(api: KubeApi, identity: str) -> LeaseElector:
    return LeaseElector(api, namespace=NS, name="lease", identity=identity, lease_seconds=1.0, renew_seconds=0.2)


async def test_lease_one_holder_release_and_expiry(api: KubeApi) -> None:
    a, b = elector(api, "a"), elector(api, "b")
    assert await a.try_acquire() is True
    assert await b.try_acquire() is False
    assert await a.try_acquire() is True  # renewal
    await a.release()
    assert await b.try_acquire() is True
    lease = await api.get("coordination.k8s.io", "v1", "leases", NS, "lease")
    assert lease["spec"]["holderIdentity"] == "b" and lease["spec"]["leaseTransitions"] == 1
    await asyncio.sleep(1.2)  # b stops renewing: its lease expires
    assert await a.try_acquire() is True
    lost = asyncio.Event()
    keeper = asyncio.ensure_future(b.keep(lost))
    await asyncio.wait_for(lost.wait(), timeout=5)  # b learns it lost the lease
    keeper.cancel()


async def test_lease_race_for_an_expired_lease_has_one_winner(api: KubeApi) -> None:
    stale = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "lease"},
             "spec": {"holderIdentity": "gone", "leaseDurationSeconds": 1, "renewTime": "2020-01-01T00:00:00.000000Z"}}
    await api.create("coordination.k8s.io", "v1", "leases", NS, stale)
    results = await asyncio.gather(*(elector(api, f"r{i}").try_acquire() for i in range(4)))
    assert sorted(results) == [False, False, False, True]


class _Runner:
    """Records calls; the claim and finish rules under test do not depend on what runs."""

    backend = None

    def __init__(self) -> None:
        self.calls = 0

    def run(self, model: str, inputs: list[dict[str, Any]], parameters: Any = None) -> dict[str, Any]:
        self.calls += 1
        return {"model": model, "outputs": [], "top_k": [{"label": "x", "index": 0, "score": 1.0}]}

    def loaded_models(self) -> list[str]:
        return []


def _worker(server: EmulatorThread, pod: str, runner: _Runner) -> Any:
    from legacygpu.worker.kube import KubeWorker

    client = kubernetes.client.ApiClient(load_configuration(server=server.url))
    return KubeWorker(api_client=client, pod_name=pod, namespace=NS, runner=runner)


async def _scheduled(api: KubeApi, name: str, pod: str, attempts: int = 0) -> dict[str, Any]:
    await api.create(G, V, TASK_PLURAL, NS, task(name))
    return await api.patch_task_status(NS, name, {
        "phase": "Scheduled", "attempts": attempts, "workerRef": {"pod": pod}, "scheduledTime": format_time(now_utc()),
    })


async def test_two_claims_on_one_attempt_have_one_winner(server: EmulatorThread, api: KubeApi) -> None:
    body = await _scheduled(api, "t", "pod-a")
    runner = _Runner()
    first, second = _worker(server, "pod-a", runner), _worker(server, "pod-a", runner)
    won = await asyncio.to_thread(first.claim, copy.deepcopy(body))
    lost = await asyncio.to_thread(second.claim, copy.deepcopy(body))  # same resourceVersion: 409, then not ours
    assert won is not None and won["status"]["phase"] == "Running" and won["status"]["attempts"] == 1
    assert lost is None
    assert (await api.get_task(NS, "t"))["status"]["attempts"] == 1


async def test_result_of_a_stale_attempt_is_refused(server: EmulatorThread, api: KubeApi) -> None:
    body = await _scheduled(api, "t", "pod-a")
    runner = _Runner()
    worker_a = _worker(server, "pod-a", runner)
    claimed = await asyncio.to_thread(worker_a.claim, body)
    # Meanwhile the operator took the task back and pod-b started attempt 2.
    now = format_time(now_utc())
    await api.patch_task_status(NS, "t", {"phase": "Queued", "workerRef": None})
    await api.patch_task_status(NS, "t", {"phase": "Scheduled", "workerRef": {"pod": "pod-b"}, "scheduledTime": now})
    await api.patch_task_status(NS, "t", {"phase": "Running", "attempts": 2, "startTime": now})
    before = await api.get_task(NS, "t")

    def build(status: dict[str, Any], created: str | None) -> dict[str, Any]:
        return {"phase": "Succeeded", "reason": "Completed", "message": "late"}

    assert await asyncio.to_thread(worker_a.finish, claimed, build) is False
    after = await api.get_task(NS, "t")
    assert after["status"] == before["status"]


async def test_worker_serves_health_and_runs_its_own_tasks_only(server: EmulatorThread, api: KubeApi) -> None:
    import threading

    import httpx
    from helpers import free_port

    from legacygpu.worker.kube import run_kube_worker

    port, stop, runner = free_port(), threading.Event(), _Runner()
    client = kubernetes.client.ApiClient(load_configuration(server=server.url))
    thread = threading.Thread(target=run_kube_worker, kwargs={
        "pod_name": "pod-a", "namespace": NS, "backend": "onnxruntime", "model_dir": ".", "api_client": client,
        "stop_event": stop, "health_port": port, "runner": runner,
    })
    await api.create("", "v1", "pods", NS, {"metadata": {"name": "pod-a"}, "spec": {"containers": []}})
    thread.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            for _ in range(100):
                try:
                    if (await http.get("/readyz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.05)
            assert (await http.get("/readyz")).status_code == 200 and (await http.get("/healthz")).status_code == 200
        await _scheduled(api, "mine", "pod-a")
        await _scheduled(api, "theirs", "pod-b")
        for _ in range(200):
            if ((await api.get_task(NS, "mine")).get("status") or {}).get("phase") == "Succeeded":
                break
            await asyncio.sleep(0.05)
        assert (await api.get_task(NS, "mine"))["status"]["phase"] == "Succeeded"
        assert (await api.get_task(NS, "theirs"))["status"]["phase"] == "Scheduled"
        assert runner.calls == 1
        for _ in range(300):  # stats are published at most every STATS_INTERVAL (5 s)
            pod = await api.get("", "v1", "pods", NS, "pod-a")
            if '"completed": 1' in pod["metadata"]["annotations"]["legacygpu.io/worker-stats"]:
                break
            await asyncio.sleep(0.05)
        assert '"completed": 1' in pod["metadata"]["annotations"]["legacygpu.io/worker-stats"]
    finally:
        stop.set()
        await asyncio.to_thread(thread.join, 10)


class _Writes:
    """The status writes a worker makes (its real ``patch_status``, recorded)."""

    def __init__(self, worker: Any) -> None:
        self.statuses: list[dict[str, Any]] = []
        real = worker.patch_status

        def patch_status(name: str, status: dict[str, Any], resource_version: str) -> dict[str, Any]:
            self.statuses.append(dict(status))
            return real(name, status, resource_version)  # type: ignore[no-any-return]

        worker.patch_status = patch_status


async def test_a_short_task_is_reported_in_one_write_that_records_its_start(
    server: EmulatorThread, api: KubeApi
) -> None:
    body = await _scheduled(api, "t", "pod-a")
    worker = _worker(server, "pod-a", _Runner())
    writes = _Writes(worker)
    await asyncio.to_thread(worker.execute, body)
    assert [s["phase"] for s in writes.statuses] == ["Succeeded"]  # no Running claim
    status = (await api.get_task(NS, "t"))["status"]
    assert (status["phase"], status["attempts"], status["workerRef"]["pod"]) == ("Succeeded", 1, "pod-a")
    assert [(h["attempt"], h["worker"], h["outcome"]) for h in status["history"]] == [(1, "pod-a", "Completed")]
    assert status["startTime"] == status["history"][0]["startTime"] <= status["completionTime"]
    assert status["result"]["top_k"][0]["label"] == "x" and status["latency"]["runSeconds"] >= 0
    # A watch that reconnects delivers the assignment again (still Scheduled when it was listed): not run twice.
    worker._absorb({"type": "ADDED", "object": body})
    assert worker.pending == {}


async def test_a_task_that_fails_posts_a_warning_event_from_its_worker(
    server: EmulatorThread, api: KubeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    from legacygpu.core.errors import ValidationError

    monkeypatch.delenv("NODE_NAME", raising=False)

    class _Refusing(_Runner):
        def run(self, model: str, inputs: list[dict[str, Any]], parameters: Any = None) -> dict[str, Any]:
            raise ValidationError("input 'input' has the wrong shape")

    body = await _scheduled(api, "t", "pod-a")
    await asyncio.to_thread(_worker(server, "pod-a", _Refusing()).execute, body)
    assert (await api.get_task(NS, "t"))["status"]["phase"] == "Failed"
    [event] = await api.list("", "v1", "events", NS)
    assert event["involvedObject"] == {"apiVersion": f"{G}/{V}", "kind": "InferenceTask", "name": "t",
                                       "namespace": NS, "uid": body["metadata"]["uid"]}  # fmt: skip
    assert (event["type"], event["reason"], event["metadata"]["namespace"]) == ("Warning", "InvalidInput", NS)
    assert "wrong shape" in event["message"] and event["count"] == 1
    assert (event["reportingComponent"], event["reportingInstance"]) == ("legacygpu-worker", "pod-a")
    assert event["source"] == {"component": "legacygpu-worker", "host": "pod-a"}  # no NODE_NAME: the pod


class _GatedRunner(_Runner):
    def __init__(self) -> None:
        import threading

        super().__init__()
        self.gate = threading.Event()

    def run(self, model: str, inputs: list[dict[str, Any]], parameters: Any = None) -> dict[str, Any]:
        assert self.gate.wait(10), "the test never opened the gate"
        return super().run(model, inputs, parameters)


async def _phase_becomes(api: KubeApi, name: str, phase: str) -> dict[str, Any]:
    async def reached() -> dict[str, Any] | None:
        body = await api.get_task(NS, name)
        return body if (body.get("status") or {}).get("phase") == phase else None

    found: dict[str, Any] = await eventually(reached, timeout=10, interval=0.05, what=f"task {name} to become {phase}")
    return found


def _failing_claim(worker: Any, *, write_first: bool) -> None:
    """Make the worker's claim raise, after writing it (an answer lost) or before."""
    real = worker.claim

    def claim(body: dict[str, Any], *, now: Any = None) -> Any:
        if write_first:
            real(body, now=now)
        raise RuntimeError("simulated API error")

    worker.claim = claim


@dataclasses.dataclass
class _GatedRun:
    """A worker executing task ``t`` (Scheduled on pod-a) in a thread, its runner held at the gate."""

    runner: _GatedRunner
    writes: _Writes
    running: asyncio.Future[Any]

    async def finish(self) -> None:
        """Open the gate and wait for the execution to end."""
        self.runner.gate.set()
        await self.running


async def _start_gated(
    server: EmulatorThread, api: KubeApi, *, claim_after: float, claim_raises: bool | None = None
) -> _GatedRun:
    """Start pod-a's worker on a new task ``t``; ``claim_raises`` fails its claim (see :func:`_failing_claim`).

    ``claim_raises``: None, the claim works; False, it raises before writing; True, after writing.
    """
    body = await _scheduled(api, "t", "pod-a")
    runner = _GatedRunner()
    worker = _worker(server, "pod-a", runner)
    worker.claim_after = claim_after
    if claim_raises is not None:
        _failing_claim(worker, write_first=claim_raises)
    writes = _Writes(worker)
    return _GatedRun(runner, writes, asyncio.ensure_future(asyncio.to_thread(worker.execute, body)))


async def test_a_task_still_running_after_the_claim_delay_is_claimed_then_reported(
    server: EmulatorThread, api: KubeApi
) -> None:
    run = await _start_gated(server, api, claim_after=0.1)
    claimed = await _phase_becomes(api, "t", "Running")
    assert (claimed["status"]["attempts"], claimed["status"]["workerRef"]["pod"]) == (1, "pod-a")
    await run.finish()
    assert [s["phase"] for s in run.writes.statuses] == ["Running", "Succeeded"]
    status = (await api.get_task(NS, "t"))["status"]
    assert (status["phase"], status["attempts"]) == ("Succeeded", 1)
    assert status["startTime"] == claimed["status"]["startTime"] == status["history"][0]["startTime"]


async def test_a_task_cancelled_before_its_claim_drops_the_run(server: EmulatorThread, api: KubeApi) -> None:
    run = await _start_gated(server, api, claim_after=0.3)
    await api.patch_task_status(NS, "t", {"phase": "Cancelled", "reason": "Cancelled", "message": "cancelled"})
    await asyncio.sleep(0.5)  # past the claim delay: the claim finds the task no longer ours
    await run.finish()
    assert run.writes.statuses == [] or [s["phase"] for s in run.writes.statuses] == ["Running"]
    assert (await api.get_task(NS, "t"))["status"]["phase"] == "Cancelled"


@pytest.mark.parametrize("to", ["pod-a", "pod-b"])
async def test_an_unclaimed_result_after_the_task_was_given_back_is_refused(
    server: EmulatorThread, api: KubeApi, to: str
) -> None:
    body = await _scheduled(api, "t", "pod-a")
    worker_a = _worker(server, "pod-a", _Runner())
    # While pod-a ran it unclaimed, the operator gave the task back (pod-a draining) and assigned it
    # again: to another pod, or later to pod-a itself. A new assignment is a new scheduledTime.
    await api.patch_task_status(NS, "t", {"phase": "Queued", "workerRef": None, "scheduledTime": None})
    await asyncio.sleep(0.01)
    await api.patch_task_status(NS, "t", {"phase": "Scheduled", "workerRef": {"pod": to},
                                          "scheduledTime": format_time(now_utc())})  # fmt: skip
    before = await api.get_task(NS, "t")

    def build(status: dict[str, Any], created: str | None) -> dict[str, Any]:
        return {"phase": "Succeeded", "reason": "Completed", "message": "late", "attempts": 1}

    assert await asyncio.to_thread(lambda: worker_a.finish(body, build, claimed=False)) is False
    assert (await api.get_task(NS, "t"))["status"] == before["status"]


@pytest.mark.parametrize("write_first", [False, True])
async def test_a_claim_that_raises_still_ends_with_one_report(
    server: EmulatorThread, api: KubeApi, write_first: bool
) -> None:
    # The claim timer's write fails: the worker reads the task again and reports the run as it
    # stands (claimed if the claim got written, else unclaimed): never left Scheduled forever.
    run = await _start_gated(server, api, claim_after=0.05, claim_raises=write_first)
    await asyncio.sleep(0.3)
    await run.finish()
    assert [s["phase"] for s in run.writes.statuses] == (["Running", "Succeeded"] if write_first else ["Succeeded"])
    status = (await api.get_task(NS, "t"))["status"]
    assert (status["phase"], status["attempts"], len(status["history"])) == ("Succeeded", 1, 1)
    assert run.runner.calls == 1


async def test_a_claim_that_raises_on_a_task_taken_back_drops_the_result(server: EmulatorThread, api: KubeApi) -> None:
    run = await _start_gated(server, api, claim_after=0.05, claim_raises=False)
    await api.patch_task_status(NS, "t", {"phase": "Queued", "workerRef": None, "scheduledTime": None})
    await asyncio.sleep(0.3)
    await run.finish()
    assert run.writes.statuses == [] and (await api.get_task(NS, "t"))["status"]["phase"] == "Queued"


async def test_a_report_that_fails_leaves_the_assignment_to_run_again(server: EmulatorThread, api: KubeApi) -> None:
    body = await _scheduled(api, "t", "pod-a")
    worker = _worker(server, "pod-a", _Runner())

    def refuse(name: str, status: dict[str, Any], resource_version: str) -> dict[str, Any]:
        raise RuntimeError("simulated API error")

    worker.patch_status = refuse
    with pytest.raises(RuntimeError):
        await asyncio.to_thread(worker.execute, body)
    assert (await api.get_task(NS, "t"))["status"]["phase"] == "Scheduled"
    worker._absorb({"type": "MODIFIED", "object": body})  # the resync delivers it again: it runs again
    assert list(worker.pending) == ["t"]


async def test_an_operator_release_is_not_taken_for_the_workers_own_report(
    server: EmulatorThread, api: KubeApi
) -> None:
    # The operator took the task back from pod-a, recording a WorkerLost attempt by pod-a: that is
    # no report of pod-a's, so pod-a's result is refused, not counted as written.
    body = await _scheduled(api, "t", "pod-a")
    worker = _worker(server, "pod-a", _Runner())
    scheduled = body["status"]["scheduledTime"]
    await api.patch_task_status(NS, "t", {
        "phase": "Queued", "reason": "WorkerLost", "attempts": 1, "workerRef": None, "scheduledTime": None,
        "history": [{"attempt": 1, "worker": "pod-a", "startTime": scheduled, "outcome": "WorkerLost",
                     "completionTime": scheduled}]})  # fmt: skip
    recorded: list[bool] = []
    worker._record = lambda ok, ms: recorded.append(ok)

    def build(status: dict[str, Any], created: str | None) -> dict[str, Any]:
        return {"phase": "Succeeded", "reason": "Completed", "message": "x", "attempts": 1}

    assert await asyncio.to_thread(lambda: worker.finish(body, build, claimed=False)) is False
    assert (await api.get_task(NS, "t"))["status"]["phase"] == "Queued" and recorded == []


async def test_a_label_written_while_a_task_waits_does_not_run_it_again(server: EmulatorThread, api: KubeApi) -> None:
    body = await _scheduled(api, "t", "pod-a")
    runner = _Runner()
    worker = _worker(server, "pod-a", runner)
    # A label (kubectl label) written while the task waits Scheduled, delivered after the run.
    relabelled = await api.patch(G, V, TASK_PLURAL, NS, "t", {"metadata": {"labels": {"x": "y"}}})
    assert relabelled["metadata"]["resourceVersion"] != body["metadata"]["resourceVersion"]
    await asyncio.to_thread(worker.execute, body)
    worker._absorb({"type": "MODIFIED", "object": relabelled})
    assert worker._next() is None and runner.calls == 1


async def test_a_restarted_worker_claims_the_tasks_it_finds_waiting_then_reports_new_ones_in_one_write(
    server: EmulatorThread, api: KubeApi
) -> None:
    # A container restarted under the same pod name may have been running "old" unclaimed: its
    # first list finds it Scheduled, so it is claimed first (a second run is then a visible attempt).
    import threading

    await _scheduled(api, "old", "pod-a")
    runner, stop = _Runner(), threading.Event()
    worker = _worker(server, "pod-a", runner)
    writes = _Writes(worker)
    thread = threading.Thread(target=worker.run, args=(stop,))
    thread.start()
    try:
        await _phase_becomes(api, "old", "Succeeded")
        await _scheduled(api, "new", "pod-a")
        await _phase_becomes(api, "new", "Succeeded")
    finally:
        stop.set()
        await asyncio.to_thread(thread.join, 10)
    assert [s["phase"] for s in writes.statuses] == ["Running", "Succeeded", "Succeeded"]
    assert runner.calls == 2


async def test_a_claim_that_fails_leaves_a_task_found_waiting_to_be_claimed_first(
    server: EmulatorThread, api: KubeApi
) -> None:
    # A task found Scheduled at start is claimed before it runs; if that claim's write fails, the
    # next delivery still claims it first (it never runs unclaimed).
    from legacygpu.core.kube.errors import ApiError
    from legacygpu.worker.claiming import Assignment

    body = await _scheduled(api, "old", "pod-a")
    runner = _Runner()
    worker = _worker(server, "pod-a", runner)
    worker._claim_first = {Assignment.of(body)}
    writes = _Writes(worker)
    recorded = worker.patch_status

    def refused(name: str, status: dict[str, Any], resource_version: str) -> dict[str, Any]:
        raise ApiError("forbidden", status=403)

    worker.patch_status = refused
    with pytest.raises(ApiError):
        await asyncio.to_thread(worker.execute, body)
    assert runner.calls == 0
    worker.patch_status = recorded
    await asyncio.to_thread(worker.execute, body)
    assert [s["phase"] for s in writes.statuses] == ["Running", "Succeeded"] and runner.calls == 1


async def test_one_claim_thread_serves_every_task_of_a_worker(server: EmulatorThread, api: KubeApi) -> None:
    import threading
    import time

    class _Slow(_Runner):
        def run(self, model: str, inputs: list[dict[str, Any]], parameters: Any = None) -> dict[str, Any]:
            time.sleep(0.2)
            return super().run(model, inputs, parameters)

    worker = _worker(server, "pod-a", _Slow())
    worker.claim_after = 0.02
    threads: set[int] = set()
    real = worker.claim

    def claim(body: dict[str, Any], *, now: Any = None) -> Any:
        threads.add(threading.get_ident())
        return real(body, now=now)

    worker.claim = claim
    for name in ("a", "b", "c"):
        body = await _scheduled(api, name, "pod-a")
        await asyncio.to_thread(worker.execute, body)
        assert (await api.get_task(NS, name))["status"]["phase"] == "Succeeded"
    assert len(threads) == 1 and threading.get_ident() not in threads
