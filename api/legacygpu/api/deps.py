"""FastAPI dependencies: the backend in use, the settings (limits) in force and the bearer-token check."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from legacygpu.api.backends.base import ClusterBackend
from legacygpu.core.config import Settings

__all__ = ["Authorized", "BackendDep", "SettingsDep", "token_matches"]

_bearer = HTTPBearer(auto_error=False, description="The cluster's API token (see `legacygpu cluster start`).")


def get_backend(request: Request) -> ClusterBackend:
    return request.app.state.backend  # type: ignore[no-any-return]


def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def token_matches(request_token: str | None, expected: str) -> bool:
    return request_token is not None and secrets.compare_digest(request_token.encode(), expected.encode())


def require_token(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    if credentials is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing bearer token: send 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not token_matches(credentials.credentials, request.app.state.token):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid token", headers={"WWW-Authenticate": "Bearer"})


BackendDep = Annotated[ClusterBackend, Depends(get_backend)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
Authorized = Depends(require_token)
