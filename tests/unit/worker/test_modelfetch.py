"""The model fetcher against a real HTTP server on loopback, and the repository it builds.

Real: an ``http.server`` on 127.0.0.1 that honours ``Range`` and can fail on demand, the cache on
disk, the demo model run by onnxruntime. The mounted PVC and ConfigMap are folders laid out as the
kubelet lays them out (one file per key); the API read of a ConfigMap is a function here.
"""

from __future__ import annotations

import hashlib
import http.server
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helpers import SAMPLES, image_tensor

from legacygpu.core.modelcards import ModelRepository
from legacygpu.core.modelsources import ModelSource
from legacygpu.worker.backends import create_backend
from legacygpu.worker.modelfetch import FetchError, ModelFetcher, prepare_repository
from legacygpu.worker.runner import TaskRunner

BLOB = bytes(range(256)) * 4096  # 1 MiB
SHA = hashlib.sha256(BLOB).hexdigest()


@dataclass
class Behaviour:
    """What the server does: fail with ``status`` ``fail_times`` times, or cut a body after ``cut_after`` bytes."""

    status: int = 200
    fail_times: int = 0
    cut_after: int | None = None
    ranges: list[str | None] = field(default_factory=list)
    encodings: list[str | None] = field(default_factory=list)
    bytes_sent: int = 0


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        b = self.server.behaviour
        b.ranges.append(self.headers.get("Range"))
        b.encodings.append(self.headers.get("Accept-Encoding"))
        if b.fail_times > 0:
            b.fail_times -= 1
            self.send_error(b.status)
            return
        start = 0
        if self.headers.get("Range"):
            start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-"))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(BLOB) - 1}/{len(BLOB)}")
        else:
            self.send_response(200)
        body = BLOB[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if b.cut_after is not None:  # promise the whole body, send part of it, hang up
            body, b.cut_after = body[: b.cut_after], None
            self.close_connection = True
        self.wfile.write(body)
        b.bytes_sent += len(body)

    def log_message(self, format: str, *args: object) -> None:
        return


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    behaviour: Behaviour


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.behaviour = Behaviour()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _url(srv: _Server) -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}/models/blob.onnx"


def _source(
    uri: str, sha256: str | None = SHA, name: str = "blob", card: dict[str, object] | None = None
) -> ModelSource:
    entry: dict[str, object] = {"name": name, "storageUri": uri}
    if sha256:
        entry["sha256"] = sha256
    if card:
        entry["card"] = card
    return ModelSource.from_spec(entry)


def _fetcher(tmp_path: Path, **kwargs: object) -> tuple[ModelFetcher, list[tuple[str, dict[str, object]]]]:
    seen: list[tuple[str, dict[str, object]]] = []
    options: dict[str, object] = {"attempts": 3, "backoff_s": 0.0, "report_interval_s": 0.0, **kwargs}
    fetcher = ModelFetcher(cache_dir=tmp_path / "cache", sources_dir=tmp_path / "sources",
                           progress=lambda name, status: seen.append((name, dict(status))), **options)  # type: ignore[arg-type]
    return fetcher, seen


