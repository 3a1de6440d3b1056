"""The CLI's HTTP client for the facade, and how its errors reach the user.

The URL and token come from ``--api``/``--token``, then ``LEGACYGPU_API_URL``
and the role's variable, then the token the local facade stored in the data
dir. Commands act in one role (:data:`ROLES`): most as a user with the API
token (``LEGACYGPU_API_TOKEN``, ``api-token``), those that change the
cluster (draining a worker, models) as an administrator with the admin token
(``LEGACYGPU_ADMIN_TOKEN``, ``admin-token``), and a worker registers with
the join token (``LEGACYGPU_JOIN_TOKEN``, ``join-token``).

HTTP errors become :class:`CliError` with the facade's own message and an
exit code per kind of failure.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

import click
import httpx

from legacygpu.core.config import Settings, read_admin_token, read_join_token, read_token

__all__ = [
    "ROLES",
    "ApiClient",
    "CliError",
    "Role",
    "admin_api_options",
    "api_options",
    "join_api_options",
    "make_client",
    "normalize_url",
    "role_token",
]

Role = Literal["user", "admin", "join"]
ROLES: dict[str, tuple[str, str, Callable[[Path], str | None]]] = {
    "user": ("LEGACYGPU_API_TOKEN", "api_token", read_token),
    "admin": ("LEGACYGPU_ADMIN_TOKEN", "admin_token", read_admin_token),
    "join": ("LEGACYGPU_JOIN_TOKEN", "join_token", read_join_token),
}
"""Per role: the environment variable, the settings field and the reader of the file the local facade stored."""


class CliError(click.ClickException):
    """A failure the user can act on; ``exit_code`` tells scripts which kind."""

    exit_code: ClassVar[int] = 1


class NotFound(CliError):
    exit_code = 3


class Unreachable(CliError):
    exit_code = 4


class Unauthorized(CliError):
    exit_code = 5


def normalize_url(url: str) -> str:
    """``127.0.0.1:8000`` (as the help shows it) as ``http://127.0.0.1:8000``; no trailing slash."""
    url = url.strip().rstrip("/")
    return url if "://" in url else f"http://{url}"


class ApiClient:
    """Thin wrapper over httpx that turns HTTP errors into :class:`CliError`."""

    def __init__(self, url: str, token: str | None, timeout: float = 30.0, *, role: Role = "user") -> None:
        self.url = normalize_url(url)
        self.token = token
        self.role = role
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            why = str(exc).rstrip(".") or type(exc).__name__
            raise Unreachable(
                f"cannot reach the facade at {self.url} ({why}); is `legacygpu cluster start` running there? "
                "Pass its address with --api or LEGACYGPU_API_URL."
            ) from exc
        if response.is_success:
            return response.json() if response.content else None
        try:
            body = response.json()
            detail = body.get("detail", body.get("error", response.text))  # "error": the /v2 protocol
        except ValueError:
            detail = response.text
        if not isinstance(detail, str):
            detail = "; ".join(f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg')}" for d in detail)
        if response.status_code in (401, 403):
            raise Unauthorized(f"{detail} (set {ROLES[self.role][0]} or pass --token)")
        if response.status_code == 404:
            raise NotFound(detail)
        raise CliError(f"{response.status_code}: {detail}")

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.request("POST", path, **kwargs)

    def close(self) -> None:
        self._http.close()


def role_token(role: Role, token: str | None = None, settings: Settings | None = None) -> str | None:
    """``token`` if given, else the role's setting (environment), else the token the local facade stored."""
    settings = settings or Settings()
    _, field, read = ROLES[role]
    return token or getattr(settings, field) or read(settings.data_dir)


def make_client(api: str | None, token: str | None, *, role: Role = "user", timeout: float = 30.0) -> ApiClient:
    settings = Settings()
    return ApiClient(api or settings.api_url, role_token(role, token, settings), timeout, role=role)


def _options(role: Role) -> Callable[[Any], Any]:
    variable = ROLES[role][0]
    what = {"user": "API token", "admin": "Admin token", "join": "Join token (to register)"}[role]

    def decorate(func: Any) -> Any:
        func = click.option("--token", envvar=variable, help=f"{what} [env {variable}].")(func)
        return click.option(
            "--api", "api", envvar="LEGACYGPU_API_URL",
            help="Facade URL [env LEGACYGPU_API_URL; default 127.0.0.1:8000].",
        )(func)

    return decorate


api_options = _options("user")
"""``--api`` and ``--token`` (the API token) for every command that talks to a facade as a user."""
admin_api_options = _options("admin")
"""``--api`` and ``--token`` (the admin token) for commands that change the cluster."""
join_api_options = _options("join")
"""``--api`` and ``--token`` (the join token) for a worker registering."""
