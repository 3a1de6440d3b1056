"""``legacygpu task``: submit, follow, list and cancel inference tasks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from legacygpu.cli import follow
from legacygpu.cli.client import ApiClient, CliError, api_options, make_client
from legacygpu.cli.output import Column, emit, output_option
from legacygpu.core.errors import ValidationError
from legacygpu.core.inputfiles import read_input_file

__all__ = ["command", "read_inputs"]

TASK_COLUMNS: list[Column] = [
    ("ID", lambda t: t["id"]),
    ("MODEL", lambda t: t["model"]),
    ("PHASE", lambda t: t["phase"]),
    ("REASON", lambda t: t.get("reason")),
    ("WORKER", lambda t: t.get("worker_id")),
    ("ATTEMPTS", lambda t: t.get("attempts")),
    ("LATENCY_MS", lambda t: None if t.get("latency_ms") is None else f"{t['latency_ms']:.1f}"),
    ("CREATED", lambda t: t["created_at"][:19]),
]


def _model_inputs(client: ApiClient, model: str) -> list[dict[str, Any]]:
    models = {m["name"]: m for m in client.get("/cluster/models")["data"]}
    if model not in models:
        known = ", ".join(sorted(models)) or "none"
        raise CliError(f"unknown model {model!r} (models: {known}); add one with `legacygpu model add`")
    return models[model]["inputs"]


def read_inputs(path: Path, input_name: str | None, model_inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Request tensors from an image file, a ``.npy`` array or a JSON tensor file (:mod:`legacygpu.core.inputfiles`)."""
    image_inputs = [spec["name"] for spec in model_inputs if spec.get("image")]
    tensor_input = input_name or (model_inputs[0]["name"] if model_inputs else "input")
    try:
        return read_input_file(str(path), path.read_bytes(), tensor_input=tensor_input,
                               image_input=input_name or (image_inputs[0] if image_inputs else None))
    except ValidationError as exc:
        raise CliError(str(exc)) from exc


def _show_phase(task: dict[str, Any]) -> None:
    click.echo(f"  {task['phase']:<10} {task.get('message') or ''}", err=True)


def _describe(task: dict[str, Any]) -> str:
    failed = task["phase"] != "Succeeded" and task.get("reason")
    lines = [f"task {task['id']}: {task['phase']}" + (f" ({task['reason']}: {task['message']})" if failed else "")]
    result = task.get("result") or {}
    if result.get("top_k"):
        lines.append("top classes:")
        lines += [f"  {entry['label']:<12} {entry['score']:.4f}" for entry in result["top_k"]]
    for output in result.get("outputs", []):
        preview = output["data"][:8]
        lines.append(f"output {output['name']} {output['datatype']}{output['shape']}: {preview}")
    if task.get("latency_ms") is not None:
        lines.append(f"latency {task['latency_ms']:.1f} ms, attempts {task['attempts']}, "
                     f"worker {task['worker_id'] or '-'}")
    return "\n".join(lines)


@click.group()
def command() -> None:
    """Submit, follow, list and cancel inference tasks."""


@command.command("submit")
@click.option("--model", "-m", required=True, help="Model name (see `legacygpu model list`).")
@click.option("--input", "-i", "input_paths", required=True, multiple=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="An image (png/jpg/...), a .npy array or a .json tensor. Repeat it for one task per input, "
                   "all sent in one request (POST /cluster/tasks/submit-many: all accepted or none).")