def test_http_fetch_streams_checks_the_digest_and_reports_progress(
    server: _Server, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fetcher, seen = _fetcher(tmp_path, chunk_size=1 << 18)
    with caplog.at_level(logging.INFO, logger="legacygpu.worker.modelfetch"):
        path = fetcher.fetch(_source(_url(server)))
    assert path == tmp_path / "cache" / "sha256" / SHA and path.read_bytes() == BLOB
    fetching = [s for _, s in seen if s["phase"] == "Fetching"]
    assert [s["bytes"] for s in fetching][:4] == [1 << 18, 2 << 18, 3 << 18, 4 << 18]
    assert {s["totalBytes"] for s in fetching} == {len(BLOB)} and fetching[0]["percent"] == 25.0
    assert seen[-1] == ("blob", {"phase": "Fetched", "bytes": len(BLOB), "totalBytes": len(BLOB), "percent": 100.0})
    assert "model blob: 512.0 KiB of 1.0 MiB (50%)" in caplog.text
    assert caplog.text.count("(100%)") == 1
    assert not list((tmp_path / "cache" / "partial").iterdir()), "no partial file is left behind"
    assert server.behaviour.encodings == ["identity"], "the digest is of the file's bytes, never a compressed form"


def test_wrong_sha256_is_refused_and_nothing_is_cached(server: _Server, tmp_path: Path) -> None:
    wrong = "0" * 64
    fetcher, seen = _fetcher(tmp_path)
    with pytest.raises(FetchError, match=f"sha256 mismatch: .* sha256 {SHA}, but spec.modelSources says {wrong}"):
        fetcher.fetch(_source(_url(server), sha256=wrong))
    assert not (tmp_path / "cache" / "sha256" / wrong).exists() and not (tmp_path / "cache" / "sha256" / SHA).exists()
    assert seen[-1][1]["phase"] == "Failed" and "sha256 mismatch" in str(seen[-1][1]["message"])
    assert len(server.behaviour.ranges) == 1, "a digest mismatch is not retried"


def test_server_errors_are_retried_then_reported(server: _Server, tmp_path: Path) -> None:
    server.behaviour.status, server.behaviour.fail_times = 503, 2
    fetcher, _ = _fetcher(tmp_path)
    assert fetcher.fetch(_source(_url(server))).read_bytes() == BLOB  # two 503s, then the file
    assert len(server.behaviour.ranges) == 3

    server.behaviour.status, server.behaviour.fail_times = 500, 99
    fetcher, seen = _fetcher(tmp_path / "other")
    with pytest.raises(FetchError, match=r"HTTP 500 \(gave up after 3 tries\)"):
        fetcher.fetch(_source(_url(server)))
    assert seen[-1][1]["phase"] == "Failed"

    server.behaviour.status, server.behaviour.fail_times, server.behaviour.ranges = 404, 99, []
    with pytest.raises(FetchError, match="HTTP 404"):
        fetcher.fetch(_source(_url(server)))
    assert len(server.behaviour.ranges) == 1, "a 404 is not retried"


def test_an_interrupted_download_resumes_with_a_range_request(server: _Server, tmp_path: Path) -> None:
    server.behaviour.cut_after = 4 << 16  # whole chunks: the fetcher keeps what it wrote, a chunk at a time
    fetcher, _ = _fetcher(tmp_path, chunk_size=1 << 16)
    assert fetcher.fetch(_source(_url(server))).read_bytes() == BLOB
    assert server.behaviour.ranges == [None, f"bytes={4 << 16}-"]
    assert server.behaviour.bytes_sent == len(BLOB), "the second request sent only the rest"


def test_a_cached_model_is_not_fetched_again_after_a_restart(server: _Server, tmp_path: Path) -> None:
    first, _ = _fetcher(tmp_path)
    first.fetch(_source(_url(server)))
    restarted, seen = _fetcher(tmp_path)  # a new process over the same cache folder
    path = restarted.fetch(_source(_url(server), name="same-file-other-name"))
    assert path.read_bytes() == BLOB and len(server.behaviour.ranges) == 1
    assert seen == [("same-file-other-name", {"phase": "Cached", "bytes": len(BLOB), "totalBytes": len(BLOB),
                                              "percent": 100.0})]


def test_pvc_and_configmap_sources_read_their_mounts(tmp_path: Path) -> None:
    claim = tmp_path / "sources" / "pvc" / "models" / "nested"
    claim.mkdir(parents=True)
    (claim / "big.onnx").write_bytes(BLOB)
    fetcher, _ = _fetcher(tmp_path)
    assert fetcher.fetch(_source("pvc://models/nested/big.onnx", sha256=None)) == claim / "big.onnx"  # in place
    assert fetcher.fetch(_source("pvc://models/nested/big.onnx")) == fetcher.blob(SHA)  # checked, then cached
    with pytest.raises(FetchError, match="sha256 mismatch"):
        fetcher.fetch(_source("pvc://models/nested/big.onnx", sha256="1" * 64))
    with pytest.raises(FetchError, match=r"no file 'nested/none\.onnx' on claim models"):
        fetcher.fetch(_source("pvc://models/nested/none.onnx", sha256=None))

    mounted = tmp_path / "sources" / "configmap" / "small"
    mounted.mkdir(parents=True)
    (mounted / "model.onnx").write_bytes(b"from the volume")
    path = fetcher.fetch(_source("configmap://small/model.onnx", sha256=None))
    assert path.read_bytes() == b"from the volume" and path.name == hashlib.sha256(b"from the volume").hexdigest()
    with pytest.raises(FetchError, match="ConfigMap other is not mounted"):
        fetcher.fetch(_source("configmap://other/model.onnx", sha256=None))
    calls: list[tuple[str, str]] = []
    api = ModelFetcher(cache_dir=tmp_path / "cache", sources_dir=tmp_path / "sources",
                       read_configmap=lambda name, key: calls.append((name, key)) or b"from the API")
    assert api.fetch(_source("configmap://other/model.onnx", sha256=None)).read_bytes() == b"from the API"
    assert calls == [("other", "model.onnx")]


def test_prepare_repository_serves_fetched_models_beside_the_images_and_reports_failures(
    server: _Server, demo_repository: Path, tmp_path: Path
) -> None:
    digits = (demo_repository / "digits" / "model.onnx").read_bytes()
    (tmp_path / "sources" / "configmap" / "digits-cm").mkdir(parents=True)
    (tmp_path / "sources" / "configmap" / "digits-cm" / "model.onnx").write_bytes(digits)
    card = ModelRepository(demo_repository).get("digits").model_dump(mode="json")
    sources = [
        _source("configmap://digits-cm/model.onnx", sha256=None, name="digits-cm", card=card),
        _source(_url(server), sha256="2" * 64, name="broken"),
        _source("configmap://digits-cm/model.onnx", sha256=hashlib.sha256(digits).hexdigest(), name="digits"),
    ]
    fetcher, _ = _fetcher(tmp_path)
    report = prepare_repository(sources, base=demo_repository, fetcher=fetcher)
    assert list(report.errors) == ["broken"] and "sha256 mismatch" in report.errors["broken"]
    repository = ModelRepository(report.root)
    assert repository.names() == ["digits", "digits-cm"]
    assert repository.get("digits").postprocess.top_k > 0, "a source without card fields takes the image's card"
    runner = TaskRunner(repository, create_backend("onnxruntime"))
    for name in ("digits", "digits-cm"):
        assert runner.run(name, [image_tensor(SAMPLES / "digit-3.png")])["top_k"][0]["label"] == "3"
    again = prepare_repository(sources[:1], base=demo_repository, fetcher=fetcher)
    assert ModelRepository(again.root).names() == ["digits", "digits-cm"] and not again.errors
    assert (demo_repository / "digits" / "model.onnx").read_bytes() == digits, "the base repository is untouched"
