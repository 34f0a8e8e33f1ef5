"""``quickslot-relay``: run the relay and administer its accounts and keys.

Operators run these commands on the relay host; the admin commands open the relay's SQLite file
and key directory directly (no network, no admin API to secure), or with ``--store`` the shared
PostgreSQL database, from any host that reaches it. Changes that running servers must act on (a
disabled user's sessions, revoked families, a key rotation) are recorded in the
``account_events`` table, which every server polls about once a second (and, on PostgreSQL, is
woken for at once by NOTIFY).

Exit codes: 0 success, 1 failure (message on stderr; with ``--json`` also an ``{"error": ...}``
object on stdout), 2 usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import Any

from relay.config import (
    DB_FILENAME,
    RateLimit,
    RateLimits,
    RelayConfig,
    SmtpSettings,
    SyncLimits,
    prepare_data_dir,
)

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
DEFAULT_DATA_DIR = os.environ.get("QUICKSLOT_RELAY_DATA", "relay-data")
# Read at parse time (not import time) so tests and wrappers can set them per invocation.
STORE_ENV = "QUICKSLOT_RELAY_STORE"
STORE_REPLICA_ENV = "QUICKSLOT_RELAY_STORE_REPLICA"

#: A stats section: given the config, return name -> value (printed by ``stats``).
StatsProvider = Callable[[RelayConfig], Awaitable[Mapping[str, Any]]]


def _stats_providers() -> dict[str, StatsProvider]:
    """Extra ``stats`` sections beside ``accounts``: the document store's sizes."""
    return {"documents": _document_stats}


async def _document_stats(config: RelayConfig) -> Mapping[str, Any]:
    from relay.store.open import open_document_store

    store = await open_document_store(config, auto_compact=False)
    try:
        st = await store.stats()
        return {
            "documents": st.documents,
            "log_rows": st.log_rows,
            "log_bytes": st.log_bytes,
            "snapshot_bytes": st.snapshot_bytes,
        }
    finally:
        await store.close()


SERVE_LOCK = "serve.lock"


def _hold_serve_lock(data_dir: Path) -> Any:
    """Held for as long as ``serve`` runs, so offline maintenance can tell the relay is up."""
    import fcntl

    data_dir.mkdir(parents=True, exist_ok=True)
    handle = open(data_dir / SERVE_LOCK, "a+")  # noqa: SIM115 - lives as long as the server
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise CliError(f"another relay is already serving {data_dir}", "busy") from None
    return handle


async def _compact(config: RelayConfig) -> dict[str, Any]:
    """Fold every document's log into its snapshot. The running relay compacts by itself (when a
    log outgrows its snapshot); this is for maintenance while it is stopped, since the server
    keeps each document's head in memory. On a PostgreSQL store (``--store``) it is also safe
    while other nodes serve: each compaction locks the document's head row in the database and
    deletes only the rows its snapshot covers (relay/store/postgres.py)."""
    from relay.store.open import open_document_store

    lock = _hold_serve_lock(config.data_dir)
    try:
        store = await open_document_store(config, auto_compact=False)
        try:
            results = await store.compact_all()
            return {"compacted": len(results), "documents": [dataclasses.asdict(r) for r in results]}
        finally:
            await store.close()
    finally:
        lock.close()


class CliError(Exception):
    """A failure to report to the operator (exit code 1)."""

    def __init__(self, message: str, code: str = "failed") -> None:
        super().__init__(message)
        self.code = code


# --------------------------------------------------------------------------------------------
# argument parsing


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


