"""The facade's HTTP/1.1 client to the workers (:mod:`legacygpu.api.workerhttp`), against real servers on loopback.

A real uvicorn server (what workers serve with) for the answers a worker gives, and plain sockets for
the ways a worker fails: it dies mid-answer, closes a kept-alive connection under a reused request,
never answers, answers something that is not HTTP, or dies while it reads a streamed body.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest
from helpers import FixedWorkers, endpoint, half_answer_server, raw_server, read_http_request, serve_in_thread
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from legacygpu.api.forwarding import Forwarder, NoWorker
from legacygpu.api.workerhttp import BodyStream, IncompleteBody, WorkerFailed, WorkerPool, WorkerUnreachable


async def _echo(request: Request) -> Response:
    """What arrived: the body's length and digest, a protocol header, and the client port (the connection)."""
    body = await request.body()
    assert request.client is not None
    return JSONResponse({"length": len(body), "sha256": hashlib.sha256(body).hexdigest(), "port": request.client.port,
                         "header": request.headers.get("inference-header-content-length"),
                         "path": request.url.path}, headers={"Inference-Header-Content-Length": "7"})


async def _chunked(_: Request) -> Response:
    async def parts() -> Iterator[bytes]:  # type: ignore[misc]
        for part in (b"one,", b"two,", b"three"):
            yield part

    return StreamingResponse(parts(), media_type="text/plain")  # no Content-Length: chunked transfer encoding


async def _close(_: Request) -> Response:
    return Response(b"bye", headers={"Connection": "close"})


@pytest.fixture(scope="module")
def worker_url() -> Iterator[str]:
    app = Starlette(routes=[Route("/v2/models/{m}/infer", _echo, methods=["POST"]), Route("/chunked", _chunked),
                            Route("/close", _close)])
    with serve_in_thread(app, lifespan="off") as url:  # uvicorn's timeout_keep_alive: 5 s
        yield url


def _closing_server() -> tuple[str, threading.Event]:
    """A server that reads whatever comes and never answers; the event is set once the client closes
    (EOF or reset) the connection."""
    closed = threading.Event()

    def until_closed(conn: socket.socket) -> None:
        try:
            while conn.recv(65536):
                pass
        finally:
            closed.set()

    url, _ = raw_server(until_closed)
    return url, closed


async def _closed(event: threading.Event) -> bool:
    return await asyncio.get_running_loop().run_in_executor(None, event.wait, 10)


async def _closes(events: list[threading.Event], count: int = 1) -> bool:
    """Whether at least ``count`` of ``events`` are set within 10 s."""
    for _ in range(200):
        if sum(e.is_set() for e in events) >= count:
            return True
        await asyncio.sleep(0.05)
    return False


async def _answer(pool: WorkerPool, url: str, body: bytes | list[bytes] | BodyStream = b"{}") -> dict[str, object]:
    answer = await pool.request(url, "POST", "/v2/models/m/infer", [(b"inference-header-content-length", b"2")], body)
    assert answer.status == 200
    return json.loads(answer.body)  # type: ignore[no-any-return]


async def test_an_answer_comes_whole_and_its_connection_is_reused(worker_url: str) -> None:
    pool = WorkerPool(keepalive_seconds=4)
    try:
        answer = await pool.request(worker_url, "POST", "/v2/models/m/infer", [(b"inference-header-content-length",
                                                                                 b"2")], b"{}")
        got = json.loads(answer.body)
        assert (answer.status, got["length"], got["header"]) == (200, 2, "2"), "the body and the headers arrived"
        assert (b"inference-header-content-length", b"7") in answer.headers, "names in lower case, values as sent"
        assert (await _answer(pool, worker_url))["port"] == got["port"], "the second request used the same connection"
        at_once = await asyncio.gather(*(_answer(pool, worker_url) for _ in range(3)))
        assert len({a["port"] for a in at_once}) == 3, "one connection per request in flight"
    finally:
        await pool.close()


async def test_a_path_is_percent_encoded_on_the_way(worker_url: str) -> None:
    pool = WorkerPool(keepalive_seconds=4)
    try:
        answer = await pool.request(worker_url, "POST", "/v2/models/a b%/infer", (), b"")
        assert json.loads(answer.body)["path"] == "/v2/models/a b%/infer"
    finally:
        await pool.close()


