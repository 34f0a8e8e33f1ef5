"""The sync API over plain HTTP: for networks that block websockets, and for simple integrations.

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
from typing import TYPE_CHECKING, Annotated, Any

import msgpack
from fastapi import APIRouter, FastAPI, Path, Query, Request, Response
from pydantic import BaseModel, Field

from crdt_core.b64 import b64url
from crdt_core.engine import EMPTY_UPDATE, EngineError, Replica
from crdt_core.errors import SchemaError, ValidationError
from crdt_core.messages import ErrorCode
from crdt_core.records import open_record
from crdt_core.schema import DocId, Stamp, check_id, parse_doc_id
from crdt_core.validation import ValidatedUpdate
from crdt_core.yupdate import decode_state_vector, decode_update
from relay.documents.manager import Applied, CapacityError, ManagerClosedError, Ordered
from relay.http.api import ApiError, ClaimsDep, CtxDep, ErrorOut
from relay.http.projections import (
    CatalogView,
    ProjectionCache,
    ShopView,
    catalog_view,
    day_view,
    page,
    shop_view,
)
from relay.ops.config import RelayConfig
from relay.ops.logging import get_logger, log_event
from relay.store.base import AppendResult, StampConflictError, StoreError
from relay.sync.connection import Bucket  # the websocket's per-connection rate bucket, per user here
from relay.sync.hub import SyncHub
from relay.sync.pipeline import STAMP_CONFLICT_RETRIES, retry_pause

if TYPE_CHECKING:
    from relay.context import RelayContext

log = get_logger(__name__)

PREFIX = "/api/v1/sync"
MSGPACK = "application/msgpack"
JSON = "application/json"
#: Largest ``batch`` body (either encoding), and most updates in one batch.
MAX_BATCH_BYTES = 4 * 1024 * 1024
MAX_BATCH_UPDATES = 256
#: Largest ``check-updates`` body, and most documents in one call.
MAX_CHECK_BYTES = 1024 * 1024
MAX_CHECK_DOCS = 1000
#: ``check-updates`` byte budget: default and ceiling (the diffs' raw bytes, before base64).
DEFAULT_BUDGET = 1024 * 1024
MAX_BUDGET = 8 * 1024 * 1024
#: Catalogue pages: default and largest ``limit``.
DEFAULT_LIMIT = 100
MAX_LIMIT = 500
#: Responses at least this large are gzip-encoded for clients that accept it.
GZIP_MIN_BYTES = 1024
#: Acks remembered for replays, per relay process (least recently used go first).
IDEMPOTENCY_ENTRIES = 20_000
MAX_UID = 2**63 - 1
CACHE_CONTROL = "private, no-cache"


# --------------------------------------------------------------------------------------------
# documentation models (the handlers build JSON themselves; these describe it in the OpenAPI)


class CategoryOut(BaseModel):
    id: str
    name: str
    icon: str | None
    updated_at_ms: int


class ShopOut(BaseModel):
    id: str
    name: str
    category: str
    location: str
    lat: float
    lon: float
    rating: float | None
    active: bool
    updated_at_ms: int


class CategoryPage(BaseModel):
    items: list[CategoryOut]
    next_cursor: str | None = Field(description="pass as ``cursor`` for the next page; null on the last")
    seq: int = Field(description="the catalog document's seq this page was read at")


class ShopPage(BaseModel):
    items: list[ShopOut]
    next_cursor: str | None
    seq: int


class ProfileOut(BaseModel):
    name: str
    description: str
    address: str
    lat: float
    lon: float
    image_url: str | None
    hours: str
    updated_at_ms: int


class SlotTemplateOut(BaseModel):
    id: str
    service: str
    start: str
    duration: int
    capacity: int
    weekdays: list[int] | None
    active: bool
    updated_at_ms: int


class ShopDetailOut(BaseModel):
    id: str
    summary: ShopOut | None
    profile: ProfileOut | None
    services: list[str]
    slots: list[SlotTemplateOut]


class SlotSeatsOut(BaseModel):
    slot: str
    service: str
    start: str
    duration: int
    capacity: int
    seats_taken: int
    seats_left: int
    confirmed: int
    waitlisted: int


class DayOut(BaseModel):
    shop: str
    day: str
    weekday: int = Field(description="0 = Monday")
    slots: list[SlotSeatsOut]
    unknown_slot_claims: int
    stamp_prefix: int


class StampOut(BaseModel):
    no: int
    reservation: str


class UpdateResult(BaseModel):
    doc: str
    uid: int
    status: str = Field(description="``ack`` (durably stored) or ``error`` (not stored)")
    seq: int | None = None
    stamps: list[StampOut] | None = None
    stamp_update: str | None = Field(
        default=None, description="the relay's stamp update (base64 in JSON, bytes in msgpack)"
    )
    duplicate: bool | None = Field(default=None, description="the relay already held this update")
    replayed: bool | None = Field(default=None, description="the remembered answer to this uid")
    code: str | None = Field(default=None, description="the websocket's ``err`` code")
    reason: str | None = None
    retry: bool | None = None


class BatchOut(BaseModel):
    results: list[UpdateResult]


class DocCheckOut(BaseModel):
    doc: str
    status: str = Field(description="``changed``, ``unchanged`` or ``error``")
    seq: int | None = None
    update: str | None = Field(
        default=None, description="base64 diff; null for a changed document left for the next call"
    )
    state_vector: str | None = None
    code: str | None = None
    reason: str | None = None


class CheckOut(BaseModel):
    documents: list[DocCheckOut]
    bytes: int
    next_cursor: str | None


_B64_PATTERN = "^[A-Za-z0-9+/_-]*={0,2}$"
_DOC_SCHEMA = {"type": "string", "minLength": 1, "maxLength": 200}
BATCH_BODY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["updates"],
    "properties": {
        "updates": {
            "type": "array",
            "minItems": 1,
            "maxItems": MAX_BATCH_UPDATES,
            "items": {
                "type": "object",
                "required": ["doc", "uid", "update"],
                "properties": {
                    "doc": _DOC_SCHEMA,
                    "uid": {"type": "integer", "minimum": 0, "maximum": MAX_UID},
                    "update": {"type": "string", "pattern": _B64_PATTERN, "description": "base64"},
                },
            },
        }
    },
}
CHECK_BODY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["documents"],
    "properties": {
        "documents": {
            "type": "array",
            "maxItems": MAX_CHECK_DOCS,
            "items": {
                "type": "object",
                "required": ["doc"],
                "properties": {
                    "doc": _DOC_SCHEMA,
                    "state_vector": {"type": "string", "pattern": _B64_PATTERN, "description": "base64"},
                },
            },
        },
        "budget": {"type": "integer", "minimum": 1, "maximum": MAX_BUDGET},
        "cursor": {"type": ["string", "null"], "maxLength": 200},
    },
}


def _body_doc(schema: dict[str, Any], msgpack_too: bool) -> dict[str, Any]:
    content: dict[str, Any] = {JSON: {"schema": schema}}
    if msgpack_too:
        content[MSGPACK] = {"schema": schema}
    return {"requestBody": {"required": True, "content": content}}


_ERR = {"model": ErrorOut}
_GET_ERRORS: dict[int | str, dict[str, Any]] = {
    304: {"description": "Not modified (``If-None-Match`` matched the ``ETag``)"},
    401: _ERR,
    403: _ERR,
    404: _ERR,
    422: _ERR,
    503: _ERR,
}
_POST_ERRORS: dict[int | str, dict[str, Any]] = {
    400: _ERR,
    401: _ERR,
    403: _ERR,
    413: _ERR,
    415: _ERR,
    422: _ERR,
    503: _ERR,
}


# --------------------------------------------------------------------------------------------
# small helpers


def _b64(raw: bytes) -> str:
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


def _media_type(request: Request) -> str:
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
    kind = _media_type(request)
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


def _cursor_out(last_id: str | None) -> str | None:
    return None if last_id is None else b64url(last_id.encode())


def _cursor_in(cursor: str | None) -> str | None:
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


def _fingerprint(docs: list[tuple[str, bytes]]) -> str:
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
        if not index.isdigit() or int(index) > len(docs) or print_ != _fingerprint(docs):
            raise ApiError(
                422, "bad_cursor", "cursor does not continue this list of documents (send the same list)."
            )
        start = int(index)
    return docs, budget, start


# --------------------------------------------------------------------------------------------
# routes


def _hub(ctx: RelayContext) -> SyncHub:
    hub = ctx.sync_hub
    if hub is None:
        raise ApiError(503, "unavailable", "The relay is starting; try again shortly.")
    return hub


def _service(ctx: RelayContext) -> RestSync:
    for ext in ctx.extensions:
        if isinstance(ext, RestSyncExtension):
            return ext.service
    raise ApiError(503, "unavailable", "The REST sync API is not running in this relay.")


def _etag(ctx: RelayContext, *parts: object) -> str:
    return 'W/"' + ".".join([ctx.epoch[:16], *map(str, parts)]) + '"'


def _wants_msgpack(request: Request) -> bool:
    return MSGPACK in request.headers.get("accept", "").lower()


Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="rows per page")]
Cursor = Annotated[str | None, Query(max_length=200, description="next_cursor of the previous page")]
Since = Annotated[
    int | None, Query(ge=0, le=2**53, description="only rows changed at or after this Unix time (ms)")
]
Text = Annotated[str | None, Query(max_length=100, description="case-insensitive text search")]
ShopId = Annotated[
    str,
    Path(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_-]+$",
        openapi_examples={"shop": {"summary": "a shop id", "value": "s0001"}},
    ),
]

router = APIRouter(prefix=PREFIX, tags=["sync"])


@router.get("/categories", response_model=CategoryPage, responses=_GET_ERRORS)
async def categories(
    request: Request,
    claims: ClaimsDep,
    ctx: CtxDep,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
    q: Text = None,
    updated_since: Since = None,
) -> Response:
    """The catalogue's categories, in id order, paged; cacheable (``ETag``, ``If-None-Match``)."""
    after = _cursor_in(cursor)
    view, seq = await _service(ctx).catalog(_hub(ctx))
    needle = q.casefold() if q else None
    rows = view.categories

    def keep(i: int) -> bool:
        row = rows[i]
        if updated_since is not None and row["updated_at_ms"] < updated_since:
            return False
        return needle is None or needle in row["name"].casefold()

    def payload() -> dict[str, Any]:
        items, last = page(rows, view.category_ids, after, limit, keep)
        return {"items": items, "next_cursor": _cursor_out(last), "seq": seq}

    return cached_json(request, payload, _etag(ctx, "catalog", seq))


