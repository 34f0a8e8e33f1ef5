"""The sync API over plain HTTP: for networks that block websockets, and for simple integrations.

This module is the service (:class:`RestSync`) and the parsing of request bodies; the routes
are :mod:`relay.http.rest_routes`, the contract (limits, models, schemas)
:mod:`relay.http.rest_contract`.

Endpoints (all under ``/api/v1/sync/``, all with the REST API's auth: a bearer token, or a token
bound to a device key with its proof of possession for this method and path):

* ``GET categories``, ``GET shops``: the catalogue as JSON (``relay.http.projections``), filtered
  (``category``, ``q``, ``updated_since``), in id order, paged by an opaque cursor (keyset: a
  page never repeats or skips a row because rows were added before it). ``ETag`` names the
  catalog document's state (store epoch and seq): ``If-None-Match`` answers 304 without building
  the page; ``Cache-Control: private, no-cache`` (revalidate every time); pages of 1 KiB or more
  are gzip-encoded for a client that accepts it.
* ``GET shops/{id}``: summary, profile, services and slot templates; ``GET shops/{id}/days/{date}``:
  seats left per slot from the verdict, counts only (never who holds them).
* ``POST batch``: signed Yjs updates, the bytes the websocket carries, several documents per
  request (``application/msgpack``, or JSON with base64 for scripts). Each update goes down the
  websocket's own path (``DocumentManager.order`` with the hub's validation, stamping, equivocation
  check and fan-out), so it is validated, stored, stamped and forwarded to websocket subscribers
  exactly as if it came on a socket; the answer lists per update an ack (sent only once the commit
  is durable) with the stamps it received, or the refusal with the websocket's ``err`` codes and
  reasons.
* ``POST check-updates``: the documents a client holds with their state vectors; the answer says
  which changed and returns the diffs, up to a byte budget; the rest on the next call, which
  passes the answer's ``next_cursor``.

Idempotency of ``batch``: a retried update is never applied twice. Its content already settles
that (the engine sees a re-sent update as a no-op, acknowledged once what it repeats is durable,
as on the websocket); on top of that the relay remembers, per user, document and ``uid``, the
answers of the last :data:`IDEMPOTENCY_ENTRIES` acks, so a retry (or a concurrent duplicate) gets
the same answer, stamps included, with ``replayed: true``. Across a restart or another node a
retry is answered by the content rule: acked, ``duplicate: true``, with the stamps the document
holds for its reservations.

Every malformed, oversized or wrong-type body gets a 4xx with the API's JSON error body
(``{"code", "message"}``), never a 500.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import gzip
import hashlib
import json
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgpack
from fastapi import Request, Response

from crdt_core.b64 import b64url
from crdt_core.engine import EMPTY_UPDATE, EngineError, Replica
from crdt_core.errors import SchemaError, ValidationError
from crdt_core.messages import ErrorCode
from crdt_core.records import open_record
from crdt_core.schema import DocId, Stamp, check_id, parse_doc_id
from crdt_core.validation import ValidatedUpdate
from crdt_core.yupdate import decode_state_vector, decode_update
from relay.documents.manager import Ordered
from relay.documents.results import Applied, CapacityError, ManagerClosedError
from relay.http.api import ApiError
from relay.http.projections import (
    CatalogView,
    ProjectionCache,
    ShopView,
    catalog_view,
    day_view,
    shop_view,
)
from relay.http.rest_contract import (
    CACHE_CONTROL,
    DEFAULT_BUDGET,
    GZIP_MIN_BYTES,
    IDEMPOTENCY_ENTRIES,
    JSON,
    MAX_BATCH_UPDATES,
    MAX_BUDGET,
    MAX_CHECK_DOCS,
    MAX_UID,
    MSGPACK,
)
from relay.ops.logging import get_logger, log_event
from relay.store.base import AppendResult, StampConflictError, StoreError
from relay.sync.connection import Bucket  # the websocket's per-connection rate bucket, per user here
from relay.sync.hub import SyncHub
from relay.sync.pipeline import STAMP_CONFLICT_RETRIES, retry_pause

if TYPE_CHECKING:
    pass

log = get_logger(__name__)


# --------------------------------------------------------------------------------------------
# small helpers


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _unb64(text: str) -> bytes:
    """Standard or URL-safe base64, padded or not."""
    if not text.isascii():
        raise ValueError("not base64")
    stripped = text.rstrip("=")
    altchars = b"-_" if ("-" in text or "_" in text) else b"+/"
    try:
        return base64.b64decode(stripped + "=" * (-len(stripped) % 4), altchars=altchars, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not base64") from None


def _unprocessable(message: str) -> ApiError:
    return ApiError(422, "validation_error", message)


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is over ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise ApiError(413, "payload_too_large", f"Request body over {limit} bytes.")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, "payload_too_large", f"Request body over {limit} bytes.")
    return bytes(body)


def decode_body(request: Request, body: bytes, *, msgpack_ok: bool) -> Any:
    """JSON (or msgpack where allowed) into Python values; 415/400 otherwise."""
    kind = media_type(request)
    if kind == JSON:
        try:
            return json.loads(body)
        except (ValueError, RecursionError):
            raise ApiError(400, "malformed_body", "The body is not valid JSON.") from None
    if msgpack_ok and kind in (MSGPACK, "application/x-msgpack"):
        try:
            return msgpack.unpackb(body, raw=False, strict_map_key=True)
        except Exception:
            raise ApiError(400, "malformed_body", "The body is not valid msgpack.") from None
    accepted = f"{JSON} or {MSGPACK}" if msgpack_ok else JSON
    raise ApiError(415, "unsupported_media_type", f"Send the body as {accepted}.")


def _matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    wanted = etag.removeprefix("W/")
    for tag in if_none_match.split(","):
        tag = tag.strip()
        if tag == "*" or tag.removeprefix("W/") == wanted:
            return True
    return False


def cached_json(request: Request, payload: Callable[[], Any], etag: str) -> Response:
    """A cacheable JSON answer: 304 when the client holds ``etag``, gzip when large and accepted."""
    headers = {"ETag": etag, "Cache-Control": CACHE_CONTROL, "Vary": "Accept-Encoding"}
    if _matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    body = json.dumps(payload(), separators=(",", ":"), ensure_ascii=False).encode()
    if len(body) >= GZIP_MIN_BYTES and "gzip" in request.headers.get("accept-encoding", "").lower():
        body = gzip.compress(body, compresslevel=5)
        headers["Content-Encoding"] = "gzip"
    return Response(body, media_type=JSON, headers=headers)


def cursor_out(last_id: str | None) -> str | None:
    return None if last_id is None else b64url(last_id.encode())


def cursor_in(cursor: str | None) -> str | None:
    if cursor is None or cursor == "":
        return None
    try:
        return check_id(_unb64(cursor).decode("ascii"))
    except (ValueError, UnicodeDecodeError, SchemaError):
        raise ApiError(422, "bad_cursor", "cursor is not one this relay handed out.") from None


def stamps_in(update: bytes) -> list[tuple[int, str]]:
    """``(number, reservation)`` of every stamp record a relay stamp update writes, in number order."""
    out: list[tuple[int, str]] = []
    for ins in decode_update(update).inserts:
        if ins.root != Stamp.ROOT or not isinstance(ins.value, bytes):
            continue
        try:
            fields = open_record(ins.value).fields
        except SchemaError:
            continue
        no, res = fields.get("no"), fields.get("reservation")
        if isinstance(no, int) and isinstance(res, str):
            out.append((no, res))
    return sorted(out)


def _held_stamps(replica: Replica, update: bytes) -> list[tuple[int, str]]:
    """The stamps a document holds for the reservations an (already held) update writes."""
    try:
        ids = {ins.key for ins in decode_update(update).inserts if ins.root == "reservations"}
    except EngineError:
        return []
    if not ids or "stamps" not in replica.roots():
        return []
    out: list[tuple[int, str]] = []
    for _key, raw in replica.items("stamps"):
        try:
            fields = open_record(raw).fields
        except SchemaError:
            continue
        if fields.get("reservation") in ids and isinstance(fields.get("no"), int):
            out.append((fields["no"], fields["reservation"]))
    return sorted(out)


# --------------------------------------------------------------------------------------------
# the service


class RestSync:
    """State of the REST sync API in one relay process: projection caches, replays, buckets."""

    def __init__(self) -> None:
        self.catalogs: ProjectionCache[CatalogView] = ProjectionCache(catalog_view, max_entries=1)
        self.shops: ProjectionCache[ShopView] = ProjectionCache(shop_view, max_entries=2048)
        self.days: ProjectionCache[dict[str, Any]] = ProjectionCache(day_view, max_entries=2048)
        #: (user, doc, uid) -> (update digest, answer future); acks only once settled.
        self.replays: OrderedDict[tuple[str, str, int], tuple[bytes, asyncio.Future[dict[str, Any]]]] = (
            OrderedDict()
        )
        self.buckets: OrderedDict[str, Bucket] = OrderedDict()

    # --- reads -----------------------------------------------------------------------------------

    async def catalog(self, hub: SyncHub) -> tuple[CatalogView, int]:
        return await hub.manager.read(
            "catalog", lambda replica, seq: (self.catalogs.get("catalog", seq, replica), seq)
        )

    async def shop(self, hub: SyncHub, shop_id: str) -> tuple[ShopView, int]:
        doc = str(DocId.shop(shop_id))
        return await hub.manager.read(
            doc, lambda replica, seq: (self.shops.get(doc, seq, replica, shop_id), seq)
        )

    async def day(self, hub: SyncHub, shop_id: str, day: str) -> tuple[dict[str, Any], int, int]:
        view, shop_seq = await self.shop(hub, shop_id)
        doc = str(DocId.bookings(shop_id, day))
        key = f"{doc}@{shop_seq}"
        out, seq = await hub.manager.read(
            doc, lambda replica, seq: (self.days.get(key, seq, replica, doc, view.templates), seq)
        )
        return out, shop_seq, seq

    # --- batch -----------------------------------------------------------------------------------

    def _bucket(self, hub: SyncHub, user: str) -> Bucket:
        bucket = self.buckets.get(user)
        if bucket is None:
            bucket = self.buckets[user] = Bucket(hub.limits.rate_per_s, hub.limits.burst)
            while len(self.buckets) > 10_000:
                self.buckets.popitem(last=False)
        self.buckets.move_to_end(user)
        return bucket

    async def batch(
        self, hub: SyncHub, user: str, items: list[tuple[str, int, bytes]]
    ) -> list[dict[str, Any]]:
        """Order every update (in request order), then answer each once its commit is durable."""
        mine: list[tuple[tuple[str, str, int], asyncio.Future[dict[str, Any]]]] = []
        try:
            return await self._batch(hub, user, items, mine)
        finally:
            # A request cut short (cancelled) must not leave a duplicate of it waiting forever.
            for key, future in mine:
                if not future.done():
                    self._settle(
                        key, future, _error(key[1], key[2], ErrorCode.INTERNAL, "not answered, retry")
                    )

    async def _batch(
        self,
        hub: SyncHub,
        user: str,
        items: list[tuple[str, int, bytes]],
        mine: list[tuple[tuple[str, str, int], asyncio.Future[dict[str, Any]]]],
    ) -> list[dict[str, Any]]:
        answers: list[dict[str, Any] | None] = [None] * len(items)
        waits: list[tuple[int, asyncio.Future[dict[str, Any]]]] = []
        pending: list[tuple[int, Ordered[ValidatedUpdate], asyncio.Future[dict[str, Any]]]] = []
        for i, (doc, uid, update) in enumerate(items):
            key = (user, doc, uid)
            digest = hashlib.sha256(update).digest()
            held = self.replays.get(key)
            if held is not None and held[0] == digest:
                self.replays.move_to_end(key)
                waits.append((i, held[1]))
                continue
            future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
            self.replays[key] = (digest, future)
            mine.append((key, future))
            while len(self.replays) > IDEMPOTENCY_ENTRIES:
                self.replays.popitem(last=False)
            first = await self._first_checks(hub, user, doc, uid, update)
            if first is not None:
                self._settle(key, future, first)
                answers[i] = first
                continue
            ordered = await self._order(hub, doc, uid, update)
            if isinstance(ordered, dict):
                self._settle(key, future, ordered)
                answers[i] = ordered
                continue
            if hub.fanout is not None:
                # Several nodes: nothing of this request is ordered on top of a booking whose
                # stamps another node may still take first (as ``SyncConnection.stamping``).
                answer = await self._outcome(hub, doc, uid, update, ordered)
                self._settle(key, future, answer)
                answers[i] = answer
                continue
            pending.append((i, ordered, future))
        for i, handle, settled in pending:
            doc, uid, update = items[i]
            answer = await self._outcome(hub, doc, uid, update, handle)
            self._settle((user, doc, uid), settled, answer)
            answers[i] = answer
        for i, future in waits:
            answers[i] = {**(await asyncio.shield(future)), "replayed": True}
        return [a for a in answers if a is not None]

    def _settle(
        self, key: tuple[str, str, int], future: asyncio.Future[dict[str, Any]], answer: dict[str, Any]
    ) -> None:
        if not future.done():
            future.set_result(answer)
        if answer["status"] != "ack":
            held = self.replays.get(key)
            if held is not None and held[1] is future:
                del self.replays[key]  # a refusal is decided again on the next try

    async def _first_checks(
        self, hub: SyncHub, user: str, doc: str, uid: int, update: bytes
    ) -> dict[str, Any] | None:
        """The websocket's checks before ordering: doc id, read right (its subscribe), rate, size."""
        hub.metrics.updates_in.inc()
        try:
            parse_doc_id(doc)
        except SchemaError as exc:
            return _error(doc, uid, ErrorCode.BAD_DOC, str(exc))
        if not hub.rights.can_read(user, doc):
            hub.metrics.rejections.labels("forbidden_read").inc()
            return _error(doc, uid, ErrorCode.FORBIDDEN, "no read access to this document")
        if not self._bucket(hub, user).take():
            return _error(doc, uid, ErrorCode.RATE_LIMITED, "too many updates: retry later")
        if hub.manager.doc_bytes(doc) + len(update) > hub.limits.max_doc_bytes:
            hub.metrics.rejections.labels("doc_too_large").inc()
            return _error(doc, uid, ErrorCode.DOC_TOO_LARGE, "document at its size limit")
        return None

    async def _order(
        self, hub: SyncHub, doc: str, uid: int, update: bytes
    ) -> Ordered[ValidatedUpdate] | dict[str, Any]:
        def on_durable(result: AppendResult, checked: ValidatedUpdate | None, extra: bytes | None) -> None:
            try:
                hub.delivery.committed(doc, update, result, checked, extra)
            except Exception:
                log_event(log, "forwarding_update_failed", logging.ERROR, exc_info=True, uid=uid, doc=doc)

        try:
            return await hub.order_update(doc, update, on_durable)
        except ValidationError as exc:
            hub.metrics.rejections.labels(exc.code).inc()
            code = ErrorCode.MISSING_DEPS if exc.code == "missing_deps" else ErrorCode.REJECTED
            return _error(doc, uid, code, f"{exc.code}: {exc.detail}"[:400])
        except EngineError as exc:
            hub.metrics.rejections.labels("malformed").inc()
            return _error(doc, uid, ErrorCode.REJECTED, f"malformed: {exc}"[:400])
        except (CapacityError, ManagerClosedError, StoreError) as exc:
            return _error(doc, uid, ErrorCode.INTERNAL, f"not stored, retry: {type(exc).__name__}")

    async def _outcome(
        self, hub: SyncHub, doc: str, uid: int, update: bytes, ordered: Ordered[ValidatedUpdate]
    ) -> dict[str, Any]:
        for attempt in range(STAMP_CONFLICT_RETRIES + 1):
            try:
                applied = await ordered.wait()
            except StampConflictError:
                if attempt == STAMP_CONFLICT_RETRIES:
                    break
                # Another node stamped this document first; nothing of this update is stored.
                hub.metrics.stamp_retries.inc()
                await asyncio.sleep(retry_pause(attempt))
                again = await self._order(hub, doc, uid, update)
                if isinstance(again, dict):
                    return again
                ordered = again
                continue
            except Exception as exc:
                return _error(doc, uid, ErrorCode.INTERNAL, f"not stored, retry: {type(exc).__name__}")
            return await self._ack(hub, doc, uid, update, applied)
        return _error(doc, uid, ErrorCode.INTERNAL, "not stored, retry: StampConflictError")

    async def _ack(
        self, hub: SyncHub, doc: str, uid: int, update: bytes, applied: Applied[ValidatedUpdate]
    ) -> dict[str, Any]:
        answer: dict[str, Any] = {"doc": doc, "uid": uid, "status": "ack"}
        if applied.update_seq is None:  # a re-send of what the relay holds, now durable
            stamps = await hub.manager.read(doc, lambda replica, _seq: _held_stamps(replica, update))
            answer.update(seq=applied.seq, stamps=stamps, stamp_update=None, duplicate=True)
            return answer
        extra = applied.extra if applied.extra_seq is not None else None
        answer.update(
            seq=applied.update_seq,
            stamps=stamps_in(extra) if extra is not None else [],
            stamp_update=extra,
            duplicate=False,
        )
        return answer

    # --- check-updates -----------------------------------------------------------------------------

    async def check(
        self, hub: SyncHub, user: str, docs: list[tuple[str, bytes]], budget: int, start: int
    ) -> tuple[list[dict[str, Any]], int, int | None]:
        """Per document from ``start``: changed or not and, within ``budget``, the diff.

        A diff that does not fit what is left of the budget is not sent (nor any after it: the
        answer stays in request order), unless it is the answer's first (a document larger than
        the budget is sent alone, so every call makes progress). Returns the entries, the bytes
        sent and the index to continue at (None when done).
        """
        out: list[dict[str, Any]] = []
        sent = 0
        resume: int | None = None
        for i in range(start, len(docs)):
            doc, sv = docs[i]
            try:
                parse_doc_id(doc)
            except SchemaError as exc:
                out.append(_check_error(doc, ErrorCode.BAD_DOC, str(exc)))
                continue
            if not hub.rights.can_read(user, doc):
                out.append(_check_error(doc, ErrorCode.FORBIDDEN, "no read access to this document"))
                continue
            try:
                clocks = decode_state_vector(sv)
            except EngineError:
                out.append(_check_error(doc, ErrorCode.BAD_DOC, "state vector does not decode"))
                continue
            room = budget - sent if resume is None else -1
            first = sent == 0 and resume is None

            try:
                entry = await hub.manager.read(doc, functools.partial(_look, doc, sv, clocks, room, first))
            except (CapacityError, ManagerClosedError, StoreError) as exc:
                out.append(_check_error(doc, ErrorCode.INTERNAL, f"try again: {type(exc).__name__}"))
                continue
            if entry["status"] == "changed":
                if entry["update"] is not None:
                    sent += len(entry["update"])
                elif resume is None:
                    resume = i
            out.append(entry)
        return out, sent, resume