async def test_a_large_body_arrives_intact_in_one_part_in_parts_and_streamed(worker_url: str) -> None:
    body = bytes(range(256)) * (9 << 12)  # 9 MiB
    digest = hashlib.sha256(body).hexdigest()
    pool = WorkerPool(keepalive_seconds=4)
    parts = [body[i:i + (1 << 20)] for i in range(0, len(body), 1 << 20)]
    try:
        assert (await _answer(pool, worker_url, body))["sha256"] == digest
        assert (await _answer(pool, worker_url, parts))["sha256"] == digest
        remaining = iter(parts[1:])

        async def more() -> tuple[bytes, bool]:
            await asyncio.sleep(0)  # as a client's parts come: one event loop turn apart
            part = next(remaining)
            return part, part is not parts[-1]

        got = await _answer(pool, worker_url, BodyStream(len(body), parts[0], more))
        assert (got["length"], got["sha256"]) == (len(body), digest)
    finally:
        await pool.close()


async def test_a_chunked_answer_is_put_together(worker_url: str) -> None:
    pool = WorkerPool(keepalive_seconds=4)
    try:
        first = await pool.request(worker_url, "GET", "/chunked")
        assert (first.status, first.body) == (200, b"one,two,three")
        assert (b"transfer-encoding", b"chunked") in first.headers
        assert (await pool.request(worker_url, "GET", "/chunked")).body == b"one,two,three"
    finally:
        await pool.close()


async def test_a_connection_the_worker_says_it_closes_is_not_kept(worker_url: str) -> None:
    pool = WorkerPool(keepalive_seconds=4)
    try:
        assert (await pool.request(worker_url, "GET", "/close")).body == b"bye"
        assert not any(pool._idle.values()), "Connection: close is honoured"
    finally:
        await pool.close()


async def test_a_worker_that_dies_mid_answer_is_a_failure_not_a_short_answer() -> None:
    url, _ = half_answer_server()
    pool = WorkerPool(keepalive_seconds=4)
    with pytest.raises(WorkerFailed, match="before the whole answer came"):
        await pool.request(url, "POST", "/v2/models/m/infer", (), b"{}")
    await pool.close()


async def test_a_kept_connection_the_worker_closed_is_replaced_without_a_failure() -> None:
    """The worker closes a kept connection just as the next request arrives on it (its idle timeout, a
    restart): that request had no answer, so it goes again on a new connection, not counted as a failure."""
    def answer_one_then_close(conn: socket.socket) -> None:
        read_http_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        read_http_request(conn)  # the next request on the kept connection: closed unanswered

    url, accepted = raw_server(answer_one_then_close)
    pool = WorkerPool(keepalive_seconds=4)
    try:
        assert (await pool.request(url, "GET", "/")).body == b"ok"
        assert (await pool.request(url, "GET", "/")).body == b"ok", "the closed connection was not a failure"
        assert accepted[0] == 2
    finally:
        await pool.close()


async def test_a_connection_idle_past_the_keepalive_is_not_reused(worker_url: str) -> None:
    pool = WorkerPool(keepalive_seconds=0.2)
    try:
        first = (await _answer(pool, worker_url))["port"]
        await asyncio.sleep(0.3)
        assert (await _answer(pool, worker_url))["port"] != first
    finally:
        await pool.close()


@pytest.mark.parametrize(("reply", "match"), [
    (None, "no whole answer within 0.3 s"),
    (b"SSH-2.0-OpenSSH_9.6\r\n", "not HTTP"),
], ids=["silent", "not-http"])
async def test_a_worker_that_does_not_answer_http_fails(reply: bytes | None, match: str) -> None:
    def handle(conn: socket.socket) -> None:
        read_http_request(conn)
        if reply is not None:
            conn.sendall(reply)
        time.sleep(1)

    url, _ = raw_server(handle)
    pool = WorkerPool(keepalive_seconds=4, timeout=0.3)
    with pytest.raises(WorkerFailed, match=match):
        await pool.request(url, "POST", "/", (), b"{}")
    await pool.close()