def _rate(text: str) -> RateLimit:
    try:
        return RateLimit.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _smtp(text: str) -> SmtpSettings:
    try:
        return SmtpSettings.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    # Options every command takes, accepted before or after the command name.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--data",
        type=Path,
        default=argparse.SUPPRESS,
        metavar="DIR",
        help=f"relay data directory (default: $QUICKSLOT_RELAY_DATA or {DEFAULT_DATA_DIR})",
    )
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output"
    )
    common.add_argument(
        "--log-level", default=argparse.SUPPRESS, help="DEBUG, INFO, WARNING or ERROR (default: INFO)"
    )
    common.add_argument(
        "--store",
        default=argparse.SUPPRESS,
        metavar="URL",
        help=f"postgresql:// URL of a shared store (default: ${STORE_ENV}, else SQLite in --data)",
    )
    common.add_argument(
        "--store-replica",
        default=argparse.SUPPRESS,
        metavar="URL",
        help=f"postgresql:// URL of a replica of --store to read from (default: ${STORE_REPLICA_ENV})",
    )

    hashing = argparse.ArgumentParser(add_help=False)
    d = RelayConfig()
    hashing.add_argument(
        "--argon2-memory-kib",
        type=_positive_int,
        default=d.argon2_memory_kib,
        metavar="KIB",
        help="Argon2id memory per password hash, KiB (default: %(default)s;"
        " more resists GPU guessing, costs RAM per login)",
    )
    hashing.add_argument(
        "--argon2-iterations",
        type=_positive_int,
        default=d.argon2_iterations,
        metavar="N",
        help="Argon2id passes per hash (default: %(default)s)",
    )
    hashing.add_argument(
        "--argon2-lanes",
        type=_positive_int,
        default=d.argon2_lanes,
        metavar="N",
        help="Argon2id parallel lanes (default: %(default)s)",
    )
    hashing.add_argument(
        "--password-min-length",
        type=_positive_int,
        default=d.password_min_length,
        metavar="N",
        help="shortest password accepted at registration and reset (default: %(default)s)",
    )

    parser = argparse.ArgumentParser(
        prog="quickslot-relay", description="QuickSlot Sync relay: serve, and administer users and keys."
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=Path(DEFAULT_DATA_DIR),
        metavar="DIR",
        help="data directory (default: %(default)s)",
    )
    parser.add_argument("--json", action="store_true", default=False, help="one JSON object on stdout")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR (default: INFO)")
    parser.add_argument(
        "--store",
        default=os.environ.get(STORE_ENV) or None,
        metavar="URL",
        help=f"postgresql:// URL of a shared store (default: ${STORE_ENV}, else SQLite in --data)",
    )
    parser.add_argument(
        "--store-replica",
        default=os.environ.get(STORE_REPLICA_ENV) or None,
        metavar="URL",
        help=f"postgresql:// URL of a streaming replica of --store to read from"
        f" (default: ${STORE_REPLICA_ENV})",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = sub.add_parser(
        "serve", parents=[common, hashing], help="run the relay (HTTP + websocket, one port)"
    )
    serve.add_argument(
        "--host",
        default=d.host,
        help="address to listen on (default: %(default)s; 0.0.0.0 for every network)",
    )
    serve.add_argument(
        "--port",
        type=int,
        default=d.port,
        help="TCP port for HTTP and websockets (default: %(default)s)",
    )
    serve.add_argument(
        "--certfile",
        type=Path,
        help="TLS certificate chain (PEM); needs --keyfile (default: none, plain HTTP)",
    )
    serve.add_argument("--keyfile", type=Path, help="TLS private key (PEM); needs --certfile (default: none)")
    serve.add_argument(
        "--smtp",
        type=_smtp,
        metavar="HOST:PORT",
        help="send password-reset mail through this SMTP server (default: none: written to DIR/mail/)",
    )
    serve.add_argument("--smtp-starttls", action="store_true", help="use STARTTLS with --smtp (default: off)")
    serve.add_argument(
        "--mail-from",
        default=d.mail_from,
        metavar="ADDR",
        help="sender of password-reset mails (default: %(default)s)",
    )
    serve.add_argument(
        "--public-url",
        default=None,
        metavar="URL",
        help="base URL of a reset page to link in reset mails (default: none: the token only)",
    )
    serve.add_argument(
        "--access-ttl",
        type=_positive_int,
        default=d.access_ttl_s,
        metavar="S",
        help="lifetime of an access token, seconds (default: %(default)s)",
    )
    serve.add_argument(
        "--refresh-ttl",
        type=_positive_int,
        default=d.refresh_ttl_s,
        metavar="S",
        help="lifetime of a refresh token, seconds; a session unused this long ends (default: %(default)s)",
    )
    serve.add_argument(
        "--cert-ttl",
        type=_positive_int,
        default=d.certificate_ttl_s,
        metavar="S",
        help="lifetime of a device certificate, seconds: how long a device may sign records offline"
        " (default: %(default)s)",
    )
    serve.add_argument(
        "--reset-ttl",
        type=_positive_int,
        default=d.reset_ttl_s,
        metavar="S",
        help="lifetime of a password-reset token, seconds (default: %(default)s)",
    )
    serve.add_argument(
        "--issuer", default=d.issuer, help="the iss claim of issued tokens (default: %(default)s)"
    )
    serve.add_argument(
        "--audience", default=d.audience, help="the aud claim of issued tokens (default: %(default)s)"
    )
    rl = d.rate_limits
    serve.add_argument(
        "--login-rate-account",
        type=_rate,
        default=rl.login_account,
        metavar="N/S",
        help="logins per account: N attempts per S seconds (default: %(default)s)",
    )
    serve.add_argument(
        "--login-rate-address",
        type=_rate,
        default=rl.login_address,
        metavar="N/S",
        help="logins per client address: N per S seconds (default: %(default)s)",
    )
    serve.add_argument(
        "--register-rate-address",
        type=_rate,
        default=rl.register_address,
        metavar="N/S",
        help="registrations per client address: N per S seconds (default: %(default)s)",
    )
    serve.add_argument(
        "--reset-rate-account",
        type=_rate,
        default=rl.reset_account,
        metavar="N/S",
        help="password-reset mails per account: N per S seconds (default: %(default)s)",
    )
    serve.add_argument(
        "--reset-rate-address",
        type=_rate,
        default=rl.reset_address,
        metavar="N/S",
        help="password-reset requests per client address: N per S seconds (default: %(default)s)",
    )
    serve.add_argument(
        "--events-poll",
        type=float,
        default=d.events_poll_s,
        metavar="S",
        help="how often to read account changes made by other processes, seconds (default: %(default)s)",
    )
    sl = d.sync
    sync = serve.add_argument_group("sync limits")
    sync.add_argument(
        "--max-message",
        type=_positive_int,
        default=sl.max_message,
        metavar="BYTES",
        help="largest websocket message accepted (default: %(default)s)",
    )
    sync.add_argument(
        "--max-docs",
        type=_positive_int,
        default=sl.max_docs,
        metavar="N",
        help="documents one connection may follow (default: %(default)s)",
    )
    sync.add_argument(
        "--max-doc-bytes",
        type=_positive_int,
        default=sl.max_doc_bytes,
        metavar="BYTES",
        help="largest document the relay keeps; updates beyond it are refused (default: %(default)s)",
    )
    sync.add_argument(
        "--sync-rate",
        type=float,
        default=sl.rate_per_s,
        metavar="N",
        help="updates per second per connection (default: %(default)s)",
    )
    sync.add_argument(
        "--sync-burst",
        type=_positive_int,
        default=sl.burst,
        metavar="N",
        help="updates a connection may send at once above --sync-rate (default: %(default)s)",
    )
    sync.add_argument(
        "--max-connections",
        type=_positive_int,
        default=sl.max_connections,
        metavar="N",
        help="sync connections the relay holds at once (default: %(default)s)",
    )
    sync.add_argument(
        "--send-queue-bytes",
        type=_positive_int,
        default=sl.send_queue_bytes,
        metavar="BYTES",
        help="bytes queued for a slow reader before it is cut off with 1013 (default: %(default)s)",
    )
    sync.add_argument(
        "--auth-deadline",
        type=float,
        default=sl.auth_deadline_s,
        metavar="S",
        help="seconds a new sync socket has to authenticate (default: %(default)s)",
    )
    sync.add_argument(
        "--max-anonymous-per-address",
        type=_positive_int,
        default=sl.max_anonymous_per_address,
        metavar="N",
        help="sync sockets one client address may hold before authenticating; more are closed"
        " with 1013 (default: min(64, max-connections/8))",
    )
    sync.add_argument(
        "--idle-unload",
        type=float,
        default=sl.idle_unload_s,
        metavar="S",
        help="unload a document from memory after this many idle seconds (default: %(default)s)",
    )
    sync.add_argument(
        "--max-party",
        type=_positive_int,
        default=sl.max_party,
        metavar="N",
        help="largest party one reservation may have; a larger one, or one larger than its slot's"
        " capacity that day, is refused with party_too_large (default: %(default)s)",
    )
    sync.add_argument(
        "--max-inflight",
        type=_positive_int,
        default=sl.max_inflight,
        metavar="N",
        help="unacknowledged updates per connection before the relay stops reading it (default: %(default)s)",
    )
    serve.add_argument(
        "--redis",
        default=os.environ.get("QUICKSLOT_RELAY_REDIS") or None,
        metavar="URL",
        help="redis:// URL whose streams carry updates between relay nodes sharing --store"
        " (default: $QUICKSLOT_RELAY_REDIS, else none: a single node)",
    )
    serve.add_argument(
        "--restore-stamp-hold",
        type=float,
        default=d.restore_stamp_hold_s,
        metavar="S",
        help="after a restore (new epoch over stored documents), stamp no new claim for this long,"
        " so clients re-send the stamps the backup lacks first (0: off; default %(default)s)",
    )
    serve.add_argument(
        "--forwarded-allow-ips",
        default=None,
        metavar="IPS",
        help="trust X-Forwarded-For from these proxies (default: trust no proxy)",
    )

    user = sub.add_parser("user", help="manage accounts")
    user_sub = user.add_subparsers(dest="user_command", metavar="ACTION", required=True)
    add = user_sub.add_parser("add", parents=[common, hashing], help="create an account")
    add.add_argument("email", help="the account's email address (its login)")
    add.add_argument("--name", help="display name (default: the part of the email before @)")
    add.add_argument("--admin", action="store_true", help="grant the admin role (default: a plain user)")
    add.add_argument(
        "--password-stdin",
        action="store_true",
        required=True,
        help="read the password from the first line of stdin (required)",
    )
    imported = user_sub.add_parser(
        "import",
        parents=[common],
        help="create accounts from a JSON-lines file with their password hashes (PBKDF2 from the"
        " original system, or Argon2id); each user's first login upgrades the hash (docs/relay.md)",
    )
    imported.add_argument("file", help='one {"email", "password_hash", "name", "roles"} object per line')
    user_sub.add_parser("list", parents=[common], help="list accounts")
    disable = user_sub.add_parser("disable", parents=[common], help="disable an account and end its sessions")
    disable.add_argument("email", help="the account's email address")
    enable = user_sub.add_parser("enable", parents=[common], help="re-enable a disabled account")
    enable.add_argument("email", help="the account's email address")
    grant = user_sub.add_parser("grant", parents=[common], help="grant a shop relation or the admin role")
    grant.add_argument("email", help="the account's email address")
    what = grant.add_mutually_exclusive_group(required=True)
    what.add_argument("--owner", metavar="SHOP", help="make the user an owner of SHOP")
    what.add_argument("--staff", metavar="SHOP", help="make the user staff of SHOP")
    what.add_argument("--admin", action="store_true", help="grant the admin role")

    keys = sub.add_parser("keys", help="manage signing keys")
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    keys_sub.add_parser("rotate", parents=[common], help="add a new active signing key")
    keys_sub.add_parser("list", parents=[common], help="list signing keys")

    sub.add_parser("stats", parents=[common], help="account (and document) statistics")
    sub.add_parser("compact", parents=[common], help="compact every document (relay stopped)")
    return parser


def _config(args: argparse.Namespace) -> RelayConfig:
    base = RelayConfig(
        data_dir=args.data,
        log_level=args.log_level,
        store_url=args.store,
        store_replica_url=args.store_replica,
    )
    if hasattr(args, "argon2_memory_kib"):
        base = replace(
            base,
            argon2_memory_kib=args.argon2_memory_kib,
            argon2_iterations=args.argon2_iterations,
            argon2_lanes=args.argon2_lanes,
            password_min_length=args.password_min_length,
        )
    if args.command != "serve":
        return base
    smtp = args.smtp
    if smtp is not None and args.smtp_starttls:
        smtp = replace(smtp, starttls=True)
    return replace(
        base,
        host=args.host,
        port=args.port,
        certfile=args.certfile,
        keyfile=args.keyfile,
        smtp=smtp,
        mail_from=args.mail_from,
        public_url=args.public_url,
        access_ttl_s=args.access_ttl,
        refresh_ttl_s=args.refresh_ttl,
        certificate_ttl_s=args.cert_ttl,
        reset_ttl_s=args.reset_ttl,
        issuer=args.issuer,
        audience=args.audience,
        events_poll_s=args.events_poll,
        sync=SyncLimits(
            max_message=args.max_message,
            max_docs=args.max_docs,
            max_doc_bytes=args.max_doc_bytes,
            rate_per_s=args.sync_rate,
            burst=args.sync_burst,
            max_connections=args.max_connections,
            send_queue_bytes=args.send_queue_bytes,
            auth_deadline_s=args.auth_deadline,
            max_anonymous_per_address=args.max_anonymous_per_address,
            idle_unload_s=args.idle_unload,
            max_inflight=args.max_inflight,
            max_party=args.max_party,
        ),
        redis_url=args.redis,
        restore_stamp_hold_s=args.restore_stamp_hold,
        rate_limits=RateLimits(
            login_account=args.login_rate_account,
            login_address=args.login_rate_address,
            register_address=args.register_rate_address,
            reset_account=args.reset_rate_account,
            reset_address=args.reset_rate_address,
        ),
    )


# --------------------------------------------------------------------------------------------
# serve


def _fit_open_files(config: RelayConfig) -> RelayConfig:
    """Raise the open-file limit for ``--max-connections``, or lower that to fit (relay.fdlimit)."""
    import logging

    from relay.fdlimit import RESERVED_FDS, fit_connections
    from relay.logging import log_event

    fit = fit_connections(config.sync.max_connections)
    logger = logging.getLogger("relay.serve")
    if fit.raised_from is not None:
        log_event(logger, "open_file_limit_raised", soft_before=fit.raised_from, soft=fit.soft_limit)
    if fit.max_connections < config.sync.max_connections:
        log_event(
            logger,
            "max_connections_lowered",
            logging.WARNING,
            configured=config.sync.max_connections,
            max_connections=fit.max_connections,
            open_file_limit=fit.soft_limit,
            reserved=RESERVED_FDS,
            hint="raise the hard limit (ulimit -Hn, LimitNOFILE=) to allow more connections",
        )
        config = replace(config, sync=replace(config.sync, max_connections=fit.max_connections))
    return config


def serve(config: RelayConfig, *, forwarded_allow_ips: str | None = None) -> int:
    """Run uvicorn (websockets implementation) until SIGTERM/SIGINT; graceful shutdown."""
    import socket

    import uvicorn

    from relay.app import create_app
    from relay.fdlimit import AcceptErrorThrottle
    from relay.malloc_tuning import tune_malloc_and_log
    from relay.ws_protocol import RelayWebSocketProtocol

    tune_malloc_and_log()  # before any worker thread takes an arena of its own
    lock = _hold_serve_lock(config.data_dir)  # noqa: F841 - held until the process exits
    config = _fit_open_files(config)
    app = create_app(config)
    ctx = app.state.relay

    class RelayServer(uvicorn.Server):
        """Tells the relay it is stopping as soon as the signal arrives, before uvicorn waits
        for connections to drain, so extensions can say goodbye to clients promptly."""

        saying_goodbye = False

        async def serve(self, sockets: list[socket.socket] | None = None) -> None:
            AcceptErrorThrottle.install(asyncio.get_running_loop())  # see relay.fdlimit
            await super().serve(sockets)

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            # A second signal while the relay says goodbye goes straight to uvicorn (which treats
            # it as "exit now"); the first one lets the relay close its clients with 1001 before
            # uvicorn closes the remaining websockets with 1012.
            if self.saying_goodbye or self.should_exit:
                super().handle_exit(sig, frame)
                return
            self.saying_goodbye = True
            ctx.begin_shutdown(then=lambda: uvicorn.Server.handle_exit(self, sig, frame))

    uv_config = uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        # uvicorn's websockets-sansio protocol with the pong backlog bounded (relay.ws_protocol).
        ws=RelayWebSocketProtocol,
        # Frames over the sync protocol's message limit are refused by the websocket layer
        # itself (close 1009) before a byte of them is parsed.
        ws_max_size=config.sync.max_message,
        # Compressing every fan-out frame for every subscriber cost the relay ~40% of its CPU per
        # delivery and its p99 latency at 50 clients went 5.8 ms -> 95 ms (benchmarks, relay suite).
        ws_per_message_deflate=False,
        lifespan="on",
        log_config=None,
        access_log=True,
        proxy_headers=forwarded_allow_ips is not None,
        forwarded_allow_ips=forwarded_allow_ips,
        ssl_certfile=str(config.certfile) if config.certfile else None,
        ssl_keyfile=str(config.keyfile) if config.keyfile else None,
        timeout_graceful_shutdown=int(config.graceful_shutdown_s),
        server_header=False,
    )
    server = RelayServer(uv_config)
    # uvicorn handles SIGTERM/SIGINT while serving, then restores the previous handlers and
    # re-raises the signal. With the defaults that would kill the process after a clean
    # shutdown (exit -15); these no-op handlers make a completed graceful shutdown exit 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _sig, _frame: None)
    try:
        server.run()
    except SystemExit as e:  # uvicorn exits 1 (bind failed) or 3 (app startup failed)
        return EXIT_FAILURE if e.code else EXIT_OK
    return EXIT_OK if server.started else EXIT_FAILURE


