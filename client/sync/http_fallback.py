"""Sync over plain HTTP, for networks that block websockets (the relay's REST sync API).

Why a second transport: some corporate proxies and captive networks answer a websocket upgrade
with an HTTP error, refuse it, or drop it before the first message, while ordinary HTTPS passes.
The relay serves the same sync over ``POST /api/v1/sync/batch`` and
``POST /api/v1/sync/check-updates`` (docs/relay.md, "REST sync API"), so a profile behind such a
network still books, cancels and learns its verdicts.

What one HTTP sync does, step for step what a websocket ``sync`` does (client/sync/service.py):

* **Epoch.** ``GET /api/v1/sync/status`` names the relay's store epoch; a new one resets the
  cursors (``Store.reset_for_epoch``) and every held document's state is sent again.
* **Catch-up.** Every followed document (and every one awaiting a rebuild, with an empty state
  vector so the answer is the relay's whole document) goes through ``check-updates``, following
  ``next_cursor`` until the relay says done. Diffs go through ``LocalClient.apply_remote_batch``,
  the websocket's validation path, so the same booking events are emitted. A diff that does not
  apply queues the document for a rebuild (``relay_update_conflict``), as on the websocket.
* **Repair.** For a changed document the answer carries the relay's state vector; the local diff
  against it goes out as an extra update (uid above every outbox id), as the websocket's
  catch-up diff does.
* **Outbox.** Due pending entries go to ``batch`` in outbox order, several per request; the uid
  of each is its entry id. An ack marks the entry acked and its ``stamp_update`` is applied; a
  refusal is handled exactly as the websocket's ``err`` (``mark_rejected``, or ``mark_retry`` on
  the retry timer; ``unknown_certificate`` behind an earlier pending entry waits for it), and a
  refused write's document is rebuilt from the relay's (``LocalClient.rebuild_from_relay``) and
  its re-written entries flushed at once. The relay answers a retried uid with the same ack, so
  a request lost in flight is simply sent again.
* **Stamps and verdicts.** After the flush, the documents written to are caught up once more:
  an ack of an update the relay already held (``duplicate``) carries no stamp update, and other
  devices' claims decide the verdict too.

Auth: the profile's bound access token with a proof of possession made for each call's method
and path (``crdt_core.pop``); ``token_expired`` refreshes and retries, ``proof_stale`` learns the
relay's clock and retries once, any other 401 means log in again (the websocket's 4003/4010).

Fallback (``transport="auto"``, :class:`client.sync.service.SyncService`): when the websocket cannot be
opened (connection refused on the upgrade, an HTTP error status answering it, a broken
handshake, a 1006 before the first message) *and* the relay answers plain HTTP, the sync uses
this module; a watch loop polls ``check-updates`` every ``http_poll_s`` seconds and tries the
websocket again every ``ws_retry_s`` seconds. A TLS failure never falls back (nor does anything
fall back to ``http://``). When plain HTTP fails too the relay is down, and the websocket's
reconnect loop handles it as before.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

import msgpack
import websockets

from client.local.events import RelayUnreachable
from client.log import get_logger, log_event
from client.storage.store import OutboxEntry
from client.sync.base import _EMPTY_SV, _EMPTY_UPDATE, _EXTRA_UID_BASE, SyncSummary, rebuild_doc
from client.sync.errors import (
    SyncLoginRequired,
    SyncRelayInsecure,
    SyncRelayUnreachable,
    SyncStopped,
    SyncWebsocketBlocked,
)
from client.sync.service import SyncService
from client.sync.tls import tls_failure
from crdt_core.errors import ValidationError
from crdt_core.messages import ErrorCode
from crdt_core.pop import STALE_REASON, proof_headers, rest

if TYPE_CHECKING:
    import httpx

__all__ = ["TRANSPORTS", "HttpSync", "http_reachable", "run_with_fallback", "sync_once_with_fallback"]

log = get_logger(__name__)

#: ``--transport`` values: try the websocket and fall back to HTTP, or use only one of them.
TRANSPORTS = ("auto", "websocket", "http")
BATCH_PATH = "/api/v1/sync/batch"
CHECK_PATH = "/api/v1/sync/check-updates"
STATUS_PATH = "/api/v1/sync/status"
MSGPACK = "application/msgpack"
#: The relay's limits on ``batch`` (256 updates, 4 MiB) and ``check-updates`` (1,000 documents).
_BATCH_UPDATES = 256
_BATCH_BYTES = 3 * 1024 * 1024
_CHECK_DOCS = 1000
#: Bytes of diffs asked for per ``check-updates`` call.
_BUDGET = 1024 * 1024
#: Flush and catch-up rounds of one sync before the rest waits for the next (a guard, not a limit
#: any healthy exchange reaches: a rebuild's entries need one more round).
_MAX_ROUNDS = 6


def websocket_blocked(exc: BaseException) -> str | None:
    """Why a failure to open the websocket looks like a network that blocks websockets, or None.

    TLS failures are never "blocked": the same certificate would fail over HTTP, and waiting or
    switching transport must not hide a possible attack.
    """
    if tls_failure(exc) is not None:
        return None
    if isinstance(exc, websockets.InvalidStatus):
        return f"the websocket upgrade was answered with HTTP {exc.response.status_code}"
    if isinstance(exc, websockets.InvalidHandshake):
        return f"the websocket handshake failed ({exc})"
    if isinstance(exc, websockets.ConnectionClosed):
        return "the connection closed during the websocket handshake"
    if isinstance(exc, (ConnectionRefusedError, ConnectionResetError)):
        return f"the websocket connection failed ({exc.__class__.__name__})"
    return None


async def http_reachable(svc: SyncService, timeout_s: float = 5.0) -> bool:
    """Whether the relay answers plain HTTP (its unauthenticated sync status)."""
    import httpx

    try:
        async with _client(svc, timeout_s) as http:
            return (await http.get(STATUS_PATH)).status_code == 200
    except httpx.HTTPError:
        return False


def _client(svc: SyncService, timeout_s: float) -> httpx.AsyncClient:
    import httpx

    verify = svc.ssl_context if svc.ssl_context is not None else True
    return httpx.AsyncClient(base_url=svc.relay_url, timeout=timeout_s, verify=verify)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)


def _error_code(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"http_{response.status_code}"
    if isinstance(body, dict) and isinstance(body.get("code"), str):
        return str(body["code"])
    return f"http_{response.status_code}"


class HttpSync:
    """One profile's sync over HTTP; shares the :class:`SyncService`'s auth, retry timers and events.

    Why one class of ~420 lines: catch-up, flush and their answers walk one ``SyncSummary`` and one
    HTTP client through one round, the way :class:`~client.sync.session._Session` does over the
    websocket; splitting it would pass the round's state between halves without making either
    simpler.
    """

    def __init__(self, svc: SyncService) -> None:
        self.svc = svc
        self.local = svc.local
        self.summary = SyncSummary(svc.relay_url)
        self._http: httpx.AsyncClient | None = None
        self._clock_checked = False
        self._next_extra = _EXTRA_UID_BASE
        #: Repair updates to send before the outbox: (doc, uid, update, what).
        self._extras: list[tuple[str, int, bytes, str]] = []
        #: Documents the relay refused to serve this profile: doc -> reason.
        self.refused: dict[str, str] = {}
        #: Documents to catch up after the flush (written to, missing deps, rebuilds).
        self._follow: set[str] = set()
        #: Documents rebuilt (or tried) after a relay update did not fit: once per sync.
        self._repaired: set[str] = set()
        #: Documents queued for a rebuild during a catch-up: fetched whole right after it.
        self._follow_rebuild: set[str] = set()

    # --- requests --------------------------------------------------------------------------------

    async def _post(self, path: str, *, body: bytes, content_type: str, accept: str) -> httpx.Response:
        """POST with the bound token and a proof for this path; refresh or re-clock on 401."""
        import httpx

        assert self._http is not None
        svc = self.svc
        for _ in range(3):
            try:
                token = await svc.auth.access_token()
            except Exception as exc:  # LoginRequired: no tokens stored
                await svc._logged_out()
                raise SyncLoginRequired(f"log in again ({exc})") from exc
            identity = self.local.identity
            try:
                headers = proof_headers(
                    token,
                    identity.device.private if identity else None,
                    rest("POST", path),
                    clock=svc.auth.proof_clock,
                )
            except ValueError as exc:
                await svc._logged_out()
                raise SyncLoginRequired(f"log in again ({exc})") from exc
            headers.update({"Content-Type": content_type, "Accept": accept})
            try:
                response = await self._http.post(path, content=body, headers=headers)
            except httpx.TransportError as exc:
                insecure = tls_failure(exc)
                if insecure is not None:
                    raise SyncRelayInsecure(insecure) from exc
                raise SyncRelayUnreachable(str(exc) or type(exc).__name__) from exc
            if response.status_code == 401:
                code = _error_code(response)
                if code == "token_expired":
                    await svc._refresh(self.summary)
                    continue
                if code == "proof_stale" and not self._clock_checked:
                    self._clock_checked = True
                    try:
                        await svc.auth.learn_relay_clock()
                    except Exception as exc:  # RelayUnavailable
                        raise SyncRelayUnreachable(f"relay clock unavailable: {exc}") from exc
                    continue
                await svc._logged_out()
                reason = STALE_REASON if code == "proof_stale" else code
                raise SyncLoginRequired(f"log in again ({reason})", 401)
            if response.status_code >= 500 or response.status_code == 429:
                raise SyncRelayUnreachable(f"relay answered {response.status_code} to {path}")
            if response.status_code in (404, 405):  # a relay from before the REST sync API
                raise SyncRelayUnreachable(
                    f"the relay does not serve sync over HTTP ({response.status_code})"
                )
            return response
        raise SyncLoginRequired("the relay keeps refusing fresh tokens: log in again")

    async def _check_epoch(self) -> list[str]:
        """The relay's store epoch, as the websocket's welcome gives it; returns docs to resend."""
        import httpx

        assert self._http is not None
        try:
            response = await self._http.get(STATUS_PATH)
        except httpx.TransportError as exc:
            insecure = tls_failure(exc)
            if insecure is not None:
                raise SyncRelayInsecure(insecure) from exc
            raise SyncRelayUnreachable(str(exc) or type(exc).__name__) from exc
        if response.status_code != 200:
            raise SyncRelayUnreachable(f"relay answered {response.status_code} to {STATUS_PATH}")
        epoch = str(response.json().get("store_epoch", ""))
        self.summary.epoch = epoch
        store, url = self.local.store, self.svc.relay_url
        stored = await store.get_epoch(url)
        if stored is None:
            await store.set_epoch(url, epoch)
        elif stored != epoch:
            log_event(log, "relay_new_epoch", logging.WARNING, relay=url, old=stored, new=epoch)
            self.summary.epoch_changed = True
            return list(await store.reset_for_epoch(url, epoch))
        return []

    # --- catching up -----------------------------------------------------------------------------

    async def catch_up(self, docs: Iterable[str], *, resend: Iterable[str] = ()) -> None:
        """``check-updates`` for ``docs`` until done; ``resend``: docs whose whole state goes back."""
        wanted = [d for d in dict.fromkeys(docs) if d not in self.refused]
        whole = set(resend)
        for start in range(0, len(wanted), _CHECK_DOCS):
            await self._catch_up_chunk(wanted[start : start + _CHECK_DOCS], whole)
        again = [d for d in await self.local.pending_rebuilds() if d in self._follow_rebuild]
        self._follow_rebuild = set()
        if again:
            await self.catch_up(again)

    async def _catch_up_chunk(self, docs: list[str], whole: set[str]) -> None:
        cursor: str | None = None
        while True:
            rebuilds = await self.local.pending_rebuilds()
            listed = []
            for doc in docs:
                sv = _EMPTY_SV if doc in rebuilds else await self.local.state_vector(doc)
                listed.append({"doc": doc, "state_vector": _b64(sv)})
            body = {"documents": listed, "budget": _BUDGET, "cursor": cursor}
            response = await self._post(
                CHECK_PATH, body=_json(body), content_type="application/json", accept="application/json"
            )
            if response.status_code != 200:
                raise SyncStopped(f"check-updates refused: {response.status_code} {_error_code(response)}")
            answer = response.json()
            await self._on_check(answer.get("documents", []), rebuilds, whole)
            cursor = answer.get("next_cursor")
            if cursor is None:
                return

    async def _on_check(
        self, entries: list[dict[str, Any]], rebuilds: dict[str, str], whole: set[str]
    ) -> None:
        diffs: list[tuple[str, bytes, bytes]] = []
        for entry in entries:
            doc, status = str(entry.get("doc")), entry.get("status")
            if status == "error":
                reason = f"{entry.get('code')}: {entry.get('reason')}"
                self.refused[doc] = self.summary.refused_docs[doc] = reason
                log_event(log, "subscription_refused", logging.WARNING, doc=doc, reason=reason)
                continue
            if doc in rebuilds:
                if doc in self.summary.rebuild_failed:
                    continue  # tried in this sync already; the next one tries again
                if status == "unchanged":  # the relay holds nothing of it
                    await self._rebuild(doc, _EMPTY_UPDATE)
                elif entry.get("update") is not None:
                    await self._rebuild(doc, _unb64(entry["update"]))
                else:
                    continue  # its whole state comes with the next call
            elif status == "changed" and entry.get("update") is not None:
                diffs.append((doc, _unb64(entry["update"]), _unb64(entry.get("state_vector") or "")))
            elif status == "unchanged" and doc in whole:
                self._queue_extra(doc, await self.local.diff(doc, _EMPTY_SV), "state after a new epoch")
            if status == "unchanged" or doc in rebuilds:
                await self._save_cursor(doc, entry.get("seq"))
        if not diffs:
            return
        result = await self.local.apply_remote_batch([(d, u) for d, u, _sv in diffs])
        self.summary.applied += result.applied
        failed = {f.doc_id: f.error for f in result.failed}
        seqs = {str(e.get("doc")): e.get("seq") for e in entries}
        for doc, _update, relay_sv in diffs:
            await self._save_cursor(doc, seqs.get(doc))
            if doc in failed:
                log_event(log, "catch_up_refused_locally", logging.WARNING, doc=doc, error=str(failed[doc]))
                await self._conflict(doc, "the relay's catch-up", failed[doc])
                continue
            if relay_sv:
                self._queue_extra(doc, await self.local.diff(doc, relay_sv), "catch-up diff")

    async def _save_cursor(self, doc: str, seq: Any) -> None:
        if isinstance(seq, int):
            await self.local.store.set_last_seq(self.svc.relay_url, doc, seq)

    def _queue_extra(self, doc: str, update: bytes, what: str) -> None:
        if update == _EMPTY_UPDATE:
            return
        self._extras.append((doc, self._next_extra, update, what))
        self._next_extra += 1

    async def _conflict(self, doc: str, what: str, error: ValidationError) -> None:
        """A relay update did not apply here: rebuild ``doc`` from the relay's state (once)."""
        reason = f"{what} did not apply locally: {error.code}: {error.detail}"
        log_event(
            log, "relay_update_conflict", logging.WARNING, doc=doc, code=error.code, detail=error.detail
        )
        self.summary.conflicts[doc] = reason
        if doc in self._repaired:
            return
        self._repaired.add(doc)
        await self.local.request_rebuild(doc, reason)
        self._follow_rebuild.add(doc)

    async def _rebuild(self, doc: str, state: bytes) -> None:
        if not await rebuild_doc(self.svc, self.summary, doc, state):
            self._repaired.add(doc)

    # --- the outbox ------------------------------------------------------------------------------

    async def _due_entries(self) -> list[OutboxEntry]:
        rebuilds = await self.local.pending_rebuilds()
        now = time.monotonic()
        return [
            e
            for e in await self.local.pending_entries()
            if e.doc_id not in rebuilds and e.doc_id not in self.refused and self.svc._due(e.id, now)
        ]

    async def flush(self) -> int:
        """Send the queued repairs, then every due outbox entry in order; handle each answer."""
        items = [(doc, uid, update) for doc, uid, update, _what in self._extras]
        whats = {uid: what for _doc, uid, _update, what in self._extras}
        self._extras = []
        entries = {e.id: e for e in await self._due_entries()}
        items += [(e.doc_id, e.id, e.payload) for e in entries.values()]
        chunks: deque[list[tuple[str, int, bytes]]] = deque()
        chunk: list[tuple[str, int, bytes]] = []
        size = 0
        for item in items:
            if chunk and (len(chunk) >= _BATCH_UPDATES or size + len(item[2]) > _BATCH_BYTES):
                chunks.append(chunk)
                chunk, size = [], 0
            chunk.append(item)
            size += len(item[2]) + 64
        if chunk:
            chunks.append(chunk)
        sent = 0
        while chunks:
            chunk = chunks.popleft()
            body = msgpack.packb(
                {"updates": [{"doc": d, "uid": u, "update": p} for d, u, p in chunk]}, use_bin_type=True
            )
            response = await self._post(BATCH_PATH, body=body, content_type=MSGPACK, accept=MSGPACK)
            if response.status_code == 413 and len(chunk) > 1:
                half = len(chunk) // 2
                chunks.extendleft([chunk[half:], chunk[:half]])
                continue
            if response.status_code == 413:
                doc, uid, _payload = chunk[0]
                reason = f"larger than the relay accepts ({_error_code(response)})"
                if uid in entries:
                    await self.local.mark_rejected(uid, "too_big", reason)
                    self.summary.rejected.append((uid, "too_big", reason))
                    self._follow.add(doc)
                continue
            if response.status_code != 200:
                raise SyncStopped(f"batch refused: {response.status_code} {_error_code(response)}")
            sent += sum(1 for _d, u, _p in chunk if u in entries)
            for result in msgpack.unpackb(response.content, raw=False).get("results", []):
                await self._on_result(result, whats)
        self.summary.sent += sent
        return sent

    async def _on_result(self, result: dict[str, Any], whats: dict[int, str]) -> None:
        doc, uid = str(result.get("doc")), int(result.get("uid", -1))
        if result.get("status") == "ack":
            self._follow.add(doc)
            stamp = result.get("stamp_update")
            if isinstance(stamp, bytes) and stamp:
                applied = await self.local.apply_remote_batch([(doc, stamp)])
                self.summary.applied += applied.applied
                for failure in applied.failed:
                    log_event(
                        log, "stamps_refused_locally", logging.WARNING, doc=doc, error=str(failure.error)
                    )
                    if failure.error.code != "missing_deps":  # a catch-up repairs a gap
                        await self._conflict(doc, "the relay's stamps", failure.error)
            if uid >= _EXTRA_UID_BASE:
                return
            if await self.local.mark_acked(uid):
                self.summary.acked += 1
            self.svc._forget_retry(uid)
            return
        code, reason = str(result.get("code")), str(result.get("reason", ""))
        retry = bool(result.get("retry"))
        if uid >= _EXTRA_UID_BASE:
            log_event(
                log, "repair_refused", doc=doc, what=whats.get(uid, "repair update"), code=code, reason=reason
            )
            self.summary.repair_refused[doc] = f"{code}: {reason}"
            return
        if code in (ErrorCode.FORBIDDEN, ErrorCode.BAD_DOC):
            # The websocket refuses the subscription and never sends the entry: it stays pending.
            self.refused[doc] = self.summary.refused_docs[doc] = f"{code}: {reason}"
            return
        if not retry:
            if (
                code == ErrorCode.REJECTED
                and reason.startswith("unknown_certificate")
                and any(e.doc_id == doc and e.id < uid for e in await self.local.pending_entries())
            ):
                await self._retry_later(uid, code, reason)  # the certificate rides on an earlier one
                return
            entry = await self.local.mark_rejected(uid, code, reason)
            if entry is not None:
                self.summary.rejected.append((uid, code, reason))
            self.svc._forget_retry(uid)
            if doc in await self.local.pending_rebuilds():
                self._follow.add(doc)  # the writes behind it get a new client id
            return
        await self._retry_later(uid, code, reason)
        if code == ErrorCode.MISSING_DEPS:
            self._follow.add(doc)
        elif code == ErrorCode.RATE_LIMITED:
            self.svc._slow_down()

    async def _retry_later(self, uid: int, code: str, reason: str) -> None:
        await self.local.mark_retry(uid, f"{code}: {reason}")
        self.svc._schedule_retry(uid)
        self.svc.retry_count += 1

    # --- one round, and forever -------------------------------------------------------------------

    async def sync_once(self, timeout_s: float = 60.0, retry_window_s: float = 5.0) -> SyncSummary:
        """Catch up every followed document, flush the outbox, wait out due retries, catch up again.

        Raises:
            SyncRelayUnreachable: the relay did not answer (``RelayUnreachable`` emitted).
            SyncLoginRequired: tokens cleared, ``LoggedOut`` emitted.
        """
        try:
            return await asyncio.wait_for(self._round(retry_window_s, emit=True), timeout_s)
        except TimeoutError as exc:
            error = SyncRelayUnreachable("the relay did not answer in time")
            self.svc._report_unreachable(str(error), None)
            raise error from exc
        except SyncRelayUnreachable as exc:
            self.svc._report_unreachable(str(exc), None)
            raise

    async def _round(self, retry_window_s: float, *, emit: bool) -> SyncSummary:
        svc = self.svc
        self.summary = summary = SyncSummary(svc.relay_url)
        started = time.monotonic()
        async with _client(svc, svc.response_timeout_s) as http:
            self._http = http
            try:
                resend = await self._check_epoch()
                svc._report_reachable()
                docs = list(await self.local.subscribed_docs())
                docs += list(await self.local.pending_rebuilds())
                docs += [e.doc_id for e in await self.local.pending_entries()] + resend
                docs = list(dict.fromkeys(docs))
                await self.catch_up(docs, resend=resend)
                # The user's document may list days booked on other devices: fetch those too.
                more = [d for d in await self.local.subscribed_docs() if d not in docs]
                if more:
                    await self.catch_up(more)
                    docs += more
                retry_until = time.monotonic() + retry_window_s
                for _ in range(_MAX_ROUNDS):
                    self._follow = set()
                    await self.flush()
                    follow = self._follow | set(await self.local.pending_rebuilds())
                    if follow:
                        await self.catch_up(sorted(follow))
                    if self._extras or await self._due_entries():
                        continue  # a rebuild's entries, or repairs: at once
                    wait = svc._next_due_in()
                    if wait is None or time.monotonic() + wait > retry_until:
                        break
                    await asyncio.sleep(wait)
            finally:
                self._http = None
        summary.docs = tuple(sorted(d for d in docs if d not in self.refused))
        summary.pending = (await self.local.outbox_counts()).pending
        summary.retrying = len(svc._not_before)
        summary.duration_s = time.monotonic() - started
        svc.last_transport = "http"
        if emit:
            svc._emit_synced(summary)
        else:
            svc.last_sync_ms = int(time.time() * 1000)
        return summary

    async def run(self, until: float | None = None) -> None:
        """Poll until ``svc.stop()`` (or the monotonic time ``until``, then return to the websocket).

        A round runs every ``http_poll_s`` seconds, at once after a local write (``svc.wake()``),
        or when a retry is due. ``Synced`` is emitted after the first round and after each
        recovery, not every poll. With ``until`` set (auto), a relay that stops answering HTTP
        hands back to the websocket loop, which owns reconnecting.
        """
        svc = self.svc
        backoff = svc.backoff_initial_s
        announce = True
        while not svc._stop.is_set():
            if until is not None and time.monotonic() >= until:
                return
            svc._wake.clear()
            try:
                await self._round(0.0, emit=announce)
                announce = False
                backoff = svc.backoff_initial_s
                svc.connected.set()
            except SyncRelayUnreachable as exc:
                svc.connected.clear()
                delay = svc._jitter(backoff)
                svc._report_unreachable(str(exc), delay)
                if until is not None:
                    return
                announce = True
                backoff = min(backoff * 2, svc.backoff_max_s)
                await svc._sleep(delay)
                continue
            except SyncLoginRequired:
                return
            except SyncStopped as exc:  # the relay refused a well-formed request: a bug, not a blip
                log_event(log, "http_sync_stopped", logging.ERROR, error=str(exc))
                svc.local.emit(
                    RelayUnreachable(
                        at_ms=int(time.time() * 1000),
                        relay_url=svc.relay_url,
                        error=str(exc),
                        retry_in_s=None,
                    )
                )
                return
            wait = svc.http_poll_s
            due = svc._next_due_in()
            if due is not None:
                wait = min(wait, max(due, 0.05))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(svc._wake.wait(), wait)
        svc.connected.clear()