async def test_a_client_slower_than_the_worker_timeout_is_not_a_worker_failure(worker_url: str) -> None:
    """The timeout counts from the whole body sent: a slow client is waited for, and the forward duration
    leaves its upload out."""
    parts = [b"a" * 1000, b"b" * 1000]
    remaining = iter(parts[1:])

    async def slow() -> tuple[bytes, bool]:
        await asyncio.sleep(1.0)  # longer than the worker timeout
        return next(remaining), False

    registry = CollectorRegistry()
    forwarder = Forwarder(FixedWorkers(endpoint("healthy", worker_url)), registry, timeout_seconds=0.5)  # type: ignore[arg-type]
    try:
        answer = await forwarder.forward("POST", "/v2/models/m/infer", model="m",
                                         content=BodyStream(2000, parts[0], slow))
        assert answer.status_code == 200 and json.loads(answer.content)["length"] == 2000
        assert registry.get_sample_value("legacygpu_serving_retries_total", {"model": "m"}) is None
        took = registry.get_sample_value("legacygpu_serving_forward_duration_seconds_sum", {"model": "m"})
        assert took is not None and took < 1.0, "the client's 1 s upload is not in the forward duration"
    finally:
        await forwarder.close()


async def test_a_refused_connection_fails() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{unused.getsockname()[1]}"  # bound, not listening: refused
        with pytest.raises(WorkerUnreachable, match="cannot connect"):  # a WorkerFailed that sent nothing
            await WorkerPool(keepalive_seconds=4).request(url, "GET", "/")


async def test_a_streamed_body_whose_worker_dies_mid_body_goes_whole_to_another(worker_url: str) -> None:
    """The Forwarder's retry with a body still arriving: the second worker gets every byte, the first ones too."""
    def read_some_then_die(conn: socket.socket) -> None:
        conn.recv(1000)

    dying, _ = raw_server(read_some_then_die)
    parts = [bytes([i]) * 300_000 for i in range(4)]
    remaining = iter(parts[1:])

    async def more() -> tuple[bytes, bool]:
        await asyncio.sleep(0.05)  # the client is slower than the worker dies
        part = next(remaining)
        return part, part is not parts[-1]

    registry = CollectorRegistry()
    forwarder = Forwarder(FixedWorkers(endpoint("healthy", worker_url), endpoint("dying", dying)), registry)  # type: ignore[arg-type]
    forwarder.outstanding[worker_url] = 1  # the healthy one looks busier: the dying one is picked first
    try:
        answer = await forwarder.forward("POST", "/v2/models/m/infer", model="m",
                                         content=BodyStream(1_200_000, parts[0], more))
        assert answer.worker == "healthy"
        assert json.loads(answer.content)["sha256"] == hashlib.sha256(b"".join(parts)).hexdigest()
        assert registry.get_sample_value("legacygpu_serving_retries_total", {"model": "m"}) == 1
    finally:
        await forwarder.close()