# --------------------------------------------------------------------------------------------
# admin commands


def _require_data_dir(config: RelayConfig) -> None:
    if config.store_url is not None:
        return  # the data is in the database; connecting tells whether it is there
    if not (config.data_dir / DB_FILENAME).exists():
        raise CliError(f"no relay data in {config.data_dir} (start the relay or 'user add' first)", "no_data")


async def _with_auth(config: RelayConfig, fn: Callable[[Any], Awaitable[Any]]) -> Any:
    from relay.accounts import open_auth

    auth = await open_auth(config, origin=f"cli:{os.getpid()}", warm_up=False)
    try:
        return await fn(auth)
    finally:
        await auth.aclose()


def _user_row(user: Any) -> dict[str, Any]:
    row: dict[str, Any] = user.public()
    row["created_at"] = _iso(row["created_at"])
    return row


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _read_password() -> str:
    line = sys.stdin.readline()
    password = line.rstrip("\r\n")
    if not password:
        raise CliError("no password on stdin", "no_password")
    return password


async def _user_add(auth: Any, args: argparse.Namespace, password: str) -> dict[str, Any]:
    name = args.name or args.email.split("@", 1)[0]
    roles = ["admin"] if args.admin else []
    user = await auth.service.register(args.email, password, name, roles=roles)
    return _user_row(user)


