"""A booking shows on the user's other devices across the two clients (real relay process):

* a user books through the SDK; a fresh ``quickslot`` CLI profile of the same user logs in, syncs
  once and lists the booking (the SDK listed the day in the user's document, ``booked_day``);
* the reverse: the CLI books, a fresh SDK client of the same user logs in, syncs once and shows it.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

from tests.client.test_cli import Cli
from tests.support.relay_process import PASSWORD, FixedPortRelay, unique_email
from tests.web import test_sdk_client
from tests.web.test_sdk_client import Driver, open_shop

relay = test_sdk_client.relay  # a relay process for this module, as there

DAY = (_dt.date.today() + _dt.timedelta(days=20)).isoformat()


def _login(cli: Cli, relay: FixedPortRelay, email: str) -> None:
    cli.email = email
    login = ("login", "--relay", relay.base_url, "--email", email, "--password-stdin")
    cli.json("login", *login, stdin=PASSWORD)


def test_booked_in_the_sdk_shows_in_a_fresh_cli_profile(relay: FixedPortRelay, tmp_path: Path) -> None:
    shop, slot = "daysweb1", "cut-10"
    open_shop(Cli(tmp_path / "owner"), relay, shop, slot, capacity=3)
    email = unique_email("ann")
    web = Driver(relay.base_url)
    try:
        web("register", email=email, password=PASSWORD)
        made = web("book", shop=shop, day=DAY, slot=slot)
        assert web("status")["pending"] == 1  # the day listing is not one of the user's changes
        assert web("sync")["pending"] == 0
    finally:
        web.close()

    laptop = Cli(tmp_path / "laptop")
    _login(laptop, relay, email)
    laptop.json("sync", "sync")
    shown = laptop.json("reservations", "reservations")["reservations"]
    assert [(r["reservation_id"], r["shop_id"], r["day"], r["state"]) for r in shown] == [
        (made["reservationId"], shop, DAY, "confirmed")
    ]


def test_booked_in_the_cli_shows_in_a_fresh_sdk_client(relay: FixedPortRelay, tmp_path: Path) -> None:
    shop, slot = "daysweb2", "cut-10"
    open_shop(Cli(tmp_path / "owner"), relay, shop, slot, capacity=3)
    phone = Cli(tmp_path / "phone")
    phone.register_and_login(relay.base_url)
    made = phone.json("book", "book", shop, DAY, slot)["reservation"]
    assert phone.json("sync", "sync")["pending"] == 0

    web = Driver(relay.base_url)
    try:
        web("login", email=phone.email, password=PASSWORD)
        assert web("reservations") == []
        web("sync")
        shown = web("reservations")
        assert [(r["reservationId"], r["shop"], r["day"], r["state"], r["final"]) for r in shown] == [
            (made["reservation_id"], shop, DAY, "confirmed", True)
        ]
    finally:
        web.close()
