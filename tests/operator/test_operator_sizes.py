"""Size limits in Kubernetes mode are errors that say so, never crashes or a misleading reason.

Real: the facade on its Kubernetes backend, the operator and the worker loops with the real runner
on the demo model. Stand-ins (operator_harness): the API server emulator and the simulated nodes.
The emulator has no etcd behind it, so the 1 MiB object limit is the facade's own check, which is
what a client meets before the API server (or etcd, with its 500 "request is too large") would.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from operator_harness import NS, Deployment, cluster_manifest, eventually, phase, task_manifest
from test_operator_facade import Facade, facade, http  # noqa: F401 (the fixture)

from legacygpu.api.backends.kubernetes import MAX_TASK_BYTES

FLAT = {"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0.5] * 64}


async def test_inputs_too_large_for_an_object_are_a_413_naming_the_limit(
    facade: Facade, dep: Deployment  # noqa: F811 (the imported fixture)
) -> None:
    rows = 3000  # ~2 MB of JSON: under the facade's request limit, over what an object may take
    big = {"name": "input", "datatype": "FP32", "shape": [rows, 64], "data": [0.123456789] * (rows * 64)}
    assert MAX_TASK_BYTES < len(json.dumps(big)) < 8 * 1024 * 1024
    with http(facade.url) as client:
        request = {"model": "digits", "inputs": [big]}
        answer = await asyncio.to_thread(client.post, "/cluster/tasks/submit", json=request)
    assert answer.status_code == 413, answer.text
    detail = answer.json()["detail"]
    assert str(MAX_TASK_BYTES) in detail and "spec.inputsUri" in detail
    assert await dep.api.list("legacygpu.io", "v1alpha1", "inferencetasks", NS) == []  # nothing half-made


async def _done(dep: Deployment, name: str) -> dict[str, Any] | None:
    body = await dep.task(name)
    return body if phase(body) in ("Succeeded", "Failed") else None


async def test_a_result_over_the_inline_limit_goes_whole_to_a_configmap(dep: Deployment) -> None:
    dep.worker_options.update(inline_limit=64)  # the digits result is a few hundred bytes
    await dep.start_operator()
    await dep.create(cluster_manifest("c", replicas=1))
    await dep.create(task_manifest("t", "c", [FLAT]))
    body = await eventually(lambda: _done(dep, "t"), what="task finished")
    status = body["status"]
    assert phase(body) == "Succeeded", status
    assert status["resultRef"] == "configmap://t-result/result.json"
    assert len(json.dumps(status["result"])) < 200, status["result"]  # a pointer, not the outputs
    stored = json.loads((await dep.api.get("", "v1", "configmaps", NS, "t-result"))["data"]["result.json"])
    assert stored["top_k"] and stored["model"] == "digits"
    assert status["result"]["fields"] == sorted(stored)  # every field went to the ConfigMap


async def test_a_result_over_a_configmaps_size_fails_result_too_large_not_model_error(dep: Deployment) -> None:
    dep.worker_options.update(inline_limit=64, configmap_limit=128)
    await dep.start_operator()
    await dep.create(cluster_manifest("c", replicas=1))
    await dep.create(task_manifest("t", "c", [FLAT]))
    body = await eventually(lambda: _done(dep, "t"), what="task finished")
    status = body["status"]
    assert (phase(body), status["reason"]) == ("Failed", "ResultTooLarge"), status
    assert "128 bytes" in status["message"] and "ConfigMap" in status["message"]
    assert status["attempts"] == 1  # not retried: the same model gives the same result
