"""``legacygpu worker``: run a worker process, or drain one."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import click

from legacygpu.cli.client import admin_api_options, join_api_options, make_client, role_token
from legacygpu.cli.output import Column, emit, output_option
from legacygpu.core.allocator import keep_freed_memory
from legacygpu.core.config import CONCURRENT_RUNS_ENV, Settings

__all__ = ["command"]


@click.group()
def command() -> None:
    """Run a worker process, or drain one."""


@command.command("start")
@join_api_options
@click.option("--backend", type=click.Choice(["auto", "onnxruntime", "opencl"]), default="auto", show_default=True,
              help="auto: OpenCL on a GPU, onnxruntime on a CPU-only host.")
@click.option("--device-index", type=int, help="OpenCL device to use (see `legacygpu devices`).")
@click.option("--name", help="Worker name shown in listings (default host-pid).")
@click.option("--model-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Model repository (default: the one the facade announces).")
@click.option("--kubernetes", is_flag=True, help="Take tasks from InferenceTask objects instead of the facade "
              "(inside a worker pod; needs POD_NAME and POD_NAMESPACE).")
@click.option("--log-level", default="INFO", show_default=True, help="Logging verbosity (DEBUG, INFO, WARNING, ...).")
@click.option("--serving-host", envvar="LEGACYGPU_SERVING_HOST", show_envvar=True,
              help="Address of the OIP endpoints [default: 127.0.0.1; $POD_IP or 0.0.0.0 with --kubernetes].")
@click.option("--serving-port", type=int, envvar="LEGACYGPU_SERVING_PORT", show_envvar=True,
              help="REST port of the Open Inference Protocol [default: any free port; 8000 with --kubernetes].")
@click.option("--grpc-port", type=int, envvar="LEGACYGPU_GRPC_PORT", show_envvar=True,
              help="gRPC port of the Open Inference Protocol [default: any free port; 8001 with --kubernetes].")
@click.option("--concurrent-runs", type=click.IntRange(min=1), envvar=CONCURRENT_RUNS_ENV, show_envvar=True,
              help="Runs the onnxruntime backend takes at once [default: 2]; each holds its own activations, so 2 "
              "need about twice the peak activation memory of 1. The OpenCL backend runs one at a time.")
@click.option("--no-serving", is_flag=True, help="With --kubernetes: take tasks only, serve no real-time requests "
              "(a local worker receives its tasks on its serving port, so it always serves).")
def start(api: str | None, token: str | None, backend: str, device_index: int | None, name: str | None,
          model_dir: Path | None, kubernetes: bool, log_level: str, serving_host: str | None,
          serving_port: int | None, grpc_port: int | None, concurrent_runs: int | None, no_serving: bool) -> None:
    """Run a worker until it is drained or gets SIGTERM/SIGINT (it finishes its running task first).

    Unless --no-serving, the worker also answers the Open Inference Protocol (REST and gRPC) for
    real-time requests; it tells the facade where when it registers.
    """
    if no_serving and not kubernetes:
        raise click.UsageError("--no-serving is for --kubernetes workers: a local worker receives its tasks on its "
                               "serving port")
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    keep_freed_memory()  # the serving thread's /v2 bodies reuse the heap rather than fault in fresh pages
    if concurrent_runs is not None:  # create_backend reads it, whichever worker builds the backend
        os.environ[CONCURRENT_RUNS_ENV] = str(concurrent_runs)
    serving = None if no_serving else {
        # In a pod: the pod's own address when known (pods may share a host, as in the e2e stand-in).
        "host": serving_host or ((os.environ.get("POD_IP") or "0.0.0.0") if kubernetes else "127.0.0.1"),
        # Triton's ports: the pod's health port (8081) and the operator's metrics port (8080) stay free.
        "http_port": serving_port if serving_port is not None else (8000 if kubernetes else 0),
        "grpc_port": grpc_port if grpc_port is not None else (8001 if kubernetes else 0),
        "advertise_host": os.environ.get("POD_IP") if kubernetes else None,
    }
    if kubernetes:
        from kubernetes import client as kubernetes_client

        from legacygpu.core.kube.client import load_configuration
        from legacygpu.core.modelcards import ModelRepository
        from legacygpu.worker.backends import create_backend
        from legacygpu.worker.kube import run_kube_worker
        from legacygpu.worker.podsources import fetch_pod_sources
        from legacygpu.worker.runner import TaskRunner, preload_from_env
        from legacygpu.worker.serving.server import DRAIN_SECONDS

        runner = TaskRunner(ModelRepository(model_dir or Settings().models_dir), create_backend(backend, device_index))
        # The pod's readiness probe is /v2/health/ready: ready once the model sources are fetched, the
        # models loaded (below) and the task watch open, so a pod that may not read its tasks (RBAC) never
        # turns Ready. Serving starts first so that liveness holds during a long fetch.
        watching = threading.Event()
        server = _start_serving(lambda: runner, serving, readiness=watching.is_set) if serving else None
        namespace = os.environ.get("POD_NAMESPACE", "default")
        api_client = kubernetes_client.ApiClient(load_configuration())
        try:
            model_fetch = fetch_pod_sources(runner, api_client=api_client, namespace=namespace,
                                            pod=os.environ["POD_NAME"])
            preload_from_env(runner)
            run_kube_worker(
                pod_name=os.environ["POD_NAME"],
                namespace=namespace,
                backend=backend,
                model_dir=model_dir or Settings().models_dir,
                api_client=api_client,
                runner=runner,
                ready=watching,
                model_fetch=model_fetch,
                load=(lambda: server.engine.in_flight) if server is not None else None,
            )
        finally:
            if server is not None:  # the pod is no longer ready (the task loop left): drain, then close
                server.stop(drain_seconds=DRAIN_SECONDS)
        return
    from legacygpu.worker.local_worker import LocalWorker

    settings = Settings()
    worker = LocalWorker(
        api_url=api or settings.api_url,
        token=role_token("join", token, settings) or "",
        backend=backend,
        device_index=device_index,
        name=name,
        model_dir=model_dir,
    )

    def stop(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger(__name__).info("signal %d: finishing the running task, then leaving", signum)
        worker.stop_requested.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    assert serving is not None
    server = _start_serving(lambda: worker.runner, serving, routes=worker.routes())
    if server is not None:
        worker.serving = server.endpoints  # without them run() refuses to start: tasks arrive there
    try:
        code = worker.run()
    finally:
        if server is not None:
            server.stop()
    raise SystemExit(code)


def _start_serving(runner: Callable[[], Any], options: dict[str, Any],
                   readiness: Callable[[], bool] | None = None, routes: list[Any] | None = None) -> Any:
    """Start the worker's Open Inference Protocol endpoints (a ServingServer) for ``runner()``, with ``routes``
    added (a local worker's task channel).

    Returns None, having logged why, when they cannot start (a port taken): a Kubernetes worker's task
    loop still runs; a local worker, whose tasks arrive there, exits.
    """
    from importlib.metadata import version

    from legacygpu.worker.serving import ServingEngine, ServingServer

    engine = ServingEngine(runner, server_version=version("legacygpu"), readiness=readiness)
    server = ServingServer(engine, host=options["host"], http_port=options["http_port"],
                           grpc_port=options["grpc_port"], advertise_host=options["advertise_host"],
                           routes=routes or ())
    try:
        server.start()
    except (OSError, RuntimeError) as exc:
        logging.getLogger(__name__).error("no real-time serving on this worker: %s", exc)
        return None
    return server


@command.command("stop")
@click.argument("worker_id")
@output_option
@admin_api_options
def stop_worker(worker_id: str, output: str, api: str | None, token: str | None) -> None:
    """Drain a worker: it finishes its running tasks, takes no new ones, and exits (needs the admin token)."""
    worker = make_client(api, token, role="admin").post(f"/cluster/workers/{worker_id}/drain")
    emit(worker, output, _WORKER_COLUMNS)


@command.command("remove")
@click.argument("worker_id")
@output_option
@admin_api_options
def remove_worker(worker_id: str, output: str, api: str | None, token: str | None) -> None:
    """Remove a worker now: whatever it holds goes back to the queue (needs the admin token).

    For a worker whose process is gone; a live one is better drained with `worker stop`.
    """
    worker = make_client(api, token, role="admin").request("DELETE", f"/cluster/workers/{worker_id}")
    emit(worker, output, _WORKER_COLUMNS)


_WORKER_COLUMNS: list[Column] = [
    ("ID", lambda w: w["id"]), ("NAME", lambda w: w["name"]), ("STATE", lambda w: w["state"]),
]