@router.get("/shops", response_model=ShopPage, responses=_GET_ERRORS)
async def shops(
    request: Request,
    claims: ClaimsDep,
    ctx: CtxDep,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
    category: Annotated[str | None, Query(max_length=64, description="only shops of this category")] = None,
    q: Text = None,
    updated_since: Since = None,
) -> Response:
    """The catalogue's shops, in id order, filtered and paged; cacheable, gzip when large."""
    after = _cursor_in(cursor)
    view, seq = await _service(ctx).catalog(_hub(ctx))
    needle = q.casefold() if q else None
    rows, text = view.shops, view.shop_text

    def keep(i: int) -> bool:
        row = rows[i]
        if category is not None and row["category"] != category:
            return False
        if updated_since is not None and row["updated_at_ms"] < updated_since:
            return False
        return needle is None or needle in text[i]

    def payload() -> dict[str, Any]:
        items, last = page(rows, view.shop_ids, after, limit, keep)
        return {"items": items, "next_cursor": _cursor_out(last), "seq": seq}

    return cached_json(request, payload, _etag(ctx, "catalog", seq))


@router.get("/shops/{shop_id}", response_model=ShopDetailOut, responses=_GET_ERRORS)
async def shop_detail(request: Request, shop_id: ShopId, claims: ClaimsDep, ctx: CtxDep) -> Response:
    """One shop: its catalogue summary, profile, services and slot templates."""
    hub, service = _hub(ctx), _service(ctx)
    catalog, catalog_seq = await service.catalog(hub)
    view, seq = await service.shop(hub, shop_id)
    summary = catalog.shop(shop_id)
    if summary is None and view.empty:
        raise ApiError(404, "not_found", "No such shop.")

    def payload() -> dict[str, Any]:
        return {
            "id": shop_id,
            "summary": summary,
            "profile": view.profile,
            "services": view.services,
            "slots": list(view.slots),
        }

    return cached_json(request, payload, _etag(ctx, "shop", catalog_seq, seq))


