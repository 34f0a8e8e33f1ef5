"""The command line of ``quickslot-relay``: every option, and the configuration it makes."""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from pathlib import Path

from relay.ops.config import RateLimit, RateLimits, RelayConfig, SmtpSettings, SyncLimits

DEFAULT_DATA_DIR = os.environ.get("QUICKSLOT_RELAY_DATA", "relay-data")
# Read at parse time (not import time) so tests and wrappers can set them per invocation.
STORE_ENV = "QUICKSLOT_RELAY_STORE"
STORE_REPLICA_ENV = "QUICKSLOT_RELAY_STORE_REPLICA"


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
        "--no-app",
        dest="serve_app",
        action="store_false",
        help="do not serve the web app at /app/ (default: served)",
    )
    serve.add_argument(
        "--app-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="the built web app to serve (default: web/app/dist)",
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


def config_from_args(args: argparse.Namespace) -> RelayConfig:
    """The :class:`RelayConfig` a parsed command line asks for."""
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
        serve_app=args.serve_app,
        app_dir=args.app_dir,
        rate_limits=RateLimits(
            login_account=args.login_rate_account,
            login_address=args.login_rate_address,
            register_address=args.register_rate_address,
            reset_account=args.reset_rate_account,
            reset_address=args.reset_rate_address,
        ),
    )
