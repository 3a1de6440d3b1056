"""A lean JSON POST on one kept-alive connection, for the request a local worker makes most: its outcomes.

httpx spends a few hundred microseconds of Python on each request (its
models, hooks and connection pool); a task of a small model takes less than
that, so on the task path the report would cost more than the work.
:class:`JsonPoster` sends the same request with the standard library's
``http.client`` on one persistent connection (headers and body in one
write, ``TCP_NODELAY`` set), for a fraction of that. The worker's other,
rare requests (register, heartbeat, deregister) stay on httpx.

A kept-alive connection the server has closed in the meantime shows up as
a reset or an empty answer on the next request; the poster then connects
again and sends once more. That repeat is harmless for outcomes (the
facade answers a repeated one ``repeated`` and changes nothing). Any other
failure is :class:`PostError`: whether the request arrived is unknown.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

__all__ = ["JsonPoster", "PostError"]

_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ConnectionAbortedError)
"""What a request on a kept-alive connection the server closed meanwhile fails with."""


class PostError(Exception):
    """The request failed in transport (refused, reset, timed out): it may or may not have arrived."""


class JsonPoster:
    """POSTs JSON to ``base_url`` + path over one connection kept alive between requests; one thread at a time."""

    def __init__(self, base_url: str, *, timeout: float = 30.0) -> None:
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self._https = url.scheme == "https"
        self._host = url.hostname
        self._port = url.port or (443 if self._https else 80)
        self._prefix = url.path.rstrip("/")
        self._timeout = timeout
        self._conn: http.client.HTTPConnection | None = None

    def _connect(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection
        if self._https:
            conn = http.client.HTTPSConnection(self._host, self._port, timeout=self._timeout,
                                               context=ssl.create_default_context())
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
        conn.connect()
        if conn.sock is not None:
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def post(self, path: str, body: Any, headers: Mapping[str, str]) -> tuple[int, bytes]:
        """The answer's status and body; :class:`PostError` when there is none."""
        payload = json.dumps(body, separators=(",", ":")).encode()
        sent_headers = {**headers, "Content-Type": "application/json"}
        for fresh in (self._conn is None, True):
            try:
                if self._conn is None:
                    self._conn = self._connect()
                self._conn.request("POST", self._prefix + path, body=payload, headers=sent_headers)
                response = self._conn.getresponse()
                content = response.read()
            except _STALE as exc:
                self.close()
                if fresh:
                    raise PostError(f"{type(exc).__name__}: {exc}") from exc
                continue  # the kept-alive connection was closed by the server: once more on a new one
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                raise PostError(f"{type(exc).__name__}: {exc}") from exc
            if response.will_close:
                self.close()
            return response.status, content
        raise AssertionError("unreachable: the second try is always on a fresh connection")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