def test_a_new_connection_the_worker_resets_before_the_request_is_sent_is_a_worker_failure(
    worker_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On uvloop, as the facade runs: the worker resets a connection just made (it died), and the connection is
    lost while it is on its way from connect() to the request's first write. Writing then raised RuntimeError,
    which no caller took for a worker failure: the facade answered 500 where another worker could serve (seen in
    the Kubernetes serving test, a worker pod killed under load). The request goes to the other worker instead."""
    uvloop = pytest.importorskip("uvloop")

    def reset(conn: socket.socket) -> None:  # closed with no lingering: a reset, as a dying process's socket
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    resetting, _ = raw_server(reset)
    connect = WorkerPool._connect

    async def reset_before_the_write(pool: WorkerPool, address: object) -> object:
        """The connection, handed over only once the worker's reset has closed it: the race made certain."""
        connection = await connect(pool, address)  # type: ignore[arg-type]
        for _ in range(500):
            if connection.closed or f":{address.port}" not in resetting:  # type: ignore[attr-defined]
                break
            await asyncio.sleep(0.01)
        return connection

    monkeypatch.setattr(WorkerPool, "_connect", reset_before_the_write)

    async def forward() -> None:
        registry = CollectorRegistry()
        forwarder = Forwarder(FixedWorkers(endpoint("healthy", worker_url), endpoint("reset", resetting)), registry)  # type: ignore[arg-type]
        forwarder.outstanding[worker_url] = 1  # the healthy one looks busier: the resetting one is picked first
        try:
            answer = await forwarder.forward("POST", "/v2/models/m/infer", model="m", content=b"x" * 1000)
            assert answer.worker == "healthy" and json.loads(answer.content)["length"] == 1000
            assert registry.get_sample_value("legacygpu_serving_retries_total", {"model": "m"}) == 1
        finally:
            await forwarder.close()

    uvloop.run(forward())


async def test_a_streamed_body_cut_short_by_its_client_is_no_request(worker_url: str) -> None:
    pool = WorkerPool(keepalive_seconds=4)

    async def gone() -> tuple[bytes, bool]:
        raise IncompleteBody("the client went away")

    async def short() -> tuple[bytes, bool]:
        return b"x", False

    try:
        for more, why in [(gone, "went away"), (short, "4 bytes, not the 10 declared")]:
            url, closed = _closing_server()
            with pytest.raises(IncompleteBody, match=why):
                await _answer(pool, url, BodyStream(10, b"abc", more))
            assert await _closed(closed), "a connection with half a request on it is closed"
        assert (await _answer(pool, worker_url))["length"] == 2, "the pool is none the worse"
    finally:
        await pool.close()


async def test_a_cancelled_request_does_not_leave_its_connection_for_the_next(worker_url: str) -> None:
    url, closed = _closing_server()
    pool = WorkerPool(keepalive_seconds=4)
    request = asyncio.ensure_future(pool.request(url, "GET", "/"))
    await asyncio.sleep(0.1)
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request
    assert await _closed(closed), "the connection, whose answer may still come, is closed"
    await pool.close()


def _keepalive_server(gate: threading.Event | None = None) -> tuple[str, list[threading.Event]]:
    """A worker that answers every request on a connection with keep-alive (once ``gate`` is set, if given);
    its URL, and an event per accepted connection, set when the client closes that connection."""
    closed: list[threading.Event] = []

    def handle(conn: socket.socket) -> None:
        mine = threading.Event()
        closed.append(mine)
        try:
            data = b""
            while True:
                while b"\r\n\r\n" not in data:
                    got = conn.recv(65536)
                    if not got:
                        return
                    data += got
                _, _, data = data.partition(b"\r\n\r\n")  # these requests have no body
                if gate is not None:
                    gate.wait(10)
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        finally:
            mine.set()

    url, _ = raw_server(handle)
    return url, closed


async def test_max_connections_caps_the_connections_in_use_and_idle() -> None:
    gate = threading.Event()
    url, opened = _keepalive_server(gate)
    other, other_opened = _keepalive_server()
    pool = WorkerPool(keepalive_seconds=4, max_connections=2)
    try:
        requests = [asyncio.ensure_future(pool.request(url, "GET", "/")) for _ in range(3)]
        await asyncio.sleep(0.2)
        assert len(opened) == 2, "the third request waits for a connection to come free"
        gate.set()
        assert [a.body for a in await asyncio.gather(*requests)] == [b"ok"] * 3
        assert len(opened) == 2, "the third request took a connection the others freed"
        assert (await pool.request(other, "GET", "/")).body == b"ok"
        assert len(other_opened) == 1
        assert await _closes(opened), "a connection to another worker closes an idle one: two open in all"
    finally:
        await pool.close()


async def test_idle_connections_past_the_keepalive_are_closed_when_another_is_put_back() -> None:
    """Reuse takes the top of the stack: the connection under it, idle too long, is closed all the same."""
    url, opened = _keepalive_server()
    pool = WorkerPool(keepalive_seconds=1.0)
    try:
        await asyncio.gather(pool.request(url, "GET", "/"), pool.request(url, "GET", "/"))
        assert len(opened) == 2
        await asyncio.sleep(0.6)
        await pool.request(url, "GET", "/")  # the top one; the bottom one is not yet past the keep-alive
        await asyncio.sleep(0.6)
        await pool.request(url, "GET", "/")  # the top one again; the bottom one, idle 1.2 s, is closed
        assert await _closes(opened)
        assert sum(e.is_set() for e in opened) == 1 and len(opened) == 2
    finally:
        await pool.close()


async def test_connections_to_workers_that_left_are_closed_at_the_next_refresh() -> None:
    leaving, leaving_opened = _keepalive_server()
    staying, _ = _keepalive_server()
    workers = FixedWorkers(endpoint("leaving", leaving))
    forwarder = Forwarder(workers, CollectorRegistry(), refresh_seconds=0)  # type: ignore[arg-type]
    try:
        assert (await forwarder.forward("GET", "/v2", model=None)).worker == "leaving"
        workers.endpoints[:] = [endpoint("staying", staying)]
        assert (await forwarder.forward("GET", "/v2", model=None)).worker == "staying"
        assert await _closed(leaving_opened[0]), "the departed worker's idle connection is closed"
        assert leaving not in forwarder._pool._idle and leaving not in forwarder._pool._addresses
    finally:
        await forwarder.close()


async def test_the_facade_out_of_file_descriptors_is_no_worker_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    url, _ = _keepalive_server()

    async def no_descriptors(*_: object, **__: object) -> None:
        raise OSError(errno.EMFILE, "Too many open files")

    forwarder = Forwarder(FixedWorkers(endpoint("healthy", url)), CollectorRegistry())  # type: ignore[arg-type]
    try:
        monkeypatch.setattr(asyncio.get_running_loop(), "create_connection", no_descriptors)
        with pytest.raises(NoWorker, match=r"the facade cannot forward the request now: .*Too many open files"):
            await forwarder.forward("GET", "/v2", model=None)
        assert not forwarder._failed, "the worker is not marked failed"
        monkeypatch.undo()
        assert (await forwarder.forward("GET", "/v2", model=None)).status_code == 200
    finally:
        await forwarder.close()


async def test_a_streamed_body_is_read_from_the_client_no_faster_than_the_worker_takes_it() -> None:
    """Flow control: while the worker reads nothing, the client's parts are not pulled into the facade."""
    gate = threading.Event()
    part = b"p" * (1 << 20)
    count = 48

    def slow_reader(conn: socket.socket) -> None:
        gate.wait(10)
        received = 0
        while received < count * len(part):  # the head and all but the last bytes of the body: enough
            received += len(conn.recv(1 << 20))
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")

    url, _ = raw_server(slow_reader)
    pulled = [1]

    async def more() -> tuple[bytes, bool]:
        pulled[0] += 1
        return part, pulled[0] < count

    pool = WorkerPool(keepalive_seconds=4)
    try:
        request = asyncio.ensure_future(pool.request(url, "POST", "/", (), BodyStream(count * len(part), part, more)))
        await asyncio.sleep(0.5)
        assert pulled[0] < count // 2, "parts wait for the worker to read the earlier ones"
        gate.set()
        assert (await asyncio.wait_for(request, 10)).body == b"ok"
        assert pulled[0] == count
    finally:
        await pool.close()


async def test_a_worker_that_stops_reading_a_streamed_body_fails_after_the_timeout() -> None:
    def reads_nothing(conn: socket.socket) -> None:
        time.sleep(2)

    url, _ = raw_server(reads_nothing)
    part = b"p" * (1 << 20)

    async def more() -> tuple[bytes, bool]:
        return part, True

    pool = WorkerPool(keepalive_seconds=4, timeout=0.3)
    try:
        with pytest.raises(WorkerFailed, match=r"no whole answer within 0\.3 s"):
            await asyncio.wait_for(pool.request(url, "POST", "/", (), BodyStream(1 << 30, part, more)), 10)
    finally:
        await pool.close()


async def test_a_request_dropped_on_a_kept_alive_connection_whose_worker_then_refuses_may_have_arrived() -> None:
    """The first try was sent: the worker may have gone down while it ran it (a worker runs a lone task before
    answering its push), so the failure is not :class:`WorkerUnreachable`, which says nothing was sent."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def worker() -> None:
        conn, _ = listener.accept()
        with conn:
            read_http_request(conn)
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")  # kept alive
            read_http_request(conn)
            listener.close()  # gone: the next connection is refused
        # closed with no answer to the second request

    threading.Thread(target=worker, daemon=True).start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    pool = WorkerPool(keepalive_seconds=4)
    assert (await pool.request(url, "POST", "/internal/tasks", body=b"{}")).body == b"ok"
    with pytest.raises(WorkerFailed, match=r"closed with no answer.*cannot connect") as failed:
        await pool.request(url, "POST", "/internal/tasks", body=b"{}")
    assert not isinstance(failed.value, WorkerUnreachable)
