"""The routes of the sync API over HTTP (``/api/v1/sync/*``) and the extension that installs
them; what each does: :mod:`relay.http.rest_sync`."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import msgpack
from fastapi import APIRouter, FastAPI, Path, Query, Request, Response

from crdt_core.errors import SchemaError
from crdt_core.schema import DocId
from relay.http.api import ApiError, ClaimsDep, CtxDep
from relay.http.projections import (
    page,
)
from relay.http.rest_contract import (
    BATCH_BODY_SCHEMA,
    CHECK_BODY_SCHEMA,
    DEFAULT_LIMIT,
    GET_ERRORS,
    JSON,
    MAX_BATCH_BYTES,
    MAX_CHECK_BYTES,
    MAX_LIMIT,
    MSGPACK,
    POST_ERRORS,
    PREFIX,
    BatchOut,
    CategoryPage,
    CheckOut,
    DayOut,
    ShopDetailOut,
    ShopPage,
    body_doc,
)
from relay.http.rest_sync import (
    RestSync,
    b64,
    cached_json,
    cursor_in,
    cursor_out,
    decode_body,
    fingerprint,
    media_type,
    parse_batch,
    parse_check,
    read_body,
)
from relay.ops.config import RelayConfig
from relay.ops.logging import get_logger
from relay.sync.hub import SyncHub

if TYPE_CHECKING:
    from relay.context import RelayContext

log = get_logger(__name__)


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


@router.get("/categories", response_model=CategoryPage, responses=GET_ERRORS)
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
    after = cursor_in(cursor)
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
        return {"items": items, "next_cursor": cursor_out(last), "seq": seq}

    return cached_json(request, payload, _etag(ctx, "catalog", seq))


@router.get("/shops", response_model=ShopPage, responses=GET_ERRORS)
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
    after = cursor_in(cursor)
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
        return {"items": items, "next_cursor": cursor_out(last), "seq": seq}

    return cached_json(request, payload, _etag(ctx, "catalog", seq))


@router.get("/shops/{shop_id}", response_model=ShopDetailOut, responses=GET_ERRORS)
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


@router.get("/shops/{shop_id}/days/{day}", response_model=DayOut, responses=GET_ERRORS)
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
    responses=POST_ERRORS,
    openapi_extra=body_doc(BATCH_BODY_SCHEMA, msgpack_too=True),
)
async def batch(request: Request, claims: ClaimsDep, ctx: CtxDep) -> Response:
    """Signed Yjs updates for several documents; per update an ack once durable (with its stamps)
    or the websocket's refusal. Idempotent by ``uid``. ``Accept: application/msgpack`` answers in
    msgpack (bytes as bytes) instead of JSON (bytes as base64)."""
    hub = _hub(ctx)
    body = await read_body(request, MAX_BATCH_BYTES)
    binary = media_type(request) != JSON
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
            r["stamp_update"] = b64(r["stamp_update"])
    return Response(json.dumps({"results": results}, separators=(",", ":")), media_type=JSON)


@router.post(
    "/check-updates",
    response_model=CheckOut,
    responses=POST_ERRORS,
    openapi_extra=body_doc(CHECK_BODY_SCHEMA, msgpack_too=False),
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
                e[name] = b64(e[name])
    cursor = None if resume is None else f"{resume}.{fingerprint(docs)}"
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
