"""Errors as HTTP answers: one body shape, every status documented, nothing crashes the connection.

Every error the facade sends is ``{"detail": "<one sentence>"}``
(:class:`~legacygpu.api.schemas.ErrorPublic`), whatever raised it:

=============================  ====  ===========================================
an unreadable body              400  (not UTF-8; FastAPI's own check)
the core's ``ValidationError``  422  (``PayloadTooLargeError``: 413)
``NotFoundError``               404
``ConflictError``               409
``ModelError``                  422
``UnavailableError``            503
FastAPI's request validation    422  the pydantic errors joined into one sentence
``HTTPException``               its own code
SQLite locked, busy or full     503  with ``Retry-After``; the reason is logged
anything else                   500  logged with its traceback; the body says to look at the log
=============================  ====  ===========================================

:data:`ERROR_RESPONSES` documents these codes in the OpenAPI for every
route that can answer them, so a client generated from the schema (or a
schema fuzzer) knows every body it may get. Unexpected exceptions are turned
into a 500 answer here instead of propagating to the server, which would
otherwise close a keep-alive connection without saying so.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from legacygpu.api.schemas import ErrorPublic
from legacygpu.core.errors import (
    ConflictError,
    LegacyGPUError,
    ModelError,
    NotFoundError,
    PayloadTooLargeError,
    UnavailableError,
    ValidationError,
)

__all__ = [
    "ERROR_RESPONSES",
    "database_unavailable",
    "error_response",
    "install_error_handlers",
    "status_for",
    "unexpected_error",
]

log = logging.getLogger(__name__)

_STATUS: list[tuple[type[LegacyGPUError], int]] = [
    (PayloadTooLargeError, 413),
    (ValidationError, 422),
    (NotFoundError, 404),
    (ConflictError, 409),
    (ModelError, 422),
    (UnavailableError, 503),
]

_MEANING = {
    400: "The body could not be parsed at all (not UTF-8, or nested too deeply to read); send UTF-8 JSON.",
    401: "Missing or invalid bearer token.",
    403: "A valid token that may not do this (a worker's own calls need that worker's token).",
    404: "No such task, worker or model.",
    409: "The object's state does not allow this (the detail names the state).",
    413: "The request, a tensor, an image or `parameters`/`stats` is over a configured limit.",
    422: "The request is malformed or does not fit the model (the detail names the field).",
    500: "An unexpected error; the facade's log has the traceback.",
    503: "A service the facade depends on is unavailable; retry later.",
}

_FASTAPI_UNREADABLE_BODY = "There was an error parsing the body"

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorPublic, "description": meaning} for code, meaning in _MEANING.items()
}
"""Every error status with its body model, for ``APIRouter(responses=...)``."""


def status_for(exc: LegacyGPUError) -> int:
    return next((code for kind, code in _STATUS if isinstance(exc, kind)), 500)


def error_response(status_code: int, detail: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status_code, headers=headers)


RETRY_AFTER_SECONDS = 2
_UNAVAILABLE_DATABASE = ("locked", "busy", "full", "disk i/o error", "unable to open")


def database_unavailable(exc: BaseException) -> str | None:
    """Why the database cannot serve right now (locked by another process, disk full, ...), or None for a bug."""
    if isinstance(exc, sqlite3.OperationalError | sqlite3.DatabaseError):
        text = str(exc)
        if any(marker in text.lower() for marker in _UNAVAILABLE_DATABASE):
            return text
    return None


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error.get("loc", ()))
        parts.append(f"{where}: {error.get('msg', 'invalid')}" if where else str(error.get("msg", "invalid")))
    more = len(exc.errors()) - len(parts)
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def install_error_handlers(app: FastAPI) -> None:
    """Map every error to an :class:`ErrorPublic` answer."""

    @app.exception_handler(LegacyGPUError)
    async def _core_error(request: Request, exc: LegacyGPUError) -> JSONResponse:
        return error_response(status_for(exc), str(exc))

    @app.exception_handler(RequestValidationError)
    async def _request_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, _describe_validation(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = str(exc.detail)
        if exc.status_code == 400 and detail == _FASTAPI_UNREADABLE_BODY:
            detail = (
                "the request body could not be parsed (not UTF-8 text, or JSON nested too deeply to read); "
                "send UTF-8 JSON"
            )
        return error_response(exc.status_code, detail, headers=exc.headers)


async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    """The answer for an exception no handler knows: logged here, a 500 there, the connection kept.

    A database that is locked, busy or full is not a bug: that is a 503 with ``Retry-After``.
    """
    reason = database_unavailable(exc)
    if reason is not None:
        log.warning("database unavailable during %s %s: %s", request.method, request.url.path, reason)
        return error_response(
            503, f"the cluster database is unavailable ({reason}); retry shortly",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
    log.error("unhandled error in %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(
        500, f"internal error ({type(exc).__name__}); the facade's log (api.log) has the details"
    )
