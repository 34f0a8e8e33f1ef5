"""The PostgreSQL account store, keys and rate limiter under concurrency, on a real server.

Two store objects on one database stand for two relay nodes (separate pools, separate
connections). What these check is what the multi-node design rests on: one winner when two
nodes spend the same refresh or reset token, an event cursor that never skips an event, a
NOTIFY that wakes the other node, exactly one schema migration and one first key when nodes
start together, and a rate budget that is not multiplied by the number of nodes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from relay.auth.account_store_pg import PostgresAccountStore
from relay.auth.keys import KeyStore, KeyStoreError
from relay.auth.keys_pg import PostgresKeyStore
from relay.auth.ratelimit_pg import PostgresRateLimiter
from relay.ops.config import RateLimit
from tests.support.servers.postgres import PostgresServer

NOW = 1_900_000_000.0


@pytest.fixture
async def nodes(pg_dsn: str) -> AsyncIterator[tuple[PostgresAccountStore, PostgresAccountStore]]:
    a = await PostgresAccountStore.open(pg_dsn)
    b = await PostgresAccountStore.open(pg_dsn)
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


async def _user(store: PostgresAccountStore, email: str = "u@example.com") -> str:
    return await store.create_user(email=email, display_name="U", password_hash="h", now=NOW)


async def test_concurrent_starts_migrate_once(pg_dsn: str) -> None:
    stores = await asyncio.gather(*(PostgresAccountStore.open(pg_dsn) for _ in range(4)))
    try:
        assert len({s.epoch for s in stores}) == 1 and stores[0].epoch
        conn = await asyncpg.connect(pg_dsn)
        try:
            rows = await conn.fetch(
                "SELECT version FROM schema_migrations WHERE component = 'accounts' ORDER BY version"
            )
        finally:
            await conn.close()
        assert [r[0] for r in rows] == [1, 2, 3, 4]
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_email_taken_across_nodes(nodes: tuple[PostgresAccountStore, PostgresAccountStore]) -> None:
    from relay.auth.account_types import EmailTaken

    a, b = nodes
    results = await asyncio.gather(_user(a), _user(b), return_exceptions=True)
    assert sum(isinstance(r, str) for r in results) == 1
    assert sum(isinstance(r, EmailTaken) for r in results) == 1


async def test_one_refresh_token_spent_on_two_nodes_at_once(
    nodes: tuple[PostgresAccountStore, PostgresAccountStore],
) -> None:
    a, b = nodes
    user_id = await _user(a)
    for round_ in range(10):
        fam = f"fam-{round_}"
        await a.create_family(family_id=fam, user_id=user_id, jti=f"j{round_}", expires_at=NOW + 99, now=NOW)
        results = await asyncio.gather(
            a.rotate_refresh(jti=f"j{round_}", new_jti=f"a{round_}", new_expires_at=NOW + 99, now=NOW),
            b.rotate_refresh(jti=f"j{round_}", new_jti=f"b{round_}", new_expires_at=NOW + 99, now=NOW),
        )
        assert sorted(r.status for r in results) == ["ok", "reused"], results
        user, revoked_at = await b.family_status(fam) or ("", None)
        assert user == user_id and revoked_at is not None  # reuse revoked the family


async def test_one_reset_token_spent_on_two_nodes_at_once(
    nodes: tuple[PostgresAccountStore, PostgresAccountStore],
) -> None:
    a, b = nodes
    user_id = await _user(a)
    await a.add_reset(token="t" * 32, user_id=user_id, expires_at=NOW + 60, now=NOW)
    results = await asyncio.gather(a.consume_reset("t" * 32, now=NOW), b.consume_reset("t" * 32, now=NOW))
    assert sorted(results, key=str) == [None, user_id] or sorted(results, key=str) == [user_id, None]
    assert results.count(user_id) == 1


async def test_event_cursor_never_skips_under_concurrent_writers(
    nodes: tuple[PostgresAccountStore, PostgresAccountStore],
) -> None:
    """Writers on both nodes while a reader follows its cursor: it must see every event once."""
    a, b = nodes
    start = await a.max_event_id()
    seen: list[int] = []
    done = asyncio.Event()

    async def reader() -> None:
        cursor = start
        while True:
            finished = done.is_set()
            for ev in await b.events_after(cursor):
                seen.append(int(ev.family_id or "0"))
                cursor = ev.id
            if finished:
                return
            await asyncio.sleep(0)

    async def writer(store: PostgresAccountStore, base: int) -> None:
        for i in range(60):
            await store.add_event("family_revoked", user_id="u", family_id=str(base + i), origin="w", now=NOW)

    task = asyncio.create_task(reader())
    await asyncio.gather(writer(a, 1000), writer(b, 2000), writer(a, 3000), writer(b, 4000))
    done.set()
    await task
    assert sorted(seen) == sorted([base + i for base in (1000, 2000, 3000, 4000) for i in range(60)])


async def test_notify_wakes_the_other_node(nodes: tuple[PostgresAccountStore, PostgresAccountStore]) -> None:
    a, b = nodes
    woken = asyncio.Event()
    await b.listen(woken.set)
    await asyncio.sleep(0.05)
    woken.clear()  # listen() wakes once after connecting (catch-up)
    started = time.monotonic()
    await a.add_event("user_disabled", user_id="u", origin="node-a", now=NOW)
    await asyncio.wait_for(woken.wait(), 2.0)
    assert time.monotonic() - started < 1.0


async def test_rate_budget_is_shared_by_nodes(pg_dsn: str) -> None:
    stores = [await PostgresAccountStore.open(pg_dsn) for _ in range(2)]
    try:
        limiters = [PostgresRateLimiter(s.pool, "login_account", RateLimit(5, 60)) for s in stores]
        decisions = await asyncio.gather(*(limiters[i % 2].take("victim") for i in range(20)))
        assert sum(d.allowed for d in decisions) == 5
        refused = [d for d in decisions if not d.allowed]
        assert all(0 < d.retry_after_s <= 12.5 for d in refused)  # one token refills in 12 s
        # Another key and another scope have budgets of their own.
        assert (await limiters[0].take("bystander")).allowed
        other = PostgresRateLimiter(stores[0].pool, "reset_account", RateLimit(1, 60))
        assert (await other.take("victim")).allowed
        await limiters[1].forget("victim")
        assert (await limiters[0].take("victim")).allowed
    finally:
        for s in stores:
            await s.close()


async def test_keys_first_start_rotation_and_encryption(pg_dsn: str, tmp_path: Path) -> None:
    stores = [await PostgresAccountStore.open(pg_dsn) for _ in range(2)]
    try:
        empty = tmp_path / "no-keys"
        k1, k2 = await asyncio.gather(
            *(
                PostgresKeyStore.open_pg(
                    s.pool, import_dir=empty, passphrase=b"s3cret", activation_delay_s=0.5
                )
                for s in stores
            )
        )
        assert k1.active_kid == k2.active_kid  # concurrent first starts made one key
        old = k1.active_kid
        new = await k1.rotate_async()
        assert await k2.reload_if_changed_async() and not await k2.reload_if_changed_async()
        # Published on both at once, signing with it only from the activation time on.
        assert set(k1.public_keys()) == set(k2.public_keys()) == {old, new}
        assert k1.active_kid == k2.active_kid == old and k1.sign(b"x")[0] == old
        await asyncio.sleep(0.6)
        assert k1.active_kid == k2.active_kid == new and k2.sign(b"x")[0] == new
        assert not await k2.reload_if_changed_async()  # erases the retired private half
        rows = await stores[0].pool.fetch("SELECT kid, private_pem FROM auth_signing_keys")
        pems = {r["kid"]: r["private_pem"] for r in rows}
        assert pems[old] is None  # a retired key's private half is erased
        assert b"ENCRYPTED" in bytes(pems[new])
        with pytest.raises(KeyStoreError, match="QUICKSLOT_RELAY_KEYS_PASSPHRASE"):
            await PostgresKeyStore.open_pg(stores[0].pool, import_dir=empty, passphrase=b"")
        with pytest.raises(KeyStoreError, match="wrong"):
            await PostgresKeyStore.open_pg(stores[0].pool, import_dir=empty, passphrase=b"not it")
        with pytest.raises(KeyStoreError, match="PostgreSQL"):
            k1.rotate()  # the file store's sync face would touch no database
    finally:
        for s in stores:
            await s.close()


async def test_keys_of_a_sqlite_relay_are_imported(pg_dsn: str, tmp_path: Path) -> None:
    files = KeyStore.open(tmp_path / "keys")
    retired = files.active_kid
    files.rotate()
    store = await PostgresAccountStore.open(pg_dsn)
    try:
        keys = await PostgresKeyStore.open_pg(store.pool, import_dir=tmp_path / "keys", passphrase=b"")
        assert keys.active_kid == files.active_kid
        assert keys.public_keys() == files.public_keys() and retired in keys.public_keys()
        kid, sig = keys.sign(b"x")
        files.key_info(kid).key.verify(sig, b"x")  # type: ignore[union-attr]
    finally:
        await store.close()


async def test_a_key_retired_by_another_node_signs_nothing_new(pg_dsn: str, tmp_path: Path) -> None:
    """Node B rotates; node A, once it reloads, keeps accepting what the old key signed before it
    retired and refuses a token the old key claims to have issued afterwards (the retired_at that
    travels through the database is what makes that decision)."""
    import jwt

    from relay.auth.tokens import ACCESS, TokenInvalid, TokenService

    stores = [await PostgresAccountStore.open(pg_dsn) for _ in range(2)]
    try:
        ka, kb = [
            await PostgresKeyStore.open_pg(
                s.pool, import_dir=tmp_path, passphrase=b"", activation_delay_s=0.3
            )
            for s in stores
        ]
        now = [time.time()]
        tokens = TokenService(
            ka, issuer="iss", audience="aud", access_ttl_s=1800, refresh_ttl_s=86400, clock=lambda: now[0]
        )
        old_kid, old_private = ka.active_kid, ka.active.private
        before = tokens.issue(ACCESS, "u", "f")
        new_kid = await kb.rotate_async()
        assert await ka.reload_if_changed_async()
        await asyncio.sleep(0.35)
        assert ka.active_kid == new_kid
        assert tokens.verify_access(before.token).kid == old_kid
        assert jwt.get_unverified_header(tokens.issue(ACCESS, "u", "f").token)["kid"] == new_kid
        retired_at = ka.key_info(old_kid).retired_at  # type: ignore[union-attr]
        assert retired_at is not None
        iat = int(retired_at) + 3600
        now[0] = iat + 1
        payload = {"iss": "iss", "aud": "aud", "sub": "u", "iat": iat, "nbf": iat, "exp": iat + 600,
                   "jti": "j", "fam": "f", "typ": "access"}  # fmt: skip
        header = {"kid": old_kid, "typ": "at+jwt"}
        forged = jwt.encode(payload, old_private, algorithm="EdDSA", headers=header)
        with pytest.raises(TokenInvalid, match="retired"):
            tokens.verify_access(forged)
    finally:
        for s in stores:
            await s.close()


async def test_listener_comes_back_after_its_connection_is_killed(
    nodes: tuple[PostgresAccountStore, PostgresAccountStore],
) -> None:
    """A listening connection killed by the server (failover, idle-kill, restart): the store opens
    a new one and wakes the reader on reconnect, so notifications resume without a restart."""
    a, b = nodes
    woken = asyncio.Event()
    await b.listen(woken.set)
    query = "SELECT pid FROM pg_stat_activity WHERE query LIKE 'LISTEN%' AND datname = current_database()"
    [(pid,)] = [tuple(r) for r in await a.pool.fetch(query)]
    woken.clear()
    assert await a.pool.fetchval("SELECT pg_terminate_backend($1)", pid)
    await asyncio.wait_for(woken.wait(), 5.0)  # the reconnect's catch-up wake-up
    deadline = time.monotonic() + 5
    while [tuple(r) for r in await a.pool.fetch(query)] in ([], [(pid,)]):
        assert time.monotonic() < deadline, "no new LISTEN connection"
        await asyncio.sleep(0.05)
    woken.clear()
    await a.add_event("user_changed", user_id="u", origin="node-a", now=NOW)
    await asyncio.wait_for(woken.wait(), 2.0)


async def test_database_gone_gives_503_not_500(pg_private_server: PostgresServer, tmp_path: Path) -> None:
    """PostgreSQL stops under a running relay: auth answers ``503 store_unavailable`` with
    ``Retry-After`` (retryable, and the rate limiter fails closed), and the relay stays up."""
    import httpx

    from relay.http.app import create_app
    from relay.ops.config import RateLimits, RelayConfig

    big = RateLimit(10_000, 60)
    config = RelayConfig(
        data_dir=tmp_path / "data",
        store_url=pg_private_server.create_database(),
        argon2_memory_kib=1024,
        argon2_iterations=1,
        argon2_lanes=1,
        rate_limits=RateLimits(big, big, big, big, big),
    )
    app = create_app(config, extensions=[])
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://relay") as client:
            body = {"email": "gone@example.com", "password": "p" * 12, "display_name": "G"}
            assert (await client.post("/api/v1/auth/register", json=body)).status_code == 201
            r = await client.post("/api/v1/auth/login", json=body)
            access = r.json()["access_token"]
            pg_private_server.stop()
            for _ in range(2):  # and again: nothing got wedged by the first failure
                r = await client.post("/api/v1/auth/login", json=body)
                assert (r.status_code, r.json()["code"]) == (503, "store_unavailable"), r.text
                assert r.headers["Retry-After"] == "1"
            r = await client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {access}"})
            assert (r.status_code, r.json()["code"]) == (503, "store_unavailable")


async def test_a_revoked_sessions_certificates_are_listed_until_they_expire(pg_dsn: str) -> None:
    """What the relay's rights cache loads at start and learns per revoked session."""
    store = await PostgresAccountStore.open(pg_dsn)
    try:
        user = await _user(store)
        for family in ("live", "gone"):
            await store.create_family(
                family_id=family, user_id=user, jti=family, expires_at=NOW + 600, now=NOW
            )
        await store.add_family_cert("live", "c-live", expires_at=NOW + 100)
        await store.add_family_cert("gone", "c-gone", expires_at=NOW + 100)
        await store.add_family_cert("gone", "c-gone-old", expires_at=NOW - 1)
        await store.add_family_cert("gone", "c-gone", expires_at=NOW + 100)  # issued twice: one row
        assert await store.revoked_cert_ids(now=NOW) == []
        assert await store.revoke_family("gone", reason="logout", now=NOW)
        assert await store.revoked_cert_ids(now=NOW) == ["c-gone"]
        assert await store.family_cert_ids("gone", now=NOW) == ["c-gone"]
        assert await store.family_cert_ids("live", now=NOW) == ["c-live"]
        assert await store.revoked_cert_ids(now=NOW + 200) == []  # expired: nothing to refuse
    finally:
        await store.close()
