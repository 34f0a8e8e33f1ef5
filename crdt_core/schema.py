"""The domain schema: document ids, which top-level maps each kind of document holds, typed records.

Why one table per record kind rather than hand-written checks: the relay, every peer and the
client's projections must agree exactly on what a valid record is, and a table is easy to read
against docs/design.md's "Documents" section and easy to extend in a new schema version.

Schema versions: every record carries the schema version its author wrote (see ``records``); a
document's version is the highest of its records'. That is CRDT-safe (a max never conflicts),
unlike one ``schema`` key two offline writers could both set. A record from a *newer* version may
carry fields this code does not know: they are kept (the signed bytes are never re-encoded) and
exposed as ``extra``. A known field must still have its known type, and an enum value this
version does not know is accepted only from a newer version, where it is treated as inert.
"""

from __future__ import annotations

import datetime as _dt
import functools
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, Final

from crdt_core.errors import SchemaError

__all__ = [
    "SCHEMA_VERSION",
    "BookedDay",
    "Category",
    "DocId",
    "DocKind",
    "EventType",
    "Reservation",
    "ShopProfile",
    "ShopSummary",
    "SlotTemplate",
    "StaffEntry",
    "Stamp",
    "StatusEvent",
    "TypedRecord",
    "UserProfile",
    "capacities_on",
    "capacity_on",
    "has_control_characters",
    "parse_day",
    "per_customer_limits",
    "printable",
    "parse_doc_id",
    "parse_record",
    "record_class",
    "stamp_key",
]

SCHEMA_VERSION: Final = 2
"""Version 2 added the slot field ``per_customer`` and the user document's ``days`` map of
``booked_day`` records (docs/records.md section 6)."""

#: Terminal control characters: C0 (U+0000-U+001F), DEL and C1 (U+0080-U+009F). No text field may
#: hold one (an ESC or BEL in a shop name would drive the terminal that prints it); a multi-line
#: field may hold line feeds (U+000A) only.
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_MULTILINE_RE = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")

_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
_HLC_RE = re.compile(r"[0-9]{13}-[0-9]{6}-[A-Za-z0-9_-]{1,64}\Z")
_HHMM_RE = re.compile(r"([01][0-9]|2[0-3]):[0-5][0-9]\Z")
CERTS_ROOT: Final = "certs"


class DocKind(StrEnum):
    CATALOG = "catalog"
    SHOP = "shop"
    BOOKINGS = "bookings"
    USER = "user"


@dataclass(frozen=True)
class DocId:
    kind: DocKind
    shop_id: str | None = None
    day: _dt.date | None = None
    user_id: str | None = None

    def __str__(self) -> str:
        if self.kind is DocKind.CATALOG:
            return "catalog"
        if self.kind is DocKind.SHOP:
            return f"shop:{self.shop_id}"
        if self.kind is DocKind.BOOKINGS:
            assert self.day is not None
            return f"bookings:{self.shop_id}:{self.day.isoformat()}"
        return f"user:{self.user_id}"

    @property
    def roots(self) -> frozenset[str]:
        return ROOTS[self.kind]

    @classmethod
    def catalog(cls) -> DocId:
        return cls(DocKind.CATALOG)

    @classmethod
    def shop(cls, shop_id: str) -> DocId:
        return parse_doc_id(f"shop:{shop_id}")

    @classmethod
    def bookings(cls, shop_id: str, day: _dt.date | str) -> DocId:
        iso = day if isinstance(day, str) else day.isoformat()
        return parse_doc_id(f"bookings:{shop_id}:{iso}")

    @classmethod
    def user(cls, user_id: str) -> DocId:
        return parse_doc_id(f"user:{user_id}")


def check_id(value: object, what: str = "id") -> str:
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise SchemaError(f"{what} must be 1-64 characters of A-Z a-z 0-9 _ -")
    return value


def parse_day(text: object) -> _dt.date:
    """A bookings document's day: exactly ``YYYY-MM-DD`` and a real date (``date.fromisoformat``
    alone also takes ``20270111`` and ``2027-W02-1``, which would name the same document twice).

    Raises:
        SchemaError: any other spelling, or no such day.
    """
    if not isinstance(text, str) or not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", text):
        raise SchemaError("bookings day must be YYYY-MM-DD")
    try:
        return _dt.date.fromisoformat(text)
    except ValueError:
        raise SchemaError(f"no such day {text!r}") from None


