"""The autoscaling decision (pure): up at once, down only after the delay, always within the bounds."""

from __future__ import annotations

import asyncio
import datetime
from typing import Any

from legacygpu.operator.autoscaling import ScaleReason, autoscale

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
SPEC = {"minReplicas": 1, "maxReplicas": 3, "targetLoadPerWorker": 10, "scaleDownDelaySeconds": 30}


def at(seconds: float) -> datetime.datetime:
    return T0 + datetime.timedelta(seconds=seconds)


def test_a_queue_scales_up_at_once_and_no_further_than_max() -> None:
    decision = autoscale(SPEC, current=1, waiting=15, in_flight=4, low_since=None, now=T0)
    assert (decision.replicas, decision.reason) == (2, ScaleReason.SCALED_UP)
    assert "15 waiting + 4 in flight" in decision.message
    assert autoscale(SPEC, current=1, waiting=200, in_flight=0, low_since=None, now=T0).replicas == 3


def test_no_load_keeps_min_replicas() -> None:
    decision = autoscale(SPEC, current=1, waiting=0, in_flight=0, low_since=None, now=T0)
    assert (decision.replicas, decision.reason, decision.low_since) == (1, ScaleReason.AT_TARGET, None)
    idle = autoscale({**SPEC, "minReplicas": 0}, current=0, waiting=0, in_flight=0, low_since=None, now=T0)
    assert idle.replicas == 0


def test_scale_down_waits_for_the_delay_counted_from_when_load_first_dropped() -> None:
    first = autoscale(SPEC, current=3, waiting=0, in_flight=2, low_since=None, now=at(0))
    assert (first.replicas, first.reason) == (3, ScaleReason.WAITING_TO_SCALE_DOWN)
    assert first.low_since is not None and "in 30s" in first.message
    later = autoscale(SPEC, current=3, waiting=0, in_flight=2, low_since=first.low_since, now=at(29))
    assert (later.replicas, later.low_since) == (3, first.low_since)  # the clock is not restarted
    done = autoscale(SPEC, current=3, waiting=0, in_flight=2, low_since=first.low_since, now=at(30))
    assert (done.replicas, done.reason, done.low_since) == (1, ScaleReason.SCALED_DOWN, None)


def test_load_returning_during_the_delay_cancels_the_scale_down() -> None:
    first = autoscale(SPEC, current=3, waiting=0, in_flight=0, low_since=None, now=at(0))
    back = autoscale(SPEC, current=3, waiting=25, in_flight=5, low_since=first.low_since, now=at(20))
    assert (back.replicas, back.reason, back.low_since) == (3, ScaleReason.AT_TARGET, None)
    again = autoscale(SPEC, current=3, waiting=0, in_flight=0, low_since=back.low_since, now=at(40))
    assert again.reason == ScaleReason.WAITING_TO_SCALE_DOWN  # a new wait, from 40 s


def test_replicas_set_outside_the_bounds_are_brought_inside() -> None:
    assert autoscale(SPEC, current=0, waiting=0, in_flight=0, low_since=None, now=T0).replicas == 1
    above = autoscale(SPEC, current=5, waiting=100, in_flight=0, low_since=None, now=at(0))
    assert above.reason == ScaleReason.WAITING_TO_SCALE_DOWN  # above max: down, after the delay like any other


