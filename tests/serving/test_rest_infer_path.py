"""The worker's bare REST infer path (``_InferFirst`` in :mod:`legacygpu.worker.serving.rest`), in process.

The real digits model on onnxruntime behind the real ASGI app, driven over httpx's ASGI transport:
one look at the model's files per request (the card's and the version file's times), and errors
answered exactly as every other endpoint answers them (:func:`~legacygpu.worker.serving.rest.error_response`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from legacygpu.worker.runner import TaskRunner
from legacygpu.worker.serving import ServingEngine, engine
from legacygpu.worker.serving.errors import BadRequest, ModelNotFound, ServingError
from legacygpu.worker.serving.rest import create_rest_app, error_response

BODY = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [1.0] * 64}]}


@pytest.fixture
async def client(runner: TaskRunner) -> AsyncIterator[httpx.AsyncClient]:
    served = ServingEngine(runner)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(create_rest_app(served)),
                                     base_url="http://worker") as c:
            yield c
    finally:
        await served.close()


async def test_a_request_looks_at_the_models_files_once(client: httpx.AsyncClient,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    assert (await client.post("/v2/models/digits/infer", json=BODY)).status_code == 200  # loaded and cached
    looked: list[str] = []
    real = engine._mtime

    def counted(path: str) -> int:
        looked.append(path)
        return real(path)

    monkeypatch.setattr(engine, "_mtime", counted)
    answer = await client.post("/v2/models/digits/infer", json=BODY)
    assert answer.status_code == 200 and answer.json()["model_version"] == "1"
    assert len(looked) == 2 and len(set(looked)) == 2, "the card's and the version file's time, once each"


def _as_error_response(exc: ServingError) -> tuple[int, bytes, str | None]:
    response = error_response(exc)
    return response.status_code, bytes(response.body), response.headers.get("retry-after")


@pytest.mark.parametrize(("path", "headers", "exc"), [
    ("/v2/models/digits/infer", {"Inference-Header-Content-Length": "x"},
     BadRequest("Inference-Header-Content-Length must be an integer, not 'x'")),
    ("/v2/models/nope/infer", {}, ModelNotFound("unknown model 'nope' (models in the repository: digits)")),
])
async def test_an_inference_error_is_the_one_error_answer(client: httpx.AsyncClient, path: str,
                                                          headers: dict[str, str], exc: ServingError) -> None:
    answer = await client.post(path, json=BODY, headers=headers)
    assert (answer.status_code, answer.content, answer.headers.get("retry-after")) == _as_error_response(exc)
    assert answer.headers["content-type"] == "application/json"

