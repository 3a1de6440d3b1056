"""Bad input against a real facade process on loopback: every request gets a clear 4xx, none a 500 or a stall.

One facade (no workers: nothing here needs one) serves the whole module,
with a small request limit so the body-size paths are cheap to reach.
"""

from __future__ import annotations

import base64
import shutil
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import TOKEN, LocalCluster, serve_in_thread
from taskfakes import FakeWorker

from .images import png_header_only

LIMIT = 65536
GOOD = {"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}


@pytest.fixture(scope="module")
def facade(tmp_path_factory: pytest.TempPathFactory, demo_repository: Path) -> Iterator[LocalCluster]:
    data = tmp_path_factory.mktemp("facade") / "data"
    shutil.copytree(demo_repository, data / "models")
    env = {"LEGACYGPU_MAX_REQUEST_BYTES": str(LIMIT), "LEGACYGPU_MAX_PARAMETERS_BYTES": "4096"}
    cluster = LocalCluster(data, env=env)
    cluster.start_api()
    try:
        yield cluster
    finally:
        cluster.stop()


def nested(depth: int) -> dict[str, Any]:
    root: dict[str, Any] = {}
    node = root
    for _ in range(depth - 1):
        node["a"] = {}
        node = node["a"]
    return root


def submit_raw(facade: LocalCluster, body: str) -> httpx.Response:
    return facade.http.post("/cluster/tasks/submit", content=body, headers={"content-type": "application/json"})


@pytest.mark.parametrize(
    ("literal", "message"),
    [("NaN", "not a finite number"), ("Infinity", "not a finite number"), ("-Infinity", "not a finite number"),
     ("1e39", "outside the range of FP32"), ("1e400", "not a finite number")],
)
def test_non_finite_and_over_fp32_inputs_are_refused_at_submit(
    facade: LocalCluster, literal: str, message: str
) -> None:
    # Valid JSON for Python's parser, and before this check accepted: the worker then died encoding the result.
    data = ", ".join(["0.0"] * 63 + [literal])
    tensor = f'{{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [{data}]}}'
    body = f'{{"model": "digits", "inputs": [{tensor}]}}'
    r = submit_raw(facade, body)
    assert r.status_code == 422 and message in r.json()["detail"] and "index 63" in r.json()["detail"], r.text


def test_deep_parameters_are_refused_and_never_reach_a_worker(facade: LocalCluster) -> None:
    r = facade.http.post("/cluster/tasks/submit", json={"model": "digits", "inputs": [GOOD], "parameters": nested(300)})
    assert r.status_code == 422, r.text
    assert "parameters nests 300 levels deep; at most 32" in r.json()["detail"]
    r = facade.http.post("/cluster/tasks/submit",
                         json={"model": "digits", "inputs": [GOOD], "parameters": {"k": "v" * 5000}})
    assert r.status_code == 413 and "LEGACYGPU_MAX_PARAMETERS_BYTES" in r.json()["detail"]
    assert facade.http.get("/cluster/tasks", params={"phase": ["Pending", "Scheduled"]}).json()["count"] == 0


def test_deep_worker_stats_are_refused_and_the_worker_list_keeps_working(facade: LocalCluster) -> None:
    body = {"name": "evil", "stats": nested(300)}
    r = facade.join.post("/cluster/workers/register", json=body)
    assert r.status_code == 422 and "stats nests 300 levels deep" in r.json()["detail"], r.text
    ok = facade.join.post("/cluster/workers/register", json={"name": "fine", "stats": {"memory": {"rss": 1}}})
    assert ok.status_code == 201
    own = {"Authorization": f"Bearer {ok.json()['token']}"}
    beat = facade.http.post(f"/cluster/workers/{ok.json()['id']}/heartbeat", json={"stats": nested(300)}, headers=own)
    assert beat.status_code == 422 and "stats nests" in beat.json()["detail"]
    listing = facade.http.get("/cluster/workers")
    assert listing.status_code == 200 and [w["name"] for w in listing.json()["data"]].count("evil") == 0
    assert facade.http.delete(f"/cluster/workers/{ok.json()['id']}", headers=own).status_code == 200


def test_only_a_workers_own_token_completes_its_attempt(facade: LocalCluster) -> None:
    a = FakeWorker(facade.http, facade.join, name="a")
    task = facade.submit(model="digits", inputs=[GOOD])
    pushed = a.next_task()
    assert pushed["id"] == task["id"]
    push, authorization = a.pushes.get_nowait()
    assert push["worker_id"] == a.id and authorization == a.auth["Authorization"], "pushed with A's own token"
    forged = {"task_id": task["id"], "worker_id": a.id, "attempt": pushed["attempt"],
              "result": {"outputs": [], "forged": True}}
    r = facade.http.post(f"/cluster/workers/{a.id}/completions", json={"completed": [forged]})  # the users' token
    assert r.status_code == 403 and f"only worker {a.id}" in r.json()["detail"], r.text
    b = facade.join.post("/cluster/workers/register", json={"name": "b"}).json()
    b_auth = {"Authorization": f"Bearer {b['token']}"}
    r = facade.http.post(f"/cluster/workers/{a.id}/completions", json={"completed": [forged]}, headers=b_auth)
    assert r.status_code == 401 and f"invalid token for worker {a.id}" in r.json()["detail"]
    for path in (f"/cluster/workers/{a.id}/heartbeat", f"/cluster/workers/{a.id}/completions"):
        assert facade.http.post(path, json={}, headers=b_auth).status_code == 401, path
        assert facade.http.post(path, json={}).status_code == 403, path
    assert facade.http.delete(f"/cluster/workers/{a.id}").status_code == 403
    # A's outcome in B's batch, with B's token:
    r = facade.http.post(f"/cluster/workers/{b['id']}/completions", json={"completed": [forged]}, headers=b_auth)
    assert r.status_code == 403 and "only its own outcomes" in r.json()["detail"], r.text
    assert facade.task(task["id"])["phase"] == "Running", "nothing forged got through"
    r = a.report({**forged, "result": {"outputs": [], "real": True}})
    assert r.status_code == 200 and r.json()["data"] == [{"task_id": task["id"], "status": "applied", "detail": ""}]
    assert facade.task(task["id"])["result"]["real"] is True
    a.stop()
    facade.http.delete(f"/cluster/workers/{b['id']}", headers=b_auth)


def test_an_image_bomb_is_a_413_not_a_500(facade: LocalCluster) -> None:
    for width in (50_000, 9000):
        bomb = base64.b64encode(png_header_only(width, width)).decode()
        tensor = {"name": "input", "shape": [1], "datatype": "BYTES", "data": [bomb]}
        r = facade.http.post("/cluster/tasks/submit", json={"model": "digits", "inputs": [tensor]})
        assert r.status_code == 413, r.text
        assert "image" in r.json()["detail"]


def test_integers_beyond_64_bits_are_refused_not_overflowed(facade: LocalCluster) -> None:
    r = facade.http.get("/cluster/tasks", params={"offset": 2**63})
    assert r.status_code == 422 and "offset" in r.json()["detail"], r.text
    r = facade.join.post("/cluster/workers/register", json={"name": "big", "pid": 2**63})
    assert r.status_code == 422 and "pid" in r.json()["detail"], r.text
    assert facade.http.get("/cluster/tasks", params={"offset": 2**63 - 1}).json()["data"] == []


def test_empty_batch_is_refused_at_submit(facade: LocalCluster) -> None:
    r = facade.http.post("/cluster/tasks/submit",
                         json={"model": "digits", "inputs": [{**GOOD, "shape": [0, 64], "data": []}]})
    assert r.status_code == 422 and "dimension below 1" in r.json()["detail"], r.text


def test_a_chunked_body_over_the_limit_is_a_413(facade: LocalCluster) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"model": "digits", "inputs": [], "parameters": {"x": "'
        for _ in range(64):
            yield b"y" * 16384  # 1 MiB in all, with no Content-Length
        yield b'"}}'

    r = facade.http.post("/cluster/tasks/submit", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413, r.text
    assert f"over the limit of {LIMIT} bytes (LEGACYGPU_MAX_REQUEST_BYTES)" in r.json()["detail"]
    small = facade.http.post("/cluster/tasks/submit", content=iter([b'{"model": "digits", ', b'"inputs": []}']),
                             headers={"content-type": "application/json"})
    assert small.status_code == 422 and "inputs" in small.json()["detail"], "a small chunked body still parses"


def test_validation_errors_are_one_sentence_as_documented(facade: LocalCluster) -> None:
    r = facade.http.post("/cluster/tasks/submit", json={"model": "digits", "inputs": [GOOD], "priority": "high"})
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert isinstance(detail, str) and "body.priority" in detail


def test_every_operation_documents_its_errors_with_the_error_body(facade: LocalCluster) -> None:
    schema = httpx.get(f"{facade.url}/openapi.json").json()
    assert schema["components"]["schemas"]["ErrorPublic"]["properties"]["detail"]["type"] == "string"
    for path, operations in schema["paths"].items():
        if not path.startswith("/cluster"):  # /v2 answers in the Open Inference Protocol's own error shape
            continue
        for method, operation in operations.items():
            documented = operation["responses"]
            for code in ("400", "401", "403", "404", "409", "413", "422", "500", "503"):
                ref = documented[code]["content"]["application/json"]["schema"]["$ref"]
                assert ref.endswith("/ErrorPublic"), (method, path, code)


def test_docs_and_redoc_work_offline(facade: LocalCluster) -> None:
    for page, asset in (("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")):
        html = httpx.get(f"{facade.url}{page}").text
        assert "cdn" not in html.lower() and "https://" not in html.split("<body")[-1], page
        assert f"/static-offline-docs/{asset}" in html, page
        served = httpx.get(f"{facade.url}/static-offline-docs/{asset}")
        assert served.status_code == 200 and len(served.content) > 100_000, asset


def test_the_data_dir_is_private_to_its_owner(facade: LocalCluster) -> None:
    facade.http.post("/cluster/tasks/submit", json={"model": "digits", "inputs": [GOOD]})  # the WAL gets written
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    data = facade.data_dir
    assert mode(data) == 0o700
    db_files = [p for p in data.iterdir() if p.name.startswith("cluster.db")]
    assert db_files and all(mode(p) == 0o600 for p in db_files), {p.name: oct(mode(p)) for p in db_files}
    assert mode(data / "models") == 0o700 and mode(data / "models" / "digits" / "card.yaml") == 0o600


def test_a_500_is_counted_and_keeps_the_connection(tmp_path: Path) -> None:
    """In-process facade on a real uvicorn socket, with one route that raises (no route does on purpose)."""
    from legacygpu.api import create_app
    from legacygpu.core.config import Settings

    app = create_app(Settings(data_dir=tmp_path / "data", api_token=TOKEN))

    @app.get("/boom", include_in_schema=False)
    async def boom() -> None:
        raise RuntimeError("a bug")

    with serve_in_thread(app) as url:
        port = int(url.rsplit(":", 1)[1])
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}) as http:
            r = http.get("/boom")
            assert r.status_code == 500 and "RuntimeError" in r.json()["detail"] and "api.log" in r.json()["detail"]
            assert r.headers.get("connection") != "close"
            with socket.create_connection(("127.0.0.1", port)) as raw:
                raw.sendall(b"GET /boom HTTP/1.1\r\nHost: x\r\n\r\nGET /cluster/health HTTP/1.1\r\nHost: x\r\n\r\n")
                received = b""
                raw.settimeout(5)
                while b'"status"' not in received:
                    chunk = raw.recv(65536)
                    if not chunk:
                        break
                    received += chunk
            assert received.count(b"HTTP/1.1 ") == 2, "the connection served the next request after the 500"
            metrics = http.get("/metrics").text
            assert 'legacygpu_http_requests_total{code="500",method="GET",route="/boom"} 2.0' in metrics


def test_a_locked_database_is_a_503_with_retry_after_not_a_500(facade: LocalCluster) -> None:
    import sqlite3

    blocker = sqlite3.connect(str(facade.data_dir / "cluster.db"), isolation_level=None)
    try:
        blocker.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
        r = facade.http.post("/cluster/tasks/submit", json={"model": "digits", "inputs": [GOOD]})
        assert r.status_code == 503, r.text
        assert "database is locked" in r.json()["detail"] and r.headers["retry-after"] == "2"
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    ok = facade.http.post("/cluster/tasks/submit", json={"model": "digits", "inputs": [GOOD]})
    assert ok.status_code == 201, "once the lock is gone the facade accepts again"
    log = (facade.logs / "api.log").read_text()
    assert "database unavailable during POST /cluster/tasks/submit: database is locked" in log


def test_the_token_never_reaches_the_access_log(data_dir: Path) -> None:
    from helpers import wait_until

    cluster = LocalCluster(data_dir)
    cluster.api = cluster._spawn("api", "api", "serve", "--port", str(cluster.port), "--log-level", "info")
    try:
        wait_until(lambda: _answers(cluster.url), timeout=60, what="the facade")
        assert httpx.get(f"{cluster.url}/cluster/health", params={"token": TOKEN}).status_code == 200
        assert cluster.http.get("/cluster/workers").status_code == 200
    finally:
        cluster.stop()
    log = (cluster.logs / "api.log").read_text()
    assert "/cluster/health?token=***" in log, log[-2000:]
    assert TOKEN not in log


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/cluster/health", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def test_workers_gone_past_the_retention_period_leave_the_list(data_dir: Path) -> None:
    cluster = LocalCluster(data_dir, env={"LEGACYGPU_WORKER_RETENTION_SECONDS": "1"})
    cluster.start_api()
    try:
        http = cluster.http
        first = cluster.join.post("/cluster/workers/register", json={"name": "same"}).json()
        second = cluster.join.post("/cluster/workers/register", json={"name": "same"}).json()
        workers = http.get("/cluster/workers").json()["data"]
        live = [w["id"] for w in workers if w["name"] == "same" and w["state"] in ("active", "draining")]
        assert live == [second["id"]], "names are unique among live workers: the newcomer replaced the old one"
        stopped = cluster.join.post("/cluster/workers/register", json={"name": "leaver"}).json()
        assert http.delete(f"/cluster/workers/{stopped['id']}",
                           headers={"Authorization": f"Bearer {stopped['token']}"}).status_code == 200

        def listed() -> set[str]:
            return {w["id"] for w in http.get("/cluster/workers").json()["data"]}

        from helpers import wait_until

        wait_until(lambda: not ({first["id"], stopped["id"]} & listed()), timeout=30,
                   what="the stopped and the replaced worker to be removed")
    finally:
        cluster.stop()


def test_a_body_nested_too_deep_for_the_json_parser_gets_a_4xx_with_or_without_a_token(facade: LocalCluster) -> None:
    deep = b"[" * (LIMIT - 16)  # under the size limit, far over the parser's nesting
    worker = facade.join.post("/cluster/workers/register", json={"name": "deep"})
    assert worker.status_code == 201
    own = {"Authorization": f"Bearer {worker.json()['token']}"}
    for path, headers in [("/cluster/tasks/submit", {}), ("/cluster/tasks/submit-many", {}),
                          (f"/cluster/workers/{worker.json()['id']}/completions", own)]:
        r = facade.http.post(path, content=deep, headers={"content-type": "application/json", **headers})
        assert r.status_code == 400, (path, r.status_code, r.text)
        anonymous = httpx.post(facade.url + path, content=deep, headers={"content-type": "application/json"})
        assert anonymous.status_code in (400, 401), (path, anonymous.status_code, anonymous.text)
    assert facade.http.delete(f"/cluster/workers/{worker.json()['id']}", headers=own).status_code == 200
