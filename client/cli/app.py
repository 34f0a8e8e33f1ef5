"""``quickslot``: the command line of the offline-first client.

Usage: ``quickslot [--home DIR] [--json] COMMAND ...`` (``--home``/``--json`` may also follow the
command). The profile lives in ``--home``, else ``$QUICKSLOT_HOME``, else ``~/.quickslot``. The
relay URL given to ``register``/``login`` is remembered in the profile (``cli.json``, no secrets);
tokens and the device key stay in the secret store (keyring, or a 0600 file;
``$QUICKSLOT_SECRETS=file`` forces the file). Passwords are read with ``--password-stdin`` (first
line of stdin) or a prompt; no password or token is ever printed.

Every command is a thin call into :class:`client.local.client.LocalClient`,
:class:`client.sync.auth.AuthClient` or :class:`client.sync.service.SyncService`. Browsing and booking work
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
:mod:`client.sync.tls`). The choice is stored in the profile and used by every later command.

JSON output (``--json``): one object on stdout per command, whose required keys and types are
:data:`SCHEMAS` (a type spec is a type, a tuple of types meaning "one of", ``None`` meaning
null, a dict for a nested object and a one-element list for an array of that spec). Keys may be
added in later versions; none listed will be removed or change type. On failure the object is
``SCHEMAS["error"]``: ``{"error": {"code", "message", "exit_code"}}``. ``sync --watch --json``
prints one ``SCHEMAS["event"]`` object per line (events of :mod:`client.local.events`, ``to_dict``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from client.cli.errors import CliError, classify, fail, profile_error
from client.cli.schemas import EXIT_CODES, EXIT_FAILURE, EXIT_OK, EXIT_USAGE, SCHEMAS
from client.log import CliFormatter, get_logger

if TYPE_CHECKING:
    from client.cli.context import Ctx, Result

# Start-up time is paid by every command (``make demo`` runs ~70 of them, a script may run hundreds):
# parsing the arguments (and ``--help``) imports none of the library, the core or asyncio. A
# command's module is imported when it runs (handlers are named "module:function"), and only the
# commands that talk to a relay or a peer import websockets, httpx and the sync service.

__all__ = ["EXIT_CODES", "SCHEMAS", "CliError", "build_parser", "main"]

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
    """A day as YYYY-MM-DD, or ``today``/``tomorrow`` (this machine's local date): a booking's day
    must lie within a year of now, so examples name it relatively and keep working."""
    from crdt_core.errors import SchemaError
    from crdt_core.schema import parse_day

    relative = {"today": 0, "tomorrow": 1}.get(text.strip().lower())
    if relative is not None:
        return (_dt.date.today() + _dt.timedelta(days=relative)).isoformat()
    try:
        return parse_day(text).isoformat()
    except SchemaError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD, today, tomorrow): {text!r}") from None


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

Handler = str
"""A command's function as ``"module:function"`` in ``client.cli`` (imported when it runs)."""


def handler_of(name: Handler) -> Callable[[Ctx], Awaitable[Result]]:
    """The function a parsed command runs (its module imported now, not at start-up)."""
    module, function = name.split(":")
    found: Callable[[Ctx], Awaitable[Result]] = getattr(
        importlib.import_module(f"client.cli.{module}"), function
    )
    return found


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

    p = add("register", "account:cmd_register", "create an account at a relay and log this profile in")
    account(p)
    p.add_argument("--name", help="display name (default: the email's local part)")
    p.add_argument(
        "--no-login",
        action="store_true",
        help="only create the account, do not log this profile in (default: log in right away)",
    )
    account(add("login", "account:cmd_login", "log in (a fresh device key and certificate)"))
    add("logout", "account:cmd_logout", "log out and forget tokens and device key")
    add("whoami", "account:cmd_whoami", "who this profile signs as")
    add("categories", "browse:cmd_categories", "list the categories")
    p = add("shops", "browse:cmd_shops", "list shops")
    p.add_argument("--category", help="only shops of this category id (default: all)")
    p.add_argument(
        "--search",
        metavar="TEXT",
        help="only shops whose id, name, category or location contains every word of TEXT,"
        " ignoring case (default: all)",
    )

    shop = add("shop", "browse:cmd_shop_show", "show, create or edit a shop")
    shop_sub = shop.add_subparsers(dest="shop_command", required=True, parser_class=_Parser)

    def shop_add(name: str, handler: Handler, help_text: str) -> Any:
        p = shop_sub.add_parser(name, parents=[common], help=help_text)
        p.set_defaults(handler=handler, schema=f"shop {name}")
        p.add_argument("shop", help="shop id")
        return p

    shop_add("show", "browse:cmd_shop_show", "a shop's details, slots and staff")
    p = shop_add("create", "manage:cmd_shop_create", "owner/admin: create a shop")
    p.add_argument("--name", required=True, help="the shop's name as customers see it")
    p.add_argument("--category", required=True, help="a category id (see `quickslot categories`)")
    p.add_argument("--location", default="", help="a place name, e.g. a town (default: none)")
    p.add_argument("--lat", type=float, default=0.0, help="latitude in degrees (default: 0)")
    p.add_argument("--lon", type=float, default=0.0, help="longitude in degrees (default: 0)")
    p.add_argument("--description", default="", help="free text shown on the shop's page (default: none)")
    p.add_argument("--address", help="street address (default: none)")
    p.add_argument("--hours", default="", help=_HOURS_HELP)
    p = shop_add("edit", "manage:cmd_shop_edit", "staff/owner: change a shop's fields")
    for f in ("name", "category", "location", "description", "address", "image-url"):
        p.add_argument(f"--{f}", help=f"new {f.replace('-', ' ')} (default: unchanged)")
    p.add_argument("--hours", help=_HOURS_HELP.replace("(default: none)", "(default: unchanged)"))
    for f in ("lat", "lon", "rating"):
        p.add_argument(f"--{f}", type=float, help=f"new {f} (default: unchanged)")
    p.add_argument(
        "--active", type=_bool, metavar="yes|no", help="no hides the shop from listings (default: unchanged)"
    )

    p = add("slots", "browse:cmd_slots", "a shop's slots on a day, with seats left")
    p.add_argument("shop", help="shop id")
    p.add_argument("date", type=_day, help="the day, YYYY-MM-DD, today or tomorrow")
    p = add(
        "book",
        "bookings:cmd_book",
        "book a slot (offline: queued until sync; online: fetches the shop first)",
    )
    p.add_argument("shop", help="shop id")
    p.add_argument("date", type=_day, help="the day, YYYY-MM-DD, today or tomorrow")
    p.add_argument("slot", help="slot id (see `quickslot slots SHOP DATE`)")
    p.add_argument("--party", type=int, default=1, help="seats to book (default: 1)")
    for name, handler, has_reason in (
        ("cancel", "bookings:cmd_cancel", True), ("confirm", "bookings:cmd_confirm", False),
        ("decline", "bookings:cmd_decline", True), ("no-show", "bookings:cmd_no_show", False),
    ):  # fmt: skip
        p = add(name, handler, f"{name} a reservation")
        p.add_argument("reservation", help="reservation id (see `quickslot reservations`)")
        if has_reason:
            p.add_argument("--reason", help="a short reason shown to the customer (default: none)")
    add(
        "reservations",
        "bookings:cmd_reservations",
        "your reservations and their state, those made on your other devices too (after a sync)",
    )
    p = add("day", "staff:cmd_day", "staff/owner: every booking of a shop's day, with its state")
    p.add_argument("shop", help="shop id")
    p.add_argument("date", type=_day, help="the day, YYYY-MM-DD, today or tomorrow")
    p = add("waitlist", "staff:cmd_waitlist", "staff/owner: who waits for which slot of a day, in order")
    p.add_argument("shop", help="shop id")
    p.add_argument("date", type=_day, help="the day, YYYY-MM-DD, today or tomorrow")
    p = add("sync", "syncing:cmd_sync", "sync with the relay once (or --watch until interrupted)")
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
    add("status", "syncing:cmd_status", "queue, rejected changes, last sync, relay reachability")
    add("following", "syncing:cmd_following", "the documents this profile keeps in sync, and why")
    p = add("unfollow", "syncing:cmd_unfollow", "stop syncing a browsed or followed document")
    p.add_argument(
        "doc", metavar="DOC", help="a document id from `quickslot following` (a bare id: that shop)"
    )
    add("refused", "bookings:cmd_refused", "changes the relay refused, why, and what to do about each")
    p = add("discard", "bookings:cmd_discard", "forget refused changes (see `quickslot refused`)")
    p.add_argument("ids", type=int, nargs="*", metavar="ID", help="refused change ids (default: none)")
    p.add_argument("--all", action="store_true", help="every refused change (default: only the given ids)")
    p = add("retry", "bookings:cmd_retry", "make a refused reservation change again, as a new change")
    p.add_argument("id", type=int, metavar="ID", help="a refused change id (see `quickslot refused`)")
    p.add_argument(
        "--party", type=int, help="a refused booking: seats to book instead (default: the refused party)"
    )

    p = add("slot", "manage:cmd_slot_add", "staff/owner: add or change a slot")
    slot_sub = p.add_subparsers(dest="slot_command", required=True, parser_class=_Parser)
    p = slot_sub.add_parser("add", parents=[common], help="offer a slot (same id: replace it)")
    p.set_defaults(handler="manage:cmd_slot_add", schema="slot add")
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

    p = add("staff", "manage:cmd_staff_add", "owner: name staff")
    staff_sub = p.add_subparsers(dest="staff_command", required=True, parser_class=_Parser)
    p = staff_sub.add_parser("add", parents=[common], help="name a staff member (or co-owner)")
    p.set_defaults(handler="manage:cmd_staff_add", schema="staff add")
    p.add_argument("shop", help="shop id")
    p.add_argument(
        "user_id",
        metavar="EMAIL_OR_USER_ID",
        help="the person's email (the relay finds their account) or user id (`quickslot whoami`);"
        " their staff rights count at once, with no grant at the relay and no new login",
    )
    p.add_argument("--role", default="staff", choices=["staff", "owner"], help="default: staff")

    p = add("category", "manage:cmd_category_add", "admin: add a category")
    cat_sub = p.add_subparsers(dest="category_command", required=True, parser_class=_Parser)
    p = cat_sub.add_parser("add", parents=[common], help="add a category")
    p.set_defaults(handler="manage:cmd_category_add", schema="category add")
    p.add_argument("id", help="category id (letters, digits, _ and -)")
    p.add_argument("name", help="the category's name as people see it")
    p.add_argument("--icon", help="an icon name for apps (default: none)")

    p = add("peer", "peer:cmd_peer_sync", "sync with another client directly, with no relay")
    peer_sub = p.add_subparsers(dest="peer_command", required=True, parser_class=_Parser)
    p = peer_sub.add_parser("serve", parents=[common], help="accept peers until interrupted")
    p.set_defaults(handler="peer:cmd_peer_serve", schema="peer serve")
    p.add_argument("--port", type=_port, required=True, help="0 picks a free port (printed)")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: %(default)s; 0.0.0.0: every network)",
    )
    p = peer_sub.add_parser("sync", parents=[common], help="one exchange with a peer at ws://HOST:PORT")
    p.set_defaults(handler="peer:cmd_peer_sync", schema="peer sync")
    p.add_argument("url", help="ws://HOST:PORT of a `quickslot peer serve`")
    p.add_argument(
        "--timeout", type=float, default=30.0, metavar="S", help="give up after S seconds (default: 30)"
    )
    return parser


