"""The web app (``web/app``) served at ``/app/`` by the relay itself, on by default (``--no-app``).

The relay serves the app's build output (``web/app/dist``, made by ``npm run build`` there, or
``--app-dir``) as plain files with:

* caching: files whose name carries a content hash (``app-<hash>.js``, ``app-<hash>.css``) are
  immutable for a year; everything else (``index.html``, ``sw.js``, the manifest, the icon) is
  ``no-cache``: revalidated on every load (ETag), so a new build reaches browsers at once and the
  service worker picks up the new hashed names;
* a strict Content-Security-Policy: scripts, styles, images, workers and connections from this
  origin only, no inline script or style, no eval, no plugins, no framing, and Trusted Types
  required for script sinks (so an ``innerHTML`` assignment throws instead of running markup);
* ``nosniff``, ``no-referrer`` and a same-origin opener policy.

Only names in the build directory are served (no subdirectories, no dot files); when the app has
not been built, ``/app/`` says how to build it (404).
"""

from __future__ import annotations

import re
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, PlainTextResponse, RedirectResponse, Response
from starlette.requests import Request

from relay.context import RelayContext

__all__ = ["CONTENT_SECURITY_POLICY", "WebAppExtension", "default_app_dir"]

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "worker-src 'self'",
        "manifest-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
        "object-src 'none'",
        "require-trusted-types-for 'script'",
        "trusted-types quickslot-sw",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_HASHED = re.compile(r"-[0-9a-f]{8,}\.[a-z]+$")
_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".webmanifest": "application/manifest+json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".json": "application/json",
}


def default_app_dir() -> Path:
    """``web/app/dist`` of the checkout this module lives in (found upwards, so it survives the
    relay package's layout)."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "web" / "app").is_dir():
            return parent / "web" / "app" / "dist"
    return here.parents[1] / "web" / "app" / "dist"


def cache_control(name: str) -> str:
    """Hashed assets are immutable; everything else is revalidated on each load."""
    return IMMUTABLE if _HASHED.search(name) else REVALIDATE


class WebAppExtension:
    """Routes ``/app`` (redirect), ``/app/`` (index.html) and ``/app/<file>``."""

    name = "web-app"

    def __init__(self, app_dir: Path | None = None) -> None:
        self.app_dir = app_dir or default_app_dir()

    def _file(self, name: str, if_none_match: str | None = None) -> Response:
        path = self.app_dir / name
        if not _NAME.match(name) or not path.is_file():
            if name == "index.html":
                text = "The web app is not built: run `make app` (or `npm ci && npm run build` in web/app).\n"
            else:
                text = "not found\n"
            return PlainTextResponse(text, status_code=404, headers=SECURITY_HEADERS)
        headers = {**SECURITY_HEADERS, "Cache-Control": cache_control(name)}
        if name == "sw.js":
            headers["Service-Worker-Allowed"] = "/app/"
        media = _TYPES.get(path.suffix, "application/octet-stream")
        response = FileResponse(path, media_type=media, headers=headers, stat_result=path.stat())
        etag = response.headers.get("etag")
        if etag is not None and if_none_match is not None and etag in if_none_match:
            keep = {k: v for k, v in response.headers.items() if k in ("etag", "cache-control")}
            return Response(status_code=304, headers={**SECURITY_HEADERS, **keep})
        return response

    def install(self, app: FastAPI, ctx: RelayContext) -> None:
        @app.api_route("/app", methods=["GET", "HEAD"], include_in_schema=False)
        async def app_root() -> Response:
            return RedirectResponse("/app/", status_code=308)

        @app.api_route("/app/", methods=["GET", "HEAD"], include_in_schema=False)
        async def app_index(request: Request) -> Response:
            return self._file("index.html", request.headers.get("if-none-match"))

        @app.api_route("/app/{name}", methods=["GET", "HEAD"], include_in_schema=False)
        async def app_file(name: str, request: Request) -> Response:
            return self._file(name, request.headers.get("if-none-match"))

    async def start(self, ctx: RelayContext) -> None:
        return None

    async def stop(self, ctx: RelayContext) -> None:
        return None
