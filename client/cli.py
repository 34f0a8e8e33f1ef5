"""``quickslot``: the command line of the offline-first client.

Usage: ``quickslot [--home DIR] [--json] COMMAND ...`` (``--home``/``--json`` may also follow the
command). The profile lives in ``--home``, else ``$QUICKSLOT_HOME``, else ``~/.quickslot``. The
relay URL given to ``register``/``login`` is remembered in the profile (``cli.json``, no secrets);
tokens and the device key stay in the secret store (keyring, or a 0600 file;
``$QUICKSLOT_SECRETS=file`` forces the file). Passwords are read with ``--password-stdin`` (first
line of stdin) or a prompt; no password or token is ever printed.

Every command is a thin call into :class:`client.local.LocalClient`,
:class:`client.auth.AuthClient` or :class:`client.sync.SyncService`. Browsing and booking work
offline; a booking is queued and goes out on the next ``sync`` (that is not an error: exit 0,
``"queued": true``).

Exit codes (:data:`EXIT_CODES`):

* 0 ok; 1 unexpected failure;
* 2 usage error (bad arguments, an id or value the schema refuses);
* 3 authentication needed (not logged in, wrong credentials, session revoked: log in again);
* 4 rejected (the relay refused: email taken, a queued change set aside, not allowed, not found;
  or ``sync`` could not send every queued change, each named with why on its output);
* 5 relay unreachable (``sync``, ``login``, ``register``; never ``book``, which queues), or for
  ``peer sync`` the peer unreachable;
* 6 relay insecure: its TLS certificate is not trusted, or matches no ``--pin`` (nothing was sent;
  retrying will not help, and it may be an attack: check the relay's certificate or the pin).

TLS (``https://``/``wss://`` relays): ``register``/``login`` take ``--cafile PATH`` (a CA bundle
to trust instead of the system's; copied into the profile) and ``--pin sha256//BASE64`` (the
SHA-256 of the relay certificate's public key, curl's ``--pinnedpubkey`` format; repeatable; see
:mod:`client.tls`). The choice is stored in the profile and used by every later command.

JSON output (``--json``): one object on stdout per command, whose required keys and types are
:data:`SCHEMAS` (a type spec is a type, a tuple of types meaning "one of", ``None`` meaning
null, a dict for a nested object and a one-element list for an array of that spec). Keys may be
added in later versions; none listed will be removed or change type. On failure the object is
``SCHEMAS["error"]``: ``{"error": {"code", "message", "exit_code"}}``. ``sync --watch --json``
prints one ``SCHEMAS["event"]`` object per line (events of :mod:`client.events`, ``to_dict``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as _dt
import getpass
import json
import logging
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from client.auth import AuthClient, AuthError, LoginRequired, RelayUnavailable, http_base
from client.events import (
    BookingEvent,
    BookingRejected,
    ClientEvent,
    LoggedOut,
    RelayReachable,
    RelayUnreachable,
    Synced,
)
from client.local import ClientError, InvalidRequest, LocalClient, NotAllowed, NotFound, NotLoggedIn
from client.projections import CategoryRow, ReservationRow, ShopDetail, SlotAvailability, SlotRow, StaffRow
from client.secrets import SecretStore
from client.store import OutboxEntry
from crdt_core.errors import SchemaError
from crdt_core.schema import parse_day, printable
from crdt_core.verdict import ClaimState

if TYPE_CHECKING:
    from client.sync import SyncService, SyncSummary
    from client.tls import TlsSettings

# Start-up time is paid by every command (``make demo`` runs ~70 of them): websockets, the sync
# protocol and httpx are imported by the commands that talk to the relay, not here.

__all__ = ["EXIT_CODES", "SCHEMAS", "CliError", "main"]

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

CONFIG_FILE = "cli.json"
#: The ``--cafile`` given at login, copied into the profile so later commands do not depend on it.
RELAY_CA_FILE = "relay-ca.pem"

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
    # Peer sync (docs/peer.md). ``peer sync`` exits 3 when the peer refused our credentials (log in
    # again while online), 4 when the peer failed our checks or an update was refused either way,
    # 5 when the peer is unreachable. ``peer serve --json`` prints one "peer serve" object per line.
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
        "events": [EVENT],
    },  # fmt: skip
    "peer serve": EVENT,
}


class CliError(Exception):
    """A failure to report with an exit code (and a stable ``code`` for ``--json``)."""

    def __init__(self, exit_code: int, code: str, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.code = code
        self.message = message


# --- converting rows to JSON ------------------------------------------------------------------------


def _category(row: CategoryRow) -> dict[str, Any]:
    return {"id": row.id, "name": row.name, "icon": row.icon}


def _slot(row: SlotRow) -> dict[str, Any]:
    return {
        "shop_id": row.shop_id, "slot_id": row.slot_id, "service": row.service, "start": row.start,
        "duration": row.duration, "capacity": row.capacity,
        "weekdays": None if row.weekdays is None else list(row.weekdays), "active": row.active,
    }  # fmt: skip


def _staff(row: StaffRow) -> dict[str, Any]:
    return {"shop_id": row.shop_id, "user_id": row.user_id, "role": row.role, "active": row.active}


def _shop_row(row: Any) -> dict[str, Any]:
    return {k: getattr(row, k) for k in SHOP_ROW}


def _shop_detail(detail: ShopDetail) -> dict[str, Any]:
    return {
        "shop_id": detail.shop_id,
        "summary": None if detail.summary is None else _shop_row(detail.summary),
        "profile": None if detail.profile is None else {k: getattr(detail.profile, k) for k in PROFILE},
        "slots": [_slot(s) for s in detail.slots],
        "staff": [_staff(s) for s in detail.staff],
    }


def _availability(row: SlotAvailability) -> dict[str, Any]:
    return {k: getattr(row, k) for k in AVAILABILITY}


def _reservation(row: ReservationRow) -> dict[str, Any]:
    out = {k: getattr(row, k) for k in RESERVATION}
    out["state"] = row.state.value
    return out


def _entry(entry: OutboxEntry) -> dict[str, Any]:
    return {k: getattr(entry, k) for k in ENTRY}


# --- human output ------------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return printable(",".join(str(v) for v in value)) or "-"
    return printable(str(value))  # a cell is one line: no control character reaches the terminal


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str], empty: str = "(none)") -> str:
    """An aligned plain-text table of ``columns`` of ``rows`` (headers upper-cased)."""
    if not rows:
        return empty
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    headers = [c.upper() for c in columns]
    widths = [max(len(h), *(len(line[i]) for line in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for line in cells:
        lines.append("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
    return "\n".join(lines)


#: How a verdict state reads to a person where its value alone would puzzle (JSON keeps the value).
STATE_WORDS = {
    ClaimState.TOO_LARGE: "party too large for this slot",
    ClaimState.DUPLICATE: "duplicate: you already hold a booking of this slot that day",
}


def state_words(state: ClaimState) -> str:
    return STATE_WORDS.get(state, state.value)


def describe_event(event: ClientEvent) -> str:
    """One line telling the user what happened."""
    if isinstance(event, BookingEvent):
        where = f"{event.shop_id} {event.day} {event.slot_id}"
        now = state_words(event.state)
        text = f"your booking {event.reservation_id} ({where}) is now {now} ({event.kind})"
        if event.position is not None and event.state.value == "waitlisted":
            text += f", waitlist position {event.position}"
        return text + (", final" if event.final and event.kind != "final" else "")
    if isinstance(event, BookingRejected):
        return (
            f"the relay rejected your {event.entity_type} {event.entity_id} ({event.operation}): "
            f"{event.code}: {event.reason}"
        )
    if isinstance(event, Synced):
        return f"synced {len(event.docs)} documents with {event.relay_url}; {event.pending} changes pending"
    if isinstance(event, RelayUnreachable):
        return f"relay {event.relay_url} unreachable: {event.error}"
    if isinstance(event, RelayReachable):
        return f"relay {event.relay_url} reachable again"
    if isinstance(event, LoggedOut):
        return f"logged out ({event.reason}): log in again"
    return event.type


# --- the profile ----------------------------------------------------------------------------------------


def default_home() -> Path:
    env = os.environ.get("QUICKSLOT_HOME")
    return Path(env).expanduser() if env else Path.home() / ".quickslot"


def _read_config(home: Path) -> dict[str, Any]:
    try:
        data = json.loads((home / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_config(home: Path, **changes: Any) -> None:
    config = _read_config(home)
    config.update(changes)
    path = home / CONFIG_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(config, indent=2, sort_keys=True))
    os.replace(tmp, path)


@dataclass
class Ctx:
    """What a command runs with: the opened profile and the parsed arguments."""

    args: argparse.Namespace
    home: Path
    local: LocalClient

    @property
    def config(self) -> dict[str, Any]:
        return _read_config(self.home)

    def relay(self, required: bool = True) -> str | None:
        url = getattr(self.args, "relay", None) or self.config.get("relay")
        if url is None and required:
            raise CliError(EXIT_AUTH, "no_relay", "no relay known for this profile: log in with --relay URL")
        return None if url is None else http_base(str(url))

    def auth(self) -> AuthClient:
        url = self.relay()
        assert url is not None
        return AuthClient(self.local, url, verify=self.tls().verify())

    def tls(self) -> TlsSettings:
        """How to trust the relay: ``--cafile``/``--pin`` when given, else what login stored.

        Naming a different relay without them starts from the defaults (the system's CAs), so a
        pin never leaks onto a relay it was not meant for.
        """
        from client.tls import TlsSettings

        cafile = getattr(self.args, "cafile", None)
        pins = getattr(self.args, "pin", None) or []
        given = getattr(self.args, "relay", None)
        try:
            if cafile is not None or pins:
                settings = TlsSettings.create(cafile, pins)
            elif given and http_base(str(given)) != self.config.get("relay"):
                settings = TlsSettings()
            else:
                settings = TlsSettings.from_config(self.config.get("tls"), base=self.home)
            url = self.relay(required=False)
            if url is not None:
                settings.check_url(url)
        except ValueError as exc:
            raise CliError(EXIT_USAGE, "bad_tls", str(exc)) from None
        return settings

    def remember_tls(self) -> dict[str, Any]:
        """The TLS settings to store in the profile (a ``--cafile`` is copied into it first, and
        stored relative to it, so the profile does not depend on where the file came from)."""
        settings = self.tls()
        config = settings.to_config()
        if getattr(self.args, "cafile", None) is not None and settings.cafile is not None:
            target = self.home / RELAY_CA_FILE
            tmp = target.with_suffix(".tmp")
            tmp.write_bytes(settings.cafile.read_bytes())
            os.replace(tmp, target)
            config["cafile"] = RELAY_CA_FILE
        elif settings.cafile is not None and settings.cafile.parent == self.home:
            config["cafile"] = settings.cafile.name  # kept from an earlier login
        return config

    def require_login(self) -> None:
        if self.local.identity is None:
            raise CliError(EXIT_AUTH, "not_logged_in", "not logged in: run `quickslot login`")


def _secret_store(home: Path) -> SecretStore:
    backend = os.environ.get("QUICKSLOT_SECRETS", "auto")
    if backend not in ("auto", "keyring", "file"):
        raise CliError(EXIT_USAGE, "bad_env", "QUICKSLOT_SECRETS must be auto, keyring or file")
    return SecretStore(home, backend=backend)  # type: ignore[arg-type]


def _password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        line = sys.stdin.readline().rstrip("\r\n")
        if not line:
            raise CliError(EXIT_USAGE, "no_password", "--password-stdin: no password on stdin")
        return line
    if not sys.stdin.isatty():
        raise CliError(EXIT_USAGE, "no_password", "no terminal to prompt on: use --password-stdin")
    return getpass.getpass("password: ")


def _email(args: argparse.Namespace) -> str:
    if args.email:
        return str(args.email)
    if not sys.stdin.isatty() or args.password_stdin:
        raise CliError(EXIT_USAGE, "no_email", "--email is required")
    return input("email: ").strip()


# --- commands -------------------------------------------------------------------------------------------

Result = tuple[dict[str, Any], str]
"""A command's JSON object and its human rendering."""


async def cmd_register(ctx: Ctx) -> Result:
    email = _email(ctx.args)
    password = _password(ctx.args)
    auth = ctx.auth()
    name = ctx.args.name or email.split("@", 1)[0]
    body = await auth.register(email, password, name)
    _write_config(ctx.home, relay=auth.base_url, tls=ctx.remember_tls())
    data = {"user_id": str(body.get("id", "")), "email": email, "relay": auth.base_url}
    if ctx.args.no_login:
        return data, f"registered {email} ({data['user_id']}) at {auth.base_url}; now run `quickslot login`"
    # A newcomer's next step is to book: log in now (a fresh device key), as `login` would.
    result = await auth.login(email, password)
    _write_config(ctx.home, email=result.email, user_id=result.user_id)
    data["cert_id"] = result.cert_id
    return data, f"registered and logged in as {email} ({result.user_id}) at {auth.base_url}"


async def cmd_login(ctx: Ctx) -> Result:
    email = _email(ctx.args)
    password = _password(ctx.args)
    auth = ctx.auth()
    result = await auth.login(email, password)
    _write_config(
        ctx.home, relay=auth.base_url, email=result.email, user_id=result.user_id, tls=ctx.remember_tls()
    )
    data = {
        "user_id": result.user_id,
        "email": result.email,
        "relay": auth.base_url,
        "cert_id": result.cert_id,
    }
    return data, f"logged in as {result.email} ({result.user_id}) at {auth.base_url}"


async def cmd_logout(ctx: Ctx) -> Result:
    relay = ctx.relay(required=False)
    flushed: int | None = None
    if relay is not None:
        flushed = await _flush_before_logout(ctx)
        await ctx.auth().logout()
    else:
        await ctx.local.logout("logged out")
    _write_config(ctx.home, email=None, user_id=None)
    data = {"logged_out": True, "relay": relay, "flushed": flushed}
    return data, "logged out (tokens and device key removed)"


async def _flush_before_logout(ctx: Ctx) -> int | None:
    """Send queued changes before the session ends: the relay revokes the session's device
    certificates at logout, and what they signed would be refused after it. Best effort: an
    unreachable relay leaves the queue (the session is then not revoked at the relay either)."""
    if ctx.local.identity is None or not (await ctx.local.outbox_counts()).pending:
        return None
    try:
        summary = await _service(ctx).sync_once()
    except Exception as exc:  # noqa: BLE001 - logout must not fail because the relay is away
        logging.getLogger(__name__).warning("could not send queued changes before logout: %s", exc)
        return None
    return summary.acked


async def cmd_whoami(ctx: Ctx) -> Result:
    ctx.require_login()
    identity = ctx.local.identity
    assert identity is not None
    cert = identity.certificate
    data = {
        "user_id": identity.user_id,
        "email": ctx.config.get("email"),
        "relay": ctx.relay(required=False),
        "admin": cert.is_admin,
        "owner_of": sorted(cert.owner_of),
        "staff_of": sorted(cert.staff_of),
        "certificate_expires_ms": cert.expires_at_ms,
    }
    roles = ["admin"] if cert.is_admin else []
    roles += [f"owner of {s}" for s in sorted(cert.owner_of)] + [
        f"staff of {s}" for s in sorted(cert.staff_of)
    ]
    text = f"{data['email'] or identity.user_id} ({identity.user_id}) at {data['relay'] or '-'}"
    return data, text + (f"; {', '.join(roles)}" if roles else "")


async def cmd_categories(ctx: Ctx) -> Result:
    rows = [_category(c) for c in await ctx.local.categories()]
    return {"categories": rows}, table(rows, ["id", "name", "icon"], "(no categories: sync first?)")


async def cmd_shops(ctx: Ctx) -> Result:
    search = ctx.args.search
    rows = [_shop_row(s) for s in await ctx.local.shops(ctx.args.category, search=search)]
    empty = f"(no shop matches {search!r})" if search else "(no shops: sync first?)"
    human = table(rows, ["id", "name", "category", "location", "rating"], empty)
    return {"category": ctx.args.category, "search": search, "shops": rows}, human


async def cmd_shop_show(ctx: Ctx) -> Result:
    detail = await ctx.local.shop(ctx.args.shop)
    if detail is None or (detail.summary is None and detail.profile is None):
        raise NotFound(f"no shop {ctx.args.shop!r} here (subscribed now: run `quickslot sync`)")
    data = _shop_detail(detail)
    head = detail.summary or detail.profile
    lines = [f"{detail.shop_id}: {getattr(head, 'name', '')}"]
    if detail.summary is not None:
        lines.append(f"category {detail.summary.category}, {detail.summary.location}")
    if detail.profile is not None and detail.profile.description:
        lines.append(detail.profile.description)
    lines += ["", table(data["slots"], ["slot_id", "service", "start", "duration", "capacity", "active"])]
    if data["staff"]:
        lines += ["", table(data["staff"], ["user_id", "role", "active"])]
    return data, "\n".join(lines)


def _shop_known(detail: ShopDetail | None) -> bool:
    if detail is None:
        return False
    return detail.summary is not None or detail.profile is not None or bool(detail.slots)


async def _fetch_shop(ctx: Ctx, shop: str, day: str) -> ShopDetail | None:
    """The shop as this device knows it, after fetching it (and ``day``) from the relay first
    when it is not here yet and a session is open: a newcomer need not know which `sync` to run.

    Raises ``NotFound`` when the relay has no such shop (its subscriptions are dropped again),
    and ``CliError`` (5) when it is not here and the relay cannot be reached."""
    await ctx.local.slots(shop, day)  # subscribes the shop and the day
    detail = await ctx.local.shop(shop)
    here = detail is not None and (detail.profile is not None or bool(detail.slots))  # its own doc
    if here or ctx.local.identity is None or ctx.relay(required=False) is None:
        return detail
    try:
        await _service(ctx).sync_once()
    except Exception as exc:
        err = _classify(exc)
        if err is None or err.exit_code != EXIT_UNREACHABLE:
            raise
        raise CliError(
            EXIT_UNREACHABLE,
            "relay_unreachable",
            f"shop {shop!r} is not on this device yet and the relay is unreachable ({err.message}): "
            "run `quickslot sync` once online, then try again",
        ) from exc
    detail = await ctx.local.shop(shop)
    if not _shop_known(detail) and not _my_shop(ctx, shop):
        await ctx.local.unsubscribe(f"shop:{shop}")
        await ctx.local.unsubscribe(f"bookings:{shop}:{day}")
        raise NotFound(f"the relay has no shop {shop!r}: see `quickslot shops` for the shops there")
    return detail


def _my_shop(ctx: Ctx, shop: str) -> bool:
    """The profile owns or staffs ``shop``: it follows it even before the shop reaches the relay."""
    identity = ctx.local.identity
    return identity is not None and shop in identity.certificate.owner_of | identity.certificate.staff_of


async def cmd_slots(ctx: Ctx) -> Result:
    detail = await _fetch_shop(ctx, ctx.args.shop, ctx.args.date)
    if not _shop_known(detail) and not _my_shop(ctx, ctx.args.shop):
        raise NotFound(f"no shop {ctx.args.shop!r} on this device: log in and run `quickslot sync`")
    rows = await ctx.local.slots(ctx.args.shop, ctx.args.date)
    data_rows = [_availability(r) for r in rows]
    known = all(r.known for r in rows) if rows else False
    human = table(
        data_rows,
        ["slot_id", "service", "start", "duration", "capacity", "seats_left", "waitlisted"],
        f"(shop {ctx.args.shop} offers no slots on {ctx.args.date})",
    )
    if rows and not known:
        human += "\n(the bookings of this day are not fetched yet; `quickslot sync` fetches them)"
    return {"shop_id": ctx.args.shop, "day": ctx.args.date, "known": known, "slots": data_rows}, human


def _change(row: ReservationRow, verb: str) -> Result:
    message = f"{verb} {row.reservation_id}: queued, goes to the relay on the next `quickslot sync`"
    data = {"reservation": _reservation(row), "queued": True, "message": message}
    state = state_words(row.state) + ("" if row.final else " (tentative)")
    return data, f"{message}\nstate here: {state}"


async def cmd_book(ctx: Ctx) -> Result:
    ctx.require_login()
    shop, slot = ctx.args.shop, ctx.args.slot
    detail = await _fetch_shop(ctx, shop, ctx.args.date)
    if not _shop_known(detail):
        raise NotFound(f"no shop {shop!r} on this device: run `quickslot sync` first")
    assert detail is not None
    if slot not in {s.slot_id for s in detail.slots}:
        offered = ", ".join(sorted(s.slot_id for s in detail.slots)) or "none"
        raise NotFound(f"shop {shop!r} has no slot {slot!r} (its slots: {offered}; see `quickslot slots`)")
    row = await ctx.local.book(ctx.args.shop, ctx.args.date, ctx.args.slot, party=ctx.args.party)
    return _change(row, "booked")


async def cmd_cancel(ctx: Ctx) -> Result:
    ctx.require_login()
    return _change(await ctx.local.cancel(ctx.args.reservation, ctx.args.reason), "cancelled")


async def cmd_confirm(ctx: Ctx) -> Result:
    ctx.require_login()
    return _change(await ctx.local.confirm(ctx.args.reservation), "confirmed")


async def cmd_decline(ctx: Ctx) -> Result:
    ctx.require_login()
    return _change(await ctx.local.decline(ctx.args.reservation, ctx.args.reason), "declined")


async def cmd_no_show(ctx: Ctx) -> Result:
    ctx.require_login()
    return _change(await ctx.local.no_show(ctx.args.reservation), "marked no-show")


async def cmd_reservations(ctx: Ctx) -> Result:
    ctx.require_login()
    found = await ctx.local.reservations()
    rows = [_reservation(r) for r in found]
    shown = [{**row, "state": state_words(r.state)} for row, r in zip(rows, found, strict=True)]
    human = table(
        shown, ["reservation_id", "shop_id", "day", "start", "slot_id", "party", "state", "final"],
        "(no reservations on this device; bookings made on another device show once their day is "
        "opened here: `quickslot slots SHOP DAY`, then `quickslot sync`)",
    )  # fmt: skip
    return {"reservations": rows}, human


def _drain(local: LocalClient) -> list[ClientEvent]:
    out: list[ClientEvent] = []
    while not local.events.empty():
        out.append(local.events.get_nowait())
    return out


def _service(ctx: Ctx) -> SyncService:
    from client.sync import SyncService

    ctx.require_login()
    url = ctx.relay()
    assert url is not None
    given = getattr(ctx.args, "transport", None)
    if given is not None and given != ctx.config.get("transport"):
        _write_config(ctx.home, transport=given)
    transport = _transport(ctx)
    fallback = None
    if transport != "websocket":
        from client.http_sync import HttpFallback

        fallback = HttpFallback()
    return SyncService(
        ctx.local,
        url,
        ssl_context=ctx.tls().ssl_context(),
        backoff_initial_s=0.5,
        backoff_max_s=30.0,
        transport=transport,
        http_poll_s=getattr(ctx.args, "poll", None) or 5.0,
        fallback=fallback,
    )


def _transport(ctx: Ctx) -> str:
    """``--transport``, else the one remembered in the profile, else auto."""
    value = getattr(ctx.args, "transport", None) or ctx.config.get("transport")
    return value if value in ("auto", "websocket", "http") else "auto"


def _remember_transport(ctx: Ctx, svc: SyncService) -> None:
    if svc.last_transport is not None:
        _write_config(ctx.home, last_transport=svc.last_transport, last_transport_reason=svc.transport_reason)


async def cmd_sync(ctx: Ctx) -> Result:
    svc = _service(ctx)
    if ctx.args.watch:
        return await _watch(ctx, svc)
    _drain(ctx.local)
    try:
        summary: SyncSummary = await svc.sync_once()
    finally:
        if svc.last_sync_ms is not None:
            _write_config(ctx.home, last_sync_ms=svc.last_sync_ms)
        _remember_transport(ctx, svc)
    events = _drain(ctx.local)
    data = {
        "relay": summary.relay_url, "epoch": summary.epoch, "epoch_changed": summary.epoch_changed,
        "docs": list(summary.docs), "applied": summary.applied, "sent": summary.sent,
        "acked": summary.acked,
        "rejected": [{"entry_id": i, "code": c, "reason": r} for i, c, r in summary.rejected],
        "rebuilt": [{"doc": d, "reason": r} for d, r in sorted(summary.rebuilt.items())],
        "conflicts": [{"doc": d, "reason": r} for d, r in sorted(summary.conflicts.items())],
        "not_synced": [{"doc": d, "reason": r} for d, r in sorted(summary.refused_docs.items())],
        "deferred": list(summary.deferred),
        "pending": summary.pending, "transport": svc.last_transport or svc.transport,
        "transport_reason": svc.transport_reason, "events": [e.to_dict() for e in events],
    }  # fmt: skip
    lines = [describe_event(e) for e in events if not isinstance(e, Synced | RelayReachable)]
    lines.append(
        f"synced {len(summary.docs)} documents: {summary.applied} updates in, {summary.acked} changes "
        f"accepted, {len(summary.rejected)} rejected, {summary.pending} pending"
    )
    if svc.last_transport == "http":
        lines.append(f"over plain HTTP: {svc.transport_reason}")
    lines += [
        f"{d} did not fit the relay's and was rebuilt from it: {r}"
        for d, r in sorted(summary.conflicts.items())
    ]
    lines += [f"{d} was not synced: {r}" for d, r in sorted(summary.refused_docs.items())]
    if summary.deferred:
        lines.append(
            f"{len(summary.deferred)} followed documents did not fit the relay's limit per connection "
            "this time (they sync on a later round; `quickslot following` lists what is followed)"
        )
    if summary.pending:
        # Never a silent "1 pending": say which changes did not go out, and why.
        lines += await _unsent_lines(ctx, summary)
    if summary.rejected or summary.pending:
        ctx.args.exit_code = EXIT_REJECTED
    return data, "\n".join(lines)


async def _unsent_lines(ctx: Ctx, summary: SyncSummary) -> list[str]:
    entries = await ctx.local.pending_entries()
    lines = [f"{len(entries)} change(s) could not be sent this time:"]
    for e in entries[:20]:
        why = summary.refused_docs.get(e.doc_id) or e.last_error
        if why is None and e.doc_id in summary.deferred:
            why = "its document did not fit the relay's limit of documents per connection"
        what = f"{e.entity_type} {e.entity_id} ({e.operation}) in {e.doc_id}"
        lines.append(f"  {e.id}: {what}: {why or 'no answer yet'}")
    if len(entries) > 20:
        lines.append(f"  ... and {len(entries) - 20} more (`quickslot status`)")
    lines.append("they stay queued: run `quickslot sync` again; `quickslot status` shows them")
    return lines


async def _watch(ctx: Ctx, svc: SyncService) -> Result:
    """Stay in sync until SIGINT/SIGTERM, printing each event as a line (JSON lines with --json)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, svc.stop)
    task = asyncio.create_task(svc.run())
    logged_out = False

    def show(event: ClientEvent) -> None:
        nonlocal logged_out
        logged_out = logged_out or isinstance(event, LoggedOut)
        line = json.dumps(event.to_dict(), default=str) if ctx.args.json else describe_event(event)
        print(printable(line, multiline=True), flush=True)
        if isinstance(event, Synced):
            _write_config(ctx.home, last_sync_ms=event.at_ms)
            _remember_transport(ctx, svc)

    if not ctx.args.json:
        print(f"watching {svc.relay_url} (Ctrl-C to stop)", flush=True)
    while not task.done():
        getter = asyncio.ensure_future(ctx.local.events.get())
        await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
        if getter.done():
            show(getter.result())
        else:
            getter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await getter
    for event in _drain(ctx.local):
        show(event)
    await task
    if logged_out:
        raise CliError(EXIT_AUTH, "login_required", "the relay ended the session: log in again")
    ctx.args.streamed = True
    return {}, ""


async def cmd_following(ctx: Ctx) -> Result:
    followed = await ctx.local.following()
    rows = [{"doc": d, "why": sorted(r)} for d, r in sorted(followed.items())]
    human = table(rows, ["doc", "why"])
    human += (
        "\n(every document here is synced by `quickslot sync`; `quickslot unfollow DOC` stops one "
        "that was browsed or followed; past days that are settled are released by themselves)"
    )
    return {"following": rows}, human


async def cmd_unfollow(ctx: Ctx) -> Result:
    await ctx.local.unfollow(ctx.args.doc)
    return {"unfollowed": ctx.args.doc}, f"no longer following {ctx.args.doc} (its data stays here)"


async def _reachable(url: str, verify: Any = True) -> bool:
    import httpx

    try:
        async with httpx.AsyncClient(base_url=url, timeout=2.0, verify=verify) as http:
            return (await http.get("/healthz")).status_code == 200
    except httpx.HTTPError:
        return False


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


async def cmd_status(ctx: Ctx) -> Result:
    relay = ctx.relay(required=False)
    counts = await ctx.local.outbox_counts()
    entries = await ctx.local.pending_entries() + await ctx.local.rejected_entries()
    reachable = None if relay is None else await _reachable(relay, ctx.tls().verify())
    raw_last = ctx.config.get("last_sync_ms")
    last = raw_last if isinstance(raw_last, int) else None
    data = {
        "logged_in": ctx.local.identity is not None, "user_id": ctx.local.user_id, "relay": relay,
        "relay_reachable": reachable, "queue_size": counts.total, "pending": counts.pending,
        "rejected": counts.rejected, "entries": [_entry(e) for e in entries],
        "last_sync_ms": last, "transport": _transport(ctx),
        "last_transport": _opt_str(ctx.config.get("last_transport")),
        "last_transport_reason": _opt_str(ctx.config.get("last_transport_reason")),
    }  # fmt: skip
    when = "never" if last is None else _dt.datetime.fromtimestamp(last / 1000).isoformat(" ", "seconds")
    lines = [
        f"user:      {ctx.local.user_id or '(not logged in)'}",
        f"relay:     {relay or '-'} ({'reachable' if reachable else 'unreachable' if relay else 'unknown'})",
        f"queue:     {counts.total} ({counts.pending} pending, {counts.rejected} rejected)",
        f"last sync: {when}",
        f"transport: {data['transport']} (last sync: {data['last_transport'] or '-'}"
        + (f", {data['last_transport_reason']})" if data["last_transport_reason"] else ")"),
    ]
    if entries:
        rows = [
            {**_entry(e), "why": e.reject_reason or e.last_error, "entity": f"{e.entity_type} {e.entity_id}"}
            for e in entries
        ]
        lines += ["", table(rows, ["id", "state", "entity", "operation", "doc_id", "retry_count", "why"])]
    if counts.rejected:
        lines.append(
            f"{counts.rejected} change(s) refused by the relay: `quickslot refused` says what to do; "
            "`quickslot retry ID` makes one again, `quickslot discard ID` forgets it"
        )
    return data, "\n".join(lines)


#: What the user can do about a change the relay refused, by the relay's reason code prefix.
REFUSED_HINTS = {
    "party_too_large": "book a smaller party (`quickslot retry ID --party N`) or discard it",
    "duplicate_booking": "you already hold a booking of this slot that day: keep that one and discard this",
    "day_out_of_range": "that day is too far in the past or the future to book: discard it",
    "unknown_category": "pick a category from `quickslot categories`, then discard this",
    "not_allowed": "this account may not make that change: discard it",
    "backdated": "made too long ago with an expired login: `quickslot retry ID` makes it again now",
    "unknown_certificate": "log in again, then `quickslot retry ID`",
}


def _refused_hint(entry: OutboxEntry) -> str:
    reason = f"{entry.reject_code or ''} {entry.reject_reason or ''}"
    for key, hint in REFUSED_HINTS.items():
        if key in reason:
            return hint
    if entry.entity_type == "reservation":
        return "`quickslot retry ID` makes the change again, `quickslot discard ID` forgets it"
    return "redo it with its command once fixed, then `quickslot discard ID`"


def _refused_rows(entries: Sequence[OutboxEntry]) -> list[dict[str, Any]]:
    return [
        {**_entry(e), "entity": f"{e.entity_type} {e.entity_id}",
         "why": f"{e.reject_code}: {e.reject_reason}", "what_to_do": _refused_hint(e)}
        for e in entries
    ]  # fmt: skip


async def cmd_refused(ctx: Ctx) -> Result:
    rows = _refused_rows(await ctx.local.rejected_entries())
    human = table(rows, ["id", "entity", "operation", "doc_id", "why", "what_to_do"], "(no refused changes)")
    return {"refused": rows}, human


async def _refused_entry(ctx: Ctx, entry_id: int) -> OutboxEntry:
    entry = await ctx.local.store.outbox_entry(entry_id)
    if entry is None or entry.state != "rejected":
        raise NotFound(f"no refused change {entry_id} here (see `quickslot refused`)")
    return entry


async def cmd_discard(ctx: Ctx) -> Result:
    ids = [e.id for e in await ctx.local.rejected_entries()] if ctx.args.all else ctx.args.ids
    if not ids:
        raise CliError(EXIT_USAGE, "usage", "discard: give refused change ids, or --all")
    for entry_id in ids:
        await _refused_entry(ctx, entry_id)
    for entry_id in ids:
        await ctx.local.store.dismiss_rejected(entry_id)
    return {"discarded": list(ids)}, f"discarded {len(ids)} refused change(s)"


async def cmd_retry(ctx: Ctx) -> Result:
    """Make a refused reservation change again, as a new change (the refused one is discarded)."""
    ctx.require_login()
    entry = await _refused_entry(ctx, ctx.args.id)
    if entry.entity_type != "reservation":
        raise CliError(
            EXIT_USAGE,
            "cannot_retry",
            f"a refused {entry.entity_type} change is not retried automatically: redo it with "
            f"`quickslot {entry.entity_type} ...`, then `quickslot discard {entry.id}`",
        )
    old = await ctx.local.reservation(entry.entity_id)
    if old is None:
        raise NotFound(f"reservation {entry.entity_id} is no longer here: `quickslot discard {entry.id}`")
    op = entry.operation
    if op == "create":
        party = ctx.args.party or old.party
        row = await ctx.local.book(old.shop_id, old.day, old.slot_id, party=party, note=old.note)
        verb = "booked again"
    elif op == "cancel":
        row, verb = await ctx.local.cancel(old.reservation_id), "cancelled again"
    elif op == "confirm":
        row, verb = await ctx.local.confirm(old.reservation_id), "confirmed again"
    elif op == "decline":
        row, verb = await ctx.local.decline(old.reservation_id), "declined again"
    elif op == "no_show":
        row, verb = await ctx.local.no_show(old.reservation_id), "marked no-show again"
    else:
        raise CliError(
            EXIT_USAGE, "cannot_retry", f"cannot retry a {op!r} change: `quickslot discard {entry.id}`"
        )
    await ctx.local.store.dismiss_rejected(entry.id)
    return _change(row, verb)


async def cmd_shop_create(ctx: Ctx) -> Result:
    ctx.require_login()
    a = ctx.args
    detail = await ctx.local.create_shop(
        a.shop, name=a.name, category=a.category, location=a.location, lat=a.lat, lon=a.lon,
        description=a.description, address=a.address, hours=a.hours,
    )  # fmt: skip
    return {**_shop_detail(detail), "queued": True}, f"shop {a.shop} created (queued for the relay)"


_EDIT_FIELDS = ("name", "category", "location", "lat", "lon", "rating", "active", "description", "address",
                "hours", "image_url")  # fmt: skip


async def cmd_shop_edit(ctx: Ctx) -> Result:
    ctx.require_login()
    changes = {f: getattr(ctx.args, f) for f in _EDIT_FIELDS if getattr(ctx.args, f) is not None}
    if not changes:
        raise CliError(EXIT_USAGE, "usage", "shop edit: give at least one --field to change")
    detail = await ctx.local.edit_shop(ctx.args.shop, **changes)
    text = f"shop {ctx.args.shop} updated ({', '.join(sorted(changes))}; queued for the relay)"
    return {**_shop_detail(detail), "queued": True}, text


async def cmd_slot_add(ctx: Ctx) -> Result:
    ctx.require_login()
    a = ctx.args
    row = await ctx.local.add_slot(
        a.shop, a.slot, service=a.service, start=a.start, duration=a.duration, capacity=a.capacity,
        weekdays=a.weekdays, per_customer=a.per_customer,
    )  # fmt: skip
    return {"slot": _slot(row), "queued": True}, f"slot {a.slot} of {a.shop} saved (queued for the relay)"


async def cmd_staff_add(ctx: Ctx) -> Result:
    ctx.require_login()
    who = ctx.args.user_id
    if "@" in who:  # an email: the relay names the account (asked as an owner of the shop)
        who = str((await ctx.auth().find_user(ctx.args.shop, who))["user_id"])
    row = await ctx.local.add_staff(ctx.args.shop, who, role=ctx.args.role)
    return {
        "staff": _staff(row),
        "queued": True,
    }, f"{row.user_id} is now {row.role} of {row.shop_id} (queued)"


async def cmd_category_add(ctx: Ctx) -> Result:
    ctx.require_login()
    row = await ctx.local.add_category(ctx.args.id, ctx.args.name, ctx.args.icon)
    return {"category": _category(row), "queued": True}, f"category {row.id} added (queued for the relay)"


def _peer_error(exc: Exception) -> CliError:
    """The exit code of a failed peer exchange (see the ``peer sync`` schema's comment)."""
    from client.peer import PeerRefusedUs, PeerUnreachable, PeerUntrusted
    from client.peer_auth import PeerAuthError

    if isinstance(exc, PeerAuthError):
        return CliError(EXIT_AUTH, "login_required", exc.reason)
    if isinstance(exc, PeerRefusedUs):
        return CliError(EXIT_AUTH, "peer_refused_us", f"the peer refused this device's credentials: {exc}")
    if isinstance(exc, PeerUntrusted):
        return CliError(EXIT_REJECTED, "peer_untrusted", str(exc))
    if isinstance(exc, PeerUnreachable):
        return CliError(EXIT_UNREACHABLE, "peer_unreachable", str(exc))
    return CliError(EXIT_FAILURE, "peer_failed", str(exc))


async def cmd_peer_sync(ctx: Ctx) -> Result:
    """One exchange with a peer; nothing it acks leaves the outbox (only the relay's acks do)."""
    from client.peer import PeerError, describe, peer_sync
    from client.peer_auth import PeerAuthError

    ctx.require_login()
    url = str(ctx.args.url)
    if not url.startswith(("ws://", "wss://")):
        raise CliError(EXIT_USAGE, "usage", f"peer sync: not a ws:// or wss:// URL: {url!r}")
    _drain(ctx.local)
    try:
        summary = await peer_sync(ctx.local, url, timeout_s=ctx.args.timeout)
    except (PeerAuthError, PeerError) as exc:
        raise _peer_error(exc) from exc
    events = _drain(ctx.local)
    pending = (await ctx.local.outbox_counts()).pending
    data = {**describe(summary), "pending": pending, "events": [e.to_dict() for e in events]}
    lines = [describe_event(e) for e in events]
    lines += [f"the peer refused an update of {d}: {c}: {r}" for d, c, r in summary.rejected]
    lines += [f"refused an update of {d} from the peer: {c}: {r}" for d, c, r in summary.refused]
    lines += [
        f"{d} differs from the peer's copy although both hold the same updates: a device signed "
        "two versions of one update (equivocation)"
        for d in summary.diverged
    ]
    lines.append(
        f"exchanged {len(summary.docs)} documents with {summary.peer_user} at {url}: {summary.received} "
        f"updates in, {summary.sent} stored by the peer; {pending} changes wait for the relay "
        "(bookings stay tentative until the relay stamps them)"
    )
    if summary.rejected or summary.refused or summary.diverged:
        ctx.args.exit_code = EXIT_REJECTED
    return data, "\n".join(lines)


async def cmd_peer_serve(ctx: Ctx) -> Result:
    """Accept peers until SIGINT/SIGTERM, printing one structured line per event."""
    from client.peer_auth import PeerAuthError
    from client.peer_server import PeerServer

    ctx.require_login()
    as_json = bool(ctx.args.json)

    def emit(kind: str, fields: dict[str, Any]) -> None:
        if as_json:
            print(json.dumps({"type": kind, "at_ms": int(time.time() * 1000), **fields}), flush=True)
        else:
            print(printable(" ".join([kind, *(f"{k}={v}" for k, v in fields.items())])), flush=True)

    server = PeerServer(ctx.local, host=ctx.args.host, port=ctx.args.port, log=emit)
    try:
        await server.start()
    except PeerAuthError as exc:
        raise _peer_error(exc) from exc
    except OSError as exc:
        where = f"{ctx.args.host}:{ctx.args.port}"
        raise CliError(EXIT_FAILURE, "listen_failed", f"cannot listen on {where}: {exc}") from exc
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        while not stop.is_set():
            getter = asyncio.ensure_future(ctx.local.events.get())
            await asyncio.wait({getter, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await getter
                break
            event = getter.result()
            if as_json:
                print(json.dumps(event.to_dict(), default=str), flush=True)
            else:
                print(printable(describe_event(event), multiline=True), flush=True)
    finally:
        stopping.cancel()
        await server.stop()
    ctx.args.streamed = True
    return {}, ""


# --- parsing ---------------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # Printed after "quickslot: ": name the subcommand only (never "quickslot: quickslot: ...").
        where = self.prog.removeprefix("quickslot").strip()
        hint = f" (see `{self.prog} --help`)"
        raise CliError(EXIT_USAGE, "usage", f"{where}: {message}{hint}" if where else f"{message}{hint}")


def _weekdays(text: str) -> list[int]:
    try:
        return [int(d) for d in text.split(",") if d.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("weekdays: comma-separated numbers (0 = Monday)") from None


def _day(text: str) -> str:
    try:
        return parse_day(text).isoformat()
    except SchemaError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"not a port (0-65535): {text!r}")
    return port


def _bool(text: str) -> bool:
    if text.lower() in ("yes", "true", "1", "on"):
        return True
    if text.lower() in ("no", "false", "0", "off"):
        return False
    raise argparse.ArgumentTypeError("expected yes or no")


_HOURS_HELP = "opening hours, free text shown as written, e.g. 'Mon-Fri 09:00-18:00' (default: none)"

Handler = Callable[[Ctx], Awaitable[Result]]


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument(
        "--home", type=Path, default=argparse.SUPPRESS, help="profile directory (as before the command)"
    )
    common.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="one JSON object on stdout (as before the command)",
    )
    parser = _Parser(prog="quickslot", description="QuickSlot Sync: offline-first booking client.")
    parser.add_argument(
        "--home",
        type=Path,
        default=None,
        help="profile directory (default: $QUICKSLOT_HOME, else ~/.quickslot)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=False,
        help="one JSON object on stdout, keys stable across versions",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def add(name: str, handler: Handler, help_text: str, schema: str | None = None, **kw: Any) -> Any:
        p = sub.add_parser(name, parents=[common], help=help_text, **kw)
        p.set_defaults(handler=handler, schema=schema or name)
        return p

    def account(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--relay",
            help="relay URL, http(s):// or ws(s):// (remembered in the profile; default: the remembered one)",
        )
        p.add_argument("--email", help="the account's email address (asked for when missing)")
        p.add_argument(
            "--password-stdin",
            action="store_true",
            help="read the password from the first line of stdin (default: prompt)",
        )
        p.add_argument(
            "--cafile", metavar="PATH", help="https relays: trust this CA bundle (remembered in the profile)"
        )
        p.add_argument(
            "--pin",
            action="append",
            metavar="sha256//BASE64",
            help="https relays: require this public-key pin (SHA-256 of the certificate's "
            "SubjectPublicKeyInfo, as curl --pinnedpubkey; repeatable; remembered)",
        )

    p = add("register", cmd_register, "create an account at a relay and log this profile in")
    account(p)
    p.add_argument("--name", help="display name (default: the email's local part)")
    p.add_argument(
        "--no-login",
        action="store_true",
        help="only create the account, do not log this profile in (default: log in right away)",
    )
    account(add("login", cmd_login, "log in (a fresh device key and certificate)"))
    add("logout", cmd_logout, "log out and forget tokens and device key")
    add("whoami", cmd_whoami, "who this profile signs as")
    add("categories", cmd_categories, "list the categories")
    p = add("shops", cmd_shops, "list shops")
    p.add_argument("--category", help="only shops of this category id (default: all)")
    p.add_argument(
        "--search",
        metavar="TEXT",
        help="only shops whose id, name, category or location contains every word of TEXT,"
        " ignoring case (default: all)",
    )

    shop = add("shop", cmd_shop_show, "show, create or edit a shop")
    shop_sub = shop.add_subparsers(dest="shop_command", required=True, parser_class=_Parser)

    def shop_add(name: str, handler: Handler, help_text: str) -> Any:
        p = shop_sub.add_parser(name, parents=[common], help=help_text)
        p.set_defaults(handler=handler, schema=f"shop {name}")
        p.add_argument("shop", help="shop id")
        return p

    shop_add("show", cmd_shop_show, "a shop's details, slots and staff")
    p = shop_add("create", cmd_shop_create, "owner/admin: create a shop")
    p.add_argument("--name", required=True, help="the shop's name as customers see it")
    p.add_argument("--category", required=True, help="a category id (see `quickslot categories`)")
    p.add_argument("--location", default="", help="a place name, e.g. a town (default: none)")
    p.add_argument("--lat", type=float, default=0.0, help="latitude in degrees (default: 0)")
    p.add_argument("--lon", type=float, default=0.0, help="longitude in degrees (default: 0)")
    p.add_argument("--description", default="", help="free text shown on the shop's page (default: none)")
    p.add_argument("--address", help="street address (default: none)")
    p.add_argument("--hours", default="", help=_HOURS_HELP)
    p = shop_add("edit", cmd_shop_edit, "staff/owner: change a shop's fields")
    for f in ("name", "category", "location", "description", "address", "image-url"):
        p.add_argument(f"--{f}", help=f"new {f.replace('-', ' ')} (default: unchanged)")
    p.add_argument("--hours", help=_HOURS_HELP.replace("(default: none)", "(default: unchanged)"))
    for f in ("lat", "lon", "rating"):
        p.add_argument(f"--{f}", type=float, help=f"new {f} (default: unchanged)")
    p.add_argument(
        "--active", type=_bool, metavar="yes|no", help="no hides the shop from listings (default: unchanged)"
    )

    p = add("slots", cmd_slots, "a shop's slots on a day, with seats left")
    p.add_argument("shop", help="shop id")
    p.add_argument("date", type=_day, help="the day, YYYY-MM-DD")
    p = add("book", cmd_book, "book a slot (offline: queued until sync; online: fetches the shop first)")
    p.add_argument("shop", help="shop id")
    p.add_argument("date", type=_day, help="the day, YYYY-MM-DD")
    p.add_argument("slot", help="slot id (see `quickslot slots SHOP DATE`)")
    p.add_argument("--party", type=int, default=1, help="seats to book (default: 1)")
    for name, handler, has_reason in (
        ("cancel", cmd_cancel, True), ("confirm", cmd_confirm, False),
        ("decline", cmd_decline, True), ("no-show", cmd_no_show, False),
    ):  # fmt: skip
        p = add(name, handler, f"{name} a reservation")
        p.add_argument("reservation", help="reservation id (see `quickslot reservations`)")
        if has_reason:
            p.add_argument("--reason", help="a short reason shown to the customer (default: none)")
    add("reservations", cmd_reservations, "your reservations and their state")
    p = add("sync", cmd_sync, "sync with the relay once (or --watch until interrupted)")
    p.add_argument("--watch", action="store_true", help="stay connected, printing events as lines")
    p.add_argument(
        "--transport",
        choices=("auto", "websocket", "http"),
        metavar="auto|websocket|http",
        help="auto: websocket, plain HTTP when websockets are blocked; or only one of them "
        "(remembered in the profile; default: the remembered one, else auto)",
    )
    p.add_argument(
        "--poll",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="--watch over plain HTTP: seconds between checks for updates (default: 5)",
    )
    add("status", cmd_status, "queue, rejected changes, last sync, relay reachability")
    add("following", cmd_following, "the documents this profile keeps in sync, and why")
    p = add("unfollow", cmd_unfollow, "stop syncing a browsed or followed document")
    p.add_argument(
        "doc", metavar="DOC", help="a document id from `quickslot following` (a bare id: that shop)"
    )
    add("refused", cmd_refused, "changes the relay refused, why, and what to do about each")
    p = add("discard", cmd_discard, "forget refused changes (see `quickslot refused`)")
    p.add_argument("ids", type=int, nargs="*", metavar="ID", help="refused change ids (default: none)")
    p.add_argument("--all", action="store_true", help="every refused change (default: only the given ids)")
    p = add("retry", cmd_retry, "make a refused reservation change again, as a new change")
    p.add_argument("id", type=int, metavar="ID", help="a refused change id (see `quickslot refused`)")
    p.add_argument(
        "--party", type=int, help="a refused booking: seats to book instead (default: the refused party)"
    )

    p = add("slot", cmd_slot_add, "staff/owner: add or change a slot")
    slot_sub = p.add_subparsers(dest="slot_command", required=True, parser_class=_Parser)
    p = slot_sub.add_parser("add", parents=[common], help="offer a slot (same id: replace it)")
    p.set_defaults(handler=cmd_slot_add, schema="slot add")
    p.add_argument("shop", help="shop id")
    p.add_argument("slot", help="slot id, chosen by you (an existing id replaces that slot)")
    p.add_argument("--service", required=True, help="what is offered, e.g. haircut")
    p.add_argument("--start", required=True, metavar="HH:MM", help="start time, 24-hour clock, shop time")
    p.add_argument("--duration", type=int, required=True, metavar="MIN", help="length in minutes")
    p.add_argument("--capacity", type=int, required=True, help="seats per day the slot runs")
    p.add_argument(
        "--weekdays",
        type=_weekdays,
        help="days the slot runs, comma-separated, 0 = Monday ... 6 = Sunday, e.g. 0,1,2,3,4"
        " (default: every day)",
    )
    p.add_argument(
        "--per-customer",
        type=int,
        metavar="N",
        help="bookings one customer may hold on this slot on one day, 1 to 100 (default: 1; a further"
        " booking is refused as duplicate_booking)",
    )

    p = add("staff", cmd_staff_add, "owner: name staff")
    staff_sub = p.add_subparsers(dest="staff_command", required=True, parser_class=_Parser)
    p = staff_sub.add_parser("add", parents=[common], help="name a staff member (or co-owner)")
    p.set_defaults(handler=cmd_staff_add, schema="staff add")
    p.add_argument("shop", help="shop id")
    p.add_argument(
        "user_id",
        metavar="EMAIL_OR_USER_ID",
        help="the person's email (the relay finds their account) or user id (`quickslot whoami`);"
        " their staff rights count at once, with no grant at the relay and no new login",
    )
    p.add_argument("--role", default="staff", choices=["staff", "owner"], help="default: staff")

    p = add("category", cmd_category_add, "admin: add a category")
    cat_sub = p.add_subparsers(dest="category_command", required=True, parser_class=_Parser)
    p = cat_sub.add_parser("add", parents=[common], help="add a category")
    p.set_defaults(handler=cmd_category_add, schema="category add")
    p.add_argument("id", help="category id (letters, digits, _ and -)")
    p.add_argument("name", help="the category's name as people see it")
    p.add_argument("--icon", help="an icon name for apps (default: none)")

    p = add("peer", cmd_peer_sync, "sync with another client directly, with no relay")
    peer_sub = p.add_subparsers(dest="peer_command", required=True, parser_class=_Parser)
    p = peer_sub.add_parser("serve", parents=[common], help="accept peers until interrupted")
    p.set_defaults(handler=cmd_peer_serve, schema="peer serve")
    p.add_argument("--port", type=_port, required=True, help="0 picks a free port (printed)")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: %(default)s; 0.0.0.0: every network)",
    )
    p = peer_sub.add_parser("sync", parents=[common], help="one exchange with a peer at ws://HOST:PORT")
    p.set_defaults(handler=cmd_peer_sync, schema="peer sync")
    p.add_argument("url", help="ws://HOST:PORT of a `quickslot peer serve`")
    p.add_argument(
        "--timeout", type=float, default=30.0, metavar="S", help="give up after S seconds (default: 30)"
    )
    return parser


# --- running -----------------------------------------------------------------------------------------------


def _classify(exc: BaseException) -> CliError | None:
    """The exit code and error code of a library exception (None: unexpected)."""
    if isinstance(exc, CliError):
        return exc
    # A failed certificate check is not an outage (client.tls is loaded by whatever made one).
    tls = sys.modules.get("client.tls")
    if tls is not None and tls.tls_failure(exc) is not None:
        return CliError(EXIT_INSECURE, "relay_insecure", f"relay failed the TLS check: {exc}")
    # client.sync is imported only by the commands that sync: if it is not loaded, none of its
    # exceptions can have been raised.
    sync = sys.modules.get("client.sync")
    if sync is not None and isinstance(exc, sync.SyncLoginRequired):
        return CliError(EXIT_AUTH, "login_required", f"{exc}: log in again")
    if sync is not None and isinstance(exc, sync.SyncRelayUnreachable):
        return CliError(EXIT_UNREACHABLE, "relay_unreachable", f"relay unreachable: {exc}")
    if sync is not None and isinstance(exc, sync.SyncStopped):
        return CliError(EXIT_REJECTED, "relay_stopped", str(exc))
    if isinstance(exc, LoginRequired | NotLoggedIn):
        return CliError(EXIT_AUTH, "login_required", f"{exc}: log in again")
    if isinstance(exc, AuthError):
        if exc.status == 401:
            return CliError(EXIT_AUTH, exc.code, f"{exc.code}: {exc.message or 'authentication failed'}")
        if exc.status in (400, 422):
            return CliError(EXIT_USAGE, exc.code, str(exc))
        return CliError(EXIT_REJECTED, exc.code, str(exc))
    if isinstance(exc, RelayUnavailable):
        return CliError(EXIT_UNREACHABLE, "relay_unreachable", f"relay unreachable: {exc}")
    if isinstance(exc, InvalidRequest):
        return CliError(EXIT_USAGE, "invalid", str(exc))
    if isinstance(exc, NotAllowed):
        return CliError(EXIT_REJECTED, "not_allowed", str(exc))
    if isinstance(exc, NotFound):
        return CliError(EXIT_REJECTED, "not_found", str(exc))
    if isinstance(exc, ClientError):
        return CliError(EXIT_FAILURE, "client_error", str(exc))
    return None


def _fail(err: CliError, as_json: bool) -> int:
    if as_json:
        payload = {"error": {"code": err.code, "message": err.message, "exit_code": err.exit_code}}
        print(json.dumps(payload))
    print(printable(f"quickslot: {err.message}", multiline=True), file=sys.stderr)
    return err.exit_code


def _profile_error(exc: BaseException, home: Path) -> CliError | None:
    """A failure of the profile's own files, with its path and what to do (None: not one)."""
    from client.store import DB_FILE

    db = home / DB_FILE
    if isinstance(exc, sqlite3.DatabaseError) and ("malformed" in str(exc) or "not a database" in str(exc)):
        return CliError(
            EXIT_FAILURE,
            "local_database_damaged",
            f"the profile's database {db} is damaged ({exc}): move it aside (`mv {db} {db}.broken`), "
            "then `quickslot login` and `quickslot sync` fetch your data again from the relay "
            "(changes that were never sent are lost)",
        )
    if isinstance(exc, sqlite3.Error | OSError):
        return CliError(
            EXIT_FAILURE,
            "local_database_unavailable",
            f"cannot use the profile at {home} ({db}: {exc}): check that the directory exists or can be "
            "created and that you may read and write it (pick another one with --home or $QUICKSLOT_HOME)",
        )
    return None


async def _run(args: argparse.Namespace) -> int:
    home = Path(args.home).expanduser() if args.home else default_home()
    try:
        local = await LocalClient.open(home, secret_store=await asyncio.to_thread(_secret_store, home))
    except (sqlite3.Error, OSError) as exc:
        raise _profile_error(exc, home) or exc from exc
    try:
        ctx = Ctx(args, home, local)
        args.exit_code = EXIT_OK
        args.streamed = False
        try:
            data, human = await args.handler(ctx)
        except sqlite3.Error as exc:
            raise _profile_error(exc, home) or exc from exc
        if not args.streamed:
            print(
                json.dumps(data, default=str) if args.json else printable(human, multiline=True), flush=True
            )
        return int(args.exit_code)
    finally:
        await local.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point (``quickslot = "client.cli:main"``); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in argv
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="quickslot: %(message)s")
    # The sync service's connection warnings are reported by the commands themselves.
    logging.getLogger("client.sync").setLevel(logging.ERROR)
    started = time.monotonic()
    try:
        args = build_parser().parse_args(argv)
        as_json = bool(args.json)
        return asyncio.run(_run(args))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - every failure becomes an exit code
        err = _classify(exc)
        if err is None:
            logging.getLogger(__name__).debug("failed after %.2fs", time.monotonic() - started, exc_info=True)
            err = CliError(EXIT_FAILURE, "internal", f"{type(exc).__name__}: {exc}")
        return _fail(err, as_json)


if __name__ == "__main__":
    sys.exit(main())
