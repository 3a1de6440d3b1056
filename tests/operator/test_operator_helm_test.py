"""The chart's ``helm test`` pod runs a real inference: its script, run against the real facade.

The script is taken from the rendered chart (``templates/tests/inference.yaml``) and run as a
local process with the pod's environment, against the facade on its Kubernetes backend, the
operator and the worker loops on the demo model. Stand-ins (operator_harness): the API server
emulator and the simulated nodes; and the pod itself, since no kubelet here runs containers.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

from chart.helmchart import find, render
from operator_harness import Deployment
from test_operator_facade import TOKEN, Facade, facade  # noqa: F401 (the fixture)


def _test_pod() -> dict:
    (pod,) = [p for p in find(render(), "Pod") if p["metadata"]["annotations"].get("helm.sh/hook") == "test"]
    return pod


def _run(pod: dict, url: str, token: str) -> subprocess.CompletedProcess[str]:
    container = pod["spec"]["containers"][0]
    assert container["command"][0] == "python"
    env = {**os.environ, "LEGACYGPU_API_URL": url, "LEGACYGPU_API_TOKEN": token}
    return subprocess.run([sys.executable, *container["command"][1:], *container["args"]], env=env,
                          capture_output=True, text=True, timeout=300)


async def test_the_helm_test_pod_submits_a_task_and_passes_only_when_it_succeeds(
    facade: Facade, dep: Deployment  # noqa: F811 (the imported fixture)
) -> None:
    pod = _test_pod()
    env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
    assert env["LEGACYGPU_API_URL"]["value"] == "http://lg-legacygpu-api.legacygpu-system.svc:8000"
    assert env["LEGACYGPU_API_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "lg-legacygpu-api-token"

    passed = await asyncio.to_thread(_run, pod, facade.url, TOKEN)
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert " Succeeded " in passed.stdout and "'label'" in passed.stdout

    refused = await asyncio.to_thread(_run, pod, facade.url, "wrong-token")
    assert refused.returncode != 0 and "401" in refused.stderr
