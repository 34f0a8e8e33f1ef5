"""The SDK's offline client (``QuickSlotClient``) against a real relay process on loopback, driven
through ``tests/web/sdk_driver.mjs`` (one JSON command per line):

* a Node SDK client and a ``quickslot`` CLI profile book the last seat of a slot while the relay is
  down; after both sync, both show the same verdict (one confirmed, the other waitlisted);
* the relay refuses one queued booking (a party above its --max-party): the entry is kept, listed
  with its reason, and the day moves to the next Yjs client-id generation, rebuilt from the relay's
  state, so the booking queued behind it is written again and stored;
* access tokens that expire every two seconds are refreshed (close 4001) without the app noticing;
* the relay is killed with SIGKILL while the SDK flushes a long outbox: every booking it reported
  acknowledged is at the restarted relay, and after reconnecting the rest arrive too.
"""

from __future__ import annotations

import datetime as _dt
import json
import queue
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.client.test_cli import Cli
from tests.support.relay_process import GENEROUS_LIMITS, PASSWORD, FixedPortRelay, RelayProcess, unique_email
from tests.web.sdk_env import SDK
from tests.web.test_sdk_books_at_relay import _node_command

DRIVER = Path(__file__).resolve().parent / "sdk_driver.mjs"
DAY = (_dt.date.today() + _dt.timedelta(days=30)).isoformat()


