"""``legacygpu operator``: run the Kubernetes operator, or print its CRDs and RBAC.

Design: a thin click layer over :mod:`legacygpu.operator`, imported inside
each command so ``legacygpu --help`` never loads kopf. ``run`` connects with
``--server`` (tests, tunnels), else in-cluster credentials, else the
kubeconfig; every flag also reads a ``LEGACYGPU_OPERATOR_*`` variable so
the chart can configure it through the environment. ``crds`` prints both
CustomResourceDefinitions (``legacygpu operator crds | kubectl apply -f -``)
or writes them into a folder (``--output-dir crds``, how ``crds/`` is made);
``rbac`` prints the ServiceAccounts and roles the operator and workers need.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

import click

__all__ = ["command"]


@click.group()
def command() -> None:
    """Run the Kubernetes operator, or print its CustomResourceDefinitions."""


@command.command("crds")
@click.option("--output-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Write one YAML file per CRD here instead of printing them.")
def crds(output_dir: Path | None) -> None:
    """Print the InferenceCluster and InferenceTask CRDs (or write them with --output-dir)."""
    from legacygpu.operator.crdgen import render_all, write_crds

    if output_dir is None:
        click.echo(render_all(), nl=False)
        return
    for path in write_crds(output_dir):
        click.echo(f"wrote {path}")


@command.command("rbac")
@click.option("--namespace", default="legacygpu-system", show_default=True,
              help="Namespace of the operator (its ServiceAccount and leader-election Lease).")
@click.option("--worker-namespace", "worker_namespaces", multiple=True,
              help="Namespace where workers run (repeatable); default: the operator's.")
def rbac(namespace: str, worker_namespaces: tuple[str, ...]) -> None:
    """Print the ServiceAccounts, roles and bindings the operator and the workers need."""
    import yaml

    from legacygpu.operator.rbac import rbac_manifests

    docs = rbac_manifests(namespace=namespace, worker_namespaces=list(worker_namespaces) or None)
    click.echo(yaml.safe_dump_all(docs, sort_keys=False), nl=False)


def _namespaces(_: click.Context, __: click.Parameter, values: tuple[str, ...]) -> tuple[str, ...]:
    """The served namespaces, split at commas and stripped; a name that is no namespace's is refused."""
    from legacygpu.operator.config import namespace_problem

    served = tuple(ns for item in values for ns in (part.strip() for part in item.split(",")) if ns)
    for namespace in served:
        if (problem := namespace_problem(namespace)) is not None:
            raise click.BadParameter(problem)
    return served


@command.command("run")
@click.option("--namespace", "namespaces", multiple=True, envvar="LEGACYGPU_OPERATOR_NAMESPACES",
              callback=_namespaces,
              help="Namespace to serve (repeatable; comma-separated in the variable; names, not patterns); "
              "default: all.")
@click.option("--server", envvar="LEGACYGPU_OPERATOR_SERVER", default=None,
              help="API server URL; default: in-cluster credentials, else the kubeconfig.")
@click.option("--token", envvar="LEGACYGPU_OPERATOR_TOKEN", default=None, help="Bearer token for --server.")
@click.option("--insecure", is_flag=True, envvar="LEGACYGPU_OPERATOR_INSECURE",
              help="Do not verify the --server certificate.")
@click.option("--kubeconfig", envvar="KUBECONFIG", default=None, help="Kubeconfig file (without --server).")
@click.option("--context", default=None, help="Kubeconfig context.")
@click.option("--worker-image", envvar="LEGACYGPU_OPERATOR_WORKER_IMAGE", default="legacygpu/worker:0.1.0",
              show_default=True, help="Image of worker pods when the cluster's spec.image is unset.")
@click.option("--worker-service-account", envvar="LEGACYGPU_OPERATOR_WORKER_SERVICE_ACCOUNT",
              default="legacygpu-worker", show_default=True,
              help="ServiceAccount of worker pods when the cluster's spec.serviceAccountName is unset.")
@click.option("--metrics-port", envvar="LEGACYGPU_OPERATOR_METRICS_PORT", type=click.IntRange(0, 65535),
              default=8080, show_default=True, help="Port of /metrics; 0 picks a free one.")
@click.option("--no-metrics", is_flag=True, help="Serve no /metrics.")
@click.option("--leader-elect/--no-leader-elect", envvar="LEGACYGPU_OPERATOR_LEADER_ELECT", default=False,
              show_default=True, help="Run as one of several replicas: only the Lease holder acts.")
@click.option("--lease-namespace", envvar="LEGACYGPU_OPERATOR_LEASE_NAMESPACE", default="default",
              show_default=True, help="Namespace of the leader-election Lease (the operator's own).")
@click.option("--lease-name", default="legacygpu-operator", show_default=True, help="Name of the Lease.")
@click.option("--identity", envvar="POD_NAME", default=None,
              help="This replica's name in the Lease; default: the host name.")
@click.option("--finished-task-ttl", envvar="LEGACYGPU_OPERATOR_FINISHED_TASK_TTL", type=click.IntRange(min=-1),
              default=3600, show_default=True, metavar="SECONDS",
              help="Delete finished tasks this long after they end unless their spec.ttlSecondsAfterFinished "
              "says otherwise; -1 keeps them.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True, help="Logging verbosity.")
def run(
    namespaces: tuple[str, ...],
    server: str | None,
    token: str | None,
    insecure: bool,
    kubeconfig: str | None,
    context: str | None,
    worker_image: str,
    worker_service_account: str,
    metrics_port: int,
    no_metrics: bool,
    leader_elect: bool,
    lease_namespace: str,
    lease_name: str,
    identity: str | None,
    finished_task_ttl: int,
    log_level: str,
) -> None:
    """Reconcile InferenceClusters and InferenceTasks until SIGTERM/SIGINT."""
    from legacygpu.core.kube.client import load_configuration
    from legacygpu.operator.app import run_operator
    from legacygpu.operator.config import OperatorConfig
    from legacygpu.operator.errors import LeadershipLostError

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    extra = {"identity": identity} if identity else {}
    config = OperatorConfig(
        namespaces=namespaces,
        worker_image=worker_image,
        worker_service_account=worker_service_account,
        metrics_port=None if no_metrics else metrics_port,
        leader_election=leader_elect,
        lease_namespace=lease_namespace,
        lease_name=lease_name,
        finished_task_ttl_seconds=None if finished_task_ttl < 0 else finished_task_ttl,
        **extra,
    )
    try:
        configuration = load_configuration(
            server=server, kubeconfig=kubeconfig, context=context, token=token, insecure=insecure
        )
    except Exception as exc:  # the kubernetes config loaders raise several unrelated types
        raise click.ClickException(f"cannot load Kubernetes credentials: {exc}") from exc

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run_operator(config, configuration, stop=stop)

    try:
        asyncio.run(main())
    except LeadershipLostError as exc:  # exit 1 without a traceback: the pod restarts as a standby
        raise click.ClickException(str(exc)) from exc
