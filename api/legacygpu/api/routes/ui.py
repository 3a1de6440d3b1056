"""``/ui``: the dashboard, a static page that talks to the REST API and the event stream.

The page itself is public (it holds no data); it reads the token from the
URL fragment (``/ui#token=...``, never sent to the server) or asks for it,
and then uses it for every API call. Its Content-Security-Policy allows
nothing but this origin: the page loads no external resource, and a script
injected through data it shows could not send the token elsewhere.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse

__all__ = ["CONTENT_SECURITY_POLICY", "STATIC_DIR", "router"]

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'"
)

router = APIRouter(tags=["ui"], include_in_schema=False)


@router.get("/")
async def root() -> RedirectResponse:
    return RedirectResponse("/ui")


@router.get("/ui")
async def dashboard() -> FileResponse:
    headers = {
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=headers)
