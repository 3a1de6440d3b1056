"""The API server's floor: the platform's own API traffic per task, with no operator and no workers.

Part of the e2e operator benchmark (:mod:`legacygpu.testing.bench_operator_e2e`). The question
it answers: how many tasks per second can *any* implementation of the platform reach on this
API server and this machine, given the writes and watches the design needs? It drives the same
kube-apiserver with exactly what a successful task costs the API server in the platform, and
nothing else:

* the **create** (as the benchmark's client: the admin's certificate), the task's spec holding the
  same inline input;
* the **assignment**: one status merge patch, Pending → Scheduled on a worker (``queued_status`` and
  ``assigned_status`` in one write, as the operator writes it), with the ``resourceVersion`` it was
  decided on, as the operator's ServiceAccount;
* the **report** (Scheduled → Succeeded with the attempt's start, ``report_status`` with ``unclaimed``, with
  the model's real result for that input): a status merge patch with the ``resourceVersion`` of the
  assignment, as the workers' ServiceAccount. A worker writes no claim for a task that runs under
  its claim delay (:data:`legacygpu.worker.kube.CLAIM_AFTER`), as the benchmark's tasks do;
  ``claim=True`` drives the claim (Scheduled → Running, ``running_status``) a longer task costs
  before the report (then ``report_status``), to measure what that write costs;
* the **watches** the platform holds open: the operator's of all tasks in the namespace (its task watch's
  parameters: ``allowWatchBookmarks``) and one per worker on the CRD's selectable field
  ``status.workerRef.pod``, each read to the end of every event. The run ends once every
  watch has received every event it is owed (one per write to the operator's, one per status
  write to the workers'), so their delivery is inside the measured time.

The client is one asyncio process (aiohttp, several keep-alive connections per identity); its
bodies are built with the platform's own status builders, so each object is the size and shape
the platform's is. The CPU of the control plane's processes is read from ``/proc`` before and
after (the client's own is its process's, reported apart), so ``cpu_ms_per_task`` of the
API server and etcd is theirs alone. The **ceiling** is what the machine's cores (``os.cpu_count()``)
allow at the API server's and etcd's CPU per task with nothing else running:
``cpus * 1000 / (kube-apiserver + etcd ms per task)``; the platform's operator and workers need
CPU of their own on top, so the platform's throughput on this machine is below it.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from legacygpu.core.kube.client import MERGE_PATCH
from legacygpu.core.kube.contract import (
    API_VERSION,
    GROUP,
    TASK_KIND,
    TASK_PLURAL,
    VERSION,
    TaskStatus,
    assigned_status,
    now_utc,
    queued_status,
    report_status,
    running_status,
    worker_field_selector,
)
from legacygpu.core.lifecycle import classify
from legacygpu.core.tasks import RetryPolicy

__all__ = ["FloorClients", "FloorRun", "create_tasks", "drive_floor", "floor_summary", "status_writes_per_task"]

_WATCH_GRACE_SECONDS = 60.0
"""How long after the last write the watches may take to deliver what they are owed."""


@dataclass(frozen=True)
class FloorClients:
    """Where the API server is and who the three parts of the platform are to it."""

    server: str
    ca_file: str
    admin_cert: tuple[str, str]
    """The benchmark client's certificate and key (it creates the tasks, as the platform run's harness)."""
    operator_token: str
    worker_token: str


@dataclass
class FloorRun:
    """What one drive measured (times from ``time.monotonic``)."""

    tasks: int
    started: float = 0.0
    writes_done: float = 0.0
    delivered: float = 0.0
    failures: list[str] = field(default_factory=list)
    operator_events: int = 0
    worker_events: int = 0
    watch_complete: bool = False

    @property
    def elapsed(self) -> float:
        return max(self.writes_done, self.delivered) - self.started


class _Watch:
    """One watch stream, read to the end of every event; counts the events that are not bookmarks."""

    def __init__(self, session: aiohttp.ClientSession, url: str, params: Mapping[str, str]) -> None:
        self.session, self.url, self.params = session, url, dict(params)
        self.events = 0
        self.opened = asyncio.Event()

    async def run(self) -> None:
        params = {**self.params, "watch": "true", "allowWatchBookmarks": "true", "timeoutSeconds": "600"}
        for attempt in range(_TOO_MANY_TRIES):
            async with self.session.get(self.url, params=params,
                                        timeout=aiohttp.ClientTimeout(total=None)) as response:
                if response.status == 429 and attempt + 1 < _TOO_MANY_TRIES:
                    # A control plane just started is still filling its caches: priority and fairness
                    # turns requests away for a moment, and a client waits as the answer says.
                    await asyncio.sleep(_retry_after(response))
                    continue
                response.raise_for_status()
                self.opened.set()
                async for line in response.content:
                    if line.strip() and not line.startswith(b'{"type":"BOOKMARK"'):
                        self.events += 1
                return


_TOO_MANY_TRIES = 20


def _retry_after(response: aiohttp.ClientResponse) -> float:
    """Seconds a 429 asks the client to wait (``Retry-After``; 1 s when absent or not a number)."""
    value = response.headers.get("Retry-After", "")
    return float(value) if value.isdigit() else 1.0


def _ssl(ca_file: str, cert: tuple[str, str] | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca_file)
    if cert is not None:
        context.load_cert_chain(*cert)
    return context


def _session(context: ssl.SSLContext, connections: int, token: str | None = None) -> aiohttp.ClientSession:
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=context, limit=connections), headers=headers,
        timeout=aiohttp.ClientTimeout(total=60),
    )


async def _call(session: aiohttp.ClientSession, method: str, url: str, body: Any, content_type: str) -> Any:
    data = json.dumps(body, separators=(",", ":")).encode()
    for attempt in range(_TOO_MANY_TRIES):
        async with session.request(method, url, data=data, headers={"Content-Type": content_type}) as response:
            text = await response.read()
            if response.status == 429 and attempt + 1 < _TOO_MANY_TRIES:  # as client-go does: wait, send again
                await asyncio.sleep(_retry_after(response))
                continue
            if response.status >= 300:
                raise RuntimeError(f"{method} {url}: {response.status} {text[:300]!r}")
            return json.loads(text)
    raise AssertionError("unreachable: the last try returns or raises")


async def drive_floor(
    clients: FloorClients,
    *,
    namespace: str,
    inputs: Sequence[list[dict[str, Any]]],
    results: Sequence[dict[str, Any]],
    workers: int,
    lanes: int = 64,
    cluster: str = "bench",
    on_start: Callable[[], None] | None = None,
    claim: bool = False,
) -> FloorRun:
    """Create, assign and report (``claim``: and claim) ``len(inputs)`` tasks through ``lanes`` concurrent pipelines.

    ``results[i]`` is the model's result for ``inputs[i]`` (what the worker would report).
    ``on_start`` runs once every watch is open, just before the first create (the caller
    snapshots the CPU there).
    """
    tasks = len(inputs)
    base = f"{clients.server}/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{TASK_PLURAL}"
    pods = [f"floor-worker-{i}" for i in range(workers)]
    policy = RetryPolicy()
    run = FloorRun(tasks=tasks)
    admin = _session(_ssl(clients.ca_file, clients.admin_cert), lanes)
    operator = _session(_ssl(clients.ca_file), lanes + 1, clients.operator_token)
    worker = _session(_ssl(clients.ca_file), lanes + workers, clients.worker_token)
    watches = [_Watch(operator, base, {})] + [
        _Watch(worker, base, {"fieldSelector": worker_field_selector(pod)}) for pod in pods
    ]
    readers = [asyncio.ensure_future(w.run()) for w in watches]
    queue = iter(range(tasks))

    async def one(index: int) -> None:
        name, pod = f"floor-{index:05d}", pods[index % workers]
        body = {"apiVersion": API_VERSION, "kind": TASK_KIND, "metadata": {"name": name},
                "spec": {"clusterRef": cluster, "model": "digits", "inputs": inputs[index]}}  # fmt: skip
        created = await _call(admin, "POST", base, body, "application/json")
        meta = created["metadata"]
        now = now_utc()
        status = TaskStatus(**queued_status({}, now))
        status.update(assigned_status(status, pod=pod, node="gpu-node-0", now=now))
        current = await _patch(operator, f"{base}/{name}/status", meta["resourceVersion"], status)
        started, outcome = now_utc(), classify(None, worker=pod)
        if claim:
            running = running_status(current["status"], pod=pod, now=started)
            current = await _patch(worker, f"{base}/{name}/status", current["metadata"]["resourceVersion"], running)
        report = report_status(
            current["status"], outcome, created=meta["creationTimestamp"], max_retries=3, now=now_utc(),
            policy=policy, result=results[index], compute_ms=0.2, unclaimed=None if claim else (pod, started),
        )
        await _patch(worker, f"{base}/{name}/status", current["metadata"]["resourceVersion"], report)

    async def lane() -> None:
        for index in queue:
            try:
                await one(index)
            except Exception as exc:  # counted and shown: a floor with failures is no floor
                run.failures.append(f"floor-{index:05d}: {exc}")

    try:
        opening = asyncio.ensure_future(asyncio.gather(*(w.opened.wait() for w in watches)))
        first: list[asyncio.Future[Any]] = [opening, *readers]  # the watches all open, or one ends at once
        await asyncio.wait(first, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        for reader in readers:
            if reader.done():  # a watch the API server refused: no floor without it
                reader.result()
                raise RuntimeError("a watch ended at once")
        if not opening.done():
            opening.cancel()
            raise RuntimeError("the watches did not open in 30 s")
        if on_start is not None:
            on_start()
        run.started = time.monotonic()
        await asyncio.gather(*(lane() for _ in range(lanes)))
        run.writes_done = time.monotonic()
        status_writes = status_writes_per_task(claim)
        owed_operator = (1 + status_writes) * (tasks - len(run.failures))
        owed_workers = status_writes * (tasks - len(run.failures))
        deadline = run.writes_done + _WATCH_GRACE_SECONDS
        while time.monotonic() < deadline:
            run.operator_events = watches[0].events
            run.worker_events = sum(w.events for w in watches[1:])
            if run.operator_events >= owed_operator and run.worker_events >= owed_workers:
                run.watch_complete = True
                break
            await asyncio.sleep(0.02)
        run.delivered = time.monotonic()
    finally:
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        for session in (admin, operator, worker):
            await session.close()
    return run


def status_writes_per_task(claim: bool) -> int:
    """The status writes of one successful task: assignment and report, and the claim when ``claim``."""
    return 3 if claim else 2


async def create_tasks(
    server: str, ca_file: str, cert: tuple[str, str], namespace: str, bodies: Sequence[dict[str, Any]], *,
    lanes: int = 32,
) -> dict[str, float]:
    """Create ``bodies`` (InferenceTasks) through ``lanes`` concurrent connections; each name's wall time just
    before its POST.

    The platform benchmark's client: its 8 threads of the generated client created about 65 tasks
    per second, under the 100 tasks/s the run is asked to show, so the creation was the benchmark's
    own bottleneck.
    """
    url = f"{server}/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{TASK_PLURAL}"
    stamps: dict[str, float] = {}
    queue = iter(bodies)
    async with _session(_ssl(ca_file, cert), lanes) as session:

        async def lane() -> None:
            for body in queue:
                stamps[body["metadata"]["name"]] = time.time()
                await _call(session, "POST", url, body, "application/json")

        await asyncio.gather(*(lane() for _ in range(lanes)))
    return stamps


async def _patch(session: aiohttp.ClientSession, url: str, version: str, status: Mapping[str, Any]) -> Any:
    return await _call(session, "PATCH", url, {"metadata": {"resourceVersion": version}, "status": dict(status)},
                       MERGE_PATCH)  # fmt: skip


def floor_summary(
    run: FloorRun, cpu_ms: Mapping[str, float], idle_ms_per_second: Mapping[str, float], *, lanes: int, workers: int,
    claim: bool = False,
) -> dict[str, Any]:
    """The ``floor`` section of the benchmark's JSON (``cpu_ms`` is CPU ms per process over the drive).

    CPU is divided by the tasks that made every write; a failed task made fewer, so counting it would
    understate the cost per task. A run with a failure, or whose watches did not receive every event
    (its elapsed time then includes the wait for them), gives no throughput and no ceiling: ``valid``
    is false and says why.
    """
    succeeded = run.tasks - len(run.failures)
    per_task = {name: round(ms / succeeded, 2) for name, ms in cpu_ms.items()} if succeeded > 0 else {}
    server = per_task.get("kube-apiserver", 0.0) + per_task.get("etcd", 0.0)
    cpus = os.cpu_count() or 1
    problems = ([f"{len(run.failures)} task(s) failed"] if run.failures else []) + (
        [] if run.watch_complete else ["the watches did not receive every event"])
    valid = not problems
    return {
        "tasks": run.tasks,
        "failed": len(run.failures),
        "failures": run.failures[:5],
        "writes_per_task": {"create": 1, "status": status_writes_per_task(claim)},
        "claim": claim,
        "watches": {"all_tasks": 1, "by_worker_field": workers},
        "watch_events": {"operator": run.operator_events, "workers": run.worker_events,
                         "complete": run.watch_complete},
        "client_lanes": lanes,
        "elapsed_seconds": round(run.elapsed, 3),
        "valid": valid,
        "invalid_because": problems,
        "tasks_per_second": round(run.tasks / run.elapsed, 2) if valid and run.elapsed > 0 else None,
        "cpu_ms_per_task": per_task,
        "idle_cpu_ms_per_second": {name: round(ms, 2) for name, ms in idle_ms_per_second.items()},
        "apiserver_etcd_cpu_ms_per_task": round(server, 2),
        "ceiling_tasks_per_second": round(cpus * 1000 / server, 1) if valid and server > 0 else None,
        "cpus": cpus,
        "measured_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
