"""The hooks the websocket layer relies on, with the app in-process (real SQLite, real files).

An extension registered through ``create_app(extensions=...)`` subscribes to the auth hooks the
way the sync websocket will, and the tests check each revocation path reaches it: refresh reuse,
logout, password reset, and operator CLI changes (a separate process) picked up by the poller.
Each runs on the SQLite store and on PostgreSQL (where changes also arrive by LISTEN/NOTIFY).
"""

from __future__ import annotations

import asyncio
import re
import subprocess
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from relay.auth.tokens import TokenExpired, TokenInvalid, TokenRevoked
from relay.context import RelayContext
from relay.http.app import create_app
from relay.ops.config import RateLimit, RateLimits, RelayConfig
from tests.support.eventually import eventually
from tests.support.relay_process import FAST_HASH_ARGS, PASSWORD, STORES, run_cli, store_args

BIG = RateLimit(10_000, 60)


class RecordingExtension:
    """Stands in for the websocket layer: records every hook call."""

    name = "recorder"

    def __init__(self) -> None:
        self.events: list[tuple[str, ...]] = []
        self.started = self.stopped = False

    def install(self, app: FastAPI, ctx: RelayContext) -> None:
        @app.get("/api/v1/recorder")
        async def recorder() -> dict[str, Any]:
            return {"events": len(self.events)}

    async def start(self, ctx: RelayContext) -> None:
        assert ctx.tokens and ctx.keys and ctx.epoch  # auth is open before extensions start
        ctx.hooks.on_family_revoked.append(lambda fam, uid: self.events.append(("family_revoked", fam, uid)))

        async def disabled(uid: str) -> None:  # async callbacks work too
            self.events.append(("user_disabled", uid))

        ctx.hooks.on_user_disabled.append(disabled)
        ctx.hooks.on_user_changed.append(lambda uid: self.events.append(("user_changed", uid)))
        self.started = True

    async def stop(self, ctx: RelayContext) -> None:
        self.stopped = True

    def of(self, kind: str) -> list[tuple[str, ...]]:
        return [e for e in self.events if e[0] == kind]


Env = tuple[RelayContext, httpx.AsyncClient, RecordingExtension]


@pytest.fixture(params=STORES)
def store_url(request: pytest.FixtureRequest) -> str | None:
    args = store_args(request, request.param)
    return args[1] if args else None


def cli(config: RelayConfig, *args: str) -> subprocess.CompletedProcess[str]:
    """The operator CLI against ``config``'s data directory and store."""
    store = ["--store", config.store_url] if config.store_url else []
    return run_cli(*args, *store, data_dir=config.data_dir)


@pytest.fixture
async def env(tmp_path: Path, store_url: str | None) -> AsyncIterator[Env]:
    config = RelayConfig(
        data_dir=tmp_path / "data",
        store_url=store_url,
        argon2_memory_kib=1024,
        argon2_iterations=1,
        argon2_lanes=1,
        events_poll_s=0.05,
        rate_limits=RateLimits(BIG, BIG, BIG, BIG, BIG),
    )
    recorder = RecordingExtension()
    app = create_app(config, extensions=[recorder])
    ctx: RelayContext = app.state.relay
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://relay") as client:
            yield ctx, client, recorder
    assert recorder.stopped


async def signup(client: httpx.AsyncClient, email: str) -> dict[str, Any]:
    r = await client.post(
        "/api/v1/auth/register", json={"email": email, "password": PASSWORD, "display_name": "U"}
    )
    assert r.status_code == 201, r.text
    user: dict[str, Any] = r.json()
    return user


async def signin(client: httpx.AsyncClient, email: str) -> dict[str, Any]:
    r = await client.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
    assert r.status_code == 200, r.text
    tokens: dict[str, Any] = r.json()
    return tokens


async def test_extension_is_installed_and_started(env: Env) -> None:
    ctx, client, recorder = env
    assert recorder.started
    assert (await client.get("/api/v1/recorder")).status_code == 200
    assert ctx.ready and not ctx.stopping.is_set()


async def test_refresh_reuse_fires_family_revoked(env: Env) -> None:
    ctx, client, recorder = env
    user = await signup(client, "reuse@example.com")
    tokens = await signin(client, "reuse@example.com")
    claims = ctx.tokens.verify_access(tokens["access_token"])
    assert claims.sub == user["id"] and claims.typ == "access"
    r = await client.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert r.status_code == 200
    r = await client.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert r.json()["code"] == "refresh_token_reused"
    assert recorder.of("family_revoked") == [("family_revoked", claims.fam, user["id"])]
    with pytest.raises(TokenRevoked):
        ctx.tokens.verify_access(tokens["access_token"])


