"""The facade's HTTP/1.1 client to the workers: pooled keep-alive connections, nothing else.

Every ``/v2`` request the facade forwards goes out through :class:`WorkerPool`.
It is an asyncio :class:`~asyncio.Protocol` per connection with httptools (the
parser uvicorn uses) reading the answer, rather than aiohttp's client: under
``legacygpu bench serve`` at one client, aiohttp's request building, its
payload writer (which on Python before 3.12.9 joins the headers and a 600 KB
tensor body into a new buffer before writing them), its response object and
its timers cost about as much of the facade's CPU as everything else on the
path. Here a request is one ``writelines`` of the head and the body's parts as
they came (no join of ours: uvloop, which uvicorn runs the facade on, writes
the parts with one ``writev``), and the answer is the status, the headers and
the body.

A body still arriving from the facade's own client (a large tensor comes in
several parts) can be given as a :class:`BodyStream`: each part is written to
the worker as soon as it is received, so that the worker reads the body while
the facade does rather than after it. Every part is kept until the answer, so
a request whose worker fails mid-body is sent whole to the next one (a
streamed body is in the facade's memory once, as a whole, until the answer).
The next part is read from the client only once the transport has passed the
earlier ones on to the kernel (flow control: ``pause_writing`` and
``resume_writing``), so that a worker slower to read than the client sends
does not also pile the body up in the transport's buffer; a worker that reads
nothing more for ``timeout`` has failed; a client
that goes away mid-body ends the request with :class:`IncompleteBody` (there
is nobody to answer), and the connection, holding half a request, is closed.

Connections: one request in flight per connection (no pipelining), so a
worker sees as many connections as the facade has requests in flight for it;
after a complete answer that allows keep-alive the connection goes back to
that worker's idle stack (last in, first out). ``max_connections`` caps the
connections open at once, idle and in use, to all workers together: a request
past it waits for one to come free, and a new connection closes the oldest
idle one (of any worker) when it would go over. An idle connection is closed
once idle for more than ``keepalive_seconds``, which callers keep under the
worker's own idle timeout, so that a worker never closes one as it is being
reused: the top of a stack when it is taken, the bottom when a connection is
put back. :meth:`WorkerPool.retain` closes the connections of workers that are
gone (the caller's list of workers no longer has them). Should it happen anyway (the worker restarted, a proxy timed
out), a reused connection that closes before the first byte of its answer is
retried once on a new connection: nothing was answered, and inference has no
side effects.

What counts as the worker failing, raised as :class:`WorkerFailed` so that the
caller may send the request to another worker: the connection refused or not
made within ``connect_timeout`` (:class:`WorkerUnreachable`: nothing was
sent; but not after a kept-alive connection closed with no answer, since
that first try was sent); the connection closed or reset before the whole answer came (an
answer cut short included: the parser knows its length from
``Content-Length`` or the chunked encoding; an answer delimited only by
closing the connection is not accepted, and HTTP/1.1 servers such as uvicorn
never send one); bytes that are not HTTP; no whole answer within
``timeout`` of the whole request being sent. The facade running out of file
descriptors (``EMFILE``, ``ENFILE``) is no fault of the worker's:
:class:`FacadeOverloaded`. A client slow to send its
streamed body is not the worker failing, so the time waiting on it does not
count: like uvicorn (which sets no limit on a body's arrival), the facade
waits for it, until the client sends it all or goes away. A request cancelled by its caller closes its connection, since
the answer may still come on it.
"""

from __future__ import annotations

import asyncio
import errno
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import cast
from urllib.parse import quote, urlsplit

import httptools

__all__ = [
    "Answer", "BodyStream", "FacadeOverloaded", "IncompleteBody", "WorkerFailed", "WorkerPool", "WorkerUnreachable",
]

_OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE})


class WorkerFailed(Exception):
    """The worker could not be reached, or went away mid-request: the request may go to another one."""


class WorkerUnreachable(WorkerFailed):
    """No connection to the worker could be made (or its URL is not ``http://``): nothing of the request was
    sent."""


class _Dropped(WorkerFailed):
    """The connection closed before any byte of the answer came."""


class FacadeOverloaded(Exception):
    """The facade cannot open another connection (out of file descriptors): no worker is to blame."""


class IncompleteBody(Exception):
    """A streamed request body ended before its length (the client went away): there is nothing to answer."""


class BodyStream:
    """A request body still arriving, sent on part by part as it comes.

    ``more`` returns the next part and whether more follow, or raises :class:`IncompleteBody`. Every part
    is kept, so that a request whose worker failed can be sent whole to another one.
    """

    def __init__(self, length: int, first: bytes, more: Callable[[], Awaitable[tuple[bytes, bool]]]) -> None:
        self.length = length
        self.parts = [first]
        self.complete = False
        self.completed_at: float | None = None
        """``time.perf_counter()`` when the last part came."""
        self._received = len(first)
        self._more = more

    async def next(self) -> None:
        """Receive the next part into :attr:`parts`."""
        part, more_body = await self._more()
        self.parts.append(part)
        self._received += len(part)
        if self._received > self.length or (not more_body and self._received < self.length):
            raise IncompleteBody(f"the body has {self._received} bytes, not the {self.length} declared")
        self.complete = not more_body
        if self.complete:
            self.completed_at = time.perf_counter()