async def _user_list(auth: Any) -> list[dict[str, Any]]:
    return [_user_row(u) for u in await auth.store.list_users()]


async def _keys_rotate(auth: Any) -> dict[str, Any]:
    previous = auth.keys.active_kid
    kid = await auth.keys.rotate_async()
    await auth.service.record_keys_rotated()
    return {"active_kid": kid, "retired_kid": previous}


async def _loaded_keys(auth: Any) -> Any:
    return auth.keys


def _keys_list(config: RelayConfig) -> list[dict[str, Any]]:
    from relay.keys import KeyStore

    if config.store_url is not None:  # keys live in the database (relay.keys_pg)
        store = asyncio.run(_with_auth(config, _loaded_keys))
    else:
        store = KeyStore.open(config.keys_dir, create=False)
    return [
        {
            "kid": k.kid,
            "active": k.kid == store.active_kid,
            "created_at": _iso(k.created_at),
            "retired_at": _iso(k.retired_at),
        }
        for k in store.keys()
    ]


async def _stats(auth: Any, config: RelayConfig) -> dict[str, Any]:
    out: dict[str, Any] = {"epoch": auth.epoch, "accounts": await auth.store.counts(now=time.time())}
    for name, provider in _stats_providers().items():
        out[name] = dict(await provider(config))
    return out


