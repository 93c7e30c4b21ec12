"""The web page at `/`: static files from `static/`, served by the app itself.

The page talks only to runner's public API (same origin), so the API key, Origin and Host
rules apply to it unchanged. Without a bearer token a browser cannot fetch a page it
navigates to, so `/` and `/ui/*` are open (they hold no data); the page then asks for the
key and sends it on every API call. A strict Content-Security-Policy keeps the page from
loading or talking to anything but this server, and blunts any markup a model might emit.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

STATIC_DIR = Path(__file__).parent / "static"
UI_PREFIX = "/ui"

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


class UiFiles(StaticFiles):
    """The page's assets, revalidated on every load (a 304 when unchanged) so that a browser
    never mixes a cached script from an older runner with a newer page. Each carries the
    page's security headers: `/ui/index.html` is the page too, and must not run without
    its policy."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(SECURITY_HEADERS)
        return response


def install_ui(app: FastAPI, api_key_required: bool) -> None:
    """Serve the page at `/` and its assets under `/ui/`."""
    template = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    # Tells the page to ask for the key before its first call (instead of failing with 401s).
    page = template.replace("{{auth}}", "required" if api_key_required else "none")

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers=SECURITY_HEADERS)

    app.mount(UI_PREFIX, UiFiles(directory=STATIC_DIR), name="ui")