@dataclass(frozen=True, slots=True)
class Answer:
    """A worker's whole answer."""

    status: int
    headers: list[tuple[bytes, bytes]]
    """As received, names in lower case."""
    body: bytes


class _Connection(asyncio.Protocol):
    """One keep-alive connection to a worker; :meth:`send` one request, await its answer, then the next."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[Answer] | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._answering = False  # a byte of the current answer has come
        self.closed = False
        self.reusable = True  # the last answer allows another request on this connection
        self.idle_since = 0.0
        self._writable = asyncio.Event()  # the transport's buffer is below its high-water mark
        self._writable.set()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio's classes

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:  # nothing was asked: a server does not speak first
            self._abort()
            return
        self._answering = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(WorkerFailed(f"the answer is not HTTP/1.1: {exc}"))
            self._abort()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def eof_received(self) -> bool:
        return False  # close: an answer delimited by the end of the stream is not accepted (docstring)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost(f": {type(exc).__name__}: {exc}" if exc is not None else "")

    def _lost(self, why: str) -> None:
        self.closed = True
        if self._answering:
            self._fail(WorkerFailed(f"the connection closed before the whole answer came{why}"))
        else:
            self._fail(_Dropped(f"the connection closed with no answer{why}"))

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        answer = Answer(self._parser.get_status_code(), self._headers, b"".join(self._body))
        self.reusable = self._parser.should_keep_alive()
        self._headers, self._body, self._answering = [], [], False
        self._writable.set()
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(answer)

    # use

    def send(self, parts: Sequence[bytes]) -> asyncio.Future[Answer]:
        """Write a request (head and body parts, or the first of them); the future resolves with its answer."""
        assert self._waiter is None
        self._waiter = waiter = self._loop.create_future()
        self._write(parts)
        return waiter

    def write(self, parts: Sequence[bytes]) -> None:
        """More of the request's body."""
        self._write(parts)

    def _write(self, parts: Sequence[bytes]) -> None:
        assert self.transport is not None
        if self.closed or self.transport.is_closing():
            # Closed under us: the worker reset a connection just made (it died) while the connection was on its
            # way from connect() to the first write. uvloop raises RuntimeError on a write to a closed transport;
            # the request fails as a worker's failure instead, which the caller may send to another worker.
            self._lost(" (before the whole request was sent)")
            return
        self.transport.writelines(parts)

    @property
    def writable(self) -> bool:
        return self._writable.is_set()

    async def drained(self) -> None:
        """Until the transport takes more (or the answer came, or the connection failed: nothing more to send)."""
        await self._writable.wait()

    def time_out(self, seconds: float) -> None:
        self._fail(WorkerFailed(f"no whole answer within {seconds:g} s"))
        self._abort()

    def _fail(self, exc: WorkerFailed) -> None:
        self._writable.set()
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def _abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


@dataclass(frozen=True, slots=True)
class _Address:
    host: str
    port: int
    host_header: bytes