def _look(
    doc: str, sv: bytes, clocks: dict[int, int], room: int, first: bool, replica: Replica, seq: int
) -> dict[str, Any]:
    """One document of ``check-updates``, under its lock: changed or not, and the diff if it fits."""
    ahead = any(clock > clocks.get(client, 0) for client, clock in replica.state_clocks().items())
    entry: dict[str, Any] = {"doc": doc, "seq": seq, "status": "changed" if ahead else "unchanged"}
    if ahead and (room > 0 or first):
        diff = replica.diff(sv)
        if diff == EMPTY_UPDATE:  # ahead only in what the engine never sends
            entry["status"] = "unchanged"
        elif len(diff) <= room or first:
            entry["update"] = diff
            entry["state_vector"] = replica.state_vector()
    if entry["status"] == "changed" and "update" not in entry:
        entry["update"] = None  # left for the next call
    return entry


def _error(doc: str, uid: int, code: ErrorCode, reason: str) -> dict[str, Any]:
    return {
        "doc": doc,
        "uid": uid,
        "status": "error",
        "code": code.value,
        "reason": reason,
        "retry": code.retryable,
    }


def _check_error(doc: str, code: ErrorCode, reason: str) -> dict[str, Any]:
    return {"doc": doc, "status": "error", "code": code.value, "reason": reason}


