"""Relay configuration and the on-disk layout of a relay's data directory.

One frozen dataclass carries every knob so the CLI, the app factory and the tests build the relay
the same way; `dataclasses.replace` derives variants (tests lower the Argon2 cost that way).

Data directory layout (created on first start by :func:`prepare_data_dir`,
the epoch by :func:`relay.store.base.load_or_create_epoch`)::

    DIR/relay.sqlite3   one SQLite file (WAL) shared by every relay component, each with its own
                        tables (accounts and tokens use the ``account_``/``auth_`` prefixes)
    DIR/keys/           Ed25519 signing keys (dir 0700, private key files 0600)
    DIR/mail/           outgoing mail written as .eml files when no SMTP server is configured
    DIR/epoch           random id of this data directory; clients compare it to notice a relay
                        that was reset or restored from a backup
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

#: Version of the sync wire protocol this relay speaks (reported by ``/api/v1/sync/status``).
SYNC_PROTOCOL_VERSION = 1

DB_FILENAME = "relay.sqlite3"
KEYS_DIRNAME = "keys"
MAIL_DIRNAME = "mail"
EPOCH_FILENAME = "epoch"

# RFC 9106 section 4, "second recommended option" (the first needs 2 GiB per hash, too much for a
# relay that must stay responsive): Argon2id, t=3 passes, p=4 lanes, m=64 MiB. It is also above
# the OWASP Password Storage Cheat Sheet minimums (m=19 MiB, t=2, p=1).
ARGON2_DEFAULT_MEMORY_KIB = 64 * 1024
ARGON2_DEFAULT_ITERATIONS = 3
ARGON2_DEFAULT_LANES = 4


@dataclass(frozen=True)
class RateLimit:
    """A token bucket: ``capacity`` attempts at once, refilled evenly over ``window_s`` seconds."""

    capacity: int
    window_s: float

    @classmethod
    def parse(cls, text: str) -> RateLimit:
        """Parse ``COUNT/SECONDS`` (e.g. ``10/300``), the form the CLI flags take."""
        count, sep, window = text.partition("/")
        if not sep:
            raise ValueError(f"rate limit must look like COUNT/SECONDS, got {text!r}")
        limit = cls(int(count), float(window))
        if limit.capacity < 1 or limit.window_s <= 0:
            raise ValueError(f"rate limit must be positive, got {text!r}")
        return limit

    def __str__(self) -> str:
        return f"{self.capacity}/{self.window_s:g}"


@dataclass(frozen=True)
class RateLimits:
    """Per-purpose limits. Keys are normalised emails (account) or client IP addresses."""

    login_account: RateLimit = RateLimit(10, 300.0)
    login_address: RateLimit = RateLimit(30, 60.0)
    register_address: RateLimit = RateLimit(10, 600.0)
    reset_account: RateLimit = RateLimit(3, 900.0)
    reset_address: RateLimit = RateLimit(10, 600.0)
    # Bound on how many distinct keys one limiter remembers (memory stays bounded under a flood
    # of spoofed emails); the least recently used keys are forgotten first.
    max_keys: int = 100_000


@dataclass(frozen=True)
class SmtpSettings:
    """Where password-reset mail goes when SMTP is configured (plain SMTP, optional STARTTLS)."""

    host: str
    port: int = 25
    starttls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout_s: float = 10.0

    @classmethod
    def parse(cls, text: str) -> SmtpSettings:
        """Parse the ``HOST:PORT`` form of ``--smtp``."""
        host, sep, port = text.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"--smtp must look like HOST:PORT, got {text!r}")
        return cls(host=host.strip("[]"), port=int(port))


@dataclass(frozen=True)
class SyncLimits:
    """Limits of the sync websocket, each with a default and a ``serve`` flag."""

    max_message: int = 1024 * 1024
    max_docs: int = 256
    max_doc_bytes: int = 32 * 1024 * 1024
    rate_per_s: float = 100.0
    burst: int = 400
    max_connections: int = 10_000
    send_queue_bytes: int = 8 * 1024 * 1024
    auth_deadline_s: float = 5.0
    preauth_max_bytes: int = 16 * 1024
    flood_strikes: int = 50
    """Rate-limited updates in a row after which the connection is closed with 4029."""

    idle_unload_s: float = 300.0
    """Unload a document nobody subscribed to or wrote for this long."""
    max_loaded_docs: int = 10_000
    max_inflight: int = 64
    """Updates one connection may have received and not yet had acknowledged; at the bound the
    relay stops reading that socket (backpressure). Announced in ``welcome``."""
    max_party: int = 20
    """The largest party one reservation may have; a larger one is refused at arrival
    (``party_too_large``), as is one larger than its slot's capacity that day."""
    max_anonymous_per_address: int | None = None
    """Sync websockets one client address may hold before they authenticate (``None``: derived
    from ``max_connections``, see :attr:`anonymous_per_address`)."""

    @property
    def anonymous_per_address(self) -> int:
        """The per-address cap on unauthenticated sync sockets (``relay.auth.anonymous_slots``).

        Default ``min(64, max(1, max_connections // 8))``. Why these numbers: an honest client
        holds an unauthenticated socket for one round trip at most (the reference client sends
        its token in the handshake and is never counted; a browser sends ``auth`` as its first
        message), so even an office of a few hundred browsers behind one NAT address, all
        reconnecting at once after a relay restart, has only a handful in that state at any
        moment; 64 is far above that. And one address may hold at most 1/8 of the slots (0.64%
        at the default 10,000), so exhausting ``--max-connections`` this way takes at least
        eight addresses at the smallest setting and 157 at the default. The cap follows
        ``max_connections`` after ``serve`` has fitted it to the open-file limit.
        """
        if self.max_anonymous_per_address is not None:
            return self.max_anonymous_per_address
        return min(64, max(1, self.max_connections // 8))

    def announce(self) -> dict[str, int]:
        """The limits a client is told in ``welcome`` (names from ``crdt_core.messages.Limit``)."""
        return {
            "max_message": self.max_message,
            "max_docs": self.max_docs,
            "max_doc": self.max_doc_bytes,
            "rate": int(self.rate_per_s),
            "burst": self.burst,
        }


@dataclass(frozen=True)
class RelayConfig:
    """Everything the relay needs to start. Defaults are the production values."""

    data_dir: Path = Path("relay-data")
    host: str = "127.0.0.1"
    port: int = 8765
    certfile: Path | None = None
    keyfile: Path | None = None

    # Tokens (the original QuickSlot design: 30 minutes and 7 days).
    access_ttl_s: int = 30 * 60
    refresh_ttl_s: int = 7 * 24 * 3600
    issuer: str = "quickslot-relay"
    audience: str = "quickslot-sync"
    clock_skew_s: int = 30
    # Device certificates outlive an access token so an offline device keeps signing records; a
    # device offline longer than the refresh TTL has to log in again anyway.
    certificate_ttl_s: int = 7 * 24 * 3600

    # Passwords.
    argon2_memory_kib: int = ARGON2_DEFAULT_MEMORY_KIB
    argon2_iterations: int = ARGON2_DEFAULT_ITERATIONS
    argon2_lanes: int = ARGON2_DEFAULT_LANES
    # Each Argon2 hash holds argon2_memory_kib of RAM; this caps the hashes running at once.
    hash_concurrency: int = max(1, min(4, os.cpu_count() or 1))
    password_min_length: int = 10
    password_max_length: int = 1024

    # Password reset and mail.
    reset_ttl_s: int = 30 * 60
    smtp: SmtpSettings | None = None
    mail_from: str = "QuickSlot <no-reply@quickslot.invalid>"
    public_url: str | None = None

    rate_limits: RateLimits = RateLimits()

    # How often the server polls ``account_events`` for changes made by the operator CLI.
    events_poll_s: float = 1.0
    sqlite_busy_timeout_ms: int = 5000
    sync: SyncLimits = SyncLimits()
    log_level: str = "INFO"
    graceful_shutdown_s: float = 5.0

    # Where documents (and, with the PostgreSQL store, accounts and tokens) live. ``None`` is the
    # embedded SQLite file in ``data_dir``; a ``postgresql://`` URL puts them in that database,
    # which several relay nodes can share (the scale-out setup).
    store_url: str | None = field(default=None, repr=False)
    # A streaming replica of ``store_url``'s database: document loads and operator statistics
    # read from it (a lagging replica is caught up from the primary, never served stale).
    store_replica_url: str | None = field(default=None, repr=False)
    # Several nodes on one store: ``redis://`` URL of the Redis whose streams carry each node's
    # commits to the others (relay.fanout). ``None``: one node, no fan-out beyond itself.
    redis_url: str | None = field(default=None, repr=False)
    # After a restore (the epoch changed under stored documents): how long new claims wait
    # unstamped so clients can re-send the stamps the backup lacks (relay.sync.stamp_hold); 0: never.
    restore_stamp_hold_s: float = 600.0
    # The web app (relay.http.web_app) at /app/: on unless --no-app; ``app_dir`` None is the built
    # app of this checkout (web/app/dist).
    serve_app: bool = True
    app_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.access_ttl_s <= 0 or self.refresh_ttl_s <= 0 or self.certificate_ttl_s <= 0:
            raise ValueError("token and certificate lifetimes must be positive")
        if (
            self.argon2_lanes < 1
            or self.argon2_iterations < 1
            or self.argon2_memory_kib < 8 * self.argon2_lanes
        ):
            raise ValueError("Argon2 needs lanes >= 1, iterations >= 1 and memory >= 8 KiB per lane")
        if not self.restore_stamp_hold_s >= 0:
            raise ValueError("--restore-stamp-hold must be >= 0 seconds")
        if (self.certfile is None) != (self.keyfile is None):
            raise ValueError("--certfile and --keyfile go together")
        for flag, url in (("--store", self.store_url), ("--store-replica", self.store_replica_url)):
            if url is not None and not is_postgres_url(url):
                raise ValueError(f"{flag} must be a postgresql:// URL")
        if self.store_replica_url is not None and self.store_url is None:
            raise ValueError("--store-replica needs --store (the primary it replicates)")
        if self.redis_url is not None:
            if not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
                raise ValueError("--redis must be a redis://, rediss:// or unix:// URL")
            if self.store_url is None:
                raise ValueError("--redis needs --store: nodes that fan out to each other share one store")

    @property
    def db_path(self) -> Path:
        return self.data_dir / DB_FILENAME

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / KEYS_DIRNAME

    @property
    def mail_dir(self) -> Path:
        return self.data_dir / MAIL_DIRNAME

    @property
    def epoch_path(self) -> Path:
        return self.data_dir / EPOCH_FILENAME


def is_postgres_url(url: str) -> bool:
    """Whether ``url`` names a PostgreSQL database (the schemes libpq and asyncpg accept)."""
    return url.startswith(("postgresql://", "postgres://"))


def redact_url(url: str | None) -> str | None:
    """``url`` without its password, for logs and error messages."""
    if url is None:
        return None
    scheme, sep, rest = url.partition("://")
    userinfo, at, hostpart = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{hostpart}"


def prepare_data_dir(config: RelayConfig) -> None:
    """Create the data directory layout if missing (the epoch file is the store's:
    :func:`relay.store.base.load_or_create_epoch`).

    Safe to call from the server and the CLI at once: directories are created with ``exist_ok``
    and the database file with ``O_EXCL``.
    """
    config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    config.keys_dir.mkdir(exist_ok=True, mode=0o700)
    os.chmod(config.keys_dir, 0o700)
    config.mail_dir.mkdir(exist_ok=True, mode=0o700)
    # Pre-create the database owner-only (it holds password hashes); SQLite gives its -wal and
    # -shm files the same permissions.
    try:
        os.close(os.open(config.db_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass
