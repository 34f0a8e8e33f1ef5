"""Accounts, revocation, rate limits and signing keys shared by two relay processes on one database.

Two real ``quickslot-relay serve --store postgresql://...`` processes (nodes A and B) share one
fresh PostgreSQL database, as nodes behind a load balancer do. What the tests show:

* an account made on one node logs in on the other, and each node accepts the other's tokens;
* logout, refresh-token reuse, password reset and ``user disable`` on A (or by the CLI) close the
  user's websockets held by B within :data:`BOUND_S`. The nodes run with ``--events-poll 5``, so
  meeting a 1 s bound proves the push path (LISTEN/NOTIFY), not the fallback poll;
* the login budget of an account is counted across both nodes: attempts alternating between
  them hit 429 at the same total as on one node;
* ``keys rotate`` while both run: the new key is published on both within :data:`BOUND_S`,
  both sign with it after the activation delay, and each verifies the other's tokens, old and
  new.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest

from crdt_core.engine import Replica
from crdt_core.messages import CloseCode
from crdt_core.pop import rest
from crdt_core.protocol import DocSynced
from relay.auth.keys_pg import ACTIVATION_DELAY_S
from tests.relay.auth.test_auth_reset import read_mail_dir, token_from
from tests.support.eventually import eventually_blocking
from tests.support.relay_process import PASSWORD, RelayProcess, bearer, login, register, unique_email
from tests.support.sync_helpers import Account, SyncClient, login_device, new_account, token_headers

#: How soon a revocation on one node must close the user's websockets on the other.
BOUND_S = 1.0
LOGIN_BUDGET = 6
DOC = "bookings:shop1:2030-02-01"
NODE_ARGS = [
    "--login-rate-address", "10000/60", "--register-rate-address", "10000/60",
    "--reset-rate-address", "10000/60", "--reset-rate-account", "10000/60",
    "--login-rate-account", f"{LOGIN_BUDGET}/600",
    "--events-poll", "5",
]  # fmt: skip


@pytest.fixture(scope="module")
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RelayProcess, RelayProcess]]:
    dsn = request.getfixturevalue("pg_server").create_database()
    root = tmp_path_factory.mktemp("shared-auth")
    a = RelayProcess(root / "a", *NODE_ARGS, "--store", dsn)
    b = RelayProcess(root / "b", *NODE_ARGS, "--store", dsn)
    with a, b:
        yield a, b


async def _connected(node: RelayProcess, acct: Account) -> SyncClient:
    client = await SyncClient.connect(node, acct.access)
    assert isinstance(await client.subscribe(DOC, Replica()), DocSynced)
    return client


async def _closed_within(client: SyncClient, since: float) -> tuple[int | None, float]:
    code, _reason = await asyncio.wait_for(client.closed, 10)
    return code, time.monotonic() - since


def test_account_made_on_one_node_works_on_the_other(cluster: tuple[RelayProcess, RelayProcess]) -> None:
    a, b = cluster
    with a.client() as ca, b.client() as cb:
        email = unique_email("roam")
        user = register(ca, email)
        on_b = login(cb, email)
        assert on_b["user"]["id"] == user["id"]
        assert ca.get("/api/v1/auth/me", headers=bearer(on_b["access_token"])).json()["id"] == user["id"]
        on_a = login(ca, email)
        assert cb.get("/api/v1/auth/me", headers=bearer(on_a["access_token"])).status_code == 200
        # A refresh token from B rotates on A, and the spent one is spent everywhere.
        r = ca.post("/api/v1/auth/refresh", json={"refresh_token": on_b["refresh_token"]})
        assert r.status_code == 200, r.text
        assert ca.get("/.well-known/jwks.json").json() == cb.get("/.well-known/jwks.json").json()
        assert (
            ca.get("/api/v1/sync/status").json()["store_epoch"]
            == cb.get("/api/v1/sync/status").json()["store_epoch"]
        )


async def test_logout_on_a_closes_the_session_on_b(cluster: tuple[RelayProcess, RelayProcess]) -> None:
    a, b = cluster
    with a.client() as ca, b.client() as cb:
        acct = new_account(b, cb)
        other = login_device(b, cb, acct.email)  # another session of the same user stays open
        ws, ws_other = await _connected(b, acct), await _connected(b, other)
        since = time.monotonic()
        logout = token_headers(acct.access, rest("POST", "/api/v1/auth/logout"))
        assert ca.post("/api/v1/auth/logout", headers=logout).status_code == 204
        code, took = await _closed_within(ws, since)
        assert code == CloseCode.SESSION_REVOKED and took < BOUND_S, (code, took)
        r = cb.get("/api/v1/auth/me", headers=token_headers(acct.access, rest("GET", "/api/v1/auth/me")))
        assert (r.status_code, r.json()["code"]) == (401, "token_revoked")
        assert not ws_other.closed.done()
        await ws_other.close()


async def test_refresh_reuse_on_a_closes_the_family_on_b(cluster: tuple[RelayProcess, RelayProcess]) -> None:
    a, b = cluster
    with a.client() as ca, b.client() as cb:
        acct = new_account(b, cb)
        ws = await _connected(b, acct)
        assert cb.post("/api/v1/auth/refresh", json={"refresh_token": acct.refresh}).status_code == 200
        since = time.monotonic()
        reuse = ca.post("/api/v1/auth/refresh", json={"refresh_token": acct.refresh})
        assert (reuse.status_code, reuse.json()["code"]) == (401, "refresh_token_reused")
        code, took = await _closed_within(ws, since)
        assert code == CloseCode.SESSION_REVOKED and took < BOUND_S, (code, took)


async def test_password_reset_on_a_closes_every_session_on_b(
    cluster: tuple[RelayProcess, RelayProcess],
) -> None:
    a, b = cluster
    with a.client() as ca, b.client() as cb:
        acct = new_account(b, cb)
        ws = await _connected(b, acct)
        assert ca.post("/api/v1/auth/password-reset/request", json={"email": acct.email}).status_code == 202
        token, _msg = token_from(await asyncio.to_thread(read_mail_dir, a.data_dir / "mail", acct.email))
        since = time.monotonic()
        r = ca.post(
            "/api/v1/auth/password-reset/confirm", json={"token": token, "new_password": "a new passphrase!"}
        )
        assert r.status_code == 200, r.text
        code, took = await _closed_within(ws, since)
        assert code == CloseCode.SESSION_REVOKED and took < BOUND_S, (code, took)


async def test_cli_disable_closes_the_user_on_both_nodes(cluster: tuple[RelayProcess, RelayProcess]) -> None:
    a, b = cluster
    with a.client() as ca, b.client() as cb:
        acct = new_account(a, ca)
        ws_a = await _connected(a, acct)
        ws_b = await _connected(b, login_device(b, cb, acct.email))
        result = await asyncio.to_thread(a.run_cli, "user", "disable", acct.email)
        assert result.returncode == 0, result.stderr
        since = time.monotonic()
        for ws in (ws_a, ws_b):
            code, took = await _closed_within(ws, since)
            assert code in (CloseCode.ACCOUNT_DISABLED, CloseCode.SESSION_REVOKED) and took < BOUND_S
        r = cb.post("/api/v1/auth/login", json={"email": acct.email, "password": PASSWORD})
        assert (r.status_code, r.json()["code"]) == (403, "account_disabled")


def test_login_budget_is_counted_across_nodes(cluster: tuple[RelayProcess, RelayProcess]) -> None:
    a, b = cluster
    with a.client() as ca, b.client() as cb:
        email = unique_email("guessed")
        register(ca, email)
        nodes = [ca, cb]
        codes = [
            nodes[i % 2]
            .post("/api/v1/auth/login", json={"email": email, "password": "wrong guess!!"})
            .status_code
            for i in range(LOGIN_BUDGET + 2)
        ]
        assert codes == [401] * LOGIN_BUDGET + [429, 429]
        for client in nodes:  # even the right password waits now, on every node
            r = client.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
            assert r.status_code == 429 and 1 <= int(r.headers["Retry-After"]) <= 100


def test_key_rotation_reaches_both_nodes(cluster: tuple[RelayProcess, RelayProcess]) -> None:
    a, b = cluster
    with a.client() as ca, b.client() as cb:
        email = unique_email("rot")
        register(ca, email)
        before = login(cb, email)
        old_kid = jwt.get_unverified_header(before["access_token"])["kid"]
        rotated = a.cli_json("keys", "rotate")
        new_kid = rotated["active_kid"]
        assert rotated["retired_kid"] == old_kid and new_kid != old_kid
        since = time.monotonic()
        # Published on both nodes first (so whatever either signs, both verify)...
        for client in (ca, cb):
            eventually_blocking(
                lambda c=client: new_kid in {k["kid"] for k in c.get("/.well-known/jwks.json").json()["keys"]}
            )
        assert time.monotonic() - since < BOUND_S
        # ...then both sign with it once its activation time comes.
        for client in (ca, cb):
            eventually_blocking(
                lambda c=client: c.get("/.well-known/jwks.json").json()["keys"][0]["kid"] == new_kid
            )
        assert time.monotonic() - since < BOUND_S + ACTIVATION_DELAY_S
        on_a, on_b = login(ca, email), login(cb, email)
        for tokens in (on_a, on_b):
            assert jwt.get_unverified_header(tokens["access_token"])["kid"] == new_kid
        for client, tokens in ((ca, on_b), (cb, on_a), (ca, before), (cb, before)):
            assert client.get("/api/v1/auth/me", headers=bearer(tokens["access_token"])).status_code == 200
        listed = {k["kid"]: k["active"] for k in a.cli_json("keys", "list")}
        assert listed == {old_kid: False, new_kid: True}
        # No private key touched either node's disk: the keys live in the database.
        assert not list(Path(a.data_dir, "keys").glob("*.key")) and not list(
            Path(b.data_dir, "keys").glob("*.key")
        )
