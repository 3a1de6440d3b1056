"""Result ConfigMaps: a retry overwrites the worker's own, never takes over a user's ConfigMap."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from legacygpu.core.errors import ValidationError
from legacygpu.core.kube.contract import LABEL_WORKER
from legacygpu.core.kube.errors import ApiError
from legacygpu.worker.resultmaps import write_configmap

TASK = {"metadata": {"name": "job", "uid": "uid-job"}}


class Api:
    """ConfigMaps in one namespace, answering create, get and merge patch as the API server does."""

    namespace, pod = "ml", "worker-1"

    def __init__(self) -> None:
        self.configmaps: dict[str, dict[str, Any]] = {}

    def request(self, method: str, path: str, *, body: Any = None, **_: Any) -> Any:
        name = path.rsplit("/", 1)[-1]
        if method == "POST":
            if body["metadata"]["name"] in self.configmaps:
                raise ApiError("already exists", status=409)
            self.configmaps[body["metadata"]["name"]] = copy.deepcopy(body)
            return body
        if method == "GET":
            return copy.deepcopy(self.configmaps[name])
        assert method == "PATCH"
        stored = self.configmaps[name]
        stored["metadata"].update(body.get("metadata") or {})
        stored.setdefault("data", {}).update(body["data"])
        return stored


def test_a_retry_overwrites_the_entries_of_the_configmap_a_worker_wrote() -> None:
    api = Api()
    write_configmap(api, TASK, "job-result", {"result.json": "1", "old.json": "x"})
    api.pod = "worker-2"
    write_configmap(api, TASK, "job-result", {"result.json": "2"})
    stored = api.configmaps["job-result"]
    assert stored["data"] == {"result.json": "2", "old.json": "x"}
    assert [o["uid"] for o in stored["metadata"]["ownerReferences"]] == ["uid-job"]


def test_a_users_configmap_of_the_same_name_is_left_alone_and_named() -> None:
    api = Api()
    mine = {"metadata": {"name": "job-result", "labels": {"app": "mine"}}, "data": {"keep.txt": "mine"}}
    api.configmaps["job-result"] = copy.deepcopy(mine)
    with pytest.raises(ValidationError, match="ConfigMap ml/job-result exists and is not a result of this task"):
        write_configmap(api, TASK, "job-result", {"result.json": "1"})
    assert api.configmaps["job-result"] == mine  # no owner added: the garbage collector leaves it be
    assert LABEL_WORKER not in api.configmaps["job-result"]["metadata"]["labels"]