# --------------------------------------------------------------------------------------------
# request parsing


def parse_batch(value: Any, *, binary: bool, max_update: int) -> list[tuple[str, int, bytes]]:
    """``{"updates": [{"doc", "uid", "update"}, ...]}``; ``update`` is bytes (msgpack) or base64."""
    if not isinstance(value, dict) or not isinstance(value.get("updates"), list):
        raise _unprocessable("The body must be an object with an array 'updates'.")
    updates = value["updates"]
    if not 1 <= len(updates) <= MAX_BATCH_UPDATES:
        raise _unprocessable(f"'updates' must hold 1 to {MAX_BATCH_UPDATES} updates.")
    out: list[tuple[str, int, bytes]] = []
    seen: set[tuple[str, int]] = set()
    for n, item in enumerate(updates):
        where = f"updates[{n}]"
        if not isinstance(item, dict):
            raise _unprocessable(f"{where} must be an object.")
        doc, uid, raw = item.get("doc"), item.get("uid"), item.get("update")
        if not isinstance(doc, str) or not 0 < len(doc) <= 200:
            raise _unprocessable(f"{where}.doc must be a document id.")
        if type(uid) is not int or not 0 <= uid <= MAX_UID:
            raise _unprocessable(f"{where}.uid must be an integer from 0 to 2^63-1.")
        if binary and isinstance(raw, bytes):
            update = raw
        elif isinstance(raw, str):
            try:
                update = _unb64(raw)
            except ValueError:
                raise _unprocessable(f"{where}.update must be base64.") from None
        else:
            raise _unprocessable(f"{where}.update must be {'bytes or ' if binary else ''}base64 text.")
        if len(update) > max_update:
            raise ApiError(413, "payload_too_large", f"{where}.update is over {max_update} bytes.")
        if (doc, uid) in seen:
            raise _unprocessable(f"{where}: uid {uid} appears twice for {doc}.")
        seen.add((doc, uid))
        out.append((doc, uid, update))
    return out