async def test_logout_fires_family_revoked(env: Env) -> None:
    ctx, client, recorder = env
    user = await signup(client, "logout@example.com")
    tokens = await signin(client, "logout@example.com")
    fam = ctx.tokens.verify_access(tokens["access_token"]).fam
    r = await client.post(
        "/api/v1/auth/logout", headers={"Authorization": f"Bearer {tokens['access_token']}"}
    )
    assert r.status_code == 204
    assert recorder.of("family_revoked") == [("family_revoked", fam, user["id"])]


async def test_verify_access_distinguishes_failures(env: Env) -> None:
    ctx, client, _ = env
    await signup(client, "kinds@example.com")
    tokens = await signin(client, "kinds@example.com")
    with pytest.raises(TokenInvalid):
        ctx.tokens.verify_access(tokens["refresh_token"])
    with pytest.raises(TokenInvalid):
        ctx.tokens.verify_access("garbage")
    real_clock = ctx.tokens.clock
    ctx.tokens.clock = lambda: real_clock() + 31 * 60
    try:
        with pytest.raises(TokenExpired):
            ctx.tokens.verify_access(tokens["access_token"])
    finally:
        ctx.tokens.clock = real_clock


async def test_password_reset_revokes_every_family_and_expires(env: Env, tmp_path: Path) -> None:
    ctx, client, recorder = env
    user = await signup(client, "reset@example.com")
    sessions = [await signin(client, "reset@example.com") for _ in range(2)]
    families = {ctx.tokens.verify_access(s["access_token"]).fam for s in sessions}

    async def request_token() -> str:
        mail_dir = ctx.config.mail_dir
        before = set(mail_dir.glob("*.eml"))
        r = await client.post("/api/v1/auth/password-reset/request", json={"email": "reset@example.com"})
        assert r.status_code == 202
        await eventually(lambda: set(mail_dir.glob("*.eml")) - before)
        (path,) = set(mail_dir.glob("*.eml")) - before
        match = re.search(r"Reset token: (\S+)", path.read_text())
        assert match
        return match.group(1)

    # A token older than 30 minutes is refused.
    stale = await request_token()
    real_clock = ctx.accounts.clock
    ctx.accounts.clock = lambda: real_clock() + 31 * 60
    try:
        r = await client.post(
            "/api/v1/auth/password-reset/confirm", json={"token": stale, "new_password": "n" * 12}
        )
        assert r.json()["code"] == "invalid_reset_token"
    finally:
        ctx.accounts.clock = real_clock

    token = await request_token()
    r = await client.post(
        "/api/v1/auth/password-reset/confirm", json={"token": token, "new_password": "n" * 12}
    )
    assert r.status_code == 200
    assert {e[1] for e in recorder.of("family_revoked")} == families
    assert all(e[2] == user["id"] for e in recorder.of("family_revoked"))
    # Confirming one token spent the user's other outstanding token as well.
    r = await client.post(
        "/api/v1/auth/password-reset/confirm", json={"token": stale, "new_password": "m" * 12}
    )
    assert r.json()["code"] == "invalid_reset_token"


async def test_cli_disable_reaches_the_running_server(env: Env) -> None:
    ctx, client, recorder = env
    user = await signup(client, "victim@example.com")
    tokens = await signin(client, "victim@example.com")
    fam = ctx.tokens.verify_access(tokens["access_token"]).fam

    result = await asyncio.to_thread(cli, ctx.config, "user", "disable", "victim@example.com")
    assert result.returncode == 0, result.stderr
    await eventually(lambda: recorder.of("user_disabled"))
    assert recorder.of("user_disabled") == [("user_disabled", user["id"])]
    assert ("family_revoked", fam, user["id"]) in recorder.events
    with pytest.raises(TokenRevoked):
        ctx.tokens.verify_access(tokens["access_token"])

    grant = ("user", "grant", "victim@example.com", "--staff", "shop-9")
    result = await asyncio.to_thread(cli, ctx.config, *grant)
    assert result.returncode == 0, result.stderr
    await eventually(lambda: recorder.of("user_changed"))
    assert recorder.of("user_changed") == [("user_changed", user["id"])]

    # Re-enabling must reach the websocket layer too: its rights cache marked the user disabled
    # and only a user_changed makes it read the rights again (before the fix, the user stayed
    # without rights on the running relay until it restarted).
    result = await asyncio.to_thread(cli, ctx.config, "user", "enable", "victim@example.com")
    assert result.returncode == 0, result.stderr
    await eventually(lambda: len(recorder.of("user_changed")) == 2)
    assert ctx.tokens.revocations.is_user_disabled(user["id"]) is False


