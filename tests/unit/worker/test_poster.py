"""The worker's lean outcome poster against a real HTTP server on loopback."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from helpers import free_port

from legacygpu.worker.poster import JsonPoster, PostError


class Recorder(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.requests: list[tuple[int, str, str, object]] = []
        """(client port, path, authorization, body) of each request."""
        self.drop_idle = False
        """Close each connection after answering, without saying so (a server's idle keep-alive timeout)."""


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Recorder

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append((self.client_address[1], self.path, self.headers["Authorization"], body))
        answer = json.dumps({"echo": body}).encode()
        self.send_response(202)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)
        self.close_connection = self.server.drop_idle

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[Recorder]:
    s = Recorder()
    thread = threading.Thread(target=s.serve_forever, daemon=True)
    thread.start()
    try:
        yield s
    finally:
        s.shutdown()
        s.server_close()


def test_posts_go_over_one_kept_alive_connection(server: Recorder) -> None:
    poster = JsonPoster(f"http://127.0.0.1:{server.server_address[1]}/base/")
    for i in range(3):
        status, content = poster.post("/cluster/x", {"n": i}, {"Authorization": "Bearer t"})
        assert (status, json.loads(content)) == (202, {"echo": {"n": i}})
    poster.close()
    assert [(path, auth, body) for _, path, auth, body in server.requests] == [
        ("/base/cluster/x", "Bearer t", {"n": i}) for i in range(3)]
    assert len({port for port, *_ in server.requests}) == 1, "one connection for all three"


def test_a_connection_the_server_closed_is_replaced_and_the_request_sent_on_the_new_one(server: Recorder) -> None:
    server.drop_idle = True
    poster = JsonPoster(f"http://127.0.0.1:{server.server_address[1]}")
    for i in range(3):
        assert poster.post("/p", {"n": i}, {})[0] == 202
    assert [body for *_, body in server.requests] == [{"n": 0}, {"n": 1}, {"n": 2}], "each one arrived, once"
    assert len({port for port, *_ in server.requests}) == 3


def test_nobody_listening_is_a_post_error() -> None:
    with pytest.raises(PostError, match="ConnectionRefusedError"):
        JsonPoster(f"http://127.0.0.1:{free_port()}").post("/p", {}, {})
    with pytest.raises(ValueError, match="not an http"):
        JsonPoster("ftp://example")
