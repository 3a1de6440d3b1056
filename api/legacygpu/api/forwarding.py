"""Forwarding Open Inference Protocol requests from the facade to the workers.

The facade runs no model: each ``/v2`` request goes to one worker's own
endpoint (:mod:`legacygpu.worker.serving`), over a pool of persistent HTTP
connections (:class:`~legacygpu.api.workerhttp.WorkerPool`, a lean HTTP/1.1
client: aiohttp's and httpx's clients before it each cost more of the
facade's CPU per request than the rest of the path, in py-spy profiles under
``legacygpu bench serve``), and the worker's answer comes back byte for
byte: its status, its ``{"error": ...}`` body, its ``Retry-After`` and the
binary tensor data alike. Nothing is written to the database. Idle
connections are dropped after :data:`KEEPALIVE_SECONDS`, before a worker's
server (uvicorn: 5 s unless configured longer, as the worker does) would
close them under a request in flight. The local task channel pushes tasks
over a pool of its own (:mod:`legacygpu.api.backends.local.channel`).
:meth:`Forwarder.dispatch` is the protocol-neutral part (which worker, the
retry), shared by REST (:meth:`Forwarder.forward`) and gRPC
(:mod:`legacygpu.api.grpcfacade`).

Which workers: those :mod:`legacygpu.api.discovery` finds (local mode: the
registered workers that announced a serving endpoint; Kubernetes mode: the
Ready worker pods of the InferenceCluster), read at most every
``refresh_seconds``. Which one: the shared scheduling strategies of
:mod:`legacygpu.core.scheduling`, fed with the requests each worker has
outstanding from this facade; least outstanding requests (``least-loaded``)
by default. Workers that report the model loaded are preferred; if none does,
any serving worker may load it.

Requests about every worker (the repository extension's load, unload and
index, and whether a model is ready on at least one worker) go to all of
them at once (:meth:`Forwarder.broadcast`).

A worker that fails mid-request (connection refused or reset, the process
gone, an answer cut short) is skipped until the next refresh and the request is sent once more to
another worker; inference has no side effects, so this is safe. With no
worker left the answer is 503 with ``Retry-After``. The pool holds at most
``max_connections`` connections to all workers together (a request past
them waits for one); the facade itself out of file descriptors is answered
503 as well, and no worker is marked failed for it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from legacygpu.api.backends.base import ClusterBackend
from legacygpu.api.discovery import ServingEndpoint, serving_endpoints
from legacygpu.api.workerhttp import Answer, BodyStream, FacadeOverloaded, WorkerFailed, WorkerPool
from legacygpu.core.scheduling import Requirements, WorkerInfo, make_strategy

__all__ = [
    "FORWARDED_HEADERS", "FORWARDED_RAW_HEADERS", "KEEPALIVE_SECONDS", "Forwarded", "Forwarder", "NoWorker",
    "WorkerFailed", "error_text",
    "forwarder_for",
]

FORWARDED_HEADERS = ("content-type", "content-encoding", "inference-header-content-length", "retry-after")
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_CAPACITY = 1 << 20  # outstanding requests are ranked, never capped: the worker's queue refuses when full
KEEPALIVE_SECONDS = 4.0  # under uvicorn's timeout_keep_alive (5 s), so the worker never closes one mid-request
FORWARDED_RAW_HEADERS = frozenset(h.encode() for h in FORWARDED_HEADERS)
""":data:`FORWARDED_HEADERS` as an ASGI scope's header names."""


_T = TypeVar("_T")


class NoWorker(Exception):
    """No worker can serve the request now."""


@dataclass(frozen=True, slots=True)
class Forwarded:
    """A worker's answer, with only the protocol's headers (:data:`FORWARDED_HEADERS`) kept."""

    status_code: int
    raw_headers: list[tuple[bytes, bytes]]
    """Lower-case names, as an ASGI answer takes them."""
    content: bytes
    worker: str

    @property
    def headers(self) -> dict[str, str]:
        return {k.decode("latin-1"): v.decode("latin-1") for k, v in self.raw_headers}


