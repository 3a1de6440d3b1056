"""``/v2/repository``: Triton's model repository extension on the facade, plus model upload.

=================================================  ===============================================
``POST /v2/repository/index``                      every stored version of every model, with its
                                                   state: ``READY`` when at least one worker has
                                                   it loaded (body ``{"ready": true}``: those only)
``POST /v2/repository/models/{m}/versions``        upload (multipart: ``model`` file, ``card``
                                                   YAML, ``sha256`` of the file, optional
                                                   ``version``): 201, a new version; the live one
                                                   keeps serving until the new one is loaded
``POST /v2/repository/models/{m}/load``            make a version live (body ``{"parameters":
                                                   {"version": "2"}}``, default the newest) and
                                                   load it on every worker: 200 once one has it
``POST /v2/repository/models/{m}/unload``          every worker drops it and refuses its
                                                   inferences until it is loaded again
=================================================  ===============================================

Errors are the protocol's ``{"error": ...}``: 400 for a bad upload (a sha256
that does not match names both hashes; nothing is stored), 404 for an
unknown model or version, 409 for a version stored already, 503 when no
worker serves, 501 for an upload to a Kubernetes-mode facade (it holds no
repository: workers read what the InferenceCluster names). The files live in the facade's model repository (the data
dir's ``models``, which local workers read; :mod:`legacygpu.core.modelversions`);
loading and unloading go to every worker's own repository endpoints
(:meth:`~legacygpu.api.forwarding.Forwarder.broadcast`). Files are written
off the event loop. Uploads are bounded by ``LEGACYGPU_MAX_REQUEST_BYTES``
like every request (8 MiB by default: raise it for bigger models).

Who may: listing (the index) takes the users' token or the admin token;
changing the repository (upload, load, unload) takes the admin token
(:data:`RepositoryAuthorized`, :mod:`legacygpu.api.deps`), else 403 naming it.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import yaml
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError as SchemaError
from starlette.datastructures import UploadFile

from legacygpu.api.deps import AdminAuthorized, Authorized
from legacygpu.api.forwarding import WorkerFailed, error_text, forwarder_for
from legacygpu.core.errors import ConflictError, LegacyGPUError, UnknownModelError, ValidationError
from legacygpu.core.modelcards import ModelCard, ModelRepository
from legacygpu.core.modelversions import ModelVersions

__all__ = ["RepositoryAuthorized", "router"]

RepositoryAuthorized = AdminAuthorized
"""Changing the model repository: the admin role."""

router = APIRouter(tags=["v2"])


def _error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _from_core(exc: LegacyGPUError) -> JSONResponse:
    if isinstance(exc, UnknownModelError):
        return _error(str(exc), 404)
    if isinstance(exc, ConflictError):
        return _error(str(exc), 409)
    if isinstance(exc, ValidationError):
        return _error(str(exc), 400)
    return _error(f"{type(exc).__name__}: {exc}", 500)


def _versions(request: Request) -> ModelVersions:
    return ModelVersions(ModelRepository(request.app.state.settings.models_dir))


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise ValidationError(f"the request body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ValidationError("the request body must be a JSON object")
    return body


@router.post("/v2/repository/index", dependencies=[Authorized])
async def repository_index(request: Request) -> JSONResponse:
    """Every version of every model, ``READY`` when at least one worker has it loaded."""
    try:
        only_ready = (await _json_body(request)).get("ready") is True
    except ValidationError as exc:
        return _from_core(exc)
    loaded: set[tuple[str, str]] = set()
    seen: set[tuple[str, str]] = set()  # in Kubernetes the workers' repositories are the only ones
    for _, answer in await forwarder_for(request.app).broadcast("POST", "/v2/repository/index"):
        if isinstance(answer, WorkerFailed) or answer.status_code != 200:
            continue
        for entry in json.loads(answer.content):
            key = (entry["name"], entry["version"])
            seen.add(key)
            if entry["state"] == "READY":
                loaded.add(key)
    versions = _versions(request)
    keys = {(name, v) for name in versions.names() for v in versions.versions(name)} | seen
    index = []
    for name, version in sorted(keys, key=lambda k: (k[0], int(k[1]) if k[1].isdigit() else 0)):
        if (name, version) in loaded:
            index.append({"name": name, "version": version, "state": "READY", "reason": ""})
        elif not only_ready:
            live = versions.live(name)
            reason = (f"stored; version {live} is live" if live is not None and live != version
                      else "not live: load it" if live is None else "not loaded on any worker")
            index.append({"name": name, "version": version, "state": "UNAVAILABLE", "reason": reason})
    return JSONResponse(index)


async def _field(form: Any, name: str) -> str | None:
    value = form.get(name)
    if isinstance(value, UploadFile):
        return (await value.read()).decode("utf-8", errors="replace")
    return value if isinstance(value, str) else None


@router.post("/v2/repository/models/{model}/versions", status_code=201, dependencies=[RepositoryAuthorized])
async def upload_model(request: Request, model: str) -> JSONResponse:
    """Store a new version of ``model``: its ONNX file and card, checked against the sha256 sent."""
    if request.app.state.settings.cluster_backend != "local":
        return _error("this facade holds no model repository: in Kubernetes the workers read the models the "
                      "InferenceCluster's spec.models names; uploads go to a local cluster's facade", 501)
    try:
        form = await request.form(max_files=2, max_fields=8)
    except Exception as exc:  # a body that is not multipart/form-data, or a malformed one
        return _error(f"the upload must be multipart/form-data with fields model, card and sha256: {exc}", 400)
    try:
        answer = await _store(request, model, form)
    finally:
        await form.close()
    return answer


async def _store(request: Request, model: str, form: Any) -> JSONResponse:
    upload = form.get("model")
    if not isinstance(upload, UploadFile):
        return _error("the upload needs the model file in the multipart field 'model'", 400)
    sha256, card_text = await _field(form, "sha256"), await _field(form, "card")
    if not sha256:
        return _error("the upload needs the model file's sha256 in the field 'sha256'", 400)
    if not card_text:
        return _error("the upload needs the model card (YAML) in the field 'card'", 400)
    try:
        raw = yaml.safe_load(card_text)
        if not isinstance(raw, dict):
            raise ValidationError("the card must be a YAML mapping")
        card = ModelCard.model_validate({**raw, "name": model})
    except yaml.YAMLError as exc:
        return _error(f"card: not YAML: {exc}", 400)
    except SchemaError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return _error(f"card: {problems}", 400)
    except ValidationError as exc:
        return _from_core(exc)
    data = await upload.read()
    try:
        version = await asyncio.to_thread(_versions(request).add, card, data, sha256=sha256,
                                          version=await _field(form, "version"))
    except LegacyGPUError as exc:
        return _from_core(exc)
    body = {"name": model, "version": version, "sha256": sha256.strip().lower(), "bytes": len(data),
            "state": "UNAVAILABLE", "reason": "uploaded: load it to serve it"}
    return JSONResponse(body, status_code=201)


@router.post("/v2/repository/models/{model}/load", dependencies=[RepositoryAuthorized])
async def load_model(request: Request, model: str) -> JSONResponse:
    """Make a stored version live (the newest unless the body names one) and load it on every worker."""
    try:
        parameters = (await _json_body(request)).get("parameters") or {}
        if not isinstance(parameters, dict):
            raise ValidationError("'parameters' must be a JSON object")
        if request.app.state.settings.cluster_backend == "local":  # the facade holds the repository
            versions = _versions(request)
            stored = versions.require(model)
            version = parameters.get("version", stored[-1])
            await asyncio.to_thread(versions.make_live, model, str(version))
    except LegacyGPUError as exc:
        return _from_core(exc)
    return await _everywhere(request, model, "load")


@router.post("/v2/repository/models/{model}/unload", dependencies=[RepositoryAuthorized])
async def unload_model(request: Request, model: str) -> JSONResponse:
    """Every worker drops the model and refuses its inferences until it is loaded again."""
    return await _everywhere(request, model, "unload")


async def _everywhere(request: Request, model: str, action: str) -> JSONResponse:
    """``action`` on every worker: 200 once one did it, else the workers' own error."""
    answers = await forwarder_for(request.app).broadcast("POST", f"/v2/repository/models/{model}/{action}")
    if not answers:
        return JSONResponse({"error": "no worker serves the Open Inference Protocol now"}, status_code=503,
                            headers={"Retry-After": "1"})
    failures: list[tuple[int, str]] = []
    for endpoint, answer in answers:
        if isinstance(answer, WorkerFailed):
            failures.append((503, str(answer)))
        elif answer.status_code != 200:
            failures.append((answer.status_code, f"{endpoint.name}: {error_text(answer)}"))
    if len(failures) < len(answers):
        return JSONResponse({})
    codes = {code for code, _ in failures}
    status = codes.pop() if len(codes) == 1 else 503
    return _error(f"no worker could {action} model {model!r}: " + "; ".join(m for _, m in failures), status)
