"""The /v2 forwarder's connections to a worker: kept open between requests, dropped before the worker drops them.

A real uvicorn server on loopback (uvicorn is what the worker serves with, and closes a keep-alive
connection idle for 5 s) answers each request with the client port it came from, so the test sees
which connection the forwarder used. No mock: the backend is a stand-in only for discovery.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from helpers import FixedWorkers, endpoint, half_answer_server, serve_in_thread
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from legacygpu.api.forwarding import KEEPALIVE_SECONDS, Forwarder, NoWorker


async def _client_port(request: Request) -> PlainTextResponse:
    assert request.client is not None
    return PlainTextResponse(str(request.client.port))


@pytest.fixture
def worker_url() -> Iterator[str]:
    app = Starlette(routes=[Route("/v2/models/m/infer", _client_port, methods=["POST"])])
    with serve_in_thread(app, lifespan="off") as url:  # uvicorn's timeout_keep_alive: 5 s
        yield url


async def test_a_connection_is_reused_then_dropped_before_the_workers_keep_alive_ends(worker_url: str) -> None:
    assert KEEPALIVE_SECONDS < 5, "uvicorn closes idle connections after 5 s: ours must go first"
    forwarder = Forwarder(FixedWorkers(endpoint("w", worker_url)), CollectorRegistry())  # type: ignore[arg-type]
    try:
        async def port() -> bytes:
            answer = await forwarder.forward("POST", "/v2/models/m/infer", model="m", content=b"{}")
            assert answer.status_code == 200
            return answer.content

        first = await port()
        assert await port() == first, "a second request at once goes over the same connection"
        await asyncio.sleep(KEEPALIVE_SECONDS + 0.5)  # idle past our expiry, not yet past the worker's 5 s
        assert await port() != first, "an idle connection is not reused once it may be closing under us"
    finally:
        await forwarder.close()


def _workers(*urls: str) -> FixedWorkers:
    """Workers ``w0``, ``w1``, ... at ``urls``."""
    return FixedWorkers(*(endpoint(f"w{i}", url) for i, url in enumerate(urls)))


async def test_a_worker_that_dies_mid_answer_is_retried_on_another(worker_url: str) -> None:
    dying, _ = half_answer_server()
    registry = CollectorRegistry()
    alone = Forwarder(_workers(dying), CollectorRegistry())  # type: ignore[arg-type]
    with pytest.raises(NoWorker, match="before the whole answer came"):  # the worker failed, not the facade
        await alone.forward("POST", "/v2/models/m/infer", model="m", content=b"{}")
    await alone.close()
    forwarder = Forwarder(_workers(worker_url, dying), registry)  # type: ignore[arg-type]
    forwarder.outstanding[worker_url] = 1  # the healthy one looks busier: the dying one is picked first
    answer = await forwarder.forward("POST", "/v2/models/m/infer", model="m", content=b"{}")
    assert answer.status_code == 200 and answer.worker == "w0" and answer.content.isdigit()
    assert registry.get_sample_value("legacygpu_serving_retries_total", {"model": "m"}) == 1
    await forwarder.close()


async def test_a_request_is_sent_again_once_only(worker_url: str) -> None:
    """Two workers that die mid-answer, picked first: the request fails after the second, though a third worker
    is healthy (one retry, not one per worker). Both are then passed over, and the next request gets the third."""
    (first, first_taken), (second, second_taken) = half_answer_server(), half_answer_server()
    registry = CollectorRegistry()
    forwarder = Forwarder(_workers(first, second, worker_url), registry)  # type: ignore[arg-type]
    forwarder.outstanding[worker_url] = 1  # the healthy one looks busiest: the dying ones are picked first
    try:
        with pytest.raises(NoWorker, match="before the whole answer came"):
            await forwarder.forward("POST", "/v2/models/m/infer", model="m", content=b"{}")
        assert (first_taken[0], second_taken[0]) == (1, 1)
        assert registry.get_sample_value("legacygpu_serving_retries_total", {"model": "m"}) == 1
        answer = await forwarder.forward("POST", "/v2/models/m/infer", model="m", content=b"{}")
        assert answer.status_code == 200 and answer.worker == "w2"
        assert (first_taken[0], second_taken[0]) == (1, 1)
    finally:
        await forwarder.close()