@router.get("/shops/{shop_id}/days/{day}", response_model=DayOut, responses=_GET_ERRORS)
async def shop_day(
    request: Request,
    shop_id: ShopId,
    day: Annotated[
        str,
        Path(
            pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$",
            description="YYYY-MM-DD",
            openapi_examples={"day": {"summary": "a day", "value": "2030-01-07"}},
        ),
    ],
    claims: ClaimsDep,
    ctx: CtxDep,
) -> Response:
    """Seats per slot on one day, from the verdict over the day's bookings: counts only."""
    try:
        DocId.bookings(shop_id, day)
    except SchemaError:
        raise ApiError(422, "validation_error", "day must be a calendar date (YYYY-MM-DD).") from None
    out, shop_seq, seq = await _service(ctx).day(_hub(ctx), shop_id, day)
    return cached_json(request, lambda: {"shop": shop_id, **out}, _etag(ctx, "day", shop_seq, seq))


@router.post(
    "/batch",
    response_model=BatchOut,
    responses=_POST_ERRORS,
    openapi_extra=_body_doc(BATCH_BODY_SCHEMA, msgpack_too=True),
)
async def batch(request: Request, claims: ClaimsDep, ctx: CtxDep) -> Response:
    """Signed Yjs updates for several documents; per update an ack once durable (with its stamps)
    or the websocket's refusal. Idempotent by ``uid``. ``Accept: application/msgpack`` answers in
    msgpack (bytes as bytes) instead of JSON (bytes as base64)."""
    hub = _hub(ctx)
    body = await read_body(request, MAX_BATCH_BYTES)
    binary = _media_type(request) != JSON
    items = parse_batch(
        decode_body(request, body, msgpack_ok=True), binary=binary, max_update=hub.limits.max_message
    )
    results = [dict(r) for r in await _service(ctx).batch(hub, claims.sub, items)]
    for r in results:
        if r.get("stamps") is not None:
            r["stamps"] = [{"no": no, "reservation": res} for no, res in r["stamps"]]
    if _wants_msgpack(request):
        return Response(msgpack.packb({"results": results}, use_bin_type=True), media_type=MSGPACK)
    for r in results:
        if isinstance(r.get("stamp_update"), bytes):
            r["stamp_update"] = _b64(r["stamp_update"])
    return Response(json.dumps({"results": results}, separators=(",", ":")), media_type=JSON)


