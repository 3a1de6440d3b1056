"""``legacygpu worker``: run a worker process, or drain one."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from types import FrameType

import click

from legacygpu.cli.client import api_options, make_client
from legacygpu.cli.output import emit, output_option
from legacygpu.core.config import Settings, read_token

__all__ = ["command"]


@click.group()
def command() -> None:
    """Run a worker process, or drain one."""


@command.command("start")
@api_options
@click.option("--backend", type=click.Choice(["auto", "onnxruntime", "opencl"]), default="auto", show_default=True,
              help="auto: OpenCL on a GPU, onnxruntime on a CPU-only host.")
@click.option("--device-index", type=int, help="OpenCL device to use (see `legacygpu devices`).")
@click.option("--name", help="Worker name shown in listings (default host-pid).")
@click.option("--model-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Model repository (default: the one the facade announces).")
@click.option("--kubernetes", is_flag=True, help="Take tasks from InferenceTask objects instead of the facade "
              "(inside a worker pod; needs POD_NAME and POD_NAMESPACE).")
@click.option("--log-level", default="INFO", show_default=True, help="Logging verbosity (DEBUG, INFO, WARNING, ...).")
def start(api: str | None, token: str | None, backend: str, device_index: int | None, name: str | None,
          model_dir: Path | None, kubernetes: bool, log_level: str) -> None:
    """Run a worker until it is drained or gets SIGTERM/SIGINT (it finishes its running task first)."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if kubernetes:
        from legacygpu.worker.kube import run_kube_worker

        run_kube_worker(
            pod_name=os.environ["POD_NAME"],
            namespace=os.environ.get("POD_NAMESPACE", "default"),
            backend=backend,
            model_dir=model_dir or Settings().models_dir,
        )
        return
    from legacygpu.worker.agent import LocalWorker

    settings = Settings()
    worker = LocalWorker(
        api_url=api or settings.api_url,
        token=token or settings.api_token or read_token(settings.data_dir) or "",
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
    raise SystemExit(worker.run())


@command.command("stop")
@click.argument("worker_id")
@output_option
@api_options
def stop_worker(worker_id: str, output: str, api: str | None, token: str | None) -> None:
    """Drain a worker: it finishes its running tasks, takes no new ones, and exits."""
    worker = make_client(api, token).post(f"/cluster/workers/{worker_id}/drain")
    emit(worker, output, [("ID", lambda w: w["id"]), ("NAME", lambda w: w["name"]), ("STATE", lambda w: w["state"])])
