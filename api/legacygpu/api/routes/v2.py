"""``/v2``: the Open Inference Protocol (REST), forwarded to the workers.

Health needs no token (probes); everything else needs the bearer token, which
Triton's clients send with ``headers={"Authorization": "Bearer ..."}``.
Metadata and inference are answered by a worker that serves the model
(:mod:`legacygpu.api.forwarding`); a model is ready when at least one worker
has it loaded (every worker is asked); so errors are the protocol's own
``{"error": ...}``: 400 naming the tensor for a wrong shape, datatype or a
missing input, 404 for an unknown model, 503 with ``Retry-After`` when the
model's queue is full or no worker serves.
"""

from __future__ import annotations

from importlib.metadata import version

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from legacygpu.api.deps import Authorized
from legacygpu.api.forwarding import Forwarder, NoWorker, forwarder_for

__all__ = ["close", "router"]

router = APIRouter(tags=["v2"])

_RETRY_AFTER_SECONDS = "1"


def _forwarder(request: Request) -> Forwarder:
    return forwarder_for(request.app)


async def close(app: FastAPI) -> None:
    """Close the connection pool, if one was opened."""
    forwarder: Forwarder | None = getattr(app.state, "forwarder", None)
    if forwarder is not None:
        await forwarder.close()


def _unavailable(exc: NoWorker) -> JSONResponse:
    return JSONResponse({"error": str(exc)}, status_code=503, headers={"Retry-After": _RETRY_AFTER_SECONDS})


async def _forward(request: Request, model: str, suffix: str) -> Response:
    version_part = f"/versions/{request.path_params['version']}" if "version" in request.path_params else ""
    path = f"/v2/models/{model}{version_part}{suffix}"
    try:
        answer = await _forwarder(request).forward(
            request.method, path, model=model, content=await request.body(), headers=request.headers
        )
    except NoWorker as exc:
        return _unavailable(exc)
    return Response(answer.content, status_code=answer.status_code, headers=answer.headers)


@router.get("/v2/health/live")
async def server_live() -> dict[str, bool]:
    """The facade answers."""
    return {"live": True}


@router.get("/v2/health/ready")
async def server_ready(request: Request) -> JSONResponse:
    """Ready when at least one worker serves the Open Inference Protocol."""
    ready = bool(await _forwarder(request).endpoints())
    return JSONResponse({"ready": ready}, status_code=200 if ready else 503)


@router.get("/v2", dependencies=[Authorized])
async def server_metadata() -> dict[str, object]:
    return {"name": "legacygpu", "version": version("legacygpu"), "extensions": ["binary_tensor_data"]}


@router.get("/v2/models/{model}", dependencies=[Authorized])
@router.get("/v2/models/{model}/versions/{version}", dependencies=[Authorized], name="model_version_metadata")
async def model_metadata(request: Request, model: str) -> Response:
    return await _forward(request, model, "")


@router.get("/v2/models/{model}/ready", dependencies=[Authorized])
@router.get("/v2/models/{model}/versions/{version}/ready", dependencies=[Authorized], name="model_version_ready")
async def model_ready(request: Request, model: str) -> JSONResponse:
    """Ready when at least one worker has the model loaded (see the repository extension's load)."""
    status, reason = await _forwarder(request).model_ready(model, request.path_params.get("version", ""))
    if status == 200:
        return JSONResponse({"name": model, "ready": True})
    return JSONResponse({"error": reason}, status_code=status)


@router.post("/v2/models/{model}/infer", dependencies=[Authorized])
@router.post("/v2/models/{model}/versions/{version}/infer", dependencies=[Authorized], name="model_version_infer")
async def model_infer(request: Request, model: str) -> Response:
    """Run one inference on a worker serving ``model`` (JSON, or JSON + binary tensor data)."""
    return await _forward(request, model, "/infer")