def _json(value: Any) -> bytes:
    import json

    return json.dumps(value, separators=(",", ":")).encode()


async def sync_once_with_fallback(
    svc: SyncService,
    over_websocket: Callable[[], Awaitable[SyncSummary]],
    timeout_s: float,
    retry_window_s: float,
) -> SyncSummary:
    """``sync_once`` for ``transport`` http or auto (the websocket first, HTTP when it is blocked)."""
    if svc.transport == "http":
        svc.transport_reason = "configured: --transport http"
        return await HttpSync(svc).sync_once(timeout_s, retry_window_s)
    try:
        summary = await over_websocket()
    except SyncWebsocketBlocked as exc:
        _blocked(svc, f"websocket blocked ({exc}); plain HTTP works")
        return await HttpSync(svc).sync_once(timeout_s, retry_window_s)
    svc.last_transport = "websocket"
    svc.transport_reason = "auto: the websocket opened"
    return summary


def _blocked(svc: SyncService, reason: str) -> None:
    """Remember and log why this round goes over plain HTTP (``quickslot status`` shows it)."""
    svc.transport_reason = reason
    log_event(
        log,
        "websocket_blocked",
        logging.WARNING,
        relay=svc.relay_url,
        hint=f"relay {svc.relay_url}: {reason}",
    )