def parse_doc_id(text: object) -> DocId:
    """Parse and check a document id; every other spelling is refused.

    Remembers the last ids it parsed (a ``DocId`` is immutable): the relay parses the id of the
    document an update is for several times per update (profile of the per-booking path).

    Raises:
        SchemaError: unknown kind, malformed id or date.
    """
    if not isinstance(text, str) or len(text) > 200:
        raise SchemaError("doc id must be a short string")
    return _parse_doc_id(text)


@functools.lru_cache(maxsize=4096)
def _parse_doc_id(text: str) -> DocId:
    if text == "catalog":
        return DocId(DocKind.CATALOG)
    kind, _, rest = text.partition(":")
    if kind == "shop":
        return DocId(DocKind.SHOP, shop_id=check_id(rest, "shop id"))
    if kind == "user":
        return DocId(DocKind.USER, user_id=check_id(rest, "user id"))
    if kind == "bookings":
        shop, _, day = rest.partition(":")
        check_id(shop, "shop id")
        return DocId(DocKind.BOOKINGS, shop_id=shop, day=parse_day(day))
    raise SchemaError(f"unknown document kind in {text!r}")


# --- field specs -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _F:
    """One field: its Python type, whether required, and its bounds."""

    name: str
    type: str  # "str", "id", "hlc", "int", "float", "bool", "hhmm", "day", "weekdays", "enum", "url"
    required: bool = True
    max_len: int = 200
    lo: float | None = None
    hi: float | None = None
    enum: frozenset[str] | None = None
    multiline: bool = False
    """Text that may hold line feeds (a shop's description); every other text is one line."""
    since: int = 1
    """The schema version that added the field: in an older record it is an unknown field."""


def has_control_characters(text: str, multiline: bool = False) -> bool:
    """Whether ``text`` holds a character no text field may hold (line feeds allowed if ``multiline``)."""
    return (_CONTROL_MULTILINE_RE if multiline else _CONTROL_RE).search(text) is not None


def printable(text: str, multiline: bool = False) -> str:
    """``text`` safe to print on a terminal: each control character (line feeds kept when
    ``multiline``) shown as a visible escape such as ``\\x1b``. For display only: records
    written before schema version 2 may hold control characters, and a newer version could add a
    multi-line field."""
    pattern = _CONTROL_MULTILINE_RE if multiline else _CONTROL_RE
    return pattern.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _check_field(spec: _F, value: Any, schema_version: int) -> Any:
    t = spec.type
    where = f"field {spec.name!r}"
    if t in ("str", "url"):
        if not isinstance(value, str) or len(value) > spec.max_len:
            raise SchemaError(f"{where} must be text of at most {spec.max_len} characters")
        if has_control_characters(value, spec.multiline):
            raise SchemaError(f"{where} holds a control character")
        if t == "url" and value and not re.match(r"https?://", value):
            raise SchemaError(f"{where} must be an http(s) URL")
        return value
    if t == "id":
        return check_id(value, where)
    if t == "hlc":
        if not isinstance(value, str) or not _HLC_RE.match(value):
            raise SchemaError(f"{where} must be an HLC timestamp string")
        return value
    if t == "day":
        if not isinstance(value, str):
            raise SchemaError(f"{where} must be a day YYYY-MM-DD")
        parse_day(value)
        return value
    if t == "hhmm":
        if not isinstance(value, str) or not _HHMM_RE.match(value):
            raise SchemaError(f"{where} must be HH:MM")
        return value
    if t == "int":
        if type(value) is not int:
            raise SchemaError(f"{where} must be an integer")
    elif t == "float":
        if type(value) not in (int, float) or value != value:
            raise SchemaError(f"{where} must be a number")
        value = float(value)
    elif t == "bool":
        if type(value) is not bool:
            raise SchemaError(f"{where} must be true or false")
        return value
    elif t == "weekdays":
        if (
            not isinstance(value, list)
            or len(value) > 7
            or any(type(d) is not int or not 0 <= d <= 6 for d in value)
        ):
            raise SchemaError(f"{where} must be a list of weekday numbers 0-6")
        return tuple(sorted(set(value)))
    elif t == "enum":
        assert spec.enum is not None
        if not isinstance(value, str) or len(value) > 32:
            raise SchemaError(f"{where} must be one of {sorted(spec.enum)}")
        if value not in spec.enum and schema_version <= SCHEMA_VERSION:
            raise SchemaError(f"{where} must be one of {sorted(spec.enum)}")
        return value
    else:  # pragma: no cover - a typo in the tables below
        raise AssertionError(t)
    if spec.lo is not None and value < spec.lo:
        raise SchemaError(f"{where} must be at least {spec.lo}")
    if spec.hi is not None and value > spec.hi:
        raise SchemaError(f"{where} must be at most {spec.hi}")
    return value


