"""The contract of the sync API over HTTP (``relay.http.rest_sync``): paths, media types,
limits, and the models and body schemas that document it in the OpenAPI."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from relay.http.api import ErrorOut

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


def body_doc(schema: dict[str, Any], msgpack_too: bool) -> dict[str, Any]:
    content: dict[str, Any] = {JSON: {"schema": schema}}
    if msgpack_too:
        content[MSGPACK] = {"schema": schema}
    return {"requestBody": {"required": True, "content": content}}


_ERR = {"model": ErrorOut}
GET_ERRORS: dict[int | str, dict[str, Any]] = {
    304: {"description": "Not modified (``If-None-Match`` matched the ``ETag``)"},
    401: _ERR,
    403: _ERR,
    404: _ERR,
    422: _ERR,
    503: _ERR,
}
POST_ERRORS: dict[int | str, dict[str, Any]] = {
    400: _ERR,
    401: _ERR,
    403: _ERR,
    413: _ERR,
    415: _ERR,
    422: _ERR,
    503: _ERR,
}
