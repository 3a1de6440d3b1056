"""``legacygpu api serve``: the REST facade on its own (``cluster start`` runs it for you)."""

from __future__ import annotations

from pathlib import Path

import click

__all__ = ["command"]


@click.group()
def command() -> None:
    """Run the REST facade on its own."""


@command.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535),
              help="TCP port to listen on (0: any free port).")
@click.option("--grpc-port", type=click.IntRange(-1, 65535),
              help="TCP port of the Open Inference Protocol over gRPC (0: any free port, -1: off) "
              "[env LEGACYGPU_API_GRPC_PORT; default 8001].")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Database, token and models [env LEGACYGPU_DATA_DIR].")
@click.option("--backend", "cluster_backend", type=click.Choice(["local", "kubernetes"]),
              help="Where cluster state lives [env LEGACYGPU_CLUSTER_BACKEND; default local].")
@click.option("--log-level", default="info", show_default=True, help="uvicorn log level (debug, info, warning, ...).")
def serve(host: str, port: int, grpc_port: int | None, data_dir: Path | None, cluster_backend: str | None,
          log_level: str) -> None:
    """Serve /cluster/*, /v2, /ws/cluster/events, /ui and /metrics (and /v2 over gRPC) until interrupted."""
    import uvicorn

    from legacygpu.api import create_app
    from legacygpu.api.logredact import uvicorn_log_config
    from legacygpu.core.allocator import keep_freed_memory
    from legacygpu.core.config import Settings, secure_data_dir

    keep_freed_memory()  # large /v2 bodies reuse the heap rather than fault in fresh pages per request

    overrides: dict[str, object] = {}
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    if cluster_backend is not None:
        overrides["cluster_backend"] = cluster_backend
    if grpc_port is not None:
        overrides["api_grpc_port"] = grpc_port
    settings = Settings(**overrides)  # type: ignore[arg-type]
    if settings.cluster_backend == "local":  # in Kubernetes the data dir may be read-only and holds nothing
        secure_data_dir(settings.data_dir, umask=True)
    grpc_port = settings.api_grpc_port
    grpc_address = f"[{host}]:{grpc_port}" if ":" in host else f"{host}:{grpc_port}"
    app = create_app(settings, grpc_address=grpc_address if grpc_port >= 0 else None)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5,
                log_config=uvicorn_log_config())  # access lines without the ?token= a browser's WebSocket sends