class Driver:
    """One Node process holding one QuickSlotClient."""

    def __init__(self, relay_url: str, *flags: str) -> None:
        self.proc = subprocess.Popen(
            [*_node_command(), str(DRIVER), relay_url, *flags],
            cwd=SDK, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.answers: queue.Queue[dict[str, Any]] = queue.Queue()
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            message = json.loads(line)
            if "event" in message:
                self.seen.append(message)
                self.events.put(message)
            else:
                self.answers.put(message)

    def __call__(self, op: str, timeout: float = 60, **fields: Any) -> Any:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, **fields}) + "\n")
        self.proc.stdin.flush()
        try:
            answer = self.answers.get(timeout=timeout)
        except queue.Empty:
            self.proc.kill()
            raise AssertionError(f"{op}: no answer; stderr: {self.proc.communicate()[1][-3000:]}") from None
        assert answer["ok"], answer["error"]
        return answer["result"]

    def wait_event(self, kind: str, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            event = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            if event["event"] == kind:
                return event

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self("quit", timeout=10)
            except (AssertionError, OSError):
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def open_shop(owner: Cli, relay: FixedPortRelay, shop: str, slot: str, capacity: int) -> None:
    """``owner`` registers as the admin and owner of ``shop``, which gets one slot, and syncs."""
    owner.register_and_login(relay.base_url, [["--admin"], ["--owner", shop]], relay.data_dir)
    owner.json("category add", "category", "add", "hair", "Hair")
    owner.json(
        "shop create", "shop", "create", shop, "--name", "Cut Above", "--category", "hair",
        "--location", "Main St", "--lat", "1.5", "--lon", "2.5",
    )  # fmt: skip
    owner.json(
        "slot add", "slot", "add", shop, slot, "--service", "haircut", "--start", "10:00",
        "--duration", "30", "--capacity", str(capacity),
    )  # fmt: skip
    assert owner.json("sync", "sync")["pending"] == 0


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Any:
    _node_command()  # skips without node or the SDK's dependencies
    process = FixedPortRelay(tmp_path_factory.mktemp("webrelay") / "data")
    process.start()
    try:
        yield process
    finally:
        process.stop()


def test_sdk_and_cli_contend_offline_for_the_last_seat(relay: FixedPortRelay, tmp_path: Path) -> None:
    shop, slot = "webshop1", "cut-10"
    owner, bob = Cli(tmp_path / "owner"), Cli(tmp_path / "bob")
    open_shop(owner, relay, shop, slot, capacity=1)
    bob.register_and_login(relay.base_url)
    bob.json("slots", "slots", shop, DAY)
    bob.json("sync", "sync")

    web = Driver(relay.base_url)
    try:
        web("register", email=unique_email("ann"), password=PASSWORD)
        assert web("categories") == [] and web("slots", shop=shop, day=DAY) == []
        web("sync")
        assert web("categories") == [{"id": "hair", "name": "Hair", "icon": None}]
        assert [s["id"] for s in web("shops", category="hair")] == [shop]
        assert [(s["slotId"], s["seatsLeft"]) for s in web("slots", shop=shop, day=DAY)] == [(slot, 1)]

        relay.stop()
        web.wait_event("offline")
        mine = web("book", shop=shop, day=DAY, slot=slot)
        assert (mine["state"], mine["final"], mine["pending"]) == ("confirmed", False, True)
        assert web("status")["pending"] == 1 and web("status")["online"] is False
        theirs = bob.json("book", "book", shop, DAY, slot)["reservation"]
        assert theirs["state"] == "confirmed" and theirs["final"] is False
        relay.start()

        assert web("sync")["pending"] == 0
        bob.json("sync", "sync")
        web("sync")
        bob.json("sync", "sync")
        web_view = {r["reservationId"]: (r["state"], r["final"]) for r in web("reservations", all=True)}
        mine_now = web_view[mine["reservationId"]]
        bobs = bob.json("reservations", "reservations")["reservations"]
        assert [r["reservation_id"] for r in bobs] == [theirs["reservation_id"]]
        # the same verdict on both sides: one holds the seat, the other waits, both final
        assert web_view[theirs["reservation_id"]] == (bobs[0]["state"], bobs[0]["final"])
        assert {mine_now[0], bobs[0]["state"]} == {"confirmed", "waitlisted"}
        assert mine_now[1] is True and bobs[0]["final"] is True
        assert [(s["seatsTaken"], s["seatsLeft"]) for s in web("slots", shop=shop, day=DAY)] == [(1, 0)]
        told = [e["event"] for e in web.seen if e["reservation"] == mine["reservationId"]]
        if mine_now[0] == "waitlisted":
            assert "demoted" in told, told
            bob.json("cancel", "cancel", theirs["reservation_id"])
            bob.json("sync", "sync")
            assert web.wait_event("promoted")["reservation"] == mine["reservationId"]
        else:
            # the SDK user gives the seat up; the CLI profile is told it moved up
            assert web("cancel", reservation=mine["reservationId"])["state"] == "cancelled"
            assert web("sync")["pending"] == 0
            told_bob = bob.run("sync")
            assert "is now confirmed" in told_bob.stdout, told_bob.stdout
    finally:
        web.close()


def test_relay_sigkilled_mid_flush_loses_nothing_acked(relay: FixedPortRelay) -> None:
    shop, count = "killshop", 150
    web = Driver(relay.base_url, "--idb")
    try:
        web("register", email=unique_email("kim"), password=PASSWORD)
        web("slots", shop=shop, day=DAY)
        web("sync")
        web("stop")
        # a slot per booking: one customer holds one active claim per slot (a second is refused)
        booked = [web("book", shop=shop, day=DAY, slot=f"s-{i}")["reservationId"] for i in range(count)]
        assert web("status")["pending"] == count
        web("start")
        # The first booking also listed the day in the user's document (action booked_day, not
        # a booking and not counted as pending): wait for, and count, the bookings' own acks.
        while web.wait_event("acked")["action"] == "booked_day":
            pass
        assert relay.proc is not None
        relay.proc.kill()  # SIGKILL: no shutdown, no flush
        relay.proc.wait()
        web.wait_event("offline")
        web("stop")
        time.sleep(0.3)  # answers already on the way in
        acked = {e["reservation"] for e in web.seen if e["event"] == "acked" and e["action"] != "booked_day"}
        assert 1 <= len(acked) < count, len(acked)  # killed in the middle of the flush
        assert web("status")["pending"] == count - len(acked)
        relay.start()

        reader = Driver(relay.base_url)
        try:
            reader("register", email=unique_email("rob"), password=PASSWORD)
            reader("slots", shop=shop, day=DAY)
            reader("sync")
            held = {r["reservationId"] for r in reader("reservations", all=True)}
            assert acked <= held, sorted(acked - held)
            web("start")
            assert web("sync")["pending"] == 0
            deadline = time.monotonic() + 20  # live updates reach the reader moments after the acks
            while (held := {r["reservationId"] for r in reader("reservations", all=True)}) != set(booked):
                assert time.monotonic() < deadline, (len(held), count)
                time.sleep(0.1)
        finally:
            reader.close()
        assert web("outbox") == []
    finally:
        web.close()


def test_refused_write_rebuilds_the_day_and_the_next_booking_still_lands(relay: FixedPortRelay) -> None:
    shop = "refuseshop"
    web = Driver(relay.base_url)
    try:
        web("register", email=unique_email("rae"), password=PASSWORD)
        web("slots", shop=shop, day=DAY)
        web("sync")
        web("stop")
        too_many = web("book", shop=shop, day=DAY, slot="s-1", party=50)["reservationId"]
        fine = web("book", shop=shop, day=DAY, slot="s-1", party=2)["reservationId"]
        result = web("sync")
        assert result["pending"] == 0
        (refused,) = result["refused"]
        assert refused["reservationId"] == too_many and refused["reason"].startswith("party_too_large")
        # (the day listing that came with the first booking is acknowledged too: not one of these)
        changes = [e for e in web.seen if e["event"] in ("refused", "acked") and e["action"] != "booked_day"]
        assert [(e["event"], e["reservation"]) for e in changes] == [("refused", too_many), ("acked", fine)]
        # the refused struct took clocks under generation 0 that the relay never held: generation 1
        assert [e["generation"] for e in web.seen if e["event"] == "rebuilt"] == [1]
        # the refused booking left the day; the other one is stored and stamped
        assert web.wait_event("final")["reservation"] == fine
        assert [(r["reservationId"], r["stamp"]) for r in web("reservations")] == [(fine, 1)]
        assert [e["state"] for e in web("outbox")] == ["refused"]
    finally:
        web.close()


def test_expiring_access_tokens_are_refreshed(tmp_path: Path) -> None:
    _node_command()
    with RelayProcess(tmp_path / "relay", *GENEROUS_LIMITS, "--access-ttl", "2") as relay:
        web = Driver(relay.base_url)
        try:
            web("register", email=unique_email("tia"), password=PASSWORD)
            web("slots", shop="ttlshop", day=DAY)
            web("sync")
            booked = []
            for i in range(3):  # the relay closes connections with 4001 as their tokens expire
                time.sleep(1.2)
                booked.append(web("book", shop="ttlshop", day=DAY, slot=f"s-{i}")["reservationId"])
                assert web("sync")["pending"] == 0
            assert [e for e in web.seen if e["event"] == "refreshed"], web.seen
            assert not [e for e in web.seen if e["event"] == "stopped"], web.seen
            assert sorted(r["reservationId"] for r in web("reservations")) == sorted(booked)
        finally:
            web.close()
