"""The CLI against a real relay: an owner names staff by email and their rights count at once (no
``quickslot-relay user grant --staff``, no new login); a repeat booking of a slot is refused; a day
far off is refused before anything is queued; control characters are refused and never printed.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.client.test_cli import Cli
from tests.support.relay_process import GENEROUS_LIMITS, RelayProcess

SHOP = "staffshop"
SLOT = "cut-9"
DAY = (_dt.date.today() + _dt.timedelta(days=20)).isoformat()


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    with RelayProcess(tmp_path_factory.mktemp("staffcli") / "data", *GENEROUS_LIMITS) as process:
        yield process


@pytest.fixture(scope="module")
def owner(relay: RelayProcess, tmp_path_factory: pytest.TempPathFactory) -> Cli:
    owner = Cli(tmp_path_factory.mktemp("owner") / "owner")
    owner.register_and_login(relay.base_url, [["--admin"]], relay.data_dir)
    owner.json("category add", "category", "add", "hair", "Hair")
    owner.json("shop create", "shop", "create", SHOP, "--name", "Staff Shop", "--category", "hair")
    owner.json(
        "slot add", "slot", "add", SHOP, SLOT, "--service", "haircut", "--start", "09:00",
        "--duration", "30", "--capacity", "3",
    )  # fmt: skip
    assert owner.json("sync", "sync")["pending"] == 0
    return owner


def test_staff_named_by_email_in_the_shop_data_can_act_at_once(
    relay: RelayProcess, owner: Cli, tmp_path: Path
) -> None:
    alice = Cli(tmp_path / "alice")
    alice.register_and_login(relay.base_url)
    booked = alice.json("book", "book", SHOP, DAY, SLOT)
    rid = booked["reservation"]["reservation_id"]
    assert alice.json("sync", "sync")["pending"] == 0

    sam = Cli(tmp_path / "sam")
    sam_id = sam.register_and_login(relay.base_url)  # a plain account: no grant, and no new login below
    sam.json("slots", "slots", SHOP, DAY)
    sam.json("sync", "sync")
    refused = sam.run("confirm", rid)
    assert refused.returncode != 0 and "only staff" in refused.stderr, refused.stderr

    unknown = owner.run("staff", "add", SHOP, "nobody-here@example.com")
    assert unknown.returncode != 0 and "no account" in unknown.stderr, unknown.stderr
    added = owner.json("staff add", "staff", "add", SHOP, sam.email)
    assert added["staff"]["user_id"] == sam_id
    assert owner.json("sync", "sync")["pending"] == 0

    sam.json("sync", "sync")  # the shop's staff list reaches sam's device
    assert sam.json("confirm", "confirm", rid)["queued"]
    synced = sam.json("sync", "sync")
    assert synced["pending"] == 0, synced
    alice.json("sync", "sync")
    mine = alice.json("reservations", "reservations")
    (row,) = [r for r in mine["reservations"] if r["reservation_id"] == rid]
    assert row["staff_confirmed"] is True


def test_repeat_bookings_far_days_and_control_characters(
    relay: RelayProcess, owner: Cli, tmp_path: Path
) -> None:
    bob = Cli(tmp_path / "bob")
    bob.register_and_login(relay.base_url)
    first = bob.json("book", "book", SHOP, DAY, SLOT)
    bob.json("book", "book", SHOP, DAY, SLOT)  # queued locally: the verdict says duplicate
    bob.run("sync")
    refused = bob.json("refused", "refused")
    assert any("duplicate_booking" in str(r) for r in refused.values()), refused
    states = {
        r["reservation_id"]: r["state"] for r in bob.json("reservations", "reservations")["reservations"]
    }
    assert states[first["reservation"]["reservation_id"]] == "confirmed"

    far = bob.run("book", SHOP, "2020-01-01", SLOT)
    assert far.returncode != 0 and "too far" in far.stderr, far.stderr

    evil = owner.run("shop", "edit", SHOP, "--name", "Staff\x1b[2J\x07Shop")
    assert evil.returncode != 0 and "control character" in evil.stderr, evil.stderr
    assert "\x1b" not in evil.stdout + evil.stderr and "\x07" not in evil.stdout + evil.stderr
