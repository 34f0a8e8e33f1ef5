"""The same-work Hocuspocus baseline does the work it is credited with.

Why: the relay suite compares QuickSlot with this server as "the same work" (a JWT checked on
connect, every record's Ed25519 signature verified before an update is applied, SQLite
persistence). A baseline whose hook silently accepted everything would make that comparison a
lie nobody notices, since the suite only counts deliveries. So: a real relay issues the token
and the certificate; a signed booking is accepted and echoed; a booking signed for another
document (its signature does not cover this one) is refused and closes the connection; a token
that is not the relay's is denied; and the accepted record reaches the SQLite file. Skipped,
with the reason, where Node or the npm packages cannot be had.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest
import websockets

from benchmarks.relay_bench import servers
from benchmarks.relay_bench.payloads import (
    EMPTY_SV,
    HP_AUTH,
    YJS_STEP1,
    YJS_UPDATE,
    bookings_doc,
    hocuspocus_auth,
    hocuspocus_message,
    marker,
    quickslot_updates,
    read_varuint,
    strip_hocuspocus,
    yjs_message,
)

AUTHENTICATED, PERMISSION_DENIED = 2, 1


async def _session(url: str, doc: str, token: str, updates: list[bytes]) -> tuple[int | None, list[bytes]]:
    """Authenticate, sync, send ``updates``; returns (auth answer, echoed updates) once quiet."""
    auth: int | None = None
    echoes: list[bytes] = []
    async with websockets.connect(url, compression=None) as ws:
        await ws.send(hocuspocus_auth(doc, token))
        await ws.send(hocuspocus_message(doc, yjs_message(YJS_STEP1, EMPTY_SV)))
        for u in updates:
            await ws.send(hocuspocus_message(doc, yjs_message(YJS_UPDATE, u)))
        try:
            while True:
                data = await asyncio.wait_for(ws.recv(), 3)
                assert isinstance(data, bytes)
                inner = strip_hocuspocus(data)
                if inner[0] == HP_AUTH:
                    auth = inner[1]
                elif inner[0] in (0, 4) and inner[1] == YJS_UPDATE:  # Sync, or SyncReply to the sender
                    n, pos = read_varuint(inner, 2)
                    echoes.append(inner[pos : pos + n])
        except (TimeoutError, websockets.ConnectionClosed):
            pass
    return auth, echoes


def test_samework_hocuspocus_checks_tokens_and_signatures_and_persists(tmp_path: Path) -> None:
    relay = servers.QuickSlotAsgi(tmp_path)
    same = servers.HocuspocusSameWork(tmp_path, relay)
    relay.start()
    try:
        try:
            same.start()
        except servers.Unavailable as exc:
            pytest.skip(f"same-work Hocuspocus unavailable: {exc}")
        (ident,) = relay.ensure_identities(1)
        doc, other = bookings_doc("samework"), bookings_doc("elsewhere")
        good = quickslot_updates(ident, doc, 0, range(2))
        url = same.url(doc)

        auth, echoes = asyncio.run(_session(url, doc, ident.access, good))
        assert auth == AUTHENTICATED
        assert echoes == good  # both verified, applied and broadcast (to the sender too)

        # Records signed for another document: the signature does not cover this one.
        forged = quickslot_updates(ident, other, 0, [5])
        auth, echoes = asyncio.run(_session(url, doc, ident.access, forged))
        assert auth == AUTHENTICATED and echoes == []
        assert "bad signature" in same.process.log_tail()

        auth, echoes = asyncio.run(_session(url, doc, ident.access[:-4] + "AAAA", good))
        assert auth == PERMISSION_DENIED and echoes == []

        deadline = time.monotonic() + 15  # the extension stores after its debounce (2 s)
        stored = b""
        while time.monotonic() < deadline and marker(0, 1).encode() not in stored:
            time.sleep(0.5)
            with sqlite3.connect(tmp_path / "hocuspocus-samework.sqlite") as db:
                row = db.execute("SELECT data FROM documents WHERE name = ?", (doc,)).fetchone()
            stored = bytes(row[0]) if row else b""
        assert marker(0, 0).encode() in stored and marker(0, 1).encode() in stored
        assert marker(0, 5).encode() not in stored
    finally:
        same.stop()
        relay.stop()
