"""FastAPI dependencies: the backend in use, the settings (limits) in force and the credentials checks.

Four roles, each with its own bearer token (:class:`Role`):

* ``user`` (the cluster's API token, ``Authorized``): submit, read and
  cancel tasks, list workers and models;
* ``admin`` (the admin token, ``AdminAuthorized``): everything a user may,
  plus what changes the cluster: drain or remove a worker, add, remove,
  load or unload models;
* ``worker-join`` (the join token, ``JoinAuthorized``): register a worker,
  nothing else (the admin token registers too);
* ``worker`` (a worker's own token, :func:`require_worker`,
  :func:`check_worker_token`), issued in the registration reply: only it may
  heartbeat, report the worker's outcomes or deregister it; the facade
  presents it to the worker when it pushes tasks, so the worker knows the
  push is the facade's. No other token can forge a worker's result. The worker token is an HMAC of
  the worker id under a secret kept in the data dir (``worker-secret``,
  0600), so it survives facade restarts without being stored anywhere.

A token of the wrong role gets 403 naming the role the route needs and the
role the token has; an unknown or missing token gets 401. The facade keeps
the role tokens in ``app.state.tokens``; a role with no token configured
(``None``: Kubernetes mode without that Secret key) is refused everywhere.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.params import Depends as DependsParam
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import HTTPConnection

from legacygpu.api.backends.base import ClusterBackend
from legacygpu.core.config import Settings

__all__ = [
    "AdminAuthorized",
    "Authorized",
    "BackendDep",
    "Credentials",
    "JoinAuthorized",
    "Role",
    "SettingsDep",
    "WorkerAuthorized",
    "WorkerOrAdminAuthorized",
    "check_worker_token",
    "requires",
    "role_of",
    "token_matches",
    "worker_token",
]

_bearer = HTTPBearer(
    auto_error=False,
    description="A role's token: the API token (users), the admin token or the join token (workers registering); "
    "see `legacygpu cluster start`.",
)


class Role(enum.StrEnum):
    USER = "user"
    ADMIN = "admin"
    JOIN = "worker-join"
    WORKER = "worker"


_WHERE = {
    Role.USER: "the API token: LEGACYGPU_API_TOKEN, or api-token in the cluster's data dir",
    Role.ADMIN: "the admin token: LEGACYGPU_ADMIN_TOKEN, or admin-token in the cluster's data dir",
    Role.JOIN: "the join token: LEGACYGPU_JOIN_TOKEN, or join-token in the cluster's data dir",
    Role.WORKER: "the worker's own token, from its registration reply",
}
"""Where each role's token comes from, for the 403 that asks for it."""


def get_backend(request: Request) -> ClusterBackend:
    return request.app.state.backend  # type: ignore[no-any-return]


def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def token_matches(request_token: str | None, expected: str | None) -> bool:
    return (
        request_token is not None and expected is not None
        and secrets.compare_digest(request_token.encode(), expected.encode())
    )


Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def worker_token(secret: bytes, worker_id: str) -> str:
    """The token a worker gets at registration: only it may act for ``worker_id``."""
    return "w-" + hmac.new(secret, f"worker:{worker_id}".encode(), hashlib.sha256).hexdigest()


def bearer_token(authorization: bytes) -> str | None:
    """The token of a raw ``Authorization: Bearer <token>`` header value (the ASGI paths that skip FastAPI's
    :class:`HTTPBearer`); None for another scheme."""
    scheme, _, credentials = authorization.decode("latin-1").partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" else None


def role_of(request: HTTPConnection, token: str | None, worker_id: str | None = None) -> Role | None:
    """The role ``token`` holds on this facade (``worker`` only as ``worker_id``'s own); None if none."""
    tokens: dict[Role, str | None] = request.app.state.tokens
    for role in (Role.ADMIN, Role.USER, Role.JOIN):
        if token_matches(token, tokens.get(role)):
            return role
    if worker_id is not None and token_matches(token, worker_token(request.app.state.worker_secret, worker_id)):
        return Role.WORKER
    return None


def _missing() -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED,
        "missing bearer token: send 'Authorization: Bearer <token>'",
        headers={"WWW-Authenticate": "Bearer"},
    )


def _check(
    request: Request, credentials: HTTPAuthorizationCredentials | None, allowed: tuple[Role, ...],
    worker_id: str | None = None,
) -> Role:
    """The caller's role if it is one of ``allowed``; else 401 (no or unknown token) or 403 (another role)."""
    if credentials is None:
        raise _missing()
    held = role_of(request, credentials.credentials, worker_id)
    if held in allowed:
        return held
    if held is None:
        whose = f" for worker {worker_id}" if worker_id and Role.WORKER in allowed else ""
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, f"invalid token{whose}", headers={"WWW-Authenticate": "Bearer"}
        )
    needed = allowed[0]
    if needed == Role.WORKER and worker_id:
        what = f"only worker {worker_id} may do this: send {_WHERE[Role.WORKER]}"
    else:
        what = f"this needs the {needed} role: send {_WHERE[needed]}"
    others = [str(role) for role in allowed[1:]]
    alternatives = f" (the {' or '.join(others)} role may too)" if others else ""
    raise HTTPException(status.HTTP_403_FORBIDDEN, f"{what}{alternatives}; the token sent has the {held} role")


def requires(*allowed: Role) -> DependsParam:
    """A route dependency admitting callers whose token holds one of ``allowed`` (the first is named in a 403).

    ``Role.WORKER`` means the worker named by the route's ``{worker_id}`` path parameter.
    """

    def dependency(request: Request, credentials: Credentials) -> None:
        _check(request, credentials, allowed, request.path_params.get("worker_id"))

    marker: DependsParam = Depends(dependency)
    return marker


def check_worker_token(request: Request, credentials: HTTPAuthorizationCredentials | None, worker_id: str) -> None:
    """401 unless the bearer token is ``worker_id``'s own; 403 (saying whose token it needs) for another role's."""
    _check(request, credentials, (Role.WORKER,), worker_id)


def require_worker(request: Request, worker_id: str, credentials: Credentials) -> None:
    check_worker_token(request, credentials, worker_id)


BackendDep = Annotated[ClusterBackend, Depends(get_backend)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
Authorized = requires(Role.USER, Role.ADMIN)
"""Users' routes: tasks, listings. The admin token works here too."""
AdminAuthorized = requires(Role.ADMIN)
"""Routes that change the cluster: drain or remove workers, models and the repository."""
JoinAuthorized = requires(Role.JOIN, Role.ADMIN)
"""Worker registration."""
WorkerAuthorized = Depends(require_worker)
"""For routes with a ``{worker_id}`` path parameter that only that worker may call."""
WorkerOrAdminAuthorized = requires(Role.WORKER, Role.ADMIN)
"""A worker leaving on its own, or an administrator removing it."""
