"""Dynamic batching and the per-model queue.

The engine tests run the real digits model on onnxruntime (and on the OpenCL
backend, on PoCL). The queue-policy tests drive a :class:`ModelScheduler`
whose model is a function that waits on an event, so a test decides exactly
when the device is busy: no mock of anything outside the scheduler.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from serving_support import enable_batching

from legacygpu.core.modelcards import DynamicBatchingSpec, ModelCard, ModelRepository, TensorSpec
from legacygpu.worker.backends import create_backend
from legacygpu.worker.runner import TaskRunner
from legacygpu.worker.serving import ServingEngine
from legacygpu.worker.serving.batching import INLINE_SECONDS, ModelScheduler
from legacygpu.worker.serving.codec import InferInput, InferRequest
from legacygpu.worker.serving.errors import BadRequest, QueueFull, QueueTimeout, ServingError
from legacygpu.worker.serving.metrics import ServingMetrics


def _request(x: np.ndarray, **kwargs: object) -> InferRequest:
    return InferRequest("digits", inputs=[InferInput("input", "FP32", x)], **kwargs)  # type: ignore[arg-type]


def _count(metrics: ServingMetrics, name: str) -> float:
    return metrics.registry.get_sample_value(name, {"model": "digits"}) or 0.0


async def _concurrent(engine: ServingEngine, xs: list[np.ndarray]) -> list[np.ndarray]:
    results = await asyncio.gather(*(engine.infer(_request(x)) for x in xs))
    return [outputs["probabilities"] for outputs, _, _ in results]


async def test_concurrent_requests_share_executions_and_get_their_own_rows(runner: TaskRunner) -> None:
    engine = ServingEngine(runner)
    rng = np.random.default_rng(2)
    xs = [rng.uniform(0, 16, (size, 64)).astype(np.float32) for size in [1, 2, 3] * 10]
    try:
        got = await _concurrent(engine, xs)
    finally:
        await engine.close()
    for x, probabilities in zip(xs, got, strict=True):
        np.testing.assert_allclose(probabilities, runner.run_feeds("digits", {"input": x})["probabilities"],
                                   rtol=1e-5, atol=1e-6)
    inferred = _count(engine.metrics, "legacygpu_inference_count_total")
    executed = _count(engine.metrics, "legacygpu_inference_exec_count_total")
    assert inferred == 60
    assert executed < 30  # 30 requests, fewer model runs: they were batched


async def test_without_batching_every_request_runs_alone(demo_repository: Path) -> None:
    runner = TaskRunner(ModelRepository(demo_repository), create_backend("onnxruntime"))
    engine = ServingEngine(runner)
    xs = [np.full((1, 64), i, np.float32) for i in range(8)]
    try:
        await _concurrent(engine, xs)
    finally:
        await engine.close()
    assert _count(engine.metrics, "legacygpu_inference_exec_count_total") == 8


async def test_batching_on_the_opencl_backend_matches_onnxruntime(serving_models: Path, runner: TaskRunner) -> None:
    pytest.importorskip("pyopencl")
    opencl = TaskRunner(ModelRepository(serving_models), create_backend("opencl"))
    engine = ServingEngine(opencl)
    rng = np.random.default_rng(3)
    xs = [rng.uniform(0, 16, (size, 64)).astype(np.float32) for size in (1, 3, 2, 1, 4, 2)]
    try:
        got = await _concurrent(engine, xs)
    finally:
        await engine.close()
    for x, probabilities in zip(xs, got, strict=True):
        reference = runner.run_feeds("digits", {"input": x})["probabilities"]
        np.testing.assert_allclose(probabilities, reference, rtol=1e-3, atol=1e-4)
    assert _count(engine.metrics, "legacygpu_inference_exec_count_total") < len(xs)


def _cnn_repository(root: Path, **batching: object) -> ModelRepository:
    """A small CNN (Conv, Relu, MaxPool, GlobalAveragePool; NCHW with a dynamic batch) whose card batches."""
    from onnx import helper, numpy_helper

    from legacygpu.worker.modelinfo import card_from_onnx

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 3, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("GlobalAveragePool", ["p"], ["y"])]  # fmt: skip
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", 1, ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("y", 1, ["N", 8, 1, 1])], initializer=[w])
    path = root / "cnn.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    card = card_from_onnx("cnn", path).model_copy(update={
        "max_batch_size": 8, "dynamic_batching": DynamicBatchingSpec.model_validate(batching)})
    repository = ModelRepository(root / "models")
    repository.add(card, path)
    return repository


@pytest.mark.parametrize("preferred", [[], [1, 2, 4, 8]])
async def test_a_cnn_batched_on_opencl_answers_each_request_as_it_does_alone(tmp_path: Path,
                                                                            preferred: list[int]) -> None:
    """4-D inputs of 1 to 3 images joined along the batch axis on the OpenCL backend, and split back."""
    pytest.importorskip("pyopencl")
    repository = _cnn_repository(tmp_path, max_queue_delay_microseconds=50_000, preferred_batch_size=preferred)
    runner = TaskRunner(repository, create_backend("opencl"))
    engine = ServingEngine(runner)
    rng = np.random.default_rng(4)
    xs = [rng.standard_normal((size, 3, 16, 16)).astype(np.float32) for size in (1, 3, 2, 1, 2, 1, 3)]
    try:
        results = await asyncio.gather(*(engine.infer(InferRequest("cnn", inputs=[InferInput("x", "FP32", x)]))
                                         for x in xs))
    finally:
        await engine.close()
    reference = create_backend("onnxruntime").load(repository.model_path("cnn"))
    for x, (outputs, _, _) in zip(xs, results, strict=True):
        alone = runner.run_feeds("cnn", {"x": x})["y"]  # the same backend, this request by itself
        assert outputs["y"].shape == (len(x), 8, 1, 1)
        np.testing.assert_allclose(outputs["y"], alone, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(outputs["y"], reference.run({"x": x})["y"], rtol=1e-4, atol=1e-5)
    assert max(timings.batch_size for _, timings, _ in results) > 3  # requests were joined
    executed = engine.metrics.registry.get_sample_value("legacygpu_inference_exec_count_total", {"model": "cnn"})
    assert executed is not None and executed < len(xs)


@pytest.mark.parametrize(("delay_us", "batch"), [(0, [1, 1]), (2_000_000, [2, 2])])
async def test_the_batching_loop_holds_a_request_its_queue_delay_for_a_later_one_to_join(
        serving_models: Path, delay_us: int, batch: list[int]) -> None:
    """The device free, max batch 2: a request then another 20 ms later run in one execution when the card's
    ``max_queue_delay_microseconds`` (2 s: wide, for a busy host) holds the first; with no delay, in two."""
    enable_batching(serving_models, max_batch_size=2, delay_us=delay_us)
    runner = TaskRunner(ModelRepository(serving_models), create_backend("onnxruntime"))
    engine = ServingEngine(runner)
    xs = [np.full((1, 64), value, np.float32) for value in (3, 9)]
    try:
        await asyncio.wait_for(engine.infer(_request(xs[0])), 30)  # loaded: the first below runs (or waits) at once
        before = _count(engine.metrics, "legacygpu_inference_exec_count_total")
        first = asyncio.ensure_future(engine.infer(_request(xs[0])))
        await asyncio.sleep(0.02)
        second = asyncio.ensure_future(engine.infer(_request(xs[1])))
        results = await asyncio.wait_for(asyncio.gather(first, second), 30)
    finally:
        await engine.close()
    assert [timings.batch_size for _, timings, _ in results] == batch
    assert _count(engine.metrics, "legacygpu_inference_exec_count_total") - before == 3 - batch[0]
    for x, (outputs, _, _) in zip(xs, results, strict=True):  # each its own row back
        np.testing.assert_allclose(outputs["probabilities"], runner.run_feeds("digits", {"input": x})["probabilities"],
                                   rtol=1e-5, atol=1e-6)


async def test_a_lone_request_runs_when_its_queue_delay_ends_though_its_batch_is_not_full(
        serving_models: Path) -> None:
    enable_batching(serving_models, max_batch_size=64, delay_us=200_000)
    engine = ServingEngine(TaskRunner(ModelRepository(serving_models), create_backend("onnxruntime")))
    try:
        outputs, timings, _ = await asyncio.wait_for(engine.infer(_request(np.zeros((2, 64), np.float32))), 30)
    finally:
        await engine.close()
    assert outputs["probabilities"].shape == (2, 10) and timings.batch_size == 2
    assert _count(engine.metrics, "legacygpu_inference_exec_count_total") == 1


async def test_a_request_larger_than_max_batch_size_is_refused(serving_models: Path) -> None:
    enable_batching(serving_models, max_batch_size=4)
    engine = ServingEngine(TaskRunner(ModelRepository(serving_models), create_backend("onnxruntime")))
    with pytest.raises(BadRequest, match="batch 5 exceeds max_batch_size 4"):
        await engine.infer(_request(np.zeros((5, 64), np.float32)))
    await engine.close()


def test_a_missing_input_is_named() -> None:
    card = ModelCard(name="pair", inputs=[TensorSpec(name="a", shape=[-1, 2]), TensorSpec(name="b", shape=[-1, 2])])
    with pytest.raises(BadRequest, match="model 'pair' needs input 'b'"):
        ServingEngine._feeds(card, [InferInput("a", "FP32", np.zeros((1, 2), np.float32))])


# The queue policy, on a model that runs when the test says so -------------------------------------


class _Device:
    """A stand-in model: echoes its input, but only once ``go`` is set; records the batches it ran."""

    def __init__(self) -> None:
        self.go = threading.Event()
        self.started = threading.Event()
        self.batches: list[list[float]] = []

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.started.set()
        self.go.wait(10)
        self.batches.append(feeds["x"][:, 0].tolist())
        return {"y": feeds["x"] * 2}


def _scheduler(device: _Device, **spec: object) -> ModelScheduler:
    card = ModelCard(name="digits", max_batch_size=8, dynamic_batching=DynamicBatchingSpec.model_validate(spec))
    return ModelScheduler("digits", card, device, ThreadPoolExecutor(1), ServingMetrics())


def _x(value: float, rows: int = 1) -> dict[str, np.ndarray]:
    return {"x": np.full((rows, 3), value, np.float32)}


async def _busy(scheduler: ModelScheduler, device: _Device) -> asyncio.Task:
    first = asyncio.ensure_future(scheduler.infer(_x(0), size=1))
    await asyncio.get_running_loop().run_in_executor(None, device.started.wait, 10)
    return first


async def test_outputs_are_split_back_in_request_order() -> None:
    device = _Device()
    scheduler = _scheduler(device, max_queue_delay_microseconds=0)
    first = await _busy(scheduler, device)
    rest = [asyncio.ensure_future(scheduler.infer(_x(v, rows), size=rows)) for v, rows in [(1, 2), (2, 1), (3, 3)]]
    await asyncio.sleep(0.05)
    device.go.set()
    await first
    outputs = [(await task)[0]["y"][:, 0].tolist() for task in rest]
    assert outputs == [[2, 2], [4], [6, 6, 6]]
    assert device.batches == [[0], [1, 1, 2, 3, 3, 3]]
    await scheduler.close()


async def test_with_preferred_sizes_a_batch_takes_the_largest_one_the_queue_fills() -> None:
    """Seven queued (max 8, preferred 1, 2, 4): batches of 4, 2 and 1, each a size the backend has seen before."""
    device = _Device()
    scheduler = _scheduler(device, max_queue_delay_microseconds=0, preferred_batch_size=[1, 2, 4])
    first = await _busy(scheduler, device)
    rest = [asyncio.ensure_future(scheduler.infer(_x(v), size=1)) for v in range(1, 8)]
    await asyncio.sleep(0.05)
    device.go.set()
    await first
    outputs = [(await task)[0]["y"][:, 0].tolist() for task in rest]
    assert outputs == [[2 * v] for v in range(1, 8)]
    assert device.batches == [[0], [1, 2, 3, 4], [5, 6], [7]]
    await scheduler.close()


async def test_a_request_that_does_not_fit_waits_for_the_next_batch_and_a_later_one_joins() -> None:
    """Max 8: queued 3, 3, 3, 1 run as 3+3+1, then 3 (the skipped request keeps its place)."""
    device = _Device()
    scheduler = _scheduler(device, max_queue_delay_microseconds=0)
    first = await _busy(scheduler, device)
    rest = [asyncio.ensure_future(scheduler.infer(_x(v, rows), size=rows)) for v, rows in [(1, 3), (2, 3), (3, 3),
                                                                                           (4, 1)]]
    await asyncio.sleep(0.05)
    device.go.set()
    await asyncio.wait_for(asyncio.gather(first, *rest), 10)
    assert device.batches == [[0], [1, 1, 1, 2, 2, 2, 4], [3, 3, 3]]
    await scheduler.close()


async def test_a_request_larger_than_every_preferred_size_still_runs() -> None:
    device = _Device()
    device.go.set()
    scheduler = _scheduler(device, max_queue_delay_microseconds=0, preferred_batch_size=[1, 2])
    outputs, _ = await asyncio.wait_for(scheduler.infer(_x(5, rows=3), size=3), 10)
    assert outputs["y"][:, 0].tolist() == [10, 10, 10]
    await scheduler.close()


async def test_a_full_queue_refuses_at_once_with_retry_after() -> None:
    device = _Device()
    scheduler = _scheduler(device, default_queue_policy={"max_queue_size": 2})
    first = await _busy(scheduler, device)
    queued = [asyncio.ensure_future(scheduler.infer(_x(i), size=1)) for i in (1, 2)]
    await asyncio.sleep(0.05)
    with pytest.raises(QueueFull) as refused:
        await scheduler.infer(_x(3), size=1)
    assert refused.value.retry_after is not None and refused.value.http_status == 503
    device.go.set()
    await asyncio.gather(first, *queued)
    await scheduler.close()


async def test_higher_priority_runs_first() -> None:
    device = _Device()
    scheduler = _scheduler(device, priority_levels=2, default_priority_level=2)
    scheduler.card.max_batch_size = 1  # one request per run, so the order is visible
    scheduler.configure(scheduler.card)
    first = await _busy(scheduler, device)
    low = asyncio.ensure_future(scheduler.infer(_x(1), size=1))
    await asyncio.sleep(0.02)
    high = asyncio.ensure_future(scheduler.infer(_x(2), size=1, priority=1))
    await asyncio.sleep(0.05)
    device.go.set()
    await asyncio.gather(first, low, high)
    assert device.batches == [[0], [2], [1]]
    with pytest.raises(BadRequest, match=r"priority 3 is outside 1\.\.2"):
        await scheduler.infer(_x(1), size=1, priority=3)
    await scheduler.close()


async def test_a_request_queued_past_its_timeout_is_refused() -> None:
    device = _Device()
    scheduler = _scheduler(device)
    first = await _busy(scheduler, device)
    late = asyncio.ensure_future(scheduler.infer(_x(1), size=1, timeout_us=1_000))
    patient = asyncio.ensure_future(scheduler.infer(_x(2), size=1))
    await asyncio.sleep(0.05)
    device.go.set()
    await first
    with pytest.raises(QueueTimeout):
        await late
    assert (await patient)[0]["y"][0, 0] == 4
    await scheduler.close()


@pytest.mark.parametrize(("override", "refused"), [(False, [True, True]), (True, [True, False])])
async def test_the_cards_default_timeout_applies_and_a_request_lengthens_it_only_if_allowed(
        override: bool, refused: list[bool]) -> None:
    """``default_timeout_microseconds`` 1 ms: a request without a timeout of its own is refused once it has
    waited longer; one asking for 60 s waits on only where ``allow_timeout_override`` lets it."""
    device = _Device()
    scheduler = _scheduler(device, default_queue_policy={"default_timeout_microseconds": 1_000,
                                                         "allow_timeout_override": override})
    first = await _busy(scheduler, device)
    queued = [asyncio.ensure_future(scheduler.infer(_x(v), size=1, timeout_us=t))
              for v, t in ((1, None), (2, 60_000_000))]
    await asyncio.sleep(0.05)
    device.go.set()
    await first
    outcomes = await asyncio.wait_for(asyncio.gather(*queued, return_exceptions=True), 10)
    assert [isinstance(o, QueueTimeout) for o in outcomes] == refused
    assert device.batches == [[0]] + [[2]] * refused.count(False)
    await scheduler.close()


async def test_a_failed_batching_loop_fails_its_queued_requests_and_empties_the_gauge(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug in the loop (here ``_take`` raising) must not leave queued requests waiting for ever."""
    device = _Device()
    scheduler = _scheduler(device, max_queue_delay_microseconds=0)
    first = await _busy(scheduler, device)
    queued = [asyncio.ensure_future(scheduler.infer(_x(v), size=1)) for v in (1, 2)]
    await asyncio.sleep(0.05)
    def pending() -> float | None:
        return scheduler._metrics.registry.get_sample_value("legacygpu_inference_pending_request_count",
                                                            {"model": "digits"})

    assert pending() == 2

    def broken(_: object) -> list[object]:
        raise RuntimeError("a bug")

    monkeypatch.setattr(scheduler, "_take", broken)
    device.go.set()
    await first
    for task in queued:
        with pytest.raises(ServingError, match="the batcher failed: RuntimeError: a bug"):
            await asyncio.wait_for(task, 10)
    assert pending() == 0
    await scheduler.close()


