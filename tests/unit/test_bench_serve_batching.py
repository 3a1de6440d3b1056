"""``legacygpu bench serve``'s batching settings: every target's batcher waits its queue delay for a lone request."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from legacygpu.cli.bench_serve import OPENCL_PREFERRED, PREFERRED, batching_spec
from legacygpu.core.modelcards import ModelCard
from legacygpu.worker.serving.batching import ModelScheduler
from legacygpu.worker.serving.metrics import ServingMetrics


@pytest.mark.parametrize("target", sorted(PREFERRED))
async def test_a_lone_request_waits_the_queue_delay_on_every_target(target: str) -> None:
    """A preferred size runs at once: were 1 among them, the OpenCL cluster's batcher would not wait for a lone
    request while the onnxruntime one does, and the two would not be batching alike."""
    spec = batching_spec(PREFERRED[target])
    card = ModelCard(name="m", max_batch_size=64, dynamic_batching=spec)
    scheduler = ModelScheduler("m", card, lambda feeds: feeds, ThreadPoolExecutor(1), ServingMetrics())
    request = asyncio.ensure_future(scheduler.infer({"x": np.zeros((1, 3), np.float32)}, size=1))
    await asyncio.sleep(0)  # queued; the batching loop has not looked yet
    opener = scheduler._first()
    assert opener is not None
    assert not scheduler._batch_ready(opener, opener.enqueued), "a lone request waits for others to join"
    assert scheduler._batch_ready(opener, opener.enqueued + spec.max_queue_delay_microseconds / 1e6)
    await asyncio.wait_for(request, 10)
    await scheduler.close()


def test_the_opencl_target_prefers_powers_of_two_up_to_the_largest_batch() -> None:
    assert OPENCL_PREFERRED == [2, 4, 8, 16, 32, 64]
