"""``legacygpu node-agent``: the kubelet device plugin and node labeller for one node.

Design: a thin click layer over :mod:`legacygpu.worker.nodeagent`, imported
inside the command so ``legacygpu --help`` never loads grpc. Every path has a
flag (``--sysfs-root``, ``--dev-root``, ``--kubelet-dir``) defaulting to the
real node's, so the same command runs in the DaemonSet and against a fixture
tree in the tests. ``--print-labels`` is the one-shot labeller: one health
round, the labels as JSON on stdout (applied to ``--node-name`` if given),
exit. Otherwise the agent runs until SIGTERM/SIGINT and exits 0.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import click

__all__ = ["command"]

_RESOURCE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_CHECKS = ("sysfs", "opencl")


def _checks(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, ...]:
    items = tuple(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
    unknown = [v for v in items if v not in _CHECKS]
    if unknown:
        raise click.BadParameter(f"unknown check(s) {', '.join(unknown)}; choose from {', '.join(_CHECKS)}")
    return items


def _resource(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not _RESOURCE_NAME.match(value) or len(value) > 253:
        raise click.BadParameter(f"{value!r} is not an extended resource name like legacygpu.io/gpu")
    return value


@click.command(context_settings={"show_default": True})
@click.option("--sysfs-root", type=click.Path(path_type=Path, file_okay=False), default=Path("/sys"),
              help="Root of the sysfs tree (class/drm, devices/...).")
@click.option("--dev-root", type=click.Path(path_type=Path, file_okay=False), default=Path("/dev"),
              help="Root of the device nodes (dri/renderD*, kfd).")
@click.option("--kubelet-dir", type=click.Path(path_type=Path, file_okay=False),
              default=Path("/var/lib/kubelet/device-plugins"),
              help="The kubelet's device-plugin directory (holds kubelet.sock and our socket).")
@click.option("--resource-name", default="legacygpu.io/gpu", callback=_resource,
              help="Extended resource the GPUs are advertised as.")
@click.option("--health-interval", type=click.FloatRange(min=0.05), default=10.0,
              help="Seconds between health rounds.")
@click.option("--health-checks", default="sysfs,opencl", callback=_checks,
              help="Comma-separated checks: sysfs (files readable, device node present), "
                   "opencl (a context opens and a probe kernel runs).")
@click.option("--replicas-per-gpu", type=click.IntRange(min=1), default=1,
              help="Sharing: advertise each card this many times. No memory or fault isolation.")
@click.option("--opencl-device-type", type=click.Choice(["gpu", "cpu", "all"]), default="gpu",
              help="OpenCL devices joined to cards; cpu lets PoCL stand in for a card (testing).")
@click.option("--node-name", envvar="NODE_NAME", default=None,
              help="Label this Node (env NODE_NAME, from the downward API). Without it labels are only logged.")
@click.option("--metrics-port", type=click.IntRange(min=0, max=65535), default=None,
              help="Serve per-GPU Prometheus gauges on /metrics at this port (0: any free port). Unset: none.")
@click.option("--metrics-address", default="0.0.0.0", help="Address the /metrics server binds.")
@click.option("--print-labels", is_flag=True, help="Run one health round, print the node labels as JSON, exit.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True, help="Logging verbosity.")
def command(
    sysfs_root: Path,
    dev_root: Path,
    kubelet_dir: Path,
    resource_name: str,
    health_interval: float,
    health_checks: tuple[str, ...],
    replicas_per_gpu: int,
    opencl_device_type: str,
    node_name: str | None,
    metrics_port: int | None,
    metrics_address: str,
    print_labels: bool,
    log_level: str,
) -> None:
    """Advertise this node's legacy GPUs to the kubelet and label the node.

    Serves the Device Plugin API v1beta1 on a unix socket in --kubelet-dir,
    registers with the kubelet (again whenever kubelet.sock is recreated),
    reports each card Healthy or Unhealthy, and stops cleanly on SIGTERM.
    """
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import asyncio

    from legacygpu.worker.nodeagent import AgentConfig, NodeAgent, NodeLabeller, run_agent
    from legacygpu.worker.nodeagent.errors import LabelError, PluginServerError
    from legacygpu.worker.nodeagent.labeller import kubernetes_client

    config = AgentConfig(
        sysfs_root=sysfs_root.resolve(),
        dev_root=dev_root.resolve(),
        kubelet_dir=kubelet_dir.resolve(),
        resource_name=resource_name,
        health_interval=health_interval,
        health_checks=health_checks,
        replicas_per_gpu=replicas_per_gpu,
        opencl_device_types=(opencl_device_type,),
        metrics_port=metrics_port,
        metrics_host=metrics_address,
    )
    try:
        labeller = NodeLabeller(node_name, kubernetes_client()) if node_name else None
        if print_labels:
            agent = NodeAgent(config, labeller=labeller)
            asyncio.run(agent.health_round())
            click.echo(json.dumps(agent.labels, indent=2, sort_keys=True))
            if labeller is not None and labeller.applied is None:
                raise click.ClickException(f"labels were computed but could not be applied to node {node_name}")
            return
        code = run_agent(config, labeller=labeller)
    except (LabelError, PluginServerError) as exc:
        raise click.ClickException(str(exc)) from exc
    raise SystemExit(code)
