"""Every container of the chart runs with the least privilege its job allows.

The operator and the facade must meet the Kubernetes "restricted" Pod Security Standard
(checked here field by field, and by the real PodSecurity admission in
tests/e2e/test_chart_install.py) plus a read-only root file system. The node agent is
the one exception, and only as far as its job needs: root for the kubelet's socket
directory with every capability dropped, exactly three host paths (two of them
read-only), and ``privileged`` only while the ``opencl`` health check has to open the
cards. Checked on the default values and on variants that change each of these.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from .helmchart import containers, pod_specs, render

FULL = yaml.safe_load((Path(__file__).resolve().parent / "values-full.yaml").read_text())
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}  # fmt: skip
VARIANTS = {
    "default": {},
    "full": FULL,
    "sysfs-only agent": {"nodeAgent": {"healthChecks": ["sysfs"]}},
    "single operator": {"operator": {"replicas": 1, "leaderElection": {"enabled": False}}},
}


def _restricted_problems(pod: dict[str, Any], container: dict[str, Any]) -> list[str]:
    """Violations of the restricted Pod Security Standard (v1.37) by one container of a pod."""
    psc = pod.get("securityContext") or {}
    sc = container.get("securityContext") or {}
    problems = []
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(flag):
            problems.append(f"pod {flag}")
    for vol in pod.get("volumes", []):
        kinds = set(vol) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            problems.append(f"volume {vol['name']} is {kinds}")
    if sc.get("privileged"):
        problems.append("privileged")
    if sc.get("allowPrivilegeEscalation") is not False:
        problems.append("allowPrivilegeEscalation not false")
    caps = sc.get("capabilities") or {}
    if "ALL" not in (caps.get("drop") or []):
        problems.append("capabilities not dropped")
    if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
        problems.append(f"capabilities added: {caps['add']}")
    if not sc.get("runAsNonRoot", psc.get("runAsNonRoot")):
        problems.append("runAsNonRoot not true")
    if sc.get("runAsUser", psc.get("runAsUser")) == 0:
        problems.append("runAsUser 0")
    seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
    if seccomp not in ("RuntimeDefault", "Localhost"):
        problems.append(f"seccomp {seccomp}")
    if any("hostPort" in p for p in container.get("ports", [])):
        problems.append("hostPort")
    return problems


@pytest.fixture(scope="module", params=list(VARIANTS), ids=list(VARIANTS))
def docs(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return render(VARIANTS[request.param])


def test_operator_and_facade_meet_the_restricted_standard_with_a_read_only_root(docs: list[dict[str, Any]]) -> None:
    specs = pod_specs(docs)
    checked = 0
    for key, container in containers(docs).items():
        kind_name = key.rsplit("/", 1)[0]
        if kind_name.startswith("DaemonSet/"):
            continue
        pod = specs[kind_name]
        assert _restricted_problems(pod, container) == [], key
        assert container["securityContext"]["readOnlyRootFilesystem"] is True, key
        assert container["resources"]["requests"] and container["resources"]["limits"]["memory"], key
        if kind_name.startswith("Job/"):  # the uninstall hook runs to completion: no probes
            assert pod["restartPolicy"] == "Never", key
        else:
            assert container.get("livenessProbe") and container.get("readinessProbe"), key
        assert pod.get("automountServiceAccountToken") is not False, "the operator, facade and hook need their token"
        checked += 1
    assert checked == 3


def test_restricted_check_itself_catches_violations() -> None:
    """The checker above is not vacuous: the node agent's pod fails it, for the documented reasons."""
    docs = render()
    agent = pod_specs(docs)["DaemonSet/lg-legacygpu-node-agent"]
    problems = _restricted_problems(agent, agent["containers"][0])
    assert "privileged" in problems and "runAsNonRoot not true" in problems and "runAsUser 0" in problems
    assert any(p.startswith("volume sys") for p in problems)


def test_node_agent_is_privileged_only_for_the_opencl_check(docs: list[dict[str, Any]]) -> None:
    agents = [d for d in docs if d["kind"] == "DaemonSet"]
    if not agents:
        pytest.skip("node agent disabled in this variant")
    pod = agents[0]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    sc = container["securityContext"]
    checks = next(a for a in container["args"] if a.startswith("--health-checks=")).split("=", 1)[1].split(",")
    assert sc["privileged"] is ("opencl" in checks)
    if not sc["privileged"]:
        assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}, "root, but without a single capability"
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["runAsUser"] == 0, "the kubelet's device-plugin directory and kubelet.sock belong to root"
    assert (sc.get("seccompProfile") or pod["securityContext"]["seccompProfile"])["type"] == "RuntimeDefault"
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        assert not pod.get(flag), flag

    host = {v["name"]: v["hostPath"] for v in pod["volumes"] if "hostPath" in v}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    kubelet_dir = next(a for a in container["args"] if a.startswith("--kubelet-dir=")).split("=", 1)[1]
    expected = {"device-plugins": kubelet_dir, "sys": "/sys", "dri": "/dev/dri"}
    if "kfd" in host:
        expected["kfd"] = "/dev/kfd"
    assert {k: v["path"] for k, v in host.items()} == expected, "no host path beyond what the agent uses"
    assert mounts["sys"]["readOnly"] is True and mounts["dri"]["readOnly"] is True
    assert not mounts["device-plugins"].get("readOnly"), "the agent serves its socket there"
    assert mounts["dri"]["mountPath"] == "/dev/dri", "Allocate hands out host paths: they must match inside"
    assert "--dev-root=/dev" in container["args"] and "--sysfs-root=/host/sys" in container["args"]


def test_sysfs_only_agent_drops_privileged() -> None:
    docs = render({"nodeAgent": {"healthChecks": ["sysfs"]}})
    (agent,) = [d for d in docs if d["kind"] == "DaemonSet"]
    sc = agent["spec"]["template"]["spec"]["containers"][0]["securityContext"]
    assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False


def test_security_context_overrides_are_taken_verbatim() -> None:
    docs = render({"operator": {"securityContext": {"runAsUser": 2000, "runAsNonRoot": True}},
                   "nodeAgent": {"securityContext": {"privileged": False, "runAsUser": 0}}})  # fmt: skip
    ctrs = containers(docs)
    assert ctrs["Deployment/lg-legacygpu-operator/operator"]["securityContext"] == {"runAsUser": 2000,
                                                                                    "runAsNonRoot": True}
    assert ctrs["DaemonSet/lg-legacygpu-node-agent/node-agent"]["securityContext"] == {"privileged": False,
                                                                                       "runAsUser": 0}
    assert ctrs["Deployment/lg-legacygpu-api/api"]["securityContext"]["readOnlyRootFilesystem"] is True


def test_every_pod_uses_its_own_service_account(docs: list[dict[str, Any]]) -> None:
    accounts = {}
    for key, pod in pod_specs(docs).items():
        assert pod.get("serviceAccountName") not in (None, "", "default"), key
        accounts[key] = pod["serviceAccountName"]
    assert len(set(accounts.values())) == len(accounts), accounts
