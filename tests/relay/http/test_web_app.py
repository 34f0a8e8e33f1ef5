"""relay/http/web_app.py: the web app's files at /app/ with caching headers and a strict CSP, only
names in the build directory, and ``--no-app`` leaving /app/ out of the relay."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from relay.cli.parser import build_parser, config_from_args
from relay.http.app import create_app
from relay.http.web_app import CONTENT_SECURITY_POLICY, IMMUTABLE, WebAppExtension
from relay.ops.config import RelayConfig


class _Client:
    """Requests to an app with only the web app's routes, in process."""

    def __init__(self, dist: Path) -> None:
        self.app = FastAPI()
        WebAppExtension(dist).install(self.app, None)  # type: ignore[arg-type] # the routes need no context

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://relay") as c:
                return await c.request(method, path, **kw)

        return asyncio.run(go())

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.request("GET", path, **kw)

    def head(self, path: str) -> httpx.Response:
        return self.request("HEAD", path)


def _client(dist: Path) -> _Client:
    return _Client(dist)


def _dist(tmp_path: Path) -> Path:
    dist = tmp_path / "dist"
    dist.mkdir()
    (dist / "index.html").write_text("<!doctype html><title>x</title>")
    (dist / "app-0123456789ab.js").write_text("export {};")
    (dist / "sw.js").write_text("// worker")
    (dist / ".secret").write_text("no")
    return dist


def test_index_and_worker_revalidate_hashed_assets_are_immutable(tmp_path: Path) -> None:
    client = _client(_dist(tmp_path))
    index = client.get("/app/")
    assert index.status_code == 200 and index.headers["cache-control"] == "no-cache"
    assert index.headers["content-type"].startswith("text/html")
    assert index.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "'unsafe-inline'" not in CONTENT_SECURITY_POLICY and "script-src 'self'" in CONTENT_SECURITY_POLICY
    assert index.headers["x-content-type-options"] == "nosniff"
    again = client.get("/app/", headers={"if-none-match": index.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    script = client.get("/app/app-0123456789ab.js")
    assert script.headers["cache-control"] == IMMUTABLE
    assert script.headers["content-type"].startswith("text/javascript")
    worker = client.get("/app/sw.js")
    assert (
        worker.headers["cache-control"] == "no-cache" and worker.headers["service-worker-allowed"] == "/app/"
    )
    assert client.get("/app").headers["location"] == "/app/"
    assert client.head("/app/").status_code == 200


def test_only_names_in_the_build_directory_are_served(tmp_path: Path) -> None:
    client = _client(_dist(tmp_path))
    for path in ("/app/.secret", "/app/..%2Frelay.py", "/app/nope.js", "/app/%2Fetc%2Fpasswd"):
        assert client.get(path).status_code == 404, path
    missing = _client(tmp_path / "not-built").get("/app/")
    assert missing.status_code == 404 and "make app" in missing.text


def test_no_app_leaves_app_out(tmp_path: Path) -> None:
    args = build_parser().parse_args(["serve", "--data", str(tmp_path), "--no-app"])
    config = config_from_args(args)
    assert config.serve_app is False
    paths = {getattr(r, "path", "") for r in create_app(config).routes}
    assert "/app/" not in paths
    default = create_app(RelayConfig(data_dir=tmp_path))
    assert "/app/" in {getattr(r, "path", "") for r in default.routes}