def run(args: argparse.Namespace) -> Any:
    """Execute a parsed command; returns the JSON-able result (or raises :class:`CliError`)."""
    from relay.accounts import AccountError

    config = _config(args)
    try:
        if args.command == "user":
            if args.user_command == "add":
                password = _read_password()
                return asyncio.run(_with_auth(config, lambda a: _user_add(a, args, password)))
            _require_data_dir(config)
            if args.user_command == "import":
                from relay.user_import import import_users, parse_lines

                with open(args.file, encoding="utf-8") as source:
                    rows, skipped = parse_lines(source)
                return asyncio.run(_with_auth(config, lambda a: import_users(a, rows, skipped)))
            if args.user_command == "list":
                return asyncio.run(_with_auth(config, _user_list))
            if args.user_command in ("disable", "enable"):
                disabled = args.user_command == "disable"
                user = asyncio.run(_with_auth(config, lambda a: a.service.set_disabled(args.email, disabled)))
                return _user_row(user)
            if args.user_command == "grant":
                user = asyncio.run(
                    _with_auth(
                        config,
                        lambda a: a.service.grant(
                            args.email,
                            role="admin" if args.admin else None,
                            owner=args.owner,
                            staff=args.staff,
                        ),
                    )
                )
                return _user_row(user)
        if args.command == "keys":
            _require_data_dir(config)
            if args.keys_command == "rotate":
                return asyncio.run(_with_auth(config, _keys_rotate))
            return _keys_list(config)
        if args.command == "stats":
            _require_data_dir(config)
            return asyncio.run(_with_auth(config, lambda a: _stats(a, config)))
        if args.command == "compact":
            _require_data_dir(config)
            return asyncio.run(_compact(config))
    except AccountError as e:
        raise CliError(e.message, e.code) from None
    raise CliError(f"unknown command {args.command}", "usage")  # pragma: no cover


