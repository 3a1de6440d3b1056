"""The CLI's HTTP client for the facade, and how its errors reach the user.

The URL and token come from ``--api``/``--token``, then ``LEGACYGPU_API_URL``
and ``LEGACYGPU_API_TOKEN``, then the token the local facade stored in the
data dir. HTTP errors become :class:`CliError` with the facade's own message
and an exit code per kind of failure.
"""

from __future__ import annotations

from typing import Any, ClassVar

import click
import httpx

from legacygpu.core.config import Settings, read_token

__all__ = ["ApiClient", "CliError", "api_options", "make_client", "normalize_url"]


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

    def __init__(self, url: str, token: str | None, timeout: float = 30.0) -> None:
        self.url = normalize_url(url)
        self.token = token
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
        if response.status_code == 401:
            raise Unauthorized(f"{detail} (set LEGACYGPU_API_TOKEN or pass --token)")
        if response.status_code == 404:
            raise NotFound(detail)
        raise CliError(f"{response.status_code}: {detail}")

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.request("POST", path, **kwargs)

    def close(self) -> None:
        self._http.close()


def make_client(api: str | None, token: str | None) -> ApiClient:
    settings = Settings()
    return ApiClient(api or settings.api_url, token or settings.api_token or read_token(settings.data_dir))


def api_options(func: Any) -> Any:
    """``--api`` and ``--token`` for every command that talks to a facade."""
    func = click.option("--token", envvar="LEGACYGPU_API_TOKEN", help="API token [env LEGACYGPU_API_TOKEN].")(func)
    func = click.option(
        "--api", "api", envvar="LEGACYGPU_API_URL", help="Facade URL [env LEGACYGPU_API_URL; default 127.0.0.1:8000]."
    )(func)
    return func
