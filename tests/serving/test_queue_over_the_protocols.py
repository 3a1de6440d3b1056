"""A model's queue policy asked for over the wire: a full queue, a request's own timeout and priority.

A real worker server (REST and gRPC on loopback, the engine, the runner, the
scheduler) in this process over :class:`~serving_support.GatedBackend`:
onnxruntime running the digits model only once the test opens the gate, so
the device stays busy for as long as the test needs and requests queue behind
it. The clients are ``tritonclient`` (HTTP and gRPC), which sends ``priority``
and ``timeout`` as the protocol's request parameters, and a bare grpc channel
with the protocol's messages where the trailing metadata is asserted
(tritonclient does not show it). The facade in front, where there is one, is
:func:`serving_support.facade`. Each request sends rows of one value, so the
batches the device ran show whose requests they held, and in which order.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from helpers import TOKEN, served_by, wait_until
from serving_support import GatedBackend, enable_batching, facade
from tritonclient.utils import InferenceServerException

from legacygpu.core.modelcards import ModelRepository
from legacygpu.core.oip import grpc_predict_v2_pb2 as pb
from legacygpu.worker.runner import TaskRunner
from legacygpu.worker.serving import ServingEngine, ServingServer
from legacygpu.worker.serving.grpcservice import SERVICE


@dataclass
class Worker:
    server: ServingServer
    engine: ServingEngine
    device: GatedBackend
    pool: ThreadPoolExecutor
    """Where the test's clients wait (closed after the gate opens, whatever the test's outcome)."""

    def pending(self) -> float:
        """The worker's own gauge of requests waiting in digits' queue."""
        value = self.engine.metrics.registry.get_sample_value("legacygpu_inference_pending_request_count",
                                                              {"model": "digits"})
        return value or 0.0


@pytest.fixture
def gated_worker(serving_models: Path) -> Iterator[Callable[..., Worker]]:
    """Starts a worker whose digits card has ``max_batch_size`` 1 (one request per run, so the order shows),
    no queue delay, and the ``dynamic_batching`` settings given."""
    started: list[Worker] = []

    def start(**batching: object) -> Worker:
        enable_batching(serving_models, max_batch_size=1, delay_us=0, **batching)
        device = GatedBackend()
        engine = ServingEngine(TaskRunner(ModelRepository(serving_models), device))
        worker = Worker(ServingServer(engine), engine, device, ThreadPoolExecutor(4))
        worker.server.start()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.device.gate.set()
        worker.pool.shutdown()
        worker.server.stop()


def _rows(value: float) -> np.ndarray:
    return np.full((1, 64), value, np.float32)


def _infer(worker: Worker, protocol: str, value: float, **parameters: int) -> list[int]:
    """One request over tritonclient (``priority``, ``timeout`` as it sends them); its label."""
    if protocol == "rest":
        client = triton_http.InferenceServerClient(worker.server.endpoints["rest"].removeprefix("http://"),
                                                   network_timeout=60)
        tensor = triton_http.InferInput("input", [1, 64], "FP32")
    else:
        client = triton_grpc.InferenceServerClient(worker.server.endpoints["grpc"])
        tensor = triton_grpc.InferInput("input", [1, 64], "FP32")
    tensor.set_data_from_numpy(_rows(value))
    try:
        return client.infer("digits", [tensor], **parameters).as_numpy("label").tolist()
    finally:
        client.close()


def _error(future: Future) -> InferenceServerException:
    error = future.exception(60)
    assert isinstance(error, InferenceServerException), f"expected a refusal, got {error or future.result()}"
    return error


def _hold_the_device(worker: Worker) -> Future:
    """A first request, running on the device until the gate opens."""
    first = worker.pool.submit(_infer, worker, "rest", 0.0)
    assert worker.device.started.wait(30), "the first request never reached the device"
    return first


def _queue(worker: Worker, protocol: str, value: float, **parameters: int) -> Future:
    """A request sent while the device is busy, once it waits in the queue."""
    waiting = worker.pending()
    future = worker.pool.submit(_infer, worker, protocol, value, **parameters)
    wait_until(lambda: worker.pending() == waiting + 1, timeout=30, what=f"request {value} to be queued")
    return future


def _grpc_refusal(address: str, value: float, metadata: tuple[tuple[str, str], ...] = ()) -> grpc.RpcError:
    """One ModelInfer over grpc itself, expected to be refused: its error (code, details, trailing metadata)."""
    request = pb.ModelInferRequest(model_name="digits", raw_input_contents=[_rows(value).tobytes()])
    request.inputs.add(name="input", datatype="FP32", shape=[1, 64])
    with grpc.insecure_channel(address) as channel, pytest.raises(grpc.RpcError) as refused:
        infer = channel.unary_unary(f"/{SERVICE}/ModelInfer", request_serializer=pb.ModelInferRequest.SerializeToString,
                                    response_deserializer=pb.ModelInferResponse.FromString)
        infer(request, metadata=metadata, timeout=60)
    return refused.value


def test_a_full_queue_is_unavailable_with_retry_after_from_a_workers_grpc_and_through_the_facade(
        gated_worker: Callable[..., Worker], tmp_path: Path) -> None:
    worker = gated_worker(default_queue_policy={"max_queue_size": 1})
    endpoints = worker.server.endpoints
    with facade(tmp_path / "data", served_by("w", worker.server, ("digits",))) as front:
        first = _hold_the_device(worker)
        queued = _queue(worker, "rest", 1.0)
        refusals = [_grpc_refusal(endpoints["grpc"], 2.0),
                    _grpc_refusal(front.grpc, 3.0, (("authorization", f"Bearer {TOKEN}"),))]
        body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [4.0] * 64}]}
        rest = front.http.post("/v2/models/digits/infer", json=body)
        worker.device.gate.set()
        first.result(60), queued.result(60)
    message = "model 'digits': the queue is full (1 requests wait)"
    for refused in refusals:
        assert refused.code() == grpc.StatusCode.UNAVAILABLE
        assert refused.details() == message
        trailing = dict(refused.trailing_metadata() or ())
        assert trailing["retry-after"] == "1" and trailing["legacygpu-error"] == "QueueFull"
    assert front.metrics.get_sample_value("legacygpu_serving_requests_total",
                                          {"model": "digits", "code": "UNAVAILABLE"}) == 1
    assert front.metrics.get_sample_value("legacygpu_serving_retries_total", {"model": "digits"}) is None
    assert rest.status_code == 503 and rest.headers["retry-after"] == "1" and rest.json() == {"error": message}
    assert worker.device.batches == [[0.0], [1.0]]  # the refused requests never ran
    assert worker.engine.metrics.registry.get_sample_value(
        "legacygpu_inference_request_failure_total", {"model": "digits", "reason": "queue_full"}) == 3


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_a_request_whose_timeout_passes_while_the_device_is_busy_is_refused(
        gated_worker: Callable[..., Worker], protocol: str) -> None:
    """The request's ``timeout`` parameter (microseconds) reaches the scheduler from either protocol."""
    worker = gated_worker()
    first = _hold_the_device(worker)
    late = _queue(worker, protocol, 1.0, timeout=1_000)
    time.sleep(0.05)  # its 1 ms is long past when the next request wakes the scheduler, which refuses it
    patient = worker.pool.submit(_infer, worker, protocol, 2.0)
    refused = _error(late)  # while the device is still busy
    assert worker.pending() == 1  # the patient request waits on
    worker.device.gate.set()
    first.result(60), patient.result(60)
    assert refused.status() == ("503" if protocol == "rest" else "StatusCode.UNAVAILABLE")
    assert refused.message() == "model 'digits': the request's timeout passed while it was queued"
    assert worker.device.batches == [[0.0], [2.0]]
    assert worker.engine.metrics.registry.get_sample_value(
        "legacygpu_inference_request_failure_total", {"model": "digits", "reason": "timeout"}) == 1


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_a_higher_priority_request_overtakes_a_queued_lower_one(gated_worker: Callable[..., Worker],
                                                               protocol: str) -> None:
    """Two levels, the default the lower: a request with ``priority`` 1 runs before one queued earlier."""
    worker = gated_worker(priority_levels=2, default_priority_level=2)
    first = _hold_the_device(worker)
    low = _queue(worker, protocol, 1.0)
    high = _queue(worker, protocol, 2.0, priority=1)
    worker.device.gate.set()
    for answered in (first, low, high):
        answered.result(60)
    assert worker.device.batches == [[0.0], [2.0], [1.0]]


def test_a_priority_beyond_the_cards_levels_is_refused_over_both_protocols(
        gated_worker: Callable[..., Worker]) -> None:
    worker = gated_worker(priority_levels=2)
    worker.device.gate.set()
    rest = _error(worker.pool.submit(_infer, worker, "rest", 1.0, priority=3))
    grpc_ = _error(worker.pool.submit(_infer, worker, "grpc", 1.0, priority=3))
    assert rest.status() == "400" and grpc_.status() == "StatusCode.INVALID_ARGUMENT"
    assert rest.message() == grpc_.message() == "model 'digits': priority 3 is outside 1..2"
    _infer(worker, "grpc", 1.0, priority=2)
    assert worker.device.batches == [[1.0]]  # only the request within the levels ran
