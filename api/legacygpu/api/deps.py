"""FastAPI dependencies: the backend in use, the settings (limits) in force and the credentials checks.

Two kinds of credential:

* the cluster's API token (``Authorized``): submit, read and cancel tasks,
  list workers and models, drain, register a worker;
* a worker's own token (:func:`require_worker`, :func:`check_worker_token`),
  issued in the registration reply: only it may heartbeat, claim, complete
  the worker's attempts or deregister it. The API token alone cannot forge
  another worker's result. The worker token is an HMAC of the worker id
  under a secret kept in the data dir (``worker-secret``, 0600), so it
  survives facade restarts without being stored anywhere.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from legacygpu.api.backends.base import ClusterBackend
from legacygpu.core.config import Settings

__all__ = [
    "Authorized",
    "BackendDep",
    "Credentials",
    "SettingsDep",
    "WorkerAuthorized",
    "check_worker_token",
    "token_matches",
    "worker_token",
]

_bearer = HTTPBearer(auto_error=False, description="The cluster's API token (see `legacygpu cluster start`).")


def get_backend(request: Request) -> ClusterBackend:
    return request.app.state.backend  # type: ignore[no-any-return]


def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def token_matches(request_token: str | None, expected: str) -> bool:
    return request_token is not None and secrets.compare_digest(request_token.encode(), expected.encode())


Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def worker_token(secret: bytes, worker_id: str) -> str:
    """The token a worker gets at registration: only it may act for ``worker_id``."""
    return "w-" + hmac.new(secret, f"worker:{worker_id}".encode(), hashlib.sha256).hexdigest()


def _missing() -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED,
        "missing bearer token: send 'Authorization: Bearer <token>'",
        headers={"WWW-Authenticate": "Bearer"},
    )


def require_token(request: Request, credentials: Credentials) -> None:
    if credentials is None:
        raise _missing()
    if not token_matches(credentials.credentials, request.app.state.token):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid token", headers={"WWW-Authenticate": "Bearer"})


def check_worker_token(request: Request, credentials: HTTPAuthorizationCredentials | None, worker_id: str) -> None:
    """401 unless the bearer token is ``worker_id``'s own; 403 (saying whose token it needs) for the API token."""
    if credentials is None:
        raise _missing()
    if token_matches(credentials.credentials, worker_token(request.app.state.worker_secret, worker_id)):
        return
    if token_matches(credentials.credentials, request.app.state.token):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"only worker {worker_id} may do this: send the token its registration reply returned, "
            "not the cluster's API token",
        )
    raise HTTPException(
        status.HTTP_401_UNAUTHORIZED, f"invalid token for worker {worker_id}", headers={"WWW-Authenticate": "Bearer"}
    )


def require_worker(request: Request, worker_id: str, credentials: Credentials) -> None:
    check_worker_token(request, credentials, worker_id)


BackendDep = Annotated[ClusterBackend, Depends(get_backend)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
Authorized = Depends(require_token)
WorkerAuthorized = Depends(require_worker)
"""For routes with a ``{worker_id}`` path parameter that only that worker may call."""