@dataclass(frozen=True)
class TypedRecord:
    """Base of every typed record; ``extra`` holds fields from newer schema versions."""

    KIND: ClassVar[str] = ""
    ROOT: ClassVar[str] = ""
    FIELDS: ClassVar[tuple[_F, ...]] = ()
    KEY_FIELD: ClassVar[str | None] = None
    SINCE: ClassVar[int] = 1
    """The schema version that added the record kind: a record of an older version is refused."""
    """The field the record's map key must equal (None: the key is a free record id)."""

    extra: Mapping[str, Any] = field(default_factory=dict, kw_only=True, compare=False)
    schema_version: int = field(default=SCHEMA_VERSION, kw_only=True, compare=False)

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any], schema_version: int = SCHEMA_VERSION) -> TypedRecord:
        known: dict[str, Any] = {}
        for spec in cls.FIELDS:
            if spec.since > schema_version:
                known[spec.name] = None  # not a field of that version: an unknown field below
                continue
            if spec.name in fields:
                known[spec.name] = _check_field(spec, fields[spec.name], schema_version)
            elif spec.required:
                raise SchemaError(f"{cls.KIND}: field {spec.name!r} is required")
            else:
                known[spec.name] = None
        names = {s.name for s in cls.FIELDS if s.since <= schema_version}
        extra = {k: v for k, v in fields.items() if k not in names}
        if extra and schema_version <= SCHEMA_VERSION:
            raise SchemaError(
                f"{cls.KIND}: unknown fields {sorted(extra)} in schema version {schema_version}"
            )
        return cls(**known, extra=extra, schema_version=schema_version)

    def to_fields(self) -> dict[str, Any]:
        """The field map to sign, without Nones (optional fields are simply absent)."""
        out: dict[str, Any] = {}
        for spec in self.FIELDS:
            value = getattr(self, spec.name)
            if value is None:
                continue
            out[spec.name] = list(value) if isinstance(value, tuple) else value
        out.update(self.extra)
        return out

    def needed_version(self) -> int:
        """The lowest schema version that holds every field this record sets: what to sign it as,
        so replicas of older versions read it whole whenever they can."""
        return max([self.SINCE, *(s.since for s in self.FIELDS if getattr(self, s.name) is not None)])


_NAME = _F("name", "str", max_len=120)
_HLC = _F("hlc", "hlc")


@dataclass(frozen=True)
class Category(TypedRecord):
    KIND: ClassVar[str] = "category"
    ROOT: ClassVar[str] = "categories"
    FIELDS: ClassVar[tuple[_F, ...]] = (
        _F("id", "id"),
        _NAME,
        _F("icon", "str", required=False, max_len=64),
        _HLC,
    )
    id: str
    name: str
    icon: str | None
    hlc: str


@dataclass(frozen=True)
class ShopSummary(TypedRecord):
    KIND: ClassVar[str] = "shop_summary"
    ROOT: ClassVar[str] = "shops"
    FIELDS: ClassVar[tuple[_F, ...]] = (
        _F("id", "id"),
        _NAME,
        _F("category", "id"),
        _F("location", "str", max_len=200),
        _F("lat", "float", lo=-90, hi=90),
        _F("lon", "float", lo=-180, hi=180),
        _F("rating", "float", required=False, lo=0, hi=5),
        _F("active", "bool"),
        _HLC,
    )
    id: str
    name: str
    category: str
    location: str
    lat: float
    lon: float
    rating: float | None
    active: bool
    hlc: str


