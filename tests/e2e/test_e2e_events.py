"""The Event body the operator and the workers post (``event_manifest``) on a real kube-apiserver.

The API server validates a core/v1 Event (the emulator stores anything): it must take both the
operator's form and a worker's, and the field selectors ``kubectl describe`` uses must find them.
An Event whose namespace is not its object's is refused, the rule the manifest keeps.
"""

from __future__ import annotations

import uuid

import pytest
from e2ecluster import Kube
from kubernetes.client.exceptions import ApiException

from legacygpu.core.kube.contract import API_VERSION, TASK_KIND, event_manifest


def _task(name: str, namespace: str) -> dict[str, object]:
    return {"apiVersion": API_VERSION, "kind": TASK_KIND,
            "metadata": {"name": name, "namespace": namespace, "uid": str(uuid.uuid4())}}  # fmt: skip


@pytest.mark.parametrize("form", ["operator", "worker"])
def test_the_api_server_takes_the_event_and_describe_finds_it(kube: Kube, namespace: str, form: str) -> None:
    task = _task("t1", namespace)
    options = {"instance": "pod-a", "host": "node-1"} if form == "worker" else {}
    event = event_manifest(task, "Warning", "InvalidInput", "bad shape", component=f"legacygpu-{form}", **options)
    created = kube.api.sanitize_for_serialization(kube.core.create_namespaced_event(namespace, event))
    assert created["metadata"]["name"].startswith("t1.")
    uid = task["metadata"]["uid"]  # type: ignore[index]
    selector = f"involvedObject.name=t1,involvedObject.namespace={namespace},involvedObject.kind={TASK_KIND},"
    found = kube.core.list_namespaced_event(namespace, field_selector=selector + f"involvedObject.uid={uid}").items
    assert [(e.reason, e.type, e.message, e.count) for e in found] == [("InvalidInput", "Warning", "bad shape", 1)]
    assert found[0].reporting_component == f"legacygpu-{form}" and found[0].source.component == f"legacygpu-{form}"
    if form == "worker":
        assert (found[0].reporting_instance, found[0].source.host) == ("pod-a", "node-1")


def test_an_event_in_another_namespace_than_its_object_is_refused(kube: Kube, namespace: str) -> None:
    event = event_manifest(_task("t1", "elsewhere"), "Warning", "X", "m", component="legacygpu-operator")
    event["metadata"]["namespace"] = namespace  # posted here, about an object elsewhere
    with pytest.raises(ApiException) as refused:
        kube.core.create_namespaced_event(namespace, event)
    assert refused.value.status == 422 and "involvedObject.namespace" in str(refused.value.body)
