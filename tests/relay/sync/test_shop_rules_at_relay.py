"""A REAL relay applies the schema-version-2 rules at arrival: one active booking per customer per
slot (``duplicate_booking``, unless the slot's ``per_customer`` allows more), a booking's day near
its HLC (``day_out_of_range``), no control characters in text (``schema``), a shop's category must
exist (``unknown_category``), and staff rights from the shop's staff list, with no
``user grant --staff`` and no new login.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator

import pytest

from crdt_core.clientids import client_id_for
from crdt_core.engine import Replica
from crdt_core.protocol import Acked, ErrorReceived
from crdt_core.schema import Category, ShopProfile, ShopSummary, SlotTemplate, StaffEntry
from tests.support.relay_process import GENEROUS_LIMITS, RelayProcess
from tests.support.sync_helpers import Account, SyncClient, login_device, new_account

SHOP = "rules"
DAY = (dt.date.today() + dt.timedelta(days=3)).isoformat()
DOC = f"bookings:{SHOP}:{DAY}"
SHOP_DOC = f"shop:{SHOP}"


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    data = tmp_path_factory.mktemp("relay-rules") / "data"
    with RelayProcess(data, *GENEROUS_LIMITS) as proc:
        yield proc


class Device:
    """One account's device with its own copy of each document, re-read after a refusal."""

    def __init__(self, relay: RelayProcess, account: Account) -> None:
        self.relay, self.account, self.generation = relay, account, 0
        self.replicas: dict[str, Replica] = {}
        self.conn: SyncClient | None = None

    def replica(self, doc: str) -> Replica:
        if doc not in self.replicas:
            self.replicas[doc] = Replica(client_id_for(self.account.author.device.cert_id, self.generation))
        return self.replicas[doc]

    async def open(self, *docs: str) -> None:
        self.conn = await SyncClient.connect(self.relay, self.account.access)
        for doc in docs:
            await self.conn.subscribe(doc, self.replica(doc))

    async def push(self, doc: str, update: bytes) -> Acked | ErrorReceived:
        assert self.conn is not None
        answer = await self.conn.push(doc, update)
        if isinstance(answer, ErrorReceived):  # next generation, rebuilt from the relay's copy
            self.generation += 1
            fresh = Replica(client_id_for(self.account.author.device.cert_id, self.generation))
            probe = await SyncClient.connect(self.relay, self.account.access)
            await probe.subscribe(doc, fresh)
            await probe.close()
            self.replicas[doc] = fresh
        return answer

    async def book(self, slot: str, doc: str = DOC) -> tuple[str, Acked | ErrorReceived]:
        res, update = self.account.author.book(self.replica(doc), doc, slot)
        return res.id, await self.push(doc, update)

    async def put(self, doc: str, *records: object) -> Acked | ErrorReceived:
        pairs = [(r, None) for r in records]
        return await self.push(doc, self.account.author.put(self.replica(doc), doc, pairs))  # type: ignore[arg-type]

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()


def refused(answer: Acked | ErrorReceived, reason: str) -> bool:
    return isinstance(answer, ErrorReceived) and answer.reason.startswith(reason)


async def test_the_relay_applies_the_shop_rules_at_arrival(relay: RelayProcess) -> None:
    with relay.client() as http:
        owner, guest, helper, admin = (new_account(relay, http) for _ in range(4))
        relay.cli_json("user", "grant", owner.email, "--owner", SHOP)
        relay.cli_json("user", "grant", admin.email, "--admin")
        await asyncio.sleep(1.5)  # the server picks up CLI changes by polling account events
        owner = login_device(relay, http, owner.email)
        admin = login_device(relay, http, admin.email)
    a = owner.author
    od = Device(relay, owner)
    await od.open(SHOP_DOC, "catalog")
    one = SlotTemplate("one", "cut", "09:00", 30, 4, None, True, a.hlc())
    group = SlotTemplate("group", "class", "18:00", 60, 10, None, True, a.hlc(), per_customer=2)
    assert isinstance(await od.put(SHOP_DOC, one, group), Acked)

    # control characters: refused by the schema, at the relay as everywhere
    bad = ShopProfile("Cut\x1b[2J", "", "Main St", 0.0, 0.0, None, "9-5", a.hlc())
    assert refused(await od.put(SHOP_DOC, bad), "schema")
    multi = ShopProfile("Cut", "Walk in.\nOr book.", "Main St", 0.0, 0.0, None, "9-5", a.hlc())
    assert isinstance(await od.put(SHOP_DOC, multi), Acked)

    # a shop's category must exist
    summary = ShopSummary(SHOP, "Cut", "c-none", "Main St", 1.0, 2.0, None, True, a.hlc())
    assert refused(await od.put("catalog", summary), "unknown_category")
    ad = Device(relay, admin)
    await ad.open("catalog")
    assert isinstance(await ad.put("catalog", Category("c-none", "Other", None, admin.author.hlc())), Acked)
    await ad.close()
    await od.close()
    od = Device(relay, owner)
    await od.open(SHOP_DOC, "catalog")
    summary = ShopSummary(SHOP, "Cut", "c-none", "Main St", 1.0, 2.0, None, True, a.hlc())
    assert isinstance(await od.put("catalog", summary), Acked)

    # one active booking per customer per slot, unless the slot allows more
    gd = Device(relay, guest)
    await gd.open(DOC)
    first, answer = await gd.book("one")
    assert isinstance(answer, Acked)
    _, answer = await gd.book("one")
    assert refused(answer, "duplicate_booking"), answer
    assert isinstance((await gd.book("group"))[1], Acked)
    assert isinstance((await gd.book("group"))[1], Acked)
    assert refused((await gd.book("group"))[1], "duplicate_booking")
    # booking again after cancelling
    _, cancel = guest.author.event(gd.replica(DOC), DOC, first, "cancel")
    assert isinstance(await gd.push(DOC, cancel), Acked)
    assert isinstance((await gd.book("one"))[1], Acked)

    # a booking's day must lie near its HLC
    past = f"bookings:{SHOP}:2020-01-01"
    assert gd.conn is not None
    await gd.conn.subscribe(past, gd.replica(past))
    _, answer = await gd.book("one", doc=past)
    assert refused(answer, "day_out_of_range")
    await gd.close()

    # staff rights from the shop's staff list: no grant, no new login
    hd = Device(relay, helper)
    await hd.open(DOC)
    _, confirm = helper.author.event(hd.replica(DOC), DOC, first, "confirm")
    assert refused(await hd.push(DOC, confirm), "forbidden")
    assert isinstance(await od.put(SHOP_DOC, StaffEntry(helper.user_id, "staff", True, a.hlc())), Acked)
    _, confirm = helper.author.event(hd.replica(DOC), DOC, first, "confirm")
    assert isinstance(await hd.push(DOC, confirm), Acked)
    assert isinstance(await od.put(SHOP_DOC, StaffEntry(helper.user_id, "staff", False, a.hlc())), Acked)
    _, decline = helper.author.event(hd.replica(DOC), DOC, first, "decline")
    assert refused(await hd.push(DOC, decline), "forbidden")  # removed: at once
    await hd.close()
    await od.close()
