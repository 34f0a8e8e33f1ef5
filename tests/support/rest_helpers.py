"""Helpers for tests of the REST sync API (``relay.http.rest_sync``): signed writes posted with
``POST /api/v1/sync/batch``, calls with a proof of possession, a seeded catalogue."""

from __future__ import annotations

import base64
import time
from typing import Any

import httpx
import msgpack

from crdt_core.authoring import Author
from crdt_core.clientids import client_id_for
from crdt_core.engine import Replica
from crdt_core.pop import rest
from crdt_core.schema import Category, ShopSummary
from tests.support.relay_process import RelayProcess
from tests.support.sync_helpers import Account, login_device, new_account, token_headers


class Writer:
    """One account's device, writing each document under its first Yjs client id (one replica per
    document, so its clocks never repeat)."""

    def __init__(self, account: Account) -> None:
        self.account = account
        self.replicas: dict[str, Replica] = {}
        self.uid = 0

    @property
    def author(self) -> Author:
        return self.account.author

    def replica(self, doc: str) -> Replica:
        if doc not in self.replicas:
            self.replicas[doc] = Replica(client_id_for(self.author.device.cert_id, 0))
        return self.replicas[doc]

    def put(self, doc: str, records: list[Any]) -> bytes:
        return self.author.put(self.replica(doc), doc, [(r, None) for r in records])

    def next_uid(self) -> int:
        self.uid += 1
        return self.uid


def call(http: httpx.Client, account: Account, method: str, path: str, **kwargs: Any) -> httpx.Response:
    headers = {**token_headers(account.access, rest(method, path)), **kwargs.pop("headers", {})}
    return http.request(method, path, headers=headers, **kwargs)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def post_batch(
    http: httpx.Client, account: Account, items: list[tuple[str, int, bytes]], *, binary: bool = False
) -> list[dict[str, Any]]:
    if binary:
        body = msgpack.packb({"updates": [{"doc": d, "uid": u, "update": x} for d, u, x in items]})
        r = call(
            http,
            account,
            "POST",
            "/api/v1/sync/batch",
            content=body,
            headers={"Content-Type": "application/msgpack", "Accept": "application/msgpack"},
        )
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/msgpack"
        results: list[dict[str, Any]] = msgpack.unpackb(r.content)["results"]
        return results
    r = call(
        http,
        account,
        "POST",
        "/api/v1/sync/batch",
        json={"updates": [{"doc": d, "uid": u, "update": b64(x)} for d, u, x in items]},
    )
    assert r.status_code == 200, r.text
    out: list[dict[str, Any]] = r.json()["results"]
    return out


def admin(relay: RelayProcess, http: httpx.Client) -> Writer:
    account = new_account(relay, http)
    relay.cli_json("user", "grant", account.email, "--admin")
    time.sleep(0.6)  # the server picks up CLI changes by polling account events
    return Writer(login_device(relay, http, account.email))  # a new certificate carries the role


def seed_catalogue(relay: RelayProcess, http: httpx.Client, categories: list[str], n_shops: int) -> Writer:
    """An admin, and a catalogue of ``categories`` and ``n_shops`` shops (``s0000``...) spread over
    them, written through ``/batch``."""
    w = admin(relay, http)
    hlc = w.author.hlc
    cats = [Category(id=c, name=c.title(), icon=None, hlc=hlc()) for c in categories]
    shops = [
        ShopSummary(
            id=f"s{n:04d}", name=f"Shop {n:04d}", category=categories[n % len(categories)],
            location=f"Street {n % 7}", lat=48.0, lon=2.0, rating=None, active=True, hlc=hlc(),
        )
        for n in range(n_shops)
    ]  # fmt: skip
    items = [("catalog", w.next_uid(), w.put("catalog", cats))]
    items += [("catalog", w.next_uid(), w.put("catalog", shops[i : i + 50])) for i in range(0, n_shops, 50)]
    results = post_batch(http, w.account, items)
    assert [r["status"] for r in results] == ["ack"] * len(items), results
    return w