async def test_the_operator_scales_a_cluster_up_for_a_queue_and_down_after_the_delay(dep: Any) -> None:
    """The real operator and worker loops on the emulated API server (operator_harness)."""
    from operator_harness import cluster_manifest, events_when, eventually, task_manifest

    flat = {"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0.0] * 64}
    autoscaling = {"minReplicas": 1, "maxReplicas": 3, "targetLoadPerWorker": 4, "scaleDownDelaySeconds": 3}
    await dep.start_operator()
    await dep.create(cluster_manifest("auto", replicas=1, tasksPerWorker=2, autoscaling=autoscaling))

    async def cluster_when(check: Any) -> Any:
        body = await dep.cluster("auto")
        return body if body and check(body) else None

    await eventually(lambda: cluster_when(lambda b: (b.get("status") or {}).get("readyWorkers") == 1),
                     what="one ready worker")
    dep.gate.clear()  # the workers hold their tasks: the queue builds up
    for index in range(20):
        await dep.create(task_manifest(f"t{index:02d}", "auto", [flat]))
    up = await eventually(lambda: cluster_when(lambda b: b["spec"]["replicas"] == 3), what="scaled up to max (3)")
    assert up["spec"]["replicas"] == 3
    await eventually(lambda: cluster_when(lambda b: (b.get("status") or {}).get("readyWorkers") == 3),
                     what="three ready workers")
    condition = await eventually(
        lambda: cluster_when(lambda b: any(c["type"] == "Autoscaled" and c["reason"] == "ScaledUp"
                                           for c in (b.get("status") or {}).get("conditions", []))),
        what="the Autoscaled condition says ScaledUp",
    )
    assert condition is not None
    dep.gate.set()
    down = await eventually(lambda: cluster_when(lambda b: b["spec"]["replicas"] == 1), timeout=60,
                            what="scaled back down to min (1) after the delay")
    assert down["spec"]["replicas"] == 1
    posted = await events_when(dep, "auto", lambda evs: {"ScaledUp", "ScaledDown"} <= {e["reason"] for e in evs},
                               what="ScaledUp and ScaledDown Events")
    scaled = [e for e in posted if e["reason"] in ("ScaledUp", "ScaledDown")]
    assert "waiting" in scaled[0]["message"] and "target 4 per worker" in scaled[0]["message"]


def test_requests_in_flight_count_only_live_pods_and_sane_values() -> None:
    from legacygpu.core.kube.contract import WorkerStats
    from legacygpu.operator.autoscaling import requests_in_flight
    from legacygpu.operator.clusterstate import PodView

    def pod(name: str, value: object, phase: str = "Running", **facts: Any) -> PodView:
        stats = WorkerStats(inflightRequests=value)  # type: ignore[typeddict-item]  # bad values on purpose
        return PodView(name=name, phase=phase, ready=True, stats=stats, **facts)

    pods = [pod("a", 5), pod("b", 3), pod("gone", 7, deleting=True), pod("dead", 9, phase="Failed"),
            pod("odd", "many"), pod("neg", -4), PodView(name="silent", phase="Running")]
    assert requests_in_flight(pods) == 8


async def test_real_time_requests_in_flight_scale_a_cluster_without_tasks(dep: Any) -> None:
    """The workers' reported /v2 load counts as tasks do: no task at all, only requests in flight.

    The real KubeWorker loops publish what their ``load`` callable says (the pod's serving engine
    in production; a number the test sets here) in their stats annotation; the real operator
    reads it from the pods on the emulated API server.
    """
    from operator_harness import cluster_manifest, events_when, eventually

    in_flight = [0]
    dep.worker_options.update(load=lambda: in_flight[0], stats_interval=0.1)
    autoscaling = {"minReplicas": 1, "maxReplicas": 3, "targetLoadPerWorker": 4, "scaleDownDelaySeconds": 2}
    await dep.start_operator()
    await dep.create(cluster_manifest("rt", replicas=1, autoscaling=autoscaling))

    async def cluster_when(check: Any) -> Any:
        body = await dep.cluster("rt")
        return body if body and check(body) else None

    await eventually(lambda: cluster_when(lambda b: (b.get("status") or {}).get("readyWorkers") == 1),
                     what="one ready worker")
    await asyncio.sleep(1.0)
    assert (await dep.cluster("rt"))["spec"]["replicas"] == 1  # idle: stays at min
    in_flight[0] = 10  # one worker, 10 requests: ceil(10 / 4) = 3 workers
    up = await eventually(lambda: cluster_when(lambda b: b["spec"]["replicas"] == 3), what="scaled up for requests")
    assert up["spec"]["replicas"] == 3
    posted = await events_when(dep, "rt", lambda evs: any(e["reason"] == "ScaledUp" for e in evs), what="ScaledUp")
    message = next(e["message"] for e in posted if e["reason"] == "ScaledUp")
    assert "0 waiting" in message and "10 in flight" in message
    in_flight[0] = 0
    down = await eventually(lambda: cluster_when(lambda b: b["spec"]["replicas"] == 1), timeout=60,
                            what="scaled back down once the requests ended")
    assert down["spec"]["replicas"] == 1
