"""Role boundaries on a real facade process: users, administrators, joining workers and a worker's own token.

Each role's token is tried on a route of every other role: the wrong role
gets 403 naming the role needed (and the one it has), an unknown token
401, the right one succeeds. The CLI's admin command reads the admin token.
"""

from __future__ import annotations

import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers import ADMIN_TOKEN, JOIN_TOKEN, TOKEN, LocalCluster

from .test_worker_and_cli import run_cli

GOOD = {"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}


@pytest.fixture(scope="module")
def facade(tmp_path_factory: pytest.TempPathFactory, demo_repository: Path) -> Iterator[LocalCluster]:
    data = tmp_path_factory.mktemp("roles") / "data"
    shutil.copytree(demo_repository, data / "models")
    cluster = LocalCluster(data, env={"LEGACYGPU_HEARTBEAT_TIMEOUT_SECONDS": "600"})  # fake workers never beat
    cluster.start_api()
    try:
        yield cluster
    finally:
        cluster.stop()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def register(facade: LocalCluster, name: str) -> dict[str, str]:
    r = facade.join.post("/cluster/workers/register", json={"name": name})
    assert r.status_code == 201, r.text
    return dict(r.json())


def test_the_user_token_cannot_administer_or_register(facade: LocalCluster) -> None:
    worker = register(facade, "u")
    assert facade.http.post("/cluster/tasks/submit", json={"model": "digits", "inputs": [GOOD]}).status_code == 201
    assert facade.http.get("/cluster/workers").status_code == 200
    drain = facade.http.post(f"/cluster/workers/{worker['id']}/drain")
    assert drain.status_code == 403, drain.text
    assert "needs the admin role" in drain.json()["detail"] and "LEGACYGPU_ADMIN_TOKEN" in drain.json()["detail"]
    assert "the token sent has the user role" in drain.json()["detail"]
    removed = facade.http.delete(f"/cluster/workers/{worker['id']}")
    assert removed.status_code == 403 and "admin role may too" in removed.json()["detail"], removed.text
    joined = facade.http.post("/cluster/workers/register", json={"name": "by-user"})
    assert joined.status_code == 403 and "needs the worker-join role" in joined.json()["detail"], joined.text
    assert facade.worker("u")["state"] == "active", "nothing the user token tried changed the worker"  # type: ignore[index]


def test_the_admin_token_drains_removes_and_does_what_users_do(facade: LocalCluster) -> None:
    first, second = register(facade, "a1"), register(facade, "a2")
    drained = facade.admin.post(f"/cluster/workers/{first['id']}/drain")
    assert drained.status_code == 200 and drained.json()["state"] == "draining"
    removed = facade.admin.delete(f"/cluster/workers/{second['id']}")
    assert removed.status_code == 200 and removed.json()["state"] == "stopped"
    task = facade.admin.post("/cluster/tasks/submit", json={"model": "digits", "inputs": [GOOD]})
    assert task.status_code == 201
    assert facade.admin.get(f"/cluster/tasks/{task.json()['id']}").json()["id"] == task.json()["id"]


def test_the_join_token_only_registers(facade: LocalCluster) -> None:
    worker = register(facade, "j")
    for method, path in (("POST", "/cluster/tasks/submit"), ("GET", "/cluster/workers"),
                         ("POST", f"/cluster/workers/{worker['id']}/drain")):
        r = facade.join.request(method, path, json={"model": "digits", "inputs": [GOOD]})
        assert r.status_code == 403, (path, r.text)
        assert "the token sent has the worker-join role" in r.json()["detail"], path
    # Registering does not let the join token act for the worker: that takes the worker's own token.
    beat = facade.join.post(f"/cluster/workers/{worker['id']}/heartbeat", json={})
    assert beat.status_code == 403 and f"only worker {worker['id']}" in beat.json()["detail"]
    own = facade.join.post(f"/cluster/workers/{worker['id']}/heartbeat", json={}, headers=bearer(worker["token"]))
    assert own.status_code == 200


def test_a_workers_token_is_no_user_or_admin_token(facade: LocalCluster) -> None:
    worker = register(facade, "w")
    own = bearer(worker["token"])
    assert facade.http.get("/cluster/tasks", headers=own).status_code == 401
    assert facade.http.post(f"/cluster/workers/{worker['id']}/drain", headers=own).status_code == 403
    assert facade.http.post("/cluster/workers/register", json={"name": "x"}, headers=own).status_code == 401
    assert facade.http.delete(f"/cluster/workers/{worker['id']}", headers=own).status_code == 200


def test_unknown_tokens_are_401_on_every_role_route(facade: LocalCluster) -> None:
    wrong = bearer("not-a-token")
    with httpx.Client(base_url=facade.url, headers=wrong, timeout=30) as http:
        assert http.post("/cluster/workers/register", json={"name": "x"}).status_code == 401
        assert http.post("/cluster/workers/w-none/drain").status_code == 401
        assert http.get("/cluster/tasks").status_code == 401


def test_the_stored_role_tokens_are_distinct_and_private(tmp_path: Path, demo_repository: Path) -> None:
    """Unconfigured, the facade makes one token per role in the data dir, each 0600."""
    data = tmp_path / "data"
    shutil.copytree(demo_repository, data / "models")
    cluster = LocalCluster(data)
    for name in ("LEGACYGPU_API_TOKEN", "LEGACYGPU_ADMIN_TOKEN", "LEGACYGPU_JOIN_TOKEN"):
        cluster.env.pop(name)
    cluster.start_api()
    try:
        tokens = {name: (data / name).read_text().strip() for name in ("api-token", "admin-token", "join-token")}
        assert len(set(tokens.values())) == 3 and all(len(t) >= 32 for t in tokens.values())
        assert all(stat.S_IMODE((data / name).stat().st_mode) == 0o600 for name in tokens)
        url = cluster.url
        assert httpx.get(f"{url}/cluster/tasks", headers=bearer(tokens["api-token"])).status_code == 200
        assert httpx.post(f"{url}/cluster/workers/register", json={"name": "s"},
                          headers=bearer(tokens["join-token"])).status_code == 201
        assert httpx.get(f"{url}/cluster/tasks", headers=bearer(TOKEN)).status_code == 401
    finally:
        cluster.stop()


def test_the_cli_drains_with_the_admin_token_and_says_so_without_it(facade: LocalCluster) -> None:
    worker = register(facade, "cli")
    as_user = {**facade.env, "LEGACYGPU_ADMIN_TOKEN": TOKEN}  # the user's token where the admin's belongs
    refused = run_cli(as_user, "worker", "stop", worker["id"], timeout=60)
    assert refused.returncode == 5, refused.stderr
    assert "needs the admin role" in refused.stderr and "LEGACYGPU_ADMIN_TOKEN" in refused.stderr
    done = run_cli(facade.env, "worker", "stop", worker["id"], "-o", "json", timeout=60)
    assert done.returncode == 0 and '"state": "draining"' in done.stdout, done.stderr
    assert ADMIN_TOKEN not in done.stdout + done.stderr and JOIN_TOKEN not in done.stdout + done.stderr


def test_the_cli_removes_a_worker_with_the_admin_token(facade: LocalCluster) -> None:
    worker = register(facade, "cli-remove")
    as_user = {**facade.env, "LEGACYGPU_ADMIN_TOKEN": TOKEN}
    refused = run_cli(as_user, "worker", "remove", worker["id"], timeout=60)
    assert refused.returncode == 5 and "admin role" in refused.stderr, refused.stderr
    done = run_cli(facade.env, "worker", "remove", worker["id"], "-o", "json", timeout=60)
    assert done.returncode == 0 and '"state": "stopped"' in done.stdout, done.stderr
