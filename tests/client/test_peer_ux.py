"""Peer sync, as a user meets it: a relay URL given to ``peer sync``, ``wss://`` to a plain peer,
"changes wait for the relay" counting only the user's own changes, and a ``peer serve`` that stops
(saying why) when its profile logs out or its certificate expires."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

import client.peer.server as server_mod
from client.cli.app import build_parser, handler_of
from client.cli.context import Ctx, drain
from client.cli.errors import CliError, fail
from client.cli.schemas import EXIT_UNREACHABLE, EXIT_USAGE, SCHEMAS
from client.local.client import LocalClient
from client.peer.dialer import peer_sync
from client.peer.wire import PeerIsARelay, PeerUnreachable
from client.storage.secrets import SecretStore
from tests.client.test_cli import check
from tests.client.test_peer import DAY, SHOP, SLOT, profile, serve, shop_setup
from tests.support.clients import close_all, pull
from tests.support.crdt_factory import World
from tests.support.relay_process import RelayProcess


@pytest.fixture(autouse=True)
async def _close() -> AsyncIterator[None]:
    yield
    await close_all()


@pytest.fixture
def world() -> World:
    from tests.client.test_peer import now_ms

    return World(now_ms=now_ms())


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    with RelayProcess(tmp_path_factory.mktemp("uxrelay") / "data") as running:
        yield running


async def peer_cli(local: LocalClient, home: Path, *argv: str) -> tuple[dict[str, Any], str]:
    args = build_parser().parse_args(["--json", "peer", "sync", *argv])
    data, human = await handler_of(args.handler)(Ctx(args, home, local))
    check(data, SCHEMAS["peer sync"])
    return data, human


async def test_peer_sync_to_a_relay_says_that_is_a_relay(
    relay: RelayProcess, tmp_path: Path, world: World
) -> None:
    alice = await profile(tmp_path, world, "u-alice")
    ws = relay.base_url.replace("http://", "ws://")
    for url in (ws, ws + "/api/v1/sync"):  # the relay's root, and its own sync websocket
        with pytest.raises(PeerIsARelay, match="is a relay, not a peer"):
            await peer_sync(alice, url, timeout_s=10)
        with pytest.raises(CliError) as failed:
            await peer_cli(alice, tmp_path / "u-alice", url)
        assert failed.value.exit_code == EXIT_USAGE and failed.value.code == "not_a_peer"
        assert "quickslot sync" in failed.value.message


async def test_wss_to_a_plain_peer_gives_a_reason(tmp_path: Path, world: World) -> None:
    _relay, owner, alice, _bob = await shop_setup(tmp_path, world)
    server = await serve(owner, world)
    try:
        with pytest.raises(PeerUnreachable) as failed:
            await peer_sync(alice, server.url.replace("ws://", "wss://"), timeout_s=5)
    finally:
        await server.stop()
    reason = str(failed.value).split(": ", 1)[1]
    assert reason.strip() and "TLS" in reason and "ws://" in reason
    with pytest.raises(CliError) as cli_failed:
        await peer_cli(alice, tmp_path / "u-alice", server.url.replace("ws://", "wss://"))
    assert cli_failed.value.exit_code == EXIT_UNREACHABLE


async def test_changes_waiting_for_the_relay_count_only_the_users_own(tmp_path: Path, world: World) -> None:
    _relay, owner, alice, bob = await shop_setup(tmp_path, world)
    await alice.book(SHOP, DAY, SLOT)
    await bob.subscribe(f"bookings:{SHOP}:{DAY}")  # Bob looked at that day
    server = await serve(owner, world)
    try:
        await peer_sync(alice, server.url, now_ms=lambda: world.now_ms)
        # Bob made nothing: what he receives from the tablet (Alice's booking) he only carries.
        data, human = await peer_cli(bob, tmp_path / "u-bob", server.url)
    finally:
        await server.stop()
    assert data["own_pending"] == 0 and data["carried"] >= 1 and data["pending"] == data["carried"]
    assert "0 of your changes wait for the relay" in human
    assert "updates of others are carried" in human


async def test_a_logout_from_another_process_stops_peer_serve(tmp_path: Path, world: World) -> None:
    _relay, owner, alice, _bob = await shop_setup(tmp_path, world)
    server = await serve(owner, world, watch_s=0.05)
    try:
        home = tmp_path / "u-owner"
        other = await LocalClient.open(home, secret_store=SecretStore(home, backend="file"))
        await other.logout()  # what `quickslot logout` does in another terminal
        await other.close()
        await asyncio.wait_for(server.stopped.wait(), 10)
        assert server.ended is not None and "logged out" in server.ended
        assert [f["reason"] for f in server.logged("peer_serve_ended")] == [server.ended]
        with pytest.raises(PeerUnreachable, match="logged out"):
            await peer_sync(alice, server.url, timeout_s=5)
    finally:
        await server.stop()


async def test_a_peer_serve_whose_certificate_expires_stops_and_says_why(
    tmp_path: Path, world: World
) -> None:
    _relay, owner, alice, _bob = await shop_setup(tmp_path, world)
    now = world.now_ms
    server = await serve(owner, world, watch_s=0.05)
    try:
        assert owner.identity is not None
        world.now_ms = owner.identity.certificate.expires_at_ms + 1  # the tablet's clock runs on
        await asyncio.wait_for(server.stopped.wait(), 10)
        assert server.ended is not None and "certificate expired" in server.ended
        assert "log in again" in server.ended and server.logged("peer_serve_ended")
        with pytest.raises(PeerUnreachable, match="certificate expired"):
            await peer_sync(alice, server.url, timeout_s=5, now_ms=lambda: now)
    finally:
        await server.stop()


async def test_notices_learnt_before_the_peer_died_are_printed_with_the_failure(
    tmp_path: Path, world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    relay, owner, alice, _bob = await shop_setup(tmp_path, world)
    bob = await profile(tmp_path, world, "u-later", clock_ms=world.now_ms + 60_000)  # books later
    await bob.follow(SHOP)
    await pull(bob, relay, ["catalog", f"shop:{SHOP}"])
    await alice.book(SHOP, DAY, SLOT, party=2)
    second = await bob.book(SHOP, DAY, SLOT, party=2)  # both see themselves in the last seats
    drain(bob)

    async def die(self: Any, event: Any) -> None:  # the tablet is killed as Bob's data arrives
        self.wire.ws.transport.abort()

    server = await serve(owner, world)
    try:
        await peer_sync(alice, server.url)
        monkeypatch.setattr(server_mod._Connection, "_on_update", die)
        with pytest.raises(CliError) as failed:
            await peer_cli(bob, tmp_path / "u-later", server.url)
    finally:
        await server.stop()
    err = failed.value
    assert err.exit_code == EXIT_UNREACHABLE
    told = [e for e, _line in err.happened if e.get("reservation_id") == second.reservation_id]
    assert told and told[-1]["state"] == "waitlisted", err.happened
    fail(err, as_json=False)
    out = capsys.readouterr().out
    assert f"your booking {second.reservation_id}" in out and "waitlisted" in out
    fail(err, as_json=True)
    (line,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    payload = json.loads(line)
    check(payload, SCHEMAS["error"])
    assert any(e.get("reservation_id") == second.reservation_id for e in payload["error"]["events"])
    # The retry (the tablet is gone) has nothing new to tell: the notice above was the only one.
    mine = await bob.reservation(second.reservation_id)
    assert mine is not None and mine.state.value == "waitlisted"


async def test_a_shops_tablet_is_named_by_its_shop(tmp_path: Path, world: World) -> None:
    _relay, owner, alice, _bob = await shop_setup(tmp_path, world)
    server = await serve(owner, world)
    try:
        data, human = await peer_cli(alice, tmp_path / "u-alice", server.url)
    finally:
        await server.stop()
    assert data["peer_user"] == "u-owner"
    assert data["peer_shops"] == [{"shop_id": SHOP, "role": "owner", "name": "Peer Cuts"}]
    assert f"with owner of Peer Cuts ({SHOP}), user u-owner at" in human
