"""The chart's workloads match the programs they run and wire up with each other.

Each container's arguments are parsed by the real click command it runs (``legacygpu
operator run``, ``legacygpu api serve``, ``legacygpu node-agent``), so a flag renamed in
the CLI or misspelt in a template fails here; the facade's environment is fed to the real
``Settings`` and the operator's to ``OperatorConfig``. Services, probes and
ServiceMonitors must point at ports and labels that exist.
"""

from __future__ import annotations

import os
from importlib.metadata import version
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from .helmchart import CHART, containers, find, pod_specs, render

FULL = yaml.safe_load((Path(__file__).resolve().parent / "values-full.yaml").read_text())


def _parse(cmd: click.Command, name: str, args: list[str]) -> dict[str, Any]:
    """What click makes of ``args`` (raises on an unknown flag or a bad value)."""
    with cmd.make_context(name, list(args), resilient_parsing=False) as ctx:
        return dict(ctx.params)


def _env(container: dict[str, Any], secret_value: str = "tok") -> dict[str, str]:
    out = {}
    for e in container.get("env", []):
        if "value" in e:
            out[e["name"]] = e["value"]
        elif "secretKeyRef" in e.get("valueFrom", {}):
            out[e["name"]] = secret_value
    return out


@pytest.mark.parametrize("values", [{}, FULL], ids=["default", "full"])
def test_operator_arguments_parse_with_the_operator_cli(
    values: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from legacygpu.cli.operator import command

    docs = render(values, namespace="legacygpu-system")
    (op,) = [c for k, c in containers(docs).items() if k.startswith("Deployment/") and k.endswith("/operator")]
    assert op["args"][:2] == ["operator", "run"]
    for name in [k for k in list(os.environ) if k.startswith("LEGACYGPU_OPERATOR_")]:
        monkeypatch.delenv(name)
    params = _parse(command.commands["run"], "run", op["args"][2:])
    ops = values.get("operator", {})
    assert params["leader_elect"] is True
    assert params["lease_namespace"] == "legacygpu-system"
    assert params["lease_name"] == ops.get("leaderElection", {}).get("leaseName", "lg-legacygpu-operator")
    assert params["metrics_port"] == ops.get("metricsPort", 8080)
    assert params["namespaces"] == tuple(ops.get("watchNamespaces", ()))
    assert params["worker_image"] == containers(docs)[next(k for k in containers(docs) if "node-agent" in k)]["image"]
    port = {p["name"]: p["containerPort"] for p in op["ports"]}["metrics"]
    assert port == params["metrics_port"]

    from legacygpu.operator.config import OperatorConfig

    for key, value in _env(op).items():
        monkeypatch.setenv(key, value)
    assert OperatorConfig().worker_service_account == _env(op)["LEGACYGPU_OPERATOR_WORKER_SERVICE_ACCOUNT"]


def test_single_operator_runs_without_leader_election() -> None:
    from legacygpu.cli.operator import command

    docs = render({"operator": {"replicas": 1, "leaderElection": {"enabled": False}}})
    op = containers(docs)["Deployment/lg-legacygpu-operator/operator"]
    assert _parse(command.commands["run"], "run", op["args"][2:])["leader_elect"] is False


@pytest.mark.parametrize("values", [{}, FULL], ids=["default", "full"])
def test_facade_arguments_and_environment_configure_the_kubernetes_backend(
    values: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from legacygpu.cli.api import command
    from legacygpu.core.config import Settings

    docs = render(values, namespace="legacygpu-system")
    api = next(c for k, c in containers(docs).items() if k.endswith("/api"))
    assert api["args"][:2] == ["api", "serve"]
    params = _parse(command.commands["serve"], "serve", api["args"][2:])
    assert params["cluster_backend"] == "kubernetes" and params["host"] == "0.0.0.0"
    ports = {p["name"]: p["containerPort"] for p in api["ports"]}
    assert params["port"] == ports["http"] and params["grpc_port"] == ports["grpc"]
    service = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"].endswith("-api"))
    assert {p["name"]: p["targetPort"] for p in service["spec"]["ports"]} == {"http": "http", "grpc": "grpc"}

    for key in [k for k in list(os.environ) if k.startswith("LEGACYGPU_")]:
        monkeypatch.delenv(key)
    for key, value in _env(api, "the-token").items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    apis = values.get("api", {})
    assert settings.cluster_backend == "kubernetes"
    assert settings.api_token == "the-token"
    assert settings.kube_cluster == apis.get("clusterName", "default")
    assert settings.kube_namespace == apis.get("clusterNamespace", "legacygpu-system")
    mounts = {m["mountPath"]: m for m in api["volumeMounts"]}
    # The image's data dir stays visible: its models/ holds the built-in demo model (Dockerfile.operator);
    # in Kubernetes mode the facade writes nothing there (tests/e2e/test_chart_images.py runs it so).
    assert str(settings.data_dir) not in mounts, "a volume there would hide the image's demo model"
    assert str(settings.models_dir) == "/var/lib/legacygpu/models"
    if apis.get("modelVolume"):
        assert mounts[str(settings.models_dir)]["readOnly"] is True
    else:
        assert str(settings.models_dir) not in mounts


@pytest.mark.parametrize("values", [{}, FULL], ids=["default", "full"])
def test_node_agent_arguments_parse_with_the_node_agent_cli(values: dict[str, Any]) -> None:
    from legacygpu.cli.nodeagent import command

    docs = render(values)
    agent = next(c for k, c in containers(docs).items() if k.startswith("DaemonSet/"))
    assert agent["args"][0] == "node-agent"
    params = _parse(command, "node-agent", agent["args"][1:])
    na = values.get("nodeAgent", {})
    assert params["resource_name"] == na.get("resourceName", "legacygpu.io/gpu")
    assert params["health_checks"] == tuple(na.get("healthChecks", ["sysfs", "opencl"]))
    assert str(params["kubelet_dir"]) == na.get("kubeletDir", "/var/lib/kubelet/device-plugins")
    assert params["replicas_per_gpu"] == na.get("replicasPerGpu", 1)
    assert str(params["sysfs_root"]) == "/host/sys" and str(params["dev_root"]) == "/dev"
    env = {e["name"]: e for e in agent["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"


def test_default_images_are_this_release() -> None:
    """appVersion is the package version, so the default worker image is the one the operator defaults to."""
    from legacygpu.operator.config import OperatorConfig

    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == version("legacygpu")
    imgs = {k: c["image"] for k, c in containers(render()).items()}
    assert imgs["Deployment/lg-legacygpu-operator/operator"] == f"legacygpu/operator:{chart['appVersion']}"
    assert imgs["Deployment/lg-legacygpu-api/api"] == f"legacygpu/operator:{chart['appVersion']}"
    assert imgs["DaemonSet/lg-legacygpu-node-agent/node-agent"] == OperatorConfig.__dataclass_fields__[
        "worker_image"].default_factory()  # type: ignore[misc]  # fmt: skip


@pytest.mark.parametrize("values", [{}, FULL], ids=["default", "full"])
def test_services_probes_and_monitors_point_at_what_exists(values: dict[str, Any]) -> None:
    docs = render(values)
    pods = {k: s for k, s in pod_specs(docs).items()}
    templates = {f"{d['kind']}/{d['metadata']['name']}": d["spec"]["template"] for d in docs
                 if d["kind"] in ("Deployment", "DaemonSet")}  # fmt: skip
    for key, spec in pods.items():
        for c in spec["containers"]:
            ports = {p["name"] for p in c.get("ports", [])}
            for probe in ("livenessProbe", "readinessProbe"):
                if probe in c and "httpGet" in c[probe]:
                    assert c[probe]["httpGet"]["port"] in ports, (key, probe)
    for svc in find(docs, "Service"):
        matched = [t for t in templates.values() if svc["spec"]["selector"].items() <= t["metadata"]["labels"].items()]
        assert len(matched) == 1, svc["metadata"]["name"]
        ports = {p["name"] for c in matched[0]["spec"]["containers"] for p in c.get("ports", [])}
        assert {p["targetPort"] for p in svc["spec"]["ports"]} <= ports
    for sm in find(docs, "ServiceMonitor"):
        svcs = [s for s in find(docs, "Service")
                if sm["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()]  # fmt: skip
        assert len(svcs) == 1, sm["metadata"]["name"]
        assert {e["port"] for e in sm["spec"]["endpoints"]} <= {p["name"] for p in svcs[0]["spec"]["ports"]}
    for ing in find(docs, "Ingress"):
        names = {p["backend"]["service"]["name"] for r in ing["spec"]["rules"] for p in r["http"]["paths"]}
        assert names <= {s["metadata"]["name"] for s in find(docs, "Service")}
    for pdb in find(docs, "PodDisruptionBudget"):
        sel = pdb["spec"]["selector"]["matchLabels"]
        assert len([t for t in templates.values() if sel.items() <= t["metadata"]["labels"].items()]) == 1
