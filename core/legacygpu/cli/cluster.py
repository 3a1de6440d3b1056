"""``legacygpu cluster``: start the embedded local cluster, stop it, and look at it."""

from __future__ import annotations

import logging
import os
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any

import click

from legacygpu.cli.client import CliError, api_options, make_client
from legacygpu.cli.output import Column, emit, output_option
from legacygpu.core.config import Settings, ensure_admin_token, ensure_join_token, ensure_token, secure_data_dir

__all__ = ["WORKER_COLUMNS", "command"]

WORKER_COLUMNS: list[Column] = [
    ("ID", lambda w: w["id"]),
    ("NAME", lambda w: w["name"]),
    ("STATE", lambda w: w["state"]),
    ("DEVICE", lambda w: f"{w['device']['name']} ({w['device']['type']})"),
    ("BACKEND", lambda w: w["device"]["backend"]),
    ("ASSIGNED", lambda w: w["assigned"]),
    ("DONE", lambda w: w["tasks_succeeded"]),
    ("FAILED", lambda w: w["tasks_failed"]),
    ("LATENCY_MS", lambda w: None if w["stats"].get("recent_latency_ms") is None
     else f"{w['stats']['recent_latency_ms']:.1f}"),
    ("PID", lambda w: w["pid"]),
]


@click.group()
def command() -> None:
    """Start, stop and inspect a cluster."""


def self_command() -> str:
    """How to run this same ``legacygpu`` from another terminal, whatever that terminal's PATH holds.

    ``make run`` starts ``.venv/bin/legacygpu`` without putting ``.venv/bin`` on
    PATH, so a bare ``legacygpu`` in the copy-paste example would not be found.
    """
    script = Path(sys.argv[0])
    if script.name == "legacygpu" and script.is_file():
        return shlex.quote(str(script.absolute()))
    beside = Path(sys.executable).parent / "legacygpu"  # run as `python -m legacygpu.cli` from a venv
    if beside.is_file():
        return shlex.quote(str(beside.absolute()))
    return f"{shlex.quote(sys.executable)} -m legacygpu.cli"


def _banner(url: str, token: str, data_dir: Path, sample: Path | None, admin_token: str = "",
            grpc: str | None = None) -> str:
    image = shlex.quote(str(sample or Path("examples/digits/digit-7.png")))
    api_flag = "" if url == Settings().api_url else f" --api {url}"  # the client's default finds only the default
    return "\n".join([
        "",
        f"legacygpu is running at {url}",
        f"  dashboard : {url}/ui#token={token}",
        f"  API docs  : {url}/docs",
        *([f"  gRPC      : {grpc}   (the Open Inference Protocol, as Triton's clients speak it)"] if grpc else []),
        f"  token     : {token}   (stored in {data_dir}/api-token)",
        f"  admin     : {admin_token}   (stored in {data_dir}/admin-token; drains workers, changes models)",
        f"  join      : workers register with {data_dir}/join-token",
        "",
        "Try it (in another terminal):",
        f"  {self_command()} task submit --model digits --input {image} --wait{api_flag}",
        f"  curl -s -H 'Authorization: Bearer {token}' {url}/cluster/workers",
        "",
        "Ctrl-C stops the cluster.",
    ])


@command.command("start")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address the facade listens on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535),
              help="TCP port the facade listens on.")
@click.option("--grpc-port", default=8001, show_default=True, type=click.IntRange(-1, 65535),
              help="TCP port of the facade's Open Inference Protocol over gRPC (-1: off); the workers take "
              "free ports of their own.")
@click.option("--workers", type=click.IntRange(min=1), help="Worker processes (default: one per OpenCL GPU, "
              "else one for the CPU).")
@click.option("--backend", type=click.Choice(["auto", "onnxruntime", "opencl"]), default="auto", show_default=True,
              help="Inference backend of every worker; auto: OpenCL on a GPU, onnxruntime on a CPU-only host.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Database, token, models and logs [env LEGACYGPU_DATA_DIR].")