@dataclass(frozen=True)
class ShopProfile(TypedRecord):
    KIND: ClassVar[str] = "shop_profile"
    ROOT: ClassVar[str] = "profile"
    FIELDS: ClassVar[tuple[_F, ...]] = (
        _NAME,
        _F("description", "str", max_len=2000, multiline=True),
        _F("address", "str", max_len=300),
        _F("lat", "float", lo=-90, hi=90),
        _F("lon", "float", lo=-180, hi=180),
        _F("image_url", "url", required=False, max_len=500),
        _F("hours", "str", max_len=300),
        _HLC,
    )
    name: str
    description: str
    address: str
    lat: float
    lon: float
    image_url: str | None
    hours: str
    hlc: str


@dataclass(frozen=True)
class SlotTemplate(TypedRecord):
    """A bookable slot of a shop, every day (or on ``weekdays``, 0 = Monday); newest HLC supersedes."""

    KIND: ClassVar[str] = "slot"
    ROOT: ClassVar[str] = "slots"
    FIELDS: ClassVar[tuple[_F, ...]] = (
        _F("id", "id"),
        _F("service", "str", max_len=120),
        _F("start", "hhmm"),
        _F("duration", "int", lo=1, hi=24 * 60),
        _F("capacity", "int", lo=0, hi=10_000),
        _F("weekdays", "weekdays", required=False),
        _F("active", "bool"),
        _HLC,
        _F("per_customer", "int", required=False, lo=1, hi=100, since=2),
    )
    id: str
    service: str
    start: str
    duration: int
    capacity: int
    weekdays: tuple[int, ...] | None
    active: bool
    hlc: str
    per_customer: int | None = None
    """Active claims one customer may hold on this slot on one day (absent: 1); schema version 2."""

    def capacity_on(self, day: _dt.date) -> int:
        return capacity_on(day, self.capacity, self.weekdays, self.active)


def capacity_on(day: _dt.date, capacity: int, weekdays: Collection[int] | None, active: bool) -> int:
    """Seats a slot offers on ``day``: none when it is inactive or ``day`` is not one of its
    ``weekdays`` (0 = Monday; None: every day), else its capacity. The one rule for verdicts,
    the relay's arrival checks and the client's projections."""
    if not active:
        return 0
    if weekdays is not None and day.weekday() not in weekdays:
        return 0
    return capacity


def per_customer_limits(templates: Mapping[str, SlotTemplate]) -> dict[str, int]:
    """Per slot id, the active claims one customer may hold on it on one day (the verdict's
    ``limits``): the current template's ``per_customer``, 1 when absent."""
    return {slot: template.per_customer or 1 for slot, template in templates.items()}


def capacities_on(templates: Mapping[str, SlotTemplate], day: _dt.date) -> dict[str, int]:
    """Seats per slot id on ``day`` (the verdict's capacities), from each slot's current template."""
    return {slot: template.capacity_on(day) for slot, template in templates.items()}


@dataclass(frozen=True)
class StaffEntry(TypedRecord):
    KIND: ClassVar[str] = "staff"
    ROOT: ClassVar[str] = "staff"
    FIELDS: ClassVar[tuple[_F, ...]] = (
        _F("user", "id"),
        _F("role", "enum", enum=frozenset({"staff", "owner"})),
        _F("active", "bool"),
        _HLC,
    )
    user: str
    role: str
    active: bool
    hlc: str


@dataclass(frozen=True)
class Reservation(TypedRecord):
    """A claim on a slot. Names the customer by opaque user id only (docs/design.md, "Documents": no PII in
    day docs)."""

    KIND: ClassVar[str] = "reservation"
    ROOT: ClassVar[str] = "reservations"
    KEY_FIELD: ClassVar[str | None] = "id"
    FIELDS: ClassVar[tuple[_F, ...]] = (
        _F("id", "id"),
        _F("slot", "id"),
        _F("party", "int", lo=1, hi=100),
        _F("customer", "id"),
        _HLC,
        _F("note", "str", required=False, max_len=500),
    )
    id: str
    slot: str
    party: int
    customer: str
    hlc: str
    note: str | None = None


class EventType(StrEnum):
    CANCEL = "cancel"
    CONFIRM = "confirm"
    DECLINE = "decline"
    NO_SHOW = "no_show"


