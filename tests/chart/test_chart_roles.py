"""The chart gives the facade its roles' tokens from a Secret: the users' token and a distinct admin token.

Workers get no facade token: in Kubernetes they take tasks from the API
server with their ServiceAccount (the guide's "limits and security").
"""

from __future__ import annotations

import base64
import re
from typing import Any

from .helmchart import render


def _api_env(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    api = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-api"))
    return {e["name"]: e for e in api["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_the_chart_secret_holds_a_generated_admin_token_distinct_from_the_users() -> None:
    docs = render()
    secret = next(d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"].endswith("-api-token"))
    user, admin = (base64.b64decode(secret["data"][key]).decode() for key in ("token", "admin-token"))
    assert re.fullmatch(r"[A-Za-z0-9]{43}", admin) and admin != user
    env = _api_env(docs)
    assert env["LEGACYGPU_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": secret["metadata"]["name"], "key": "admin-token", "optional": True}
    assert "value" not in env["LEGACYGPU_ADMIN_TOKEN"], "the token never appears in the pod spec"


def test_a_given_admin_token_and_an_existing_secret() -> None:
    given = render({"api": {"auth": {"adminToken": "the-admins-token", "adminSecretKey": "adm"}}})
    secret = next(d for d in given if d["kind"] == "Secret" and d["metadata"]["name"].endswith("-api-token"))
    assert base64.b64decode(secret["data"]["adm"]).decode() == "the-admins-token"
    existing = render({"api": {"auth": {"existingSecret": "mine"}}})
    ref = _api_env(existing)["LEGACYGPU_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "mine", "key": "admin-token", "optional": True}, "a Secret without the key: no admin role"


def test_worker_pods_get_no_facade_token() -> None:
    for doc in render():
        if doc["kind"] not in ("Deployment", "DaemonSet", "StatefulSet") or doc["metadata"]["name"].endswith("-api"):
            continue
        for container in doc["spec"]["template"]["spec"]["containers"]:
            names = {e["name"] for e in container.get("env", [])}
            assert not names & {"LEGACYGPU_API_TOKEN", "LEGACYGPU_ADMIN_TOKEN", "LEGACYGPU_JOIN_TOKEN"}, doc["metadata"]