@click.option("--input-name", help="Model input to feed (default: the model's first image or first input).")
@click.option("--priority", type=int, default=0, show_default=True, help="Higher runs first.")
@click.option("--timeout", "timeout_seconds", type=click.IntRange(min=1), help="Fail after this many seconds.")
@click.option("--max-retries", type=click.IntRange(min=0), help="Retries after a lost worker.")
@click.option("--min-vram", "min_vram_mib", type=click.IntRange(min=0), default=0, help="Minimum device MiB.")
@click.option("--gpu-family", help="Only run on this GPU family (e.g. polaris).")
@click.option("--wait", "-w", is_flag=True, help="Follow the task(s) and print the result(s).")
@output_option
@api_options
def submit(model: str, input_paths: tuple[Path, ...], input_name: str | None, priority: int,
           timeout_seconds: int | None, max_retries: int | None, min_vram_mib: int, gpu_family: str | None,
           wait: bool, output: str, api: str | None, token: str | None) -> None:
    """Submit a task (or one per --input); with --wait, follow them to the end and print the results.

    With --wait, exits 1 unless every task succeeded.
    """
    client = make_client(api, token)
    model_inputs = _model_inputs(client, model)
    bodies = []
    for path in input_paths:
        body: dict[str, Any] = {
            "model": model,
            "inputs": read_inputs(path, input_name, model_inputs),
            "priority": priority,
            "requirements": {"min_vram_mib": min_vram_mib, "gpu_family": gpu_family},
        }
        if timeout_seconds is not None:
            body["timeout_seconds"] = timeout_seconds
        if max_retries is not None:
            body["max_retries"] = max_retries
        bodies.append(body)
    if not wait:
        submitted = _submit(client, bodies)
        emit(submitted[0] if len(submitted) == 1 else submitted, output, TASK_COLUMNS)
        return
    with follow.open_events(client) as stream:  # subscribed before submitting: no change goes unseen
        submitted = _submit(client, bodies)
        if output != "json":
            click.echo("submitted " + ", ".join(t["id"] for t in submitted), err=True)
        on_change = _show_phase if output != "json" and len(submitted) == 1 else None
        # The stream follows one task; with several, the later ones are read by polling after the first.
        finished = [follow.follow(client, task["id"], stream if i == 0 else None, on_change=on_change)
                    for i, task in enumerate(submitted)]
    if output == "json":
        emit(finished[0] if len(finished) == 1 else finished, "json")
    else:
        click.echo("\n".join(_describe(task) for task in finished))
    if any(task["phase"] != "Succeeded" for task in finished):
        raise SystemExit(1)


def _submit(client: ApiClient, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The submitted tasks: one through ``/submit``, several in one request to ``/submit-many``."""
    if len(bodies) == 1:
        return [client.post("/cluster/tasks/submit", json=bodies[0])]
    return list(client.post("/cluster/tasks/submit-many", json={"tasks": bodies})["data"])


@command.command("status")
@click.argument("task_id")
@output_option
@api_options
def status(task_id: str, output: str, api: str | None, token: str | None) -> None:
    """Phase, reason, attempts and timings of a task."""
    emit(make_client(api, token).get(f"/cluster/tasks/{task_id}/status"), output, TASK_COLUMNS)


@command.command("result")
@click.argument("task_id")
@output_option
@api_options
def result(task_id: str, output: str, api: str | None, token: str | None) -> None:
    """The result of a succeeded task; exits 1 (like ``submit --wait``) when the task did not succeed."""
    client = make_client(api, token)
    if output == "json":
        emit(client.get(f"/cluster/tasks/{task_id}/result"), "json")
        return
    task = client.get(f"/cluster/tasks/{task_id}")
    click.echo(_describe(task))
    if task["phase"] != "Succeeded":
        raise SystemExit(1)


@command.command("list")
@click.option("--phase", multiple=True, help="Only these phases (repeatable).")
@click.option("--worker", help="Only tasks of this worker id.")
@click.option("--model", help="Only tasks of this model.")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True,
              help="At most this many tasks (the newest).")
@output_option
@api_options
def list_tasks(phase: tuple[str, ...], worker: str | None, model: str | None, limit: int, output: str,
               api: str | None, token: str | None) -> None:
    """Tasks, newest first."""
    params: dict[str, Any] = {"limit": limit}
    if phase:
        params["phase"] = list(phase)
    if worker:
        params["worker"] = worker
    if model:
        params["model"] = model
    page = make_client(api, token).get("/cluster/tasks", params=params)
    emit(page if output == "json" else page["data"], output, TASK_COLUMNS)


@command.command("cancel")
@click.argument("task_id")
@output_option
@api_options
def cancel(task_id: str, output: str, api: str | None, token: str | None) -> None:
    """Cancel a task that has not finished."""
    emit(make_client(api, token).post(f"/cluster/tasks/{task_id}/cancel"), output, TASK_COLUMNS)
