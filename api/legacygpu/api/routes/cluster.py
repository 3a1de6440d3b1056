"""Cluster-wide endpoints: health (no token), models, the JSON summary and Prometheus metrics."""

from __future__ import annotations

import asyncio
from importlib.metadata import version
from typing import Any

from fastapi import APIRouter, Request, Response

from legacygpu.api.deps import Authorized, BackendDep
from legacygpu.api.errors import ERROR_RESPONSES
from legacygpu.api.metrics import CONTENT_TYPE
from legacygpu.api.schemas import HealthPublic, ModelsPublic

router = APIRouter(tags=["cluster"], responses=ERROR_RESPONSES)


@router.get("/cluster/health")
async def health(backend: BackendDep) -> HealthPublic:
    """Liveness and a one-line verdict; needs no token. It answers while the database is locked:
    `degraded` with no active worker, or while the database is locked or failing (`database` says which)."""
    # A backend with a database of its own (local) has health(), read on a connection of its own so it
    # answers while the database is locked; the others answer from their summary.
    probe = getattr(backend, "health", None)
    if probe is not None:
        state = await probe()
        active, database, message = state["workers_active"], state["database"], state["database_message"]
    else:
        summary = await backend.summary()
        active, database, message = summary["workers_by_state"].get("active", 0), None, None
    return HealthPublic(
        status="ok" if active and database in (None, "ok") else "degraded", backend=backend.name,
        workers_active=active, version=version("legacygpu"), database=database, database_message=message,
    )


@router.get("/cluster/models", dependencies=[Authorized])
async def list_models(backend: BackendDep) -> ModelsPublic:
    models = await backend.list_models()
    return ModelsPublic(data=models, count=len(models))


@router.get("/cluster/metrics", dependencies=[Authorized])
async def cluster_metrics(backend: BackendDep) -> dict[str, Any]:
    """Tasks by phase, workers by state, throughput (last minute) and latency percentiles (last 5 minutes)."""
    return await backend.summary()


@router.get("/metrics", dependencies=[Authorized], include_in_schema=False)
async def prometheus_metrics(request: Request) -> Response:
    """Rendered on a thread: the gauges read the database, which must not block the event loop."""
    return Response(await asyncio.to_thread(request.app.state.metrics.render), media_type=CONTENT_TYPE)
