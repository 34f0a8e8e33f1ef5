"""Deterministic client profiles: a logged-in customer, a shop with slots, a catalog, a busy day.

Why build profiles from signed documents instead of inserting rows: what a booking or a query
costs depends on what a profile really holds (documents with certificates and signatures, their
update logs, projection rows written in the same transaction), so every profile here is made
through the client's own API: ``apply_remote_batch`` validates, stores and projects, exactly as
a sync does. The records are signed with the fixtures' deterministic keys and frozen clock
(``benchmarks.fixtures``), so two runs build byte-identical documents. Building is untimed and
done once per size; each timed round works on a copy of the built profile, so every round starts
from the same state.
"""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from benchmarks.fixtures import DOC, NOW_MS, RELAY, SHOP, SLOTS, booking_day
from client.local.client import LocalClient
from client.storage.secrets import SecretStore
from crdt_core.authoring import Author
from crdt_core.certs import DeviceKey, issue_certificate, public_bytes
from crdt_core.engine import Replica
from crdt_core.hlc import HybridClock
from crdt_core.schema import Category, DocId, ShopProfile, ShopSummary, SlotTemplate, TypedRecord

__all__ = [
    "ADMIN",
    "CATEGORIES",
    "DOC",
    "ME",
    "SHOP",
    "SLOTS",
    "BuiltProfile",
    "build_profile",
    "catalog_update",
    "copy_profile",
    "open_profile",
    "shop_rows",
    "shop_update",
]

ADMIN = "bench-admin"
"""Signs the catalog and the shop's slots: an admin who also owns the benchmark shop."""
ME = "bench-me"
"""The profile's own user: a customer with no other rights."""
CATEGORIES = tuple(f"cat-{i:02d}" for i in range(20))
#: Seats per slot, as in ``fixtures.booking_day``'s verdict checks: a busy day waitlists most claims.
CAPACITY = 6
HOUR_MS = 3_600_000

ShopRow = tuple[str, str, str, str, float, float, float, int]


@cache
def certified(user_id: str, *, admin: bool = False) -> DeviceKey:
    """A device key (deterministic, from the user id) with a relay certificate valid around NOW_MS."""
    import hashlib

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(f"client-bench-{user_id}".encode()).digest())
    cert = issue_certificate(
        RELAY,
        user_id=user_id,
        roles=["admin"] if admin else [],
        owner_of=[SHOP] if admin else [],
        staff_of=[],
        device_public_key=public_bytes(key),
        issued_at_ms=NOW_MS - HOUR_MS,
        expires_at_ms=NOW_MS + 24 * HOUR_MS,
    )
    return DeviceKey(key, cert)


def _admin_author() -> Author:
    counter = itertools.count(1)
    clock = HybridClock(ADMIN, physical_ms=lambda: NOW_MS)
    return Author(ADMIN, certified(ADMIN, admin=True), clock, id_factory=lambda: f"a{next(counter)}")


def _signed(doc: DocId, records: Sequence[TypedRecord]) -> bytes:
    author = _admin_author()
    return author.put(Replica(author.client_id()), doc, [(r, None) for r in records])


@cache
def shop_update() -> bytes:
    """The benchmark shop's document: its profile and the twelve slots of ``fixtures.SLOTS``."""
    author_hlc = _admin_author().hlc()
    records: list[TypedRecord] = [
        ShopProfile(
            name="Bench Shop",
            description="",
            address="Main St 1",
            lat=1.0,
            lon=2.0,
            image_url=None,
            hours="8-20",
            hlc=author_hlc,
        )  # fmt: skip
    ]
    for slot in SLOTS:
        hour = int(slot.rsplit("-", 1)[1])
        records.append(
            SlotTemplate(
                id=slot,
                service="haircut",
                start=f"{hour:02d}:00",
                duration=60,
                capacity=CAPACITY,
                weekdays=None,
                active=True,
                hlc=author_hlc,
            )  # fmt: skip
        )
    return _signed(DocId.shop(SHOP), records)


def shop_rows(n: int) -> list[ShopRow]:
    """``n`` catalog entries spread evenly over :data:`CATEGORIES` (the benchmark shop is the first)."""
    rows: list[ShopRow] = []
    for i in range(n):
        shop_id = SHOP if i == 0 else f"shop-{i:05d}"
        name = f"Shop {(i * 7919) % 100_000:05d}"  # names not in id order, so ORDER BY name sorts
        rating = round((i * 37) % 50 / 10, 1)
        rows.append(
            (shop_id, name, CATEGORIES[i % len(CATEGORIES)], f"Street {i}", 45.0 + i % 100 / 1000,
             7.0 + i % 97 / 1000, rating, 1)
        )  # fmt: skip
    return rows


@cache
def catalog_update(n_shops: int) -> bytes:
    """The catalog: every category and ``n_shops`` shop summaries, signed by the admin, one update."""
    hlc = _admin_author().hlc()
    records: list[TypedRecord] = [Category(id=c, name=c.title(), icon=None, hlc=hlc) for c in CATEGORIES]
    for shop_id, name, category, location, lat, lon, rating, active in shop_rows(n_shops):
        records.append(
            ShopSummary(
                id=shop_id,
                name=name,
                category=category,
                location=location,
                lat=lat,
                lon=lon,
                rating=rating,
                active=bool(active),
                hlc=hlc,
            )  # fmt: skip
        )
    return _signed(DocId.catalog(), records)


async def open_profile(path: Path) -> LocalClient:
    """The profile at ``path`` with the fixtures' frozen clock and a file secret store (no keyring)."""
    return await LocalClient.open(path, now_ms=lambda: NOW_MS, secret_store=SecretStore(path, backend="file"))


@dataclass(frozen=True)
class BuiltProfile:
    path: Path
    reservations: int
    shops: int
    day_update_bytes: int


async def build_profile(path: Path, *, reservations: int, shops: int) -> BuiltProfile:
    """A logged-in customer's profile holding the catalog, the shop and a day of ``reservations``.

    The day is ``fixtures.booking_day``: other customers' reservations, a third of them
    staff-confirmed, one in eleven cancelled, 70% stamped by the relay.

    Raises:
        RuntimeError: the client refused one of the documents (the fixtures and the client disagree).
    """
    client = await open_profile(path)
    try:
        await client.set_relay_keys({RELAY.kid: RELAY.public})
        await client.set_identity(ME, certified(ME), {RELAY.kid: RELAY.public})
        batch = [(str(DocId.catalog()), catalog_update(shops)), (str(DocId.shop(SHOP)), shop_update())]
        day = b""
        if reservations:
            day = booking_day(reservations).replica.encode_state()
            batch.append((str(DOC), day))
        result = await client.apply_remote_batch(batch)
        if result.failed:
            raise RuntimeError(f"the client refused the benchmark documents: {result.failed}")
    finally:
        await client.close()
    return BuiltProfile(path, reservations, shops, len(day))


def copy_profile(template: Path, dest: Path) -> Path:
    """A fresh copy of a closed profile (its WAL was checkpointed into the file at close)."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(template, dest)
    return dest
