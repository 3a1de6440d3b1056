"""The engine's count of real-time requests in flight (published by Kubernetes workers for the autoscaler).

The real digits model on onnxruntime; the count must rise with every request that enters
``infer`` and fall back to zero when each has ended, whether it succeeded or failed.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from legacygpu.worker.runner import TaskRunner
from legacygpu.worker.serving import ServingEngine
from legacygpu.worker.serving.codec import InferInput, InferRequest
from legacygpu.worker.serving.errors import ServingError


def _request(x: np.ndarray, model: str = "digits") -> InferRequest:
    return InferRequest(model, inputs=[InferInput("input", "FP32", x)])  # type: ignore[arg-type]


async def test_requests_count_while_in_flight_and_not_after(runner: TaskRunner) -> None:
    engine = ServingEngine(runner)
    try:
        assert engine.in_flight == 0
        calls = [asyncio.ensure_future(engine.infer(_request(np.full((1, 64), i, np.float32)))) for i in range(6)]
        await asyncio.sleep(0)  # each call has entered infer and waits on the model's queue or the device
        assert engine.in_flight == 6
        results = await asyncio.gather(*calls)
        assert len(results) == 6 and engine.in_flight == 0
        with pytest.raises(ServingError):
            await engine.infer(_request(np.zeros((1, 64), np.float32), model="no-such-model"))
        assert engine.in_flight == 0  # a refused request leaves no count behind
    finally:
        await engine.close()
