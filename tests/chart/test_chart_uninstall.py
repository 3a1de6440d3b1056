"""The pre-delete hook, rendered (tests/e2e/test_chart_images.py runs it on the real API server).

Its objects are hooks of ``pre-delete`` only (never installed with the release), created before
the Job (weights), deleted once it succeeds; its Roles grant what the steps need, in the worker
namespaces and the release namespace, and nothing cluster-wide; the Job's script compiles and is
told the namespaces, the operator Deployment and the timeout.
"""

from __future__ import annotations

import json

from chart.helmchart import containers, find, pod_specs, render

HOOK = "lg-legacygpu-uninstall"


def _env(container: dict[str, object]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"]}  # type: ignore[index, union-attr]


def test_the_hook_objects_are_pre_delete_hooks_made_before_the_job() -> None:
    docs = [d for d in render({"worker": {"namespaces": ["ml", "ml2"]}}) if "uninstall" in d["metadata"]["name"]]
    assert sorted(f"{d['kind']}/{d['metadata'].get('namespace')}/{d['metadata']['name']}" for d in docs) == sorted([
        f"ServiceAccount/legacygpu-system/{HOOK}", f"Job/legacygpu-system/{HOOK}",
        f"Role/ml/{HOOK}", f"RoleBinding/ml/{HOOK}", f"Role/ml2/{HOOK}", f"RoleBinding/ml2/{HOOK}",
        f"Role/legacygpu-system/{HOOK}-operator", f"RoleBinding/legacygpu-system/{HOOK}-operator",
    ])  # fmt: skip
    for doc in docs:
        notes = doc["metadata"]["annotations"]
        assert notes["helm.sh/hook"] == "pre-delete"
        assert notes["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
        weight = int(notes.get("helm.sh/hook-weight", "0"))
        assert weight < 0 if doc["kind"] != "Job" else weight == 0, "accounts and roles exist before the Job"
    assert not [d for d in docs if d["kind"].startswith("Cluster")]


def test_the_roles_grant_the_steps_and_no_more() -> None:
    docs = render({"worker": {"namespaces": ["ml"]}})
    (worker_ns,) = find(docs, "Role", HOOK, "ml")
    rules = {(r, v) for rule in worker_ns["rules"] for r in rule["resources"] for v in rule["verbs"]}
    assert rules == {("inferenceclusters", "list"), ("inferenceclusters", "delete"), ("inferenceclusters", "patch"),
                     ("inferencetasks", "list"), ("inferencetasks", "delete"), ("pods", "list")}  # fmt: skip
    (release_ns,) = find(docs, "Role", f"{HOOK}-operator", "legacygpu-system")
    scale = next(r for r in release_ns["rules"] if r["resources"] == ["deployments/scale"])
    assert scale["resourceNames"] == ["lg-legacygpu-operator"] and scale["verbs"] == ["patch"]
    for binding in find(docs, "RoleBinding"):
        if binding["metadata"]["name"].startswith(HOOK):
            assert binding["subjects"] == [{"kind": "ServiceAccount", "name": HOOK, "namespace": "legacygpu-system"}]


def test_the_job_runs_a_script_that_compiles_with_its_settings() -> None:
    docs = render({"worker": {"namespaces": ["ml", "ml2"]}, "uninstall": {"timeoutSeconds": 45}})
    job = containers(docs)[f"Job/{HOOK}/uninstall"]
    compile(job["args"][0], "pre-delete hook", "exec")
    env = _env(job)
    assert json.loads(env["WORKER_NAMESPACES"]) == ["ml", "ml2"]
    assert env["OPERATOR"] == "lg-legacygpu-operator" and env["TIMEOUT_SECONDS"] == "45"
    assert pod_specs(docs)[f"Job/{HOOK}"]["serviceAccountName"] == HOOK
    assert job["image"].startswith("legacygpu/operator:")


def test_no_hook_when_switched_off_or_without_rbac_or_operator() -> None:
    for values in ({"uninstall": {"hook": False}}, {"rbac": {"create": False}},
                   {"operator": {"enabled": False}}):  # fmt: skip
        assert not [d for d in render(values) if "uninstall" in d["metadata"]["name"]], values
