"""Model uploads refused before anything is stored: each 4xx names what was wrong (in-process facade, no workers)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from legacygpu.api import create_app
from legacygpu.api.backends.local import LocalBackend
from legacygpu.core.config import Settings
from legacygpu.core.modelcards import ModelRepository
from legacygpu.core.modelversions import ModelVersions

TOKEN = "repository-test-token"
ADMIN_TOKEN = "repository-test-admin-token"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
DATA = b"not really onnx, but the facade does not parse models"
SHA = hashlib.sha256(DATA).hexdigest()


def _client(tmp_path: Path, backend: str = "local") -> TestClient:
    settings = Settings(data_dir=tmp_path, api_token=TOKEN, admin_token=ADMIN_TOKEN,  # type: ignore[arg-type]
                        cluster_backend=backend)
    return TestClient(create_app(settings, backend=LocalBackend(settings)))


@pytest.mark.parametrize(
    ("fields", "files", "status", "words"),
    [
        ({"sha256": SHA, "card": "inputs: []\n"}, None, 400, "the model file in the multipart field 'model'"),
        ({"card": "inputs: []\n"}, "model", 400, "sha256 in the field 'sha256'"),
        ({"sha256": SHA}, "model", 400, "the model card (YAML) in the field 'card'"),
        ({"sha256": SHA, "card": "- a list\n"}, "model", 400, "the card must be a YAML mapping"),
        ({"sha256": SHA, "card": "max_batch_size: -1\n"}, "model", 400, "card: max_batch_size"),
        ({"sha256": "12ab", "card": "{}\n"}, "model", 400, "sha256 must be 64 hexadecimal digits"),
        ({"sha256": SHA, "card": "{}\n", "version": "v2"}, "model", 400, "version must be a positive integer"),
    ],
)
def test_a_bad_upload_is_refused_naming_the_field(tmp_path: Path, fields: dict[str, str], files: str | None,
                                                  status: int, words: str) -> None:
    sent = {"model": ("model.onnx", DATA, "application/octet-stream")} if files else None
    response = _client(tmp_path).post("/v2/repository/models/m/versions", data=fields, files=sent, headers=AUTH)
    assert response.status_code == status
    assert words in response.json()["error"]
    assert ModelVersions(ModelRepository(tmp_path / "models")).versions("m") == []  # nothing stored


def test_a_good_upload_is_a_new_version_and_the_same_number_twice_is_409(tmp_path: Path) -> None:
    client = _client(tmp_path)
    files = {"model": ("model.onnx", DATA, "application/octet-stream")}
    first = client.post("/v2/repository/models/m/versions", data={"sha256": SHA, "card": "{}\n"}, files=files,
                        headers=AUTH)
    assert first.status_code == 201
    assert first.json() | {"reason": ""} == {"name": "m", "version": "1", "sha256": SHA, "bytes": len(DATA),
                                               "state": "UNAVAILABLE", "reason": ""}
    again = client.post("/v2/repository/models/m/versions", data={"sha256": SHA, "card": "{}\n", "version": "1"},
                        files=files, headers=AUTH)
    assert again.status_code == 409 and "has a version 1 already" in again.json()["error"]
    assert (tmp_path / "models" / "m" / "versions" / "1" / "model.onnx").read_bytes() == DATA


def test_uploads_take_the_admin_token(tmp_path: Path) -> None:
    response = _client(tmp_path).post("/v2/repository/models/m/versions", data={"sha256": SHA, "card": "{}\n"},
                                      files={"model": ("model.onnx", DATA, "application/octet-stream")},
                                      headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 403


def test_a_kubernetes_facade_refuses_uploads(tmp_path: Path) -> None:
    response = _client(tmp_path, "kubernetes").post(
        "/v2/repository/models/m/versions", data={"sha256": SHA, "card": "{}\n"},
        files={"model": ("model.onnx", DATA, "application/octet-stream")}, headers=AUTH)
    assert response.status_code == 501 and "spec.models" in response.json()["error"]