async def test_cli_user_add_admin_reaches_the_running_server(env: Env) -> None:
    """``user add --admin`` while the relay serves (the README's order) must reach the running
    server like a grant does; before, the new admin's every write was refused ``forbidden`` until
    a restart, because only grants announced a change."""
    ctx, _client, recorder = env
    add = ("user", "add", "boss@example.com", "--admin", "--password-stdin", *FAST_HASH_ARGS)
    store = ["--store", ctx.config.store_url] if ctx.config.store_url else []
    result = await asyncio.to_thread(run_cli, *add, *store, data_dir=ctx.config.data_dir, stdin=PASSWORD)
    assert result.returncode == 0, result.stderr
    await eventually(lambda: recorder.of("user_changed"))
    (event,) = recorder.of("user_changed")
    user = await ctx.accounts.require_user("boss@example.com")
    assert event == ("user_changed", user.user_id)


async def test_enable_in_process_fires_user_changed(env: Env) -> None:
    ctx, client, recorder = env
    user = await signup(client, "back@example.com")
    await ctx.accounts.set_disabled("back@example.com", True)
    await ctx.accounts.set_disabled("back@example.com", False)
    assert recorder.of("user_disabled") == [("user_disabled", user["id"])]
    assert recorder.of("user_changed") == [("user_changed", user["id"])]


async def test_cli_key_rotation_reaches_the_running_server(env: Env) -> None:
    ctx, client, _ = env
    await signup(client, "rot@example.com")
    before = await signin(client, "rot@example.com")
    old_kid = ctx.keys.active_kid
    result = await asyncio.to_thread(cli, ctx.config, "keys", "rotate", "--json")
    assert result.returncode == 0, result.stderr
    await eventually(lambda: ctx.keys.active_kid != old_kid)
    assert set(ctx.keys.public_keys()) == {old_kid, ctx.keys.active_kid}
    assert ctx.tokens.verify_access(before["access_token"]).kid == old_kid
    after = await signin(client, "rot@example.com")
    assert ctx.tokens.verify_access(after["access_token"]).kid == ctx.keys.active_kid


async def test_healthz_turns_unavailable_when_stopping(env: Env) -> None:
    ctx, client, _ = env
    assert (await client.get("/healthz")).status_code == 200
    ctx.begin_shutdown()
    await eventually(ctx.stopping.is_set)
    r = await client.get("/healthz")
    assert r.status_code == 503 and r.json()["status"] == "unavailable"


async def test_sign_and_signing_key_adapter(env: Env) -> None:
    ctx, _, _ = env
    kid, signature = ctx.keys.sign(b"stamp bytes")
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    Ed25519PublicKey.from_public_bytes(ctx.keys.public_keys()[kid]).verify(signature, b"stamp bytes")
    try:
        import crdt_core.certs  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError):
            ctx.keys.signing_key()
    else:
        key = ctx.keys.signing_key()
        assert key.kid == ctx.keys.active_kid


def test_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        RelayConfig(access_ttl_s=0)
    with pytest.raises(ValueError):
        RelayConfig(argon2_lanes=4, argon2_memory_kib=16)
    with pytest.raises(ValueError):
        RelayConfig(certfile=Path("c.pem"))
    assert replace(RelayConfig(), port=1).port == 1


async def test_revocations_survive_a_restart(tmp_path: Path, store_url: str | None) -> None:
    config = RelayConfig(
        data_dir=tmp_path / "data",
        store_url=store_url,
        argon2_memory_kib=1024,
        argon2_iterations=1,
        argon2_lanes=1,
        events_poll_s=0.05,
    )
    app = create_app(config, extensions=[])
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://relay"
        ) as client:
            await signup(client, "a@example.com")
            await signup(client, "b@example.com")
            logged_out = await signin(client, "a@example.com")
            r = await client.post(
                "/api/v1/auth/logout", headers={"Authorization": f"Bearer {logged_out['access_token']}"}
            )
            assert r.status_code == 204
            kept = await signin(client, "a@example.com")
            disabled = await signin(client, "b@example.com")
            await app.state.relay.accounts.set_disabled("b@example.com", True)
            epoch = app.state.relay.epoch

    again = create_app(config, extensions=[])
    async with again.router.lifespan_context(again):
        ctx: RelayContext = again.state.relay
        assert ctx.epoch == epoch
        with pytest.raises(TokenRevoked):
            ctx.tokens.verify_access(logged_out["access_token"])
        with pytest.raises(TokenRevoked):
            ctx.tokens.verify_access(disabled["access_token"])
        assert ctx.tokens.verify_access(kept["access_token"]).sub