async def run_with_fallback(svc: SyncService, over_websocket: Callable[[], Awaitable[None]]) -> None:
    """``run`` for ``transport`` http or auto: the websocket loop, polling HTTP while it is blocked."""
    if svc.transport == "http":
        svc.transport_reason = "configured: --transport http"
        svc.last_transport = "http"
        await HttpSync(svc).run()
        return
    # The first stints over HTTP are short: a websocket refused while the relay was restarting
    # (and plain HTTP answered by the time it was probed) is back on the websocket soon.
    stint = min(10.0, svc.ws_retry_s)
    while not svc._stop.is_set():
        svc.last_transport, svc.transport_reason = "websocket", "auto: trying the websocket"
        try:
            await over_websocket()
            return
        except SyncWebsocketBlocked as exc:
            svc.last_transport = "http"
            _blocked(svc, f"websocket blocked ({exc}); polling over plain HTTP")
            await HttpSync(svc).run(until=time.monotonic() + stint)
            stint = min(stint * 2, svc.ws_retry_s)


class HttpFallback:
    """The HTTP transport, as :class:`client.sync.service.SyncService` takes it (``fallback=``)."""

    def blocked(self, exc: BaseException) -> str | None:
        return websocket_blocked(exc)

    async def reachable(self, svc: SyncService) -> bool:
        return await http_reachable(svc)

    async def sync_once(
        self,
        svc: SyncService,
        over_websocket: Callable[[], Awaitable[SyncSummary]],
        timeout_s: float,
        retry_window_s: float,
    ) -> SyncSummary:
        return await sync_once_with_fallback(svc, over_websocket, timeout_s, retry_window_s)

    async def run(self, svc: SyncService, over_websocket: Callable[[], Awaitable[None]]) -> None:
        await run_with_fallback(svc, over_websocket)