@dataclass(frozen=True)
class StatusEvent(TypedRecord):
    KIND: ClassVar[str] = "event"
    ROOT: ClassVar[str] = "events"
    KEY_FIELD: ClassVar[str | None] = "id"
    FIELDS: ClassVar[tuple[_F, ...]] = (
        _F("id", "id"),
        _F("reservation", "id"),
        _F("type", "enum", enum=frozenset(e.value for e in EventType)),
        _F("by", "id"),
        _HLC,
        _F("reason", "str", required=False, max_len=500),
    )
    id: str
    reservation: str
    type: str
    by: str
    hlc: str
    reason: str | None = None


@dataclass(frozen=True)
class Stamp(TypedRecord):
    """The relay's sequence number for a claim: the order every replica ranks stamped claims in."""

    KIND: ClassVar[str] = "stamp"
    ROOT: ClassVar[str] = "stamps"
    FIELDS: ClassVar[tuple[_F, ...]] = (
        _F("no", "int", lo=1, hi=2**53),
        _F("reservation", "id"),
        _F("at", "int", lo=0, hi=2**53),
    )
    no: int
    reservation: str
    at: int


@dataclass(frozen=True)
class UserProfile(TypedRecord):
    KIND: ClassVar[str] = "user_profile"
    ROOT: ClassVar[str] = "profile"
    FIELDS: ClassVar[tuple[_F, ...]] = (
        _F("display_name", "str", max_len=120),
        _F("email", "str", required=False, max_len=254),
        _F("phone", "str", required=False, max_len=40),
        _F("locale", "str", required=False, max_len=20),
        _HLC,
    )
    display_name: str
    email: str | None
    phone: str | None
    locale: str | None
    hlc: str


@dataclass(frozen=True)
class BookedDay(TypedRecord):
    """A day on which the user booked at a shop, in the user's own document (schema version 2).

    Why: a user's bookings live in the shops' day documents, which name customers by id only; a new
    device of the user learns from this list which days to fetch to show the bookings it did not
    make. Written once per (shop, day) by the device that books there first; never removed (a
    reader ignores days it does not care about, past ones say).
    """

    KIND: ClassVar[str] = "booked_day"
    ROOT: ClassVar[str] = "days"
    SINCE: ClassVar[int] = 2
    FIELDS: ClassVar[tuple[_F, ...]] = (_F("shop", "id"), _F("day", "day"), _HLC)
    shop: str
    day: str
    hlc: str


def stamp_key(no: int) -> str:
    """Stamps are keyed by their number, zero-padded so keys sort like numbers."""
    return f"{no:016d}"


_BY_DOC_AND_ROOT: dict[DocKind, dict[str, type[TypedRecord]]] = {
    DocKind.CATALOG: {"categories": Category, "shops": ShopSummary},
    DocKind.SHOP: {"profile": ShopProfile, "slots": SlotTemplate, "staff": StaffEntry},
    DocKind.BOOKINGS: {"reservations": Reservation, "events": StatusEvent, "stamps": Stamp},
    DocKind.USER: {"profile": UserProfile, "days": BookedDay},
}

ROOTS: dict[DocKind, frozenset[str]] = {
    kind: frozenset(roots) | {CERTS_ROOT} for kind, roots in _BY_DOC_AND_ROOT.items()
}


def record_class(kind: DocKind, root: str) -> type[TypedRecord]:
    cls = _BY_DOC_AND_ROOT[kind].get(root)
    if cls is None:
        raise SchemaError(f"a {kind.value} document has no map {root!r}")
    return cls


def parse_record(
    kind: DocKind, root: str, key: str, record_kind: str, fields: Mapping[str, Any], schema_version: int
) -> TypedRecord:
    """Type-check one record's fields for the map it is stored in.

    Raises:
        SchemaError: wrong map for the document, kind mismatch, bad field, or key not matching.
    """
    cls = record_class(kind, root)
    if record_kind != cls.KIND:
        raise SchemaError(f"a {record_kind!r} record cannot live in map {root!r}")
    if schema_version < cls.SINCE:
        raise SchemaError(f"{record_kind} records exist from schema version {cls.SINCE}")
    check_id(key, "record key") if cls is not Stamp else None
    record = cls.from_fields(fields, schema_version)
    if cls.KEY_FIELD is not None and getattr(record, cls.KEY_FIELD) != key:
        raise SchemaError(f"{record_kind} stored under {key!r} but its {cls.KEY_FIELD} says otherwise")
    if isinstance(record, Stamp) and key != stamp_key(record.no):
        raise SchemaError(f"stamp {record.no} stored under key {key!r}")
    return record
