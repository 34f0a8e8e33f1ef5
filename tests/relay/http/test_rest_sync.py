"""The REST sync API (``relay.http.rest_sync``) against a real relay process over loopback.

Catalogue paging, filters, ETag/304 and gzip; a shop's detail and a day's seats (counts only);
bookings posted with ``POST /batch`` (JSON and msgpack): acked once durable, stamped, forwarded to
websocket subscribers, idempotent on retry, refused with the websocket's codes and reasons; bodies
that are malformed, oversized or of the wrong type get a JSON 4xx; ``check-updates`` brings a
client up to date within its byte budget over several calls. Every account's token is bound to
its device key, so every call also proves possession for its method and path.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from crdt_core.clientids import client_id_for
from crdt_core.engine import Replica
from crdt_core.pop import rest
from crdt_core.protocol import DocSynced, ErrorReceived, StampReceived, UpdateReceived
from crdt_core.reader import read_bookings
from crdt_core.schema import Category, Reservation, ShopProfile, ShopSummary, SlotTemplate
from tests.support.relay_process import GENEROUS_LIMITS, RelayProcess
from tests.support.rest_helpers import Writer, b64, call, post_batch, seed_catalogue
from tests.support.sync_helpers import SyncClient, fetch_document, new_account, token_headers

DAY = (dt.date.today() + dt.timedelta(days=4)).isoformat()
SHOP = "restshop"
CATEGORIES = ["bakery", "barber", "dentist", "gym", "spa"]
N_SHOPS = 250


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    data = tmp_path_factory.mktemp("rest-sync") / "data"
    with RelayProcess(data, *GENEROUS_LIMITS, "--events-poll", "0.2") as proc:
        yield proc


@pytest.fixture(scope="module")
def http(relay: RelayProcess) -> Iterator[httpx.Client]:
    with relay.client() as client:
        yield client


@pytest.fixture(scope="module")
def catalogue(relay: RelayProcess, http: httpx.Client) -> Writer:
    """An admin, and a catalogue of 5 categories and 250 shops written through ``/batch``."""
    return seed_catalogue(relay, http, CATEGORIES, N_SHOPS)


def test_catalogue_pages_in_id_order_with_filters(
    relay: RelayProcess, http: httpx.Client, catalogue: Writer
) -> None:
    reader = new_account(relay, http)
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 100}
        if cursor:
            params["cursor"] = cursor
        r = call(http, reader, "GET", "/api/v1/sync/shops", params=params)
        assert r.status_code == 200, r.text
        body = r.json()
        seen += [s["id"] for s in body["items"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == sorted(f"s{n:04d}" for n in range(N_SHOPS))

    r = call(http, reader, "GET", "/api/v1/sync/shops", params={"category": "gym", "limit": 500})
    assert {s["category"] for s in r.json()["items"]} == {"gym"} and len(r.json()["items"]) == 50
    r = call(http, reader, "GET", "/api/v1/sync/shops", params={"q": "shop 012", "limit": 500})
    assert [s["id"] for s in r.json()["items"]] == [f"s{n:04d}" for n in range(120, 130)]
    r = call(http, reader, "GET", "/api/v1/sync/categories")
    assert [c["id"] for c in r.json()["items"]] == CATEGORIES

    # updated_since: only what changed at or after that time.
    since = int(time.time() * 1000) + 5
    time.sleep(0.02)
    w = catalogue
    late = ShopSummary(
        id="s0007", name="Shop 0007 renamed", category="spa", location="Street 0", lat=1.0, lon=1.0,
        rating=4.5, active=True, hlc=w.author.hlc(),
    )  # fmt: skip
    assert (
        post_batch(http, w.account, [("catalog", w.next_uid(), w.put("catalog", [late]))])[0]["status"]
        == "ack"
    )
    r = call(http, reader, "GET", "/api/v1/sync/shops", params={"updated_since": since})
    assert [(s["id"], s["name"], s["rating"]) for s in r.json()["items"]] == [
        ("s0007", "Shop 0007 renamed", 4.5)
    ]

    r = call(http, reader, "GET", "/api/v1/sync/shops", params={"cursor": "!!not-ours!!"})
    assert r.status_code == 422 and r.json()["code"] == "bad_cursor"
    r = call(http, reader, "GET", "/api/v1/sync/shops", params={"limit": 0})
    assert r.status_code == 422 and r.json()["code"] == "validation_error"


def test_etag_304_cache_control_and_gzip(relay: RelayProcess, http: httpx.Client, catalogue: Writer) -> None:
    reader = new_account(relay, http)
    path = "/api/v1/sync/shops"
    r = call(http, reader, "GET", path, params={"limit": 100}, headers={"Accept-Encoding": "gzip"})
    assert r.status_code == 200
    assert r.headers["content-encoding"] == "gzip" and len(r.json()["items"]) == 100
    assert r.headers["cache-control"] == "private, no-cache"
    etag = r.headers["etag"]
    assert etag.startswith('W/"')

    r2 = call(http, reader, "GET", path, params={"limit": 100}, headers={"If-None-Match": etag})
    assert r2.status_code == 304 and r2.content == b"" and r2.headers["etag"] == etag
    # Small pages are not compressed; no Accept-Encoding, no gzip.
    small = call(http, reader, "GET", path, params={"limit": 1}, headers={"Accept-Encoding": "gzip"})
    assert "content-encoding" not in small.headers
    plain = call(http, reader, "GET", path, params={"limit": 100}, headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers and plain.json() == r.json()

    # A change of the catalogue changes the ETag: the old one no longer matches.
    w = catalogue
    cat = Category(id="florist", name="Florist", icon=None, hlc=w.author.hlc())
    assert (
        post_batch(http, w.account, [("catalog", w.next_uid(), w.put("catalog", [cat]))])[0]["status"]
        == "ack"
    )
    r3 = call(http, reader, "GET", path, params={"limit": 100}, headers={"If-None-Match": etag})
    assert r3.status_code == 200 and r3.headers["etag"] != etag

    # The same auth as the rest of the API: a bound token without its proof is refused.
    r4 = http.get(path, headers={"Authorization": f"Bearer {reader.access}"})
    assert r4.status_code == 401 and r4.json()["code"] == "proof_required"
    assert http.get(path).status_code == 401


@pytest.fixture(scope="module")
def shop(relay: RelayProcess, http: httpx.Client, catalogue: Writer) -> Writer:
    """``SHOP`` in the catalogue, with a profile and two slots (capacity 3 and 1)."""
    w = catalogue
    hlc = w.author.hlc
    summary = ShopSummary(
        id=SHOP, name="REST shop", category="barber", location="Main St", lat=1.0, lon=2.0, rating=None,
        active=True, hlc=hlc(),
    )  # fmt: skip
    profile = ShopProfile(
        name="REST shop", description="Cuts", address="1 Main St", lat=1.0, lon=2.0, image_url=None,
        hours="9-17", hlc=hlc(),
    )  # fmt: skip
    slots = [
        SlotTemplate(id="morning", service="cut", start="09:00", duration=30, capacity=3, weekdays=None,
                     active=True, hlc=hlc()),
        SlotTemplate(id="noon", service="shave", start="12:00", duration=15, capacity=1, weekdays=None,
                     active=True, hlc=hlc()),
    ]  # fmt: skip
    doc = f"shop:{SHOP}"
    items = [
        ("catalog", w.next_uid(), w.put("catalog", [summary])),
        (doc, w.next_uid(), w.put(doc, [profile, *slots])),
    ]
    assert [r["status"] for r in post_batch(http, w.account, items)] == ["ack", "ack"]
    return w


async def test_batch_booking_is_acked_stamped_forwarded_and_idempotent(
    relay: RelayProcess, http: httpx.Client, shop: Writer
) -> None:
    doc = f"bookings:{SHOP}:{DAY}"
    watcher = new_account(relay, http)
    ws = await SyncClient.connect(relay, watcher.access)
    seen = Replica()
    assert isinstance(await ws.subscribe(doc, seen), DocSynced)

    alice = Writer(new_account(relay, http))
    res, update = alice.author.book(alice.replica(doc), doc, "morning", 2)
    uid = alice.next_uid()
    (first,) = post_batch(http, alice.account, [(doc, uid, update)])
    assert first["status"] == "ack" and first["duplicate"] is False, first
    assert [s["reservation"] for s in first["stamps"]] == [res.id]
    assert first["stamp_update"]

    # Forwarded to the websocket subscriber, with its stamps, as a websocket booking is.
    got = await ws.next_event(UpdateReceived)
    seen.apply_update(got.update)
    stamped = await ws.next_event(StampReceived)
    seen.apply_update(stamped.update)
    assert [rid for _, rid in stamped.stamps] == [res.id]
    assert stamped.update == base64.b64decode(first["stamp_update"])
    assert read_bookings(seen, doc).reservations[res.id].customer == alice.account.user_id

    # A retried batch: the same answer, never applied twice.
    (again,) = post_batch(http, alice.account, [(doc, uid, update)])
    assert again == {**first, "replayed": True}
    # The same update under a new uid (say after a relay restart): acked by content, same stamp.
    (other,) = post_batch(http, alice.account, [(doc, alice.next_uid(), update)])
    assert other["status"] == "ack" and other["duplicate"] is True
    assert [(s["no"], s["reservation"]) for s in other["stamps"]] == [
        (s["no"], s["reservation"]) for s in first["stamps"]
    ]
    relay_copy = await fetch_document(relay, watcher.access, doc)
    assert list(read_bookings(relay_copy, doc).reservations) == [res.id]
    assert len(read_bookings(relay_copy, doc).stamps) == 1
    events = await ws.drain_into(seen, quiet=0.3)
    assert not [e for e in events if isinstance(e, (UpdateReceived, StampReceived))]  # nothing re-sent

    # msgpack both ways; several documents in one request.
    bob = Writer(new_account(relay, http))
    other_day = f"bookings:{SHOP}:{(dt.date.fromisoformat(DAY) + dt.timedelta(days=1)).isoformat()}"
    r1, u1 = bob.author.book(bob.replica(doc), doc, "morning", 2)
    r2, u2 = bob.author.book(bob.replica(other_day), other_day, "noon", 1)
    results = post_batch(http, bob.account, [(doc, 1, u1), (other_day, 2, u2)], binary=True)
    assert [(r["doc"], r["uid"], r["status"]) for r in results] == [(doc, 1, "ack"), (other_day, 2, "ack")]
    assert isinstance(results[0]["stamp_update"], bytes)
    assert [s["reservation"] for s in results[1]["stamps"]] == [r2.id]

    # The day's seats: morning holds 2 (alice) and bob's party of 2 waits; no identities shown.
    viewer = new_account(relay, http)
    r = call(http, viewer, "GET", f"/api/v1/sync/shops/{SHOP}/days/{DAY}")
    assert r.status_code == 200, r.text
    slots = {s["slot"]: s for s in r.json()["slots"]}
    assert slots["morning"] | {} == {
        "slot": "morning", "service": "cut", "start": "09:00", "duration": 30, "capacity": 3,
        "seats_taken": 2, "seats_left": 1, "confirmed": 1, "waitlisted": 1,
    }  # fmt: skip
    assert slots["noon"]["seats_left"] == 1
    for secret in (alice.account.user_id, bob.account.user_id, res.id, r1.id):
        assert secret not in r.text
    etag = r.headers["etag"]
    assert call(http, viewer, "GET", f"/api/v1/sync/shops/{SHOP}/days/{DAY}",
                headers={"If-None-Match": etag}).status_code == 304  # fmt: skip
    assert call(http, viewer, "GET", f"/api/v1/sync/shops/{SHOP}/days/2026-02-30").status_code == 422
    await ws.close()


def test_shop_detail(relay: RelayProcess, http: httpx.Client, shop: Writer) -> None:
    viewer = new_account(relay, http)
    r = call(http, viewer, "GET", f"/api/v1/sync/shops/{SHOP}")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["summary"]["name"] == "REST shop" and body["profile"]["address"] == "1 Main St"
    assert body["services"] == ["cut", "shave"]
    assert [s["id"] for s in body["slots"]] == ["morning", "noon"]
    r = call(http, viewer, "GET", "/api/v1/sync/shops/nosuchshop")
    assert r.status_code == 404 and r.json()["code"] == "not_found"


async def test_batch_refusals_carry_the_websockets_codes_and_reasons(
    relay: RelayProcess, http: httpx.Client, shop: Writer
) -> None:
    doc = f"bookings:{SHOP}:{DAY}"
    mallory, victim = Writer(new_account(relay, http)), new_account(relay, http)
    forged = Reservation(
        id="forged1", slot="morning", party=1, customer=victim.user_id, hlc=mallory.author.hlc()
    )
    bad = mallory.author.put(Replica(client_id_for(mallory.author.device.cert_id, 1)), doc, [(forged, None)])
    results = post_batch(
        http,
        mallory.account,
        [
            (doc, 1, bad),
            (doc, 2, b"\x01\x02\x03"),
            ("nonsense:doc", 3, b"\x00\x00"),
            (f"user:{victim.user_id}", 4, b"\x00\x00"),
        ],
    )
    assert [r["status"] for r in results] == ["error"] * 4
    assert [r["code"] for r in results] == ["rejected", "rejected", "bad_doc", "forbidden"]
    assert results[0]["reason"].startswith("forbidden") and results[0]["retry"] is False

    # The websocket refuses the same bytes with the same code and reason.
    ws = await SyncClient.connect(relay, mallory.account.access)
    await ws.subscribe(doc, Replica())
    for result, update in ((results[0], bad), (results[1], b"\x01\x02\x03")):
        answer = await ws.push(doc, update)
        assert isinstance(answer, ErrorReceived)
        assert (answer.code, answer.reason) == (result["code"], result["reason"])
    await ws.close()
    # Refusals are not remembered: the same uid with a valid update goes through.
    _, good = mallory.author.book(mallory.replica(doc), doc, "noon", 1)
    (ok,) = post_batch(http, mallory.account, [(doc, 1, good)])
    assert ok["status"] == "ack" and "replayed" not in ok


def test_batch_refuses_impossible_parties_as_the_websocket_does(
    relay: RelayProcess, http: httpx.Client, shop: Writer
) -> None:
    """A party over its slot's capacity (noon seats 1) or over --max-party (default 20) is refused
    ``party_too_large`` over HTTP too: the batch once ordered updates without the party limits."""
    doc = f"bookings:{SHOP}:{DAY}"
    carol = Writer(new_account(relay, http))
    over_slot = carol.author.book(carol.replica(doc), doc, "noon", 2)[1]
    dave = Writer(new_account(relay, http))
    over_limit = dave.author.book(dave.replica(doc), doc, "morning", 21)[1]
    (slot_answer,) = post_batch(http, carol.account, [(doc, 1, over_slot)])
    (limit_answer,) = post_batch(http, dave.account, [(doc, 1, over_limit)])
    for answer in (slot_answer, limit_answer):
        assert answer["status"] == "error" and answer["code"] == "rejected", answer
        assert answer["reason"].startswith("party_too_large"), answer


def test_bad_bodies_get_json_4xx(relay: RelayProcess, http: httpx.Client) -> None:
    user = new_account(relay, http)
    path = "/api/v1/sync/batch"

    def post(**kwargs: Any) -> httpx.Response:
        return call(http, user, "POST", path, **kwargs)

    twice = {"doc": "catalog", "uid": 1, "update": "AA=="}
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"content": b"{not json", "headers": {"Content-Type": "application/json"}}, 400, "malformed_body"),
        ({"content": b"\xc1", "headers": {"Content-Type": "application/msgpack"}}, 400, "malformed_body"),
        ({"content": b"x", "headers": {"Content-Type": "text/plain"}}, 415, "unsupported_media_type"),
        ({"json": []}, 422, "validation_error"),
        ({"json": {"updates": []}}, 422, "validation_error"),
        ({"json": {"updates": [{"doc": "catalog", "uid": -1, "update": ""}]}}, 422, "validation_error"),
        ({"json": {"updates": [{"doc": "catalog", "uid": True, "update": ""}]}}, 422, "validation_error"),
        ({"json": {"updates": [{"doc": "catalog", "uid": 1, "update": "%%%"}]}}, 422, "validation_error"),
        ({"json": {"updates": [{"doc": "catalog", "uid": 1, "update": 5}]}}, 422, "validation_error"),
        ({"json": {"updates": [twice, twice]}}, 422, "validation_error"),
        ({"json": {"updates": [{"doc": 7, "uid": 1, "update": ""}]}}, 422, "validation_error"),
        ({"json": {"updates": [{"doc": "x", "uid": 1, "update": ""}] * 300}}, 422, "validation_error"),
        ({"content": b"[" * 100_000, "headers": {"Content-Type": "application/json"}}, 400, "malformed_body"),
        ({"content": b"0" * (4 * 1024 * 1024 + 1), "headers": {"Content-Type": "application/json"}}, 413,
         "payload_too_large"),
    ]  # fmt: skip
    for kwargs, status, code in cases:
        r = post(**kwargs)
        assert (r.status_code, r.json()["code"]) == (status, code), (kwargs.get("json"), r.text)
    big = b64(b"\x00" * (1024 * 1024 + 1))
    r = post(json={"updates": [{"doc": "catalog", "uid": 1, "update": big}]})
    assert r.status_code == 413 and r.json()["code"] == "payload_too_large"

    check = "/api/v1/sync/check-updates"
    for body, status in (
        ({"documents": "catalog"}, 422),
        ({"documents": [{"doc": "catalog", "state_vector": "@@"}]}, 422),
        ({"documents": [], "budget": 0}, 422),
        ({"documents": [], "cursor": "3.abc"}, 422),
    ):
        r = call(http, user, "POST", check, json=body)
        assert r.status_code == status and r.json()["code"] in ("validation_error", "bad_cursor"), r.text
    r = call(http, user, "POST", check, content=b"\x80", headers={"Content-Type": "application/msgpack"})
    assert r.status_code == 415 and r.json()["code"] == "unsupported_media_type"


async def test_check_updates_catches_a_client_up_within_its_budget(
    relay: RelayProcess, http: httpx.Client, shop: Writer
) -> None:
    # Twelve documents with bookings, a few KiB each.
    docs = [f"bookings:{SHOP}:{(dt.date.today() + dt.timedelta(days=30 + n)).isoformat()}" for n in range(12)]
    writer = Writer(new_account(relay, http))
    items = []
    for doc in docs:
        for slot in ("morning", "noon", "evening"):  # one active claim per customer per slot
            _, update = writer.author.book(writer.replica(doc), doc, slot, 1, note="x" * 300)
            items.append((doc, writer.next_uid(), update))
    assert {r["status"] for r in post_batch(http, writer.account, items)} == {"ack"}

    reader = new_account(relay, http)
    held = {doc: Replica() for doc in docs}
    unknown = f"user:{reader.user_id}"  # readable, empty: never "changed"
    budget = 4000
    calls, cursor = 0, None
    while True:
        body: dict[str, Any] = {
            "documents": [{"doc": d, "state_vector": b64(held[d].state_vector())} for d in docs]
            + [{"doc": unknown}],
            "budget": budget,
        }
        if cursor is not None:
            body["cursor"] = cursor
        r = call(http, reader, "POST", "/api/v1/sync/check-updates", json=body)
        assert r.status_code == 200, r.text
        answer = r.json()
        calls += 1
        sent = [e for e in answer["documents"] if e.get("update")]
        assert sent, answer  # every call makes progress
        assert answer["bytes"] <= budget or len(sent) == 1
        for e in sent:
            held[e["doc"]].apply_update(base64.b64decode(e["update"]))
        cursor = answer["next_cursor"]
        if cursor is None:
            break
        assert calls < 20
    assert calls >= 3  # the budget split the catch-up
    for doc in docs:
        assert len(read_bookings(held[doc], doc).reservations) == 3
        assert len(read_bookings(held[doc], doc).stamps) == 3

    # Caught up: nothing changed, nothing sent.
    body = {"documents": [{"doc": d, "state_vector": b64(held[d].state_vector())} for d in docs]}
    answer = call(http, reader, "POST", "/api/v1/sync/check-updates", json=body).json()
    assert {e["status"] for e in answer["documents"]} == {"unchanged"}
    assert answer["bytes"] == 0 and answer["next_cursor"] is None

    # One more booking: exactly that document is reported, with its diff.
    _, update = writer.author.book(writer.replica(docs[5]), docs[5], "late", 1)
    assert post_batch(http, writer.account, [(docs[5], writer.next_uid(), update)])[0]["status"] == "ack"
    answer = call(http, reader, "POST", "/api/v1/sync/check-updates", json=body).json()
    changed = [e["doc"] for e in answer["documents"] if e["status"] == "changed"]
    assert changed == [docs[5]]
    forbidden = call(
        http, reader, "POST", "/api/v1/sync/check-updates", json={"documents": [{"doc": "user:someoneelse"}]}
    ).json()
    assert forbidden["documents"][0]["code"] == "forbidden"


async def test_concurrent_duplicate_posts_apply_once(
    relay: RelayProcess, http: httpx.Client, shop: Writer
) -> None:
    doc = f"bookings:{SHOP}:{DAY}"
    carol = Writer(new_account(relay, http))
    res, update = carol.author.book(carol.replica(doc), doc, "noon", 1)
    path = "/api/v1/sync/batch"
    body = {"updates": [{"doc": doc, "uid": 42, "update": b64(update)}]}
    async with httpx.AsyncClient(base_url=relay.base_url, timeout=10) as client:
        answers = await asyncio.gather(
            *(client.post(path, json=body, headers=token_headers(carol.account.access, rest("POST", path)))
              for _ in range(5))
        )  # fmt: skip
    results = [a.json()["results"][0] for a in answers]
    assert {r["status"] for r in results} == {"ack"}
    assert len({(s["no"], s["reservation"]) for r in results for s in r["stamps"]}) == 1
    copy = await fetch_document(relay, carol.account.access, doc)
    assert [s.reservation for s in read_bookings(copy, doc).stamps.values()].count(res.id) == 1