def start(host: str, port: int, grpc_port: int, workers: int | None, backend: str, data_dir: Path | None) -> None:
    """Run the facade and its workers in the foreground, with the demo model loaded."""
    from legacygpu.cli.supervisor import Supervisor, local_devices
    from legacygpu.core.modelcards import ModelRepository
    from legacygpu.worker.demo import ensure_demo_model

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    settings = Settings(**({"data_dir": data_dir} if data_dir else {}))  # type: ignore[arg-type]
    secure_data_dir(settings.data_dir, umask=True)  # private to its owner: tasks' inputs and results live there
    token = ensure_token(settings)
    admin_token = ensure_admin_token(settings)
    join_token = ensure_join_token(settings)
    repository = ModelRepository(settings.models_dir)
    if "digits" not in repository.names():
        click.echo("training the demo digits model (first start only)...", err=True)
    card = ensure_demo_model(repository)
    click.echo(f"demo model 'digits': held-out accuracy {card.metrics.get('accuracy')}", err=True)
    devices, what = ([None] * workers, f"{workers} requested") if workers else local_devices()
    count = len(devices)
    click.echo(f"starting the facade and {count} worker(s) for {what}", err=True)
    supervisor = Supervisor(data_dir=settings.data_dir, host=host, port=port, devices=devices, token=token,
                            backend=backend, preload=(card.name,), join_token=join_token, grpc_port=grpc_port)
    signal.signal(signal.SIGINT, supervisor.request_stop)
    signal.signal(signal.SIGTERM, supervisor.request_stop)
    try:
        supervisor.start()
        ready = supervisor.wait_for_workers()
        click.echo(f"{ready}/{count} worker(s) registered", err=True)
        sample = Path("examples/digits/digit-7.png")
        click.echo(_banner(supervisor.url, token, settings.data_dir, sample.resolve() if sample.exists() else None,
                           admin_token, grpc=f"{host}:{grpc_port}" if grpc_port > 0 else None))
        supervisor.watch()
    except RuntimeError as exc:
        raise CliError(str(exc)) from exc
    finally:
        click.echo("stopping workers and the facade...", err=True)
        supervisor.shutdown()
        click.echo("stopped", err=True)


@command.command("stop")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Data dir the cluster was started with [env LEGACYGPU_DATA_DIR].")
@click.option("--timeout", type=float, default=60, show_default=True,
              help="Seconds to wait for every process to stop before giving up.")
def stop(data_dir: Path | None, timeout: float) -> None:
    """Stop a cluster started with `cluster start` from another terminal."""
    from legacygpu.cli.supervisor import PIDFILE

    settings = Settings(**({"data_dir": data_dir} if data_dir else {}))  # type: ignore[arg-type]
    pidfile = settings.data_dir / PIDFILE
    if not pidfile.exists():
        raise CliError(f"no cluster is running from {settings.data_dir}")
    pid = int(pidfile.read_text().strip())
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pidfile.unlink(missing_ok=True)
        raise CliError(f"the cluster (pid {pid}) was not running; removed its stale pidfile") from None
    deadline = time.monotonic() + timeout
    while pidfile.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    if pidfile.exists():
        raise CliError(f"the cluster (pid {pid}) did not stop within {timeout:.0f}s")
    click.echo("cluster stopped")


@command.command("status")
@output_option
@api_options
def status(output: str, api: str | None, token: str | None) -> None:
    """Health, workers by state, tasks by phase, throughput and latency."""
    client = make_client(api, token)
    health = client.get("/cluster/health")
    summary: dict[str, Any] = client.get("/cluster/metrics")
    if output == "json":
        emit({"health": health, **summary}, "json")
        return
    latency = summary["latency_ms"]
    lines = [
        f"cluster at {client.url}: {health['status']} ({health['backend']} backend, version {health['version']})",
        "workers: " + ", ".join(f"{k} {v}" for k, v in summary["workers_by_state"].items()),
        "tasks:   " + ", ".join(f"{k} {v}" for k, v in summary["tasks_by_phase"].items()),
        f"throughput (last minute): {summary['throughput_per_second']:.2f} tasks/s",
        "latency (last 5 min): " + ", ".join(f"{k} {'-' if v is None else f'{v:.1f} ms'}" for k, v in latency.items()),
    ]
    click.echo("\n".join(lines))


@command.group("workers")
def workers_group() -> None:
    """Workers of the cluster."""


@workers_group.command("list")
@output_option
@api_options
def list_workers(output: str, api: str | None, token: str | None) -> None:
    """Every worker the cluster knows, with its device and load."""
    page = make_client(api, token).get("/cluster/workers")
    emit(page if output == "json" else page["data"], output, WORKER_COLUMNS)
