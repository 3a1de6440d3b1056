"""The FastAPI application: routes, error mapping, limits and lifecycle.

:func:`create_app` wires one cluster backend (local or Kubernetes, chosen by
``LEGACYGPU_CLUSTER_BACKEND``) behind the routers. Errors from the core's
exception tree become HTTP answers in :mod:`legacygpu.api.errors` and only
there; every route documents them. ``/docs`` and ``/redoc`` are served
with their assets from the ``fastapi-offline`` package, so they work with
no network.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import version

from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline

from legacygpu.api import grpcfacade, inferpath, taskpath
from legacygpu.api.backends.base import ClusterBackend
from legacygpu.api.deps import Role, worker_token
from legacygpu.api.errors import install_error_handlers
from legacygpu.api.limits import BodySizeLimit
from legacygpu.api.metrics import Metrics
from legacygpu.api.requestcount import RequestCounter
from legacygpu.api.routes import cluster, events, repository, tasks, ui, v2, workers
from legacygpu.core.config import (
    Settings,
    ensure_admin_token,
    ensure_join_token,
    ensure_token,
    ensure_worker_secret,
    secure_data_dir,
)

__all__ = ["create_app", "make_backend"]

log = logging.getLogger(__name__)


def _operation_id(route: APIRoute) -> str:
    return f"{route.tags[0]}-{route.name}" if route.tags else route.name


def make_backend(settings: Settings, metrics: Metrics) -> ClusterBackend:
    """The backend ``settings`` ask for."""
    if settings.cluster_backend == "kubernetes":
        from legacygpu.api.backends.kubernetes import KubernetesBackend  # the operator extra

        return KubernetesBackend(settings, metrics=metrics)  # type: ignore[no-any-return]
    from legacygpu.api.backends.local import LocalBackend

    return LocalBackend(settings, metrics=metrics)


def create_app(settings: Settings | None = None, *, backend: ClusterBackend | None = None,
               grpc_address: str | None = None) -> FastAPI:
    """The facade for ``settings``; pass ``backend`` to use one built elsewhere.

    With ``grpc_address`` (``host:port``) the app's lifespan also serves the Open Inference Protocol
    over gRPC there (:mod:`legacygpu.api.grpcfacade`); ``api serve`` passes it, tests of the REST
    app alone do not, so they bind nothing.
    """
    settings = settings or Settings()
    metrics = getattr(backend, "metrics", None) or Metrics()
    backend = backend or make_backend(settings, metrics)
    snapshot = getattr(backend, "snapshot", None)
    if snapshot is not None:
        metrics.watch(snapshot)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await backend.start()
        connect_workers = getattr(backend, "connect_workers", None)
        channel = None
        if connect_workers is not None:  # local mode: tasks are pushed to the workers' serving ports
            from legacygpu.api.backends.local.channel import HttpChannel

            channel = HttpChannel(lambda worker_id: worker_token(app.state.worker_secret, worker_id))
            connect_workers(channel)
        if local:
            secure_data_dir(settings.data_dir)  # again: starting may have created the database and its WAL
        if grpc_address is not None:
            await grpcfacade.start(app, grpc_address, max_request_bytes=settings.max_request_bytes)
        try:
            yield
        finally:
            await grpcfacade.stop(app)
            await v2.close(app)
            await backend.stop()
            if channel is not None:
                await channel.close()

    local = settings.cluster_backend == "local"  # in Kubernetes the data dir may be read-only and holds nothing
    if local:
        secure_data_dir(settings.data_dir)
    app = FastAPIOffline(
        title="legacygpu",
        version=version("legacygpu"),
        description="Inference on legacy OpenCL GPUs. Every endpoint except `/cluster/health` needs "
        "`Authorization: Bearer <token>`: the API token for tasks and listings, the admin token for draining or "
        "removing workers and changing models, the join token to register a worker, a worker's own token for "
        "what that worker does. A token of another role gets 403 naming the role needed.",
        lifespan=lifespan,
        generate_unique_id_function=_operation_id,
    )
    app.state.settings = settings
    app.state.backend = backend
    app.state.metrics = metrics
    app.state.token = ensure_token(settings)
    # One token per role (see legacygpu.api.deps). In Kubernetes the admin token comes from the chart's Secret
    # (None: admin routes refused) and workers never register with the facade, so there is no join token.
    app.state.tokens = {
        Role.USER: app.state.token,
        Role.ADMIN: ensure_admin_token(settings) if local else settings.admin_token,
        Role.JOIN: ensure_join_token(settings) if local else settings.join_token,
    }
    # Worker tokens matter where workers register over HTTP (local); elsewhere a per-process key will do.
    app.state.worker_secret = ensure_worker_secret(settings) if local else secrets.token_bytes(32)

    for router in (cluster.router, workers.router, tasks.router, events.router, ui.router, v2.router,
                   repository.router):
        app.include_router(router)
    app.mount("/ui/static", StaticFiles(directory=ui.STATIC_DIR), name="ui-static")
    taskpath.install(app)  # task submissions and worker reports past FastAPI's routing; inside the limit and counter
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)

    install_error_handlers(app)
    app.add_middleware(RequestCounter, counter=metrics.http_requests)  # outermost: sees every answer past InferPath
    # /v2 inference in front of all the middleware, FastAPI's own included: the stack is built here rather than at
    # the first request, so add_middleware after this line raises, and an exception handler added later is not
    # used (both belong above). InferPath counts its own answers with a
    # RequestCounter too, and leaves to the stack what the body-size limit must see.
    app.middleware_stack = inferpath.InferPath(app, app.build_middleware_stack(), max_bytes=settings.max_request_bytes)

    return app