# Where a batch runs: the device thread, or the event loop for a model that fast -------------------------------


class _Recorder:
    """A model that doubles its input, recording on which thread it ran; ``inline`` says whether
    ``try_execute`` accepts to run (else it declines, as the runner does while the device is busy)."""

    def __init__(self, *, seconds: float = 0.0, inline: bool = True) -> None:
        self.seconds = seconds
        self.inline = inline
        self.ran: list[tuple[str, str]] = []

    def execute(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        time.sleep(self.seconds)
        self.ran.append(("execute", threading.current_thread().name))
        return {"y": feeds["x"] * 2}

    def try_execute(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        if not self.inline:
            return None
        self.ran.append(("try_execute", threading.current_thread().name))
        return {"y": feeds["x"] * 2}


def _recorded(model: _Recorder, inline_below: float) -> ModelScheduler:
    scheduler = ModelScheduler("digits", ModelCard(name="digits"), model.execute, ThreadPoolExecutor(1, "device"),
                               ServingMetrics(), try_execute=model.try_execute)
    assert scheduler.inline_below == INLINE_SECONDS
    scheduler.inline_below = inline_below  # wide margins: a busy host may pause a thread for milliseconds
    return scheduler


async def test_a_model_faster_than_a_thread_hand_off_runs_on_the_event_loop() -> None:
    model = _Recorder()
    scheduler = _recorded(model, inline_below=1.0)
    outputs = [(await scheduler.infer(_x(v), size=1))[0]["y"][0, 0] for v in (1, 2, 3)]
    assert outputs == [2, 4, 6]
    loop_thread = threading.current_thread().name
    assert model.ran[0][0] == "execute" and model.ran[0][1].startswith("device")  # first run: time unknown
    assert model.ran[1:] == [("try_execute", loop_thread)] * 2
    await scheduler.close()


async def test_a_slow_model_or_a_busy_device_stays_on_the_device_thread() -> None:
    slow = _Recorder(seconds=0.1)
    scheduler = _recorded(slow, inline_below=0.05)
    for v in (1, 2):
        await scheduler.infer(_x(v), size=1)
    assert [where for where, _ in slow.ran] == ["execute", "execute"]
    await scheduler.close()
    busy = _Recorder(inline=False)
    scheduler = _recorded(busy, inline_below=1.0)
    outputs = [(await scheduler.infer(_x(v), size=1))[0]["y"][0, 0] for v in (1, 2)]
    assert outputs == [2, 4] and [where for where, _ in busy.ran] == ["execute", "execute"]
    await scheduler.close()


# Runs side by side: a backend that takes two runs at once (onnxruntime) -------------------------------------


async def test_with_two_runs_the_next_batch_starts_while_one_runs_and_a_third_waits_for_a_free_one() -> None:
    device = _Device()
    card = ModelCard(name="digits", max_batch_size=8,
                     dynamic_batching=DynamicBatchingSpec.model_validate({"max_queue_delay_microseconds": 0}))
    scheduler = ModelScheduler("digits", card, device, ThreadPoolExecutor(2), ServingMetrics(), runs=2)
    first = await _busy(scheduler, device)
    device.started.clear()
    second = asyncio.ensure_future(scheduler.infer(_x(1), size=1))
    assert await asyncio.get_running_loop().run_in_executor(None, device.started.wait, 10)  # the device is busy
    rest = [asyncio.ensure_future(scheduler.infer(_x(v), size=1)) for v in (2, 3)]
    await asyncio.sleep(0.05)
    assert scheduler.pending == 2  # both runs are taken: the third batch forms in the queue
    device.go.set()
    outputs = await asyncio.wait_for(asyncio.gather(first, second, *rest), 10)
    assert [o["y"][0, 0] for o, _ in outputs] == [0, 2, 4, 6]
    assert sorted(map(sorted, device.batches)) == [[0], [1], [2, 3]]
    await scheduler.close()


async def test_closing_fails_the_requests_of_running_batches_too() -> None:
    device = _Device()
    scheduler = _scheduler(device, max_queue_delay_microseconds=0)
    first = await _busy(scheduler, device)
    queued = asyncio.ensure_future(scheduler.infer(_x(1), size=1))
    await asyncio.sleep(0.05)
    await scheduler.close()
    device.go.set()
    for task in (first, queued):
        with pytest.raises(QueueTimeout, match="shutting down"):
            await asyncio.wait_for(task, 10)
