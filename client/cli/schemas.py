"""Exit codes and the ``--json`` output schemas of every command (see :mod:`client.cli.app`)."""

from __future__ import annotations

from typing import Any

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_AUTH = 3
EXIT_REJECTED = 4
EXIT_UNREACHABLE = 5
EXIT_INSECURE = 6
EXIT_CODES: dict[str, int] = {
    "ok": EXIT_OK,
    "failure": EXIT_FAILURE,
    "usage": EXIT_USAGE,
    "auth": EXIT_AUTH,
    "rejected": EXIT_REJECTED,
    "unreachable": EXIT_UNREACHABLE,
    "insecure": EXIT_INSECURE,
}


# --- JSON schemas ---------------------------------------------------------------------------------

_S = str
_OS = (str, None)
_OI = (int, None)
_NUM = (int, float)

CATEGORY: dict[str, Any] = {"id": _S, "name": _S, "icon": _OS}
SHOP_ROW: dict[str, Any] = {
    "id": _S, "name": _S, "category": _S, "location": _S, "lat": _NUM, "lon": _NUM,
    "rating": (int, float, None), "active": bool,
}  # fmt: skip
PROFILE: dict[str, Any] = {
    "name": _S, "description": _S, "address": _S, "lat": _NUM, "lon": _NUM, "image_url": _OS, "hours": _S,
}  # fmt: skip
SLOT: dict[str, Any] = {
    "shop_id": _S, "slot_id": _S, "service": _S, "start": _S, "duration": int, "capacity": int,
    "weekdays": ([int], None), "active": bool,
}  # fmt: skip
STAFF: dict[str, Any] = {"shop_id": _S, "user_id": _S, "role": _S, "active": bool}
SHOP_DETAIL: dict[str, Any] = {
    "shop_id": _S, "summary": (SHOP_ROW, None), "profile": (PROFILE, None), "slots": [SLOT], "staff": [STAFF],
}  # fmt: skip
AVAILABILITY: dict[str, Any] = {
    "slot_id": _S, "service": _S, "start": _S, "duration": int, "capacity": int, "seats_taken": int,
    "seats_left": int, "waitlisted": int, "known": bool,
}  # fmt: skip
RESERVATION: dict[str, Any] = {
    "reservation_id": _S, "shop_id": _S, "day": _S, "slot_id": _S, "customer": _S, "party": int,
    "note": _OS, "state": _S, "waitlist_position": _OI, "final": bool, "stamp": _OI,
    "staff_confirmed": bool, "holds_seats": bool, "rejected_code": _OS, "rejected_reason": _OS,
    "start": _OS, "service": _OS,
}  # fmt: skip
EVENT: dict[str, Any] = {"type": _S, "at_ms": int}
ENTRY: dict[str, Any] = {
    "id": int, "state": _S, "entity_type": _S, "entity_id": _S, "operation": _S, "doc_id": _S,
    "created_ms": int, "retry_count": int, "last_error": _OS, "reject_code": _OS, "reject_reason": _OS,
}  # fmt: skip
CHANGE: dict[str, Any] = {"reservation": RESERVATION, "queued": bool, "message": _S}
PEER_ROW: dict[str, Any] = {"doc": _S, "code": _S, "reason": _S}

SCHEMAS: dict[str, dict[str, Any]] = {
    # ``events`` (optional, [EVENT]) in an error: what happened before the failure (peer sync).
    "error": {"error": {"code": _S, "message": _S, "exit_code": int}},
    "event": EVENT,
    "register": {"user_id": _S, "email": _S, "relay": _S},
    "login": {"user_id": _S, "email": _S, "relay": _S, "cert_id": _S},
    "logout": {"logged_out": bool, "relay": _OS, "flushed": _OI},
    "whoami": {
        "user_id": _S,
        "email": _OS,
        "relay": _OS,
        "admin": bool,
        "owner_of": [_S],
        "staff_of": [_S],
        "certificate_expires_ms": int,
    },  # fmt: skip
    "categories": {"categories": [CATEGORY]},
    "shops": {"category": _OS, "search": _OS, "shops": [SHOP_ROW]},
    "shop show": SHOP_DETAIL,
    "slots": {"shop_id": _S, "day": _S, "known": bool, "slots": [AVAILABILITY]},
    "book": CHANGE,
    "cancel": CHANGE,
    "confirm": CHANGE,
    "decline": CHANGE,
    "no-show": CHANGE,
    "reservations": {"reservations": [RESERVATION]},
    "day": {"shop_id": _S, "day": _S, "known": bool, "counts": {}, "reservations": [RESERVATION]},
    "waitlist": {"shop_id": _S, "day": _S, "known": bool, "waitlist": [RESERVATION]},
    "sync": {
        "relay": _S,
        "epoch": _S,
        "epoch_changed": bool,
        "docs": [_S],
        "applied": int,
        "sent": int,
        "acked": int,
        "rejected": [{"entry_id": int, "code": _S, "reason": _S}],
        "rebuilt": [{"doc": _S, "reason": _S}],
        "conflicts": [{"doc": _S, "reason": _S}],
        "not_synced": [{"doc": _S, "reason": _S}],
        "deferred": [_S],
        "pending": int,
        "transport": _S,
        "transport_reason": _S,
        "events": [EVENT],
    },  # fmt: skip
    "status": {
        "logged_in": bool,
        "user_id": _OS,
        "relay": _OS,
        "relay_reachable": (bool, None),
        "queue_size": int,
        "pending": int,
        "rejected": int,
        "entries": [ENTRY],
        "last_sync_ms": _OI,
        "transport": _S,
        "last_transport": _OS,
        "last_transport_reason": _OS,
    },  # fmt: skip
    "following": {"following": [{"doc": _S, "why": [_S]}]},
    "unfollow": {"unfollowed": _S},
    "refused": {"refused": [{**ENTRY, "why": _S, "what_to_do": _S}]},
    "discard": {"discarded": [int]},
    "retry": CHANGE,
    "shop create": {**SHOP_DETAIL, "queued": bool},
    "shop edit": {**SHOP_DETAIL, "queued": bool},
    "slot add": {"slot": SLOT, "queued": bool},
    "staff add": {"staff": STAFF, "queued": bool},
    "category add": {"category": CATEGORY, "queued": bool},
    # Peer sync (docs/peer.md). ``peer sync`` exits 2 when the URL is a relay's, not a peer's
    # (``not_a_peer``), 3 when the peer refused our credentials (log in again while online), 4 when
    # the peer failed our checks or an update was refused either way, 5 when the peer is
    # unreachable. ``pending`` counts every queued change, ``own_pending`` this user's own,
    # ``carried`` those stored from peers for the relay. ``peer serve --json`` prints one
    # "peer serve" object per line.
    "peer sync": {
        "peer": _S,
        "peer_user": _S,
        "docs": [_S],
        "refused_docs": [PEER_ROW],
        "received": int,
        "sent": int,
        "rejected": [PEER_ROW],
        "refused": [PEER_ROW],
        "diverged": [_S],
        "pending": int,
        "own_pending": int,
        "carried": int,
        "peer_shops": [{"shop_id": _S, "role": _S, "name": _OS}],
        "events": [EVENT],
    },  # fmt: skip
    "peer serve": EVENT,
}
