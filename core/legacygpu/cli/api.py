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
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Database, token and models [env LEGACYGPU_DATA_DIR].")
@click.option("--backend", "cluster_backend", type=click.Choice(["local", "kubernetes"]),
              help="Where cluster state lives [env LEGACYGPU_CLUSTER_BACKEND; default local].")
@click.option("--log-level", default="info", show_default=True, help="uvicorn log level (debug, info, warning, ...).")
def serve(host: str, port: int, data_dir: Path | None, cluster_backend: str | None, log_level: str) -> None:
    """Serve /cluster/*, /ws/cluster/events, /ui and /metrics until interrupted."""
    import uvicorn

    from legacygpu.api import create_app
    from legacygpu.api.logredact import uvicorn_log_config
    from legacygpu.core.config import Settings, secure_data_dir

    overrides: dict[str, object] = {}
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    if cluster_backend is not None:
        overrides["cluster_backend"] = cluster_backend
    settings = Settings(**overrides)  # type: ignore[arg-type]
    if settings.cluster_backend == "local":  # in Kubernetes the data dir may be read-only and holds nothing
        secure_data_dir(settings.data_dir, umask=True)
    app = create_app(settings)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5,
                log_config=uvicorn_log_config())  # access lines without the ?token= a browser's WebSocket sends