def fingerprint(docs: list[tuple[str, bytes]]) -> str:
    return hashlib.sha256("\n".join(d for d, _ in docs).encode()).hexdigest()[:16]


def parse_check(value: Any) -> tuple[list[tuple[str, bytes]], int, int]:
    if not isinstance(value, dict) or not isinstance(value.get("documents"), list):
        raise _unprocessable("The body must be an object with an array 'documents'.")
    items = value["documents"]
    if len(items) > MAX_CHECK_DOCS:
        raise _unprocessable(f"'documents' holds at most {MAX_CHECK_DOCS} documents.")
    docs: list[tuple[str, bytes]] = []
    for n, item in enumerate(items):
        where = f"documents[{n}]"
        if not isinstance(item, dict):
            raise _unprocessable(f"{where} must be an object.")
        doc, sv = item.get("doc"), item.get("state_vector", "")
        if not isinstance(doc, str) or not 0 < len(doc) <= 200:
            raise _unprocessable(f"{where}.doc must be a document id.")
        if sv is None:
            sv = ""
        if not isinstance(sv, str):
            raise _unprocessable(f"{where}.state_vector must be base64 text.")
        try:
            raw = _unb64(sv) if sv else b"\x00"
        except ValueError:
            raise _unprocessable(f"{where}.state_vector must be base64.") from None
        docs.append((doc, raw))
    budget = value.get("budget", DEFAULT_BUDGET)
    if type(budget) is not int or not 1 <= budget <= MAX_BUDGET:
        raise _unprocessable(f"'budget' must be an integer from 1 to {MAX_BUDGET}.")
    cursor = value.get("cursor")
    start = 0
    if cursor is not None:
        if not isinstance(cursor, str) or len(cursor) > 200:
            raise _unprocessable("'cursor' must be the next_cursor of the previous answer.")
        index, _, print_ = cursor.partition(".")
        if not index.isdigit() or int(index) > len(docs) or print_ != fingerprint(docs):
            raise ApiError(
                422, "bad_cursor", "cursor does not continue this list of documents (send the same list)."
            )
        start = int(index)
    return docs, budget, start
