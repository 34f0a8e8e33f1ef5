"""A REAL relay refuses, at arrival, a reservation whose party cannot be seated (``party_too_large``).

Why at the relay too when the verdict already makes such a claim ``too_large`` (no seat, no
waitlist place, blocking nobody): refusing it tells the sender at once and keeps it out of every
document. The relay checks each new reservation against ``--max-party`` and against its slot's
capacity that day in the relay's copy of the shop document; a slot that is not open that day (no
template, inactive) keeps the plain rule: the claim is stored and waits.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator

import pytest

from crdt_core.authoring import Author
from crdt_core.clientids import client_id_for
from crdt_core.engine import Replica
from crdt_core.protocol import Acked, ErrorReceived
from crdt_core.schema import SlotTemplate
from relay.cli.parser import build_parser, config_from_args
from relay.ops.config import SyncLimits
from tests.support.relay_process import GENEROUS_LIMITS, RelayProcess
from tests.support.sync_helpers import SyncClient, login_device, new_account

SHOP = "bigparty"
DAY = (dt.date.today() + dt.timedelta(days=5)).isoformat()
DOC = f"bookings:{SHOP}:{DAY}"
MAX_PARTY = 6


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    data = tmp_path_factory.mktemp("relay-party") / "data"
    with RelayProcess(data, *GENEROUS_LIMITS, "--max-party", str(MAX_PARTY)) as proc:
        yield proc


def template(author: Author, slot: str, capacity: int, active: bool = True) -> SlotTemplate:
    return SlotTemplate(
        id=slot, service="table", start="19:00", duration=90, capacity=capacity, weekdays=None,
        active=active, hlc=author.hlc(),
    )  # fmt: skip


class Writer:
    """A device writing one document under its own client ids: after a refusal, the next one."""

    def __init__(self, author: Author) -> None:
        self.author = author
        self.generation = 0
        self.replica = Replica(client_id_for(author.device.cert_id, 0))

    def refused(self, relay_copy: Replica) -> None:
        self.generation += 1
        self.replica = Replica(client_id_for(self.author.device.cert_id, self.generation))
        self.replica.apply_update(relay_copy.diff(self.replica.state_vector()))


async def test_a_party_over_the_slot_capacity_or_the_relay_limit_is_refused(relay: RelayProcess) -> None:
    with relay.client() as http:
        owner, guest = new_account(relay, http), new_account(relay, http)
        relay.cli_json("user", "grant", owner.email, "--owner", SHOP)
        await asyncio.sleep(1.5)  # the server picks up CLI changes by polling account events
        owner = login_device(relay, http, owner.email)  # a new certificate carries the grant
    shop_doc = f"shop:{SHOP}"
    co = await SyncClient.connect(relay, owner.access)
    shop = Replica(client_id_for(owner.author.device.cert_id, 0))
    await co.subscribe(shop_doc, shop)
    slots = [
        (template(owner.author, "small", 4), None),
        (template(owner.author, "hall", 30), None),
        (template(owner.author, "closed", 2, active=False), None),
    ]
    assert isinstance(await co.push(shop_doc, owner.author.put(shop, shop_doc, slots)), Acked)
    await co.close()

    cg = await SyncClient.connect(relay, guest.access)
    writer = Writer(guest.author)
    await cg.subscribe(DOC, writer.replica)

    async def book(slot: str, party: int) -> Acked | ErrorReceived:
        _, update = guest.author.book(writer.replica, DOC, slot, party)
        answer = await cg.push(DOC, update)
        if isinstance(answer, ErrorReceived):
            relay_copy = Replica()
            probe = await SyncClient.connect(relay, guest.access)
            await probe.subscribe(DOC, relay_copy)
            await probe.close()
            writer.refused(relay_copy)
        return answer

    over_capacity = await book("small", 5)
    assert isinstance(over_capacity, ErrorReceived) and not over_capacity.retry
    assert over_capacity.reason.startswith("party_too_large"), over_capacity.reason
    assert "4 seats" in over_capacity.reason
    over_limit = await book("hall", MAX_PARTY + 1)  # fits the hall, but not this relay's --max-party
    assert isinstance(over_limit, ErrorReceived) and over_limit.reason.startswith("party_too_large")
    assert f"limit of {MAX_PARTY}" in over_limit.reason
    unknown_and_huge = await book("nosuchslot", MAX_PARTY + 1)
    assert isinstance(unknown_and_huge, ErrorReceived) and unknown_and_huge.reason.startswith(
        "party_too_large"
    )
    # What can be seated is stored, and so is a claim on a slot that is not open: it waits.
    assert isinstance(await book("small", 4), Acked)
    assert isinstance(await book("hall", MAX_PARTY), Acked)
    assert isinstance(await book("closed", 3), Acked)
    assert isinstance(await book("nosuchslot", 3), Acked)
    await cg.close()


def test_max_party_is_a_serve_flag_with_a_default_of_20(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    assert config_from_args(parser.parse_args(["serve"])).sync.max_party == SyncLimits().max_party == 20
    assert config_from_args(parser.parse_args(["serve", "--max-party", "8"])).sync.max_party == 8
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "--max-party N largest party one reservation may have" in shown
    assert "refused with party_too_large (default: 20)" in shown