async def _run(args: argparse.Namespace) -> int:
    import asyncio
    import sqlite3

    from client.cli.context import Ctx, default_home, secret_store
    from client.local.client import LocalClient
    from crdt_core.schema import printable

    handler = handler_of(args.handler)
    home = Path(args.home).expanduser() if args.home else default_home()
    try:
        local = await LocalClient.open(home, secret_store=await asyncio.to_thread(secret_store, home))
    except (sqlite3.Error, OSError) as exc:
        raise profile_error(exc, home) or exc from exc
    try:
        ctx = Ctx(args, home, local)
        args.exit_code = EXIT_OK
        args.streamed = False
        try:
            data, human = await handler(ctx)
        except sqlite3.Error as exc:
            raise profile_error(exc, home) or exc from exc
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
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(CliFormatter())  # the event's sentence for a person, not its fields
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    # The sync service's connection warnings are reported by the commands themselves.
    for part in ("base", "service", "session"):
        get_logger(f"client.sync.{part}").setLevel(logging.ERROR)
    started = time.monotonic()
    try:
        args = build_parser().parse_args(argv)
        as_json = bool(args.json)
        import asyncio

        return asyncio.run(_run(args))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - every failure becomes an exit code
        err = classify(exc)
        if err is None:
            get_logger(__name__).debug("failed after %.2fs", time.monotonic() - started, exc_info=True)
            err = CliError(EXIT_FAILURE, "internal", f"{type(exc).__name__}: {exc}")
        return fail(err, as_json)


if __name__ == "__main__":
    sys.exit(main())