class Forwarder:
    """Sends ``/v2`` requests to workers; one per facade."""

    def __init__(self, backend: ClusterBackend, registry: CollectorRegistry, *, strategy: str = "least-loaded",
                 refresh_seconds: float = 1.0, timeout_seconds: float = 120.0, max_connections: int = 256) -> None:
        self._backend = backend
        self._strategy = make_strategy(strategy)
        self._refresh = refresh_seconds
        self._pool = WorkerPool(keepalive_seconds=KEEPALIVE_SECONDS, connect_timeout=5.0, timeout=timeout_seconds,
                                max_connections=max_connections)
        self._endpoints: list[ServingEndpoint] = []
        self._read_at = -1e9
        self._refreshing = asyncio.Lock()
        self._failed: set[str] = set()
        self.outstanding: dict[str, int] = {}
        self.requests = Counter(
            "legacygpu_serving_requests_total",
            "Open Inference Protocol requests forwarded, by model and status (HTTP code, or gRPC status name).",
            ["model", "code"], registry=registry,
        )
        self.retries = Counter(
            "legacygpu_serving_retries_total", "Requests sent again to another worker after one failed mid-request.",
            ["model"], registry=registry,
        )
        self.duration = Histogram(
            "legacygpu_serving_forward_duration_seconds",
            "Time from the facade having a request's whole body to having the worker's answer.",
            ["model"], buckets=_BUCKETS, registry=registry,
        )
        self.pending = Gauge(
            "legacygpu_serving_outstanding_requests", "Requests forwarded to a worker and not yet answered.",
            ["worker"], registry=registry,
        )

    async def close(self) -> None:
        await self._pool.close()

    async def endpoints(self) -> list[ServingEndpoint]:
        """The workers serving now (cached for ``refresh_seconds``)."""
        if time.monotonic() - self._read_at < self._refresh:
            return self._endpoints
        async with self._refreshing:
            if time.monotonic() - self._read_at >= self._refresh:
                self._endpoints = await serving_endpoints(self._backend)
                self._pool.retain({e.url for e in self._endpoints})  # departed workers' connections closed
                self._failed.clear()
                self._read_at = time.monotonic()
        return self._endpoints

    def _pick(self, model: str | None, candidates: list[ServingEndpoint]) -> ServingEndpoint | None:
        by_url = {e.url: e for e in candidates}
        infos = [WorkerInfo(id=e.url, assigned=self.outstanding.get(e.url, 0), capacity=_CAPACITY, models=e.models)
                 for e in candidates]
        chosen = None
        if model:
            chosen = self._strategy.pick(Requirements(model=model), [w for w in infos if w.models])
        if chosen is None:
            chosen = self._strategy.pick(Requirements(), infos)
        return by_url[chosen.id] if chosen is not None else None

    async def dispatch(self, model: str | None, send: Callable[[ServingEndpoint], Awaitable[_T]], *,
                       protocol: Literal["rest", "grpc"] = "rest") -> _T:
        """``send`` to one worker, and once more to another if it raises :class:`WorkerFailed`.

        Raises :class:`NoWorker` when no worker (or no second one) serves ``protocol``, or when the facade
        itself cannot open a connection (:class:`~legacygpu.api.workerhttp.FacadeOverloaded`).
        """
        tried: set[str] = set()
        last_error = ""
        for attempt in range(2):
            candidates = [e for e in await self.endpoints()
                          if e.url not in tried and (protocol == "rest" or e.grpc is not None)]
            # A worker that failed lately is passed over while another is left, not refused outright: when it
            # is the only one (the other just deleted, or itself just restarted) the request still gets a try.
            endpoint = self._pick(model, [e for e in candidates if e.url not in self._failed] or candidates)
            if endpoint is None:
                break
            if attempt:
                self.retries.labels(model or "").inc()
            tried.add(endpoint.url)
            self.outstanding[endpoint.url] = self.outstanding.get(endpoint.url, 0) + 1
            self.pending.labels(endpoint.name).inc()
            try:
                return await send(endpoint)
            except WorkerFailed as exc:
                self._failed.add(endpoint.url)
                last_error = f"{endpoint.name}: {exc}"  # the worker named the same way over REST and gRPC
            except FacadeOverloaded as exc:  # the facade's own limit: no worker is to blame, none is tried
                raise NoWorker(f"the facade cannot forward the request now: {exc}") from exc
            finally:
                self.outstanding[endpoint.url] -= 1
                self.pending.labels(endpoint.name).dec()
        reason = f" (the last one failed: {last_error})" if last_error else ""
        raise NoWorker(f"no worker serves the Open Inference Protocol now{reason}")

    async def broadcast(self, method: str, path: str, *,
                        body: object = None) -> list[tuple[ServingEndpoint, Forwarded | WorkerFailed]]:
        """Send one REST request to every serving worker at once; each worker's answer, or its failure."""

        content = json.dumps(body).encode() if body is not None else b""
        headers = [(b"content-type", b"application/json")] if body is not None else []

        async def one(endpoint: ServingEndpoint) -> Forwarded | WorkerFailed:
            try:
                return self._forwarded(await self._pool.request(endpoint.url, method, path, headers, content),
                                       endpoint)
            except (WorkerFailed, FacadeOverloaded) as exc:
                return WorkerFailed(f"{endpoint.name}: {exc}")

        endpoints = await self.endpoints()
        answers = await asyncio.gather(*(one(e) for e in endpoints))
        return list(zip(endpoints, answers, strict=True))

    async def model_ready(self, model: str, version: str = "") -> tuple[int, str]:
        """200 if at least one worker has the model loaded; else 404 (every worker: unknown) or 503, and why."""
        version_part = f"/versions/{version}" if version else ""
        answers = await self.broadcast("GET", f"/v2/models/{model}{version_part}/ready")
        if not answers:
            return 503, "no worker serves the Open Inference Protocol now"
        reasons, codes = [], set()
        for _, answer in answers:
            if isinstance(answer, WorkerFailed):
                reasons.append(str(answer))
                codes.add(503)
            elif answer.status_code == 200:
                return 200, ""
            else:
                reasons.append(error_text(answer))
                codes.add(answer.status_code)
        return (404 if codes == {404} else 503), "; ".join(dict.fromkeys(reasons))

    async def forward(self, method: str, path: str, *, model: str | None,
                      content: bytes | Sequence[bytes] | BodyStream = b"",
                      headers: Mapping[str, str] | Sequence[tuple[bytes, bytes]] = ()) -> Forwarded:
        """Send one REST request to a worker (and once more to another if that one fails); raises :class:`NoWorker`.

        ``path`` as decoded (it is percent-encoded on the way); ``content`` may come in parts, or still be
        arriving (:class:`~legacygpu.api.workerhttp.BodyStream`: then it is sent on as it comes); of ``headers``
        (a mapping, or an ASGI scope's lower-case pairs) only :data:`FORWARDED_HEADERS` are sent on.
        """
        started = time.perf_counter()
        if isinstance(headers, Mapping):
            sent = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        else:
            sent = list(headers)
        sent = [(k, v) for k, v in sent if k in FORWARDED_RAW_HEADERS]

        async def send(endpoint: ServingEndpoint) -> Forwarded:
            return self._forwarded(await self._pool.request(endpoint.url, method, path, sent, content), endpoint)

        try:
            answer = await self.dispatch(model, send)
        except NoWorker:
            self.requests.labels(model or "", "503").inc()
            raise
        if isinstance(content, BodyStream) and content.completed_at is not None:
            started = content.completed_at  # the time the client took to send the body is not the forward's
        self.duration.labels(model or "").observe(time.perf_counter() - started)
        self.requests.labels(model or "", str(answer.status_code)).inc()
        return answer

    @staticmethod
    def _forwarded(answer: Answer, endpoint: ServingEndpoint) -> Forwarded:
        return Forwarded(answer.status, [(k, v) for k, v in answer.headers if k in FORWARDED_RAW_HEADERS], answer.body,
                         endpoint.name)


def forwarder_for(app: FastAPI) -> Forwarder:
    """The facade's one :class:`Forwarder` (REST and gRPC share it: one view of the workers' load)."""
    forwarder: Forwarder | None = getattr(app.state, "forwarder", None)
    if forwarder is None:
        state = app.state
        forwarder = state.forwarder = Forwarder(state.backend, state.metrics.registry)
    return forwarder


def error_text(answer: Forwarded) -> str:
    """The protocol's ``{"error": ...}`` message of a worker's answer, or its status."""
    try:
        error = json.loads(answer.content).get("error")
    except (ValueError, AttributeError):
        error = None
    return error if isinstance(error, str) else f"HTTP {answer.status_code}"