# --------------------------------------------------------------------------------------------
# output


def _print_human(args: argparse.Namespace, result: Any) -> None:
    if args.command == "user" and args.user_command == "list":
        rows = result
        if not rows:
            print("no users")
            return
        headers = ["EMAIL", "NAME", "ROLES", "OWNER OF", "STAFF OF", "STATUS", "ID"]
        table = [
            [
                r["email"],
                r["display_name"],
                ",".join(r["roles"]) or "-",
                ",".join(r["owner_of"]) or "-",
                ",".join(r["staff_of"]) or "-",
                "disabled" if r["disabled"] else "active",
                r["id"],
            ]
            for r in rows
        ]
        widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(headers)]
        for row in [headers, *table]:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        return
    if args.command == "user" and args.user_command == "import":
        for row in result["skipped"]:
            print(f"line {row['line']}: skipped: {row['reason']}")
        print(f"imported {len(result['imported'])} accounts, skipped {len(result['skipped'])}")
        return
    if args.command == "user":
        verb = {"add": "added", "disable": "disabled", "enable": "enabled", "grant": "updated"}[
            args.user_command
        ]
        extra = []
        if result["roles"]:
            extra.append("roles: " + ",".join(result["roles"]))
        if result["owner_of"]:
            extra.append("owner of: " + ",".join(result["owner_of"]))
        if result["staff_of"]:
            extra.append("staff of: " + ",".join(result["staff_of"]))
        suffix = f" ({'; '.join(extra)})" if extra else ""
        print(f"{verb} {result['email']} [{result['id']}]{suffix}")
        return
    if args.command == "keys" and args.keys_command == "rotate":
        print(f"new active key {result['active_kid']} (retired {result['retired_kid']})")
        return
    if args.command == "keys":
        for k in result:
            state = "active" if k["active"] else f"retired {k['retired_at']}"
            print(f"{k['kid']}  created {k['created_at']}  {state}")
        return
    if args.command == "compact":
        print(f"compacted {result['compacted']} document(s)")
        return
    if args.command == "stats":
        print(f"epoch: {result['epoch']}")
        for section, values in result.items():
            if isinstance(values, Mapping):
                print(f"{section}:")
                for key, value in values.items():
                    print(f"  {key}: {value}")
        return
    print(result)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        from relay.logging import configure_logging

        try:
            config = _config(args)
        except ValueError as e:
            parser.error(str(e))
        configure_logging(config.log_level)
        try:
            prepare_data_dir(config)  # fail early and plainly on an unusable data directory
        except OSError as e:
            print(
                f"quickslot-relay: error: cannot use data directory {config.data_dir}: {e}", file=sys.stderr
            )
            return EXIT_FAILURE
        try:
            return serve(config, forwarded_allow_ips=args.forwarded_allow_ips)
        except CliError as e:
            print(f"quickslot-relay: error: {e}", file=sys.stderr)
            return EXIT_FAILURE
    try:
        result = run(args)
    except CliError as e:
        if args.json:
            print(json.dumps({"error": {"code": e.code, "message": str(e)}}))
        print(f"quickslot-relay: error: {e}", file=sys.stderr)
        return EXIT_FAILURE
    except ValueError as e:
        parser.error(str(e))
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        _print_human(args, result)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