class WorkerPool:
    """Keep-alive connections to any number of workers, each named by its base URL (``http://host:port``)."""

    def __init__(self, *, keepalive_seconds: float, connect_timeout: float = 5.0, timeout: float = 120.0,
                 max_connections: int = 256) -> None:
        self.keepalive_seconds = keepalive_seconds
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.max_connections = max_connections
        self._slots = asyncio.Semaphore(max_connections)  # one per request, with or without its connection yet
        self._busy = 0  # requests holding a slot
        self._idle: dict[str, list[_Connection]] = {}  # each stack oldest first
        self._addresses: dict[str, _Address] = {}

    async def request(self, base_url: str, method: str, path: str, headers: Sequence[tuple[bytes, bytes]] = (),
                      body: bytes | Sequence[bytes] | BodyStream = b"") -> Answer:
        """Send one request to the worker at ``base_url`` and return its answer; raises :class:`WorkerFailed`.

        ``path`` is as decoded (an ASGI scope's ``path``, a model's name) and is percent-encoded here;
        ``headers`` are sent as given (``Host`` and ``Content-Length`` are added); ``body`` may come in parts,
        which are written as they are, or as a :class:`BodyStream` still arriving (then
        :class:`IncompleteBody` if it ends short). Waits while ``max_connections`` requests are in flight.
        """
        async with self._slots:
            self._busy += 1
            try:
                return await self._request(base_url, method, path, headers, body)
            finally:
                self._busy -= 1

    def retain(self, base_urls: Collection[str]) -> None:
        """Forget every worker but those of ``base_urls`` (the workers serving now), closing their idle
        connections; those in use close when their request ends."""
        for base_url in [u for u in self._idle if u not in base_urls]:
            for connection in self._idle.pop(base_url):
                connection._abort()
        for base_url in [u for u in self._addresses if u not in base_urls]:
            del self._addresses[base_url]

    async def _request(self, base_url: str, method: str, path: str, headers: Sequence[tuple[bytes, bytes]],
                       body: bytes | Sequence[bytes] | BodyStream) -> Answer:
        address = self._addresses.get(base_url) or self._address(base_url)
        stream = body if isinstance(body, BodyStream) else None
        if isinstance(body, BodyStream):
            length, parts = body.length, list(body.parts)
        else:
            parts = [body] if isinstance(body, bytes) else list(body)
            length = sum(len(p) for p in parts)
        head = b"".join((method.encode("ascii"), b" ", quote(path).encode("ascii"), b" HTTP/1.1\r\nhost: ",
                         address.host_header, b"\r\n",
                         b"content-length: %d\r\n" % length if length or method != "GET" else b"",
                         *(b"%s: %s\r\n" % header for header in headers), b"\r\n"))
        parts.insert(0, head)
        connection = self._take(base_url)
        dropped: _Dropped | None = None
        if connection is not None:
            try:
                return await self._exchange(base_url, connection, parts, stream)
            except _Dropped as exc:
                # Closed under us while idle (see the module's docstring): once more on a new connection.
                dropped = exc
                if stream is not None:
                    parts[1:] = stream.parts
        self._make_room()
        try:
            fresh = await self._connect(address)
        except WorkerUnreachable as exc:
            if dropped is None:
                raise
            # The first try was sent, and the worker may have gone down while it ran: not "nothing was sent".
            raise WorkerFailed(f"{dropped}, and then {exc}") from exc
        return await self._exchange(base_url, fresh, parts, stream)

    async def close(self) -> None:
        """Close every idle connection (those in use close when their request ends)."""
        for stack in self._idle.values():
            for connection in stack:
                if connection.transport is not None:
                    connection.transport.close()
        self._idle.clear()

    def _address(self, base_url: str) -> _Address:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise WorkerUnreachable(f"{base_url!r} is not an http:// URL")  # the pool speaks plain HTTP only
        address = _Address(parts.hostname, parts.port or 80, parts.netloc.encode("ascii"))
        self._addresses[base_url] = address
        return address

    def _take(self, base_url: str) -> _Connection | None:
        stack = self._idle.get(base_url)
        now = time.monotonic()
        while stack:
            connection = stack.pop()
            if not connection.closed and now - connection.idle_since < self.keepalive_seconds:
                return connection
            connection._abort()  # idle too long: the worker may be closing it now
        return None

    def _make_room(self) -> None:
        """Close the oldest idle connections until one more keeps the pool within ``max_connections``."""
        while self._busy + sum(len(s) for s in self._idle.values()) > self.max_connections:
            oldest = min((s for s in self._idle.values() if s), key=lambda s: s[0].idle_since, default=None)
            if oldest is None:
                return
            oldest.pop(0)._abort()

    def _put_back(self, base_url: str, connection: _Connection) -> None:
        """``connection`` to the top of its worker's idle stack, closing those at the bottom idle too long."""
        stack = self._idle.setdefault(base_url, [])
        now = time.monotonic()
        expired = 0
        while expired < len(stack) and (stack[expired].closed
                                        or now - stack[expired].idle_since >= self.keepalive_seconds):
            stack[expired]._abort()
            expired += 1
        del stack[:expired]
        connection.idle_since = now
        stack.append(connection)

    async def _connect(self, address: _Address) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, connection = await asyncio.wait_for(
                loop.create_connection(lambda: _Connection(loop), address.host, address.port), self.connect_timeout)
        except OSError as exc:
            if exc.errno in _OUT_OF_DESCRIPTORS:
                raise FacadeOverloaded(f"cannot open a connection to {address.host}:{address.port}: {exc}") from exc
            raise WorkerUnreachable(f"cannot connect to {address.host}:{address.port}: {type(exc).__name__}: {exc}") \
                from exc
        return connection

    async def _exchange(self, base_url: str, connection: _Connection, parts: Sequence[bytes],
                        stream: BodyStream | None) -> Answer:
        loop = asyncio.get_running_loop()
        timer: asyncio.TimerHandle | None = None
        try:
            answer_coming = connection.send(parts)
            if stream is not None:
                sent = len(parts) - 1  # the head is the first part
                while not answer_coming.done() and not connection.closed:
                    if sent < len(stream.parts):
                        connection.write(stream.parts[sent:])
                        sent = len(stream.parts)
                    elif stream.complete:
                        break
                    elif not connection.writable:  # the worker reads slower than the client sends
                        try:
                            await asyncio.wait_for(connection.drained(), self.timeout)
                        except TimeoutError:
                            connection.time_out(self.timeout)
                    else:
                        await stream.next()
                if sent < len(stream.parts) or not stream.complete:
                    connection.reusable = False  # answered before the whole request was sent
            # The worker's time starts once it has the whole request: time spent waiting on a slow client is
            # not the worker's (the module's docstring).
            timer = loop.call_later(self.timeout, connection.time_out, self.timeout)
            answer = await answer_coming
        except BaseException:  # failed, timed out or cancelled: the answer (or the rest of it) may still come
            connection._abort()
            raise
        finally:
            if timer is not None:
                timer.cancel()
        if connection.reusable and not connection.closed:
            self._put_back(base_url, connection)
        else:
            connection._abort()
        return answer
