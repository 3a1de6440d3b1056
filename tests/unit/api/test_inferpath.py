"""The facade's ``/v2`` inference front (:mod:`legacygpu.api.inferpath`): in front of FastAPI, yet counted and limited.

A real facade app (``create_app``) on a real uvicorn socket, forwarding to a real uvicorn "worker" on
loopback that answers with what it received; the backend is a stand-in only for discovery. A spy
around what the front passes on shows which requests went through FastAPI's middleware stack.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers import JOIN_TOKEN, TOKEN, FixedWorkers, endpoint, facade_app, facade_client, serve_in_thread
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from legacygpu.api.forwarding import Forwarder
from legacygpu.api.inferpath import InferPath

LIMIT = 1 << 20
PLAIN, VERSIONED = "/v2/models/{model}/infer", "/v2/models/{model}/versions/{version}/infer"


async def _echo(request: Request) -> Response:
    body = await request.body()
    return JSONResponse({"length": len(body), "sha256": hashlib.sha256(body).hexdigest(), "path": request.url.path,
                         "header": request.headers.get("inference-header-content-length")})


class _Spy:
    """Records the path of every HTTP request passed on to FastAPI's middleware."""

    def __init__(self, app: ASGIApp, seen: list[str]) -> None:
        self.app, self.seen = app, seen

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.seen.append(scope["path"])
        await self.app(scope, receive, send)


@pytest.fixture(scope="module")
def worker_url() -> Iterator[str]:
    app = Starlette(routes=[Route("/v2/models/{m}/infer", _echo, methods=["POST"]),
                            Route("/v2/models/{m}/versions/{v}/infer", _echo, methods=["POST"])])
    with serve_in_thread(app, lifespan="off") as url:
        yield url


@pytest.fixture
def facade(tmp_path: Path, worker_url: str) -> Iterator[tuple[httpx.Client, list[str]]]:
    app = facade_app(tmp_path / "data", max_request_bytes=LIMIT)
    app.state.forwarder = Forwarder(FixedWorkers(endpoint("w", worker_url)), app.state.metrics.registry)  # type: ignore[arg-type]
    seen: list[str] = []
    front = app.middleware_stack
    assert isinstance(front, InferPath)
    front.framework = _Spy(front.framework, seen)  # what the front passes on: FastAPI's whole middleware stack
    with facade_client(app, token=None) as client:
        yield client, seen


def _count(client: httpx.Client, route: str, code: str) -> float:
    labels = f'code="{code}",method="POST",route="{re.escape(route)}"'
    found = re.search(rf"^legacygpu_http_requests_total{{{labels}}} (\S+)$",
                      client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_authorised_inference_is_forwarded_in_front_of_fastapi_and_still_counted(
        facade: tuple[httpx.Client, list[str]]) -> None:
    client, seen = facade
    body = bytes(range(256)) * 2000  # 512 KB: it reaches the facade in several parts, streamed on
    auth = {"Authorization": f"Bearer {TOKEN}", "Inference-Header-Content-Length": "7"}
    plain = client.post("/v2/models/m/infer", content=body, headers=auth)
    versioned = client.post("/v2/models/m/versions/2/infer", content=b"{}", headers=auth)
    assert plain.status_code == versioned.status_code == 200
    assert plain.json() == {"length": len(body), "sha256": hashlib.sha256(body).hexdigest(),
                            "path": "/v2/models/m/infer", "header": "7"}
    assert versioned.json()["path"] == "/v2/models/m/versions/2/infer"
    assert not [p for p in seen if "/infer" in p], "forwarded without FastAPI's middleware stack"
    assert _count(client, PLAIN, "200") == 1 and _count(client, VERSIONED, "200") == 1


def test_what_fastapi_must_answer_still_goes_through_it(facade: tuple[httpx.Client, list[str]]) -> None:
    """A wrong or missing token, a body over the limit and a body without Content-Length: FastAPI's answers
    and its middleware (the body-size limit, the request counter), as for every other route."""
    client, seen = facade
    user = {"Authorization": f"Bearer {TOKEN}"}
    missing = client.post("/v2/models/m/infer", content=b"{}")
    assert missing.status_code == 401 and missing.json()["detail"].startswith("missing bearer token")
    joined = client.post("/v2/models/m/infer", content=b"{}", headers={"Authorization": f"Bearer {JOIN_TOKEN}"})
    assert joined.status_code == 403
    too_large = client.post("/v2/models/m/infer", content=b"x" * (LIMIT + 1), headers=user)
    assert too_large.status_code == 413 and "over the limit" in too_large.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer encoding
        yield b"abc"
        yield b"def"

    chunked = client.post("/v2/models/m/infer", content=chunks(), headers=user)
    assert chunked.status_code == 200 and chunked.json()["sha256"] == hashlib.sha256(b"abcdef").hexdigest()
    assert [p for p in seen if "/infer" in p] == ["/v2/models/m/infer"] * 4
    assert _count(client, PLAIN, "401") == 1 and _count(client, PLAIN, "403") == 1
    assert _count(client, PLAIN, "200") == 1  # the chunked one, through the route