@router.post(
    "/check-updates",
    response_model=CheckOut,
    responses=_POST_ERRORS,
    openapi_extra=_body_doc(CHECK_BODY_SCHEMA, msgpack_too=False),
)
async def check_updates(request: Request, claims: ClaimsDep, ctx: CtxDep) -> Response:
    """Which of the client's documents changed, and their diffs within ``budget`` bytes; call
    again with ``next_cursor`` (and the same list, state vectors updated) for the rest."""
    hub = _hub(ctx)
    body = await read_body(request, MAX_CHECK_BYTES)
    docs, budget, start = parse_check(decode_body(request, body, msgpack_ok=False))
    entries, sent, resume = await _service(ctx).check(hub, claims.sub, docs, budget, start)
    for e in entries:
        for name in ("update", "state_vector"):
            if isinstance(e.get(name), bytes):
                e[name] = _b64(e[name])
    cursor = None if resume is None else f"{resume}.{_fingerprint(docs)}"
    out = {"documents": entries, "bytes": sent, "next_cursor": cursor}
    return Response(json.dumps(out, separators=(",", ":")), media_type=JSON)


class RestSyncExtension:
    """Plugs the REST sync routes into the relay app; runs on the sync extension's hub."""

    name = "rest_sync"

    def __init__(self, config: RelayConfig) -> None:
        self.config = config
        self.service = RestSync()

    def install(self, app: FastAPI, ctx: RelayContext) -> None:
        app.include_router(router)

    async def start(self, ctx: RelayContext) -> None:
        self.service = RestSync()

    async def stop(self, ctx: RelayContext) -> None:
        self.service = RestSync()  # drop the caches and replays of the run that ended
