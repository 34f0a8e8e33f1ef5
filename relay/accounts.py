"""Accounts, refresh-token families and password resets: SQLite store and the service above it.

The store (:class:`AccountStore`) owns the ``account_*`` and ``auth_*`` tables of the relay's
shared SQLite file. Other relay components open their own connections to the same file, so the
schema uses ``CREATE TABLE IF NOT EXISTS``, the connection sets a busy timeout, and every
multi-statement change runs in one ``BEGIN IMMEDIATE`` transaction guarded by an asyncio lock
(one aiosqlite connection is shared by all coroutines, and interleaving two coroutines'
statements inside one transaction would mix their changes).

The service (:class:`AccountService`) implements the auth flows. Decisions worth knowing:

* Refresh tokens rotate on every use. Each belongs to a family (one login = one family). The
  server stores only SHA-256 of each refresh ``jti``. Presenting a refresh token that was already
  spent means a copy leaked (or a client raced itself): the whole family is revoked, its access
  tokens stop verifying, and ``on_family_revoked`` tells the websocket layer to close the
  family's connections. Logout, password reset and disabling an account revoke families too.
* Unknown email and wrong password give the same error after the same work (a dummy Argon2
  verification), so login cannot enumerate accounts; password-reset requests always succeed and
  do their work in the background so their timing does not tell either.
* The operator CLI changes the same tables from another process. It records what it did in
  ``account_events``; the server polls that table (``events_poll_s``, default 1 s), updates its
  in-memory revocation state and fires the same hooks as for its own changes. Events written by a
  process carry its ``origin`` and that process skips its own.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import os
import re
import secrets
import sqlite3
import time
import unicodedata
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosqlite

from relay.config import RelayConfig, prepare_data_dir
from relay.device_certs import issue_device_certificate
from relay.keys import KeyStore
from relay.logging import get_logger, log_event
from relay.mail import Mailer, build_message, make_mailer
from relay.metrics import MetricsRegistry
from relay.passwords import Argon2Params, PasswordHasher
from relay.tokens import (
    ACCESS,
    REFRESH,
    Claims,
    IssuedToken,
    RevocationState,
    TokenError,
    TokenRevoked,
    TokenService,
)

log = get_logger("relay.accounts")

ROLE_ADMIN = "admin"
KNOWN_ROLES = frozenset({ROLE_ADMIN})
SHOP_OWNER = "owner"
SHOP_STAFF = "staff"
SCHEMA_VERSION = 1
_SHOP_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# Pragmatic address check (no dependency on email-validator): one @, a dotted domain, no spaces or
# control characters, RFC 5321 length limits. Deliverability is proven by the reset mail anyway.
_EMAIL = re.compile(
    r"^[^@\s\x00-\x1f\x7f]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$"
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS account_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS account_users (
    user_id       TEXT PRIMARY KEY,
    email         TEXT NOT NULL UNIQUE,
    display_name  TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    created_at    REAL NOT NULL,
    updated_at    REAL NOT NULL,
    disabled_at   REAL
);
CREATE TABLE IF NOT EXISTS account_roles (
    user_id    TEXT NOT NULL REFERENCES account_users(user_id) ON DELETE CASCADE,
    role       TEXT NOT NULL,
    granted_at REAL NOT NULL,
    PRIMARY KEY (user_id, role)
);
CREATE TABLE IF NOT EXISTS account_shop_members (
    user_id    TEXT NOT NULL REFERENCES account_users(user_id) ON DELETE CASCADE,
    shop_id    TEXT NOT NULL,
    relation   TEXT NOT NULL CHECK (relation IN ('owner', 'staff')),
    granted_at REAL NOT NULL,
    PRIMARY KEY (user_id, shop_id, relation)
);
CREATE INDEX IF NOT EXISTS account_shop_members_shop ON account_shop_members(shop_id);
CREATE TABLE IF NOT EXISTS auth_refresh_families (
    family_id     TEXT PRIMARY KEY,
    user_id       TEXT NOT NULL REFERENCES account_users(user_id) ON DELETE CASCADE,
    created_at    REAL NOT NULL,
    last_used_at  REAL NOT NULL,
    revoked_at    REAL,
    revoke_reason TEXT
);
CREATE INDEX IF NOT EXISTS auth_refresh_families_user ON auth_refresh_families(user_id);
CREATE INDEX IF NOT EXISTS auth_refresh_families_revoked ON auth_refresh_families(revoked_at);
CREATE TABLE IF NOT EXISTS auth_refresh_tokens (
    jti_hash   BLOB PRIMARY KEY,
    family_id  TEXT NOT NULL REFERENCES auth_refresh_families(family_id) ON DELETE CASCADE,
    issued_at  REAL NOT NULL,
    expires_at REAL NOT NULL,
    used_at    REAL
);
CREATE INDEX IF NOT EXISTS auth_refresh_tokens_family ON auth_refresh_tokens(family_id);
CREATE TABLE IF NOT EXISTS auth_password_resets (
    token_hash BLOB PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES account_users(user_id) ON DELETE CASCADE,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    used_at    REAL
);
CREATE INDEX IF NOT EXISTS auth_password_resets_user ON auth_password_resets(user_id);
CREATE TABLE IF NOT EXISTS account_events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    kind       TEXT NOT NULL,
    user_id    TEXT,
    family_id  TEXT,
    origin     TEXT NOT NULL,
    created_at REAL NOT NULL
);
"""

# account_events.kind values
EV_FAMILY_REVOKED = "family_revoked"
EV_USER_DISABLED = "user_disabled"
EV_USER_ENABLED = "user_enabled"
EV_USER_CHANGED = "user_changed"
EV_KEYS_ROTATED = "keys_rotated"


# --------------------------------------------------------------------------------------------
# errors


class AccountError(Exception):
    """A refused account operation; ``code`` is machine-readable, ``status`` the HTTP status."""

    code = "account_error"
    status = 400

    def __init__(self, message: str = "", *, retry_after_s: float | None = None) -> None:
        super().__init__(message or self.__class__.__doc__ or self.code)
        self.message = message or (self.__class__.__doc__ or self.code).strip()
        self.retry_after_s = retry_after_s


class InvalidEmail(AccountError):
    """That is not a valid email address."""

    code, status = "invalid_email", 422


class WeakPassword(AccountError):
    """The password does not meet the policy."""

    code, status = "weak_password", 422


class InvalidInput(AccountError):
    """The request is malformed."""

    code, status = "invalid_input", 422


class EmailTaken(AccountError):
    """An account with this email already exists."""

    code, status = "email_taken", 409


class InvalidCredentials(AccountError):
    """Wrong email or password."""

    code, status = "invalid_credentials", 401


class AccountDisabled(AccountError):
    """This account is disabled."""

    code, status = "account_disabled", 403


class RefreshTokenReused(AccountError):
    """This refresh token was already used; the session has been revoked. Log in again."""

    code, status = "refresh_token_reused", 401


class SessionRevoked(AccountError):
    """This session has been revoked. Log in again."""

    code, status = "token_revoked", 401


class InvalidResetToken(AccountError):
    """The reset token is invalid, expired or already used."""

    code, status = "invalid_reset_token", 400


class UserNotFound(AccountError):
    """No such user."""

    code, status = "user_not_found", 404


# --------------------------------------------------------------------------------------------
# values


@dataclass(frozen=True)
class User:
    """An account as other code sees it (never with its password hash)."""

    user_id: str
    email: str
    display_name: str
    roles: tuple[str, ...]
    owner_of: tuple[str, ...]
    staff_of: tuple[str, ...]
    created_at: float
    disabled: bool

    @property
    def is_admin(self) -> bool:
        return ROLE_ADMIN in self.roles

    def public(self) -> dict[str, Any]:
        """The JSON shape returned by ``/me`` and login."""
        return {
            "id": self.user_id,
            "email": self.email,
            "display_name": self.display_name,
            "roles": list(self.roles),
            "owner_of": list(self.owner_of),
            "staff_of": list(self.staff_of),
            "created_at": self.created_at,
            "disabled": self.disabled,
        }


@dataclass(frozen=True)
class Session:
    """What login and refresh hand back."""

    access: IssuedToken
    refresh: IssuedToken
    user: User
    device_certificate: bytes | None


@dataclass(frozen=True)
class AccountEvent:
    id: int
    kind: str
    user_id: str | None
    family_id: str | None
    origin: str
    created_at: float


@dataclass(frozen=True)
class RotateResult:
    """Outcome of presenting a refresh token to the store."""

    status: str  # "ok" | "unknown" | "revoked" | "reused"
    family_id: str | None = None
    user_id: str | None = None


def normalize_email(email: str) -> str:
    """Trim and lowercase; raise :class:`InvalidEmail` if it does not look like an address."""
    if not isinstance(email, str):
        raise InvalidEmail()
    email = unicodedata.normalize("NFC", email.strip()).lower()
    if len(email) > 254 or not _EMAIL.match(email):
        raise InvalidEmail()
    return email


def validate_shop_id(shop_id: str) -> str:
    """Shop ids appear inside document ids (``shop:<id>``, ``bookings:<id>:<day>``): no colons."""
    if not _SHOP_ID.match(shop_id):
        raise InvalidInput("shop ids are 1-64 characters from A-Z a-z 0-9 _ -")
    return shop_id


def _sha256(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


# --------------------------------------------------------------------------------------------
# store


class AccountStore:
    """The account tables, through one aiosqlite connection."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self.conn = conn
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path, *, busy_timeout_ms: int = 5000) -> AccountStore:
        """Open (creating if needed) the SQLite file in WAL mode and ensure the schema."""
        conn = await aiosqlite.connect(path, isolation_level=None)
        try:
            await conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            await conn.execute("PRAGMA journal_mode = WAL")
            await conn.execute("PRAGMA synchronous = NORMAL")
            await conn.execute("PRAGMA foreign_keys = ON")
            store = cls(conn)
            await store._init_schema()
        except BaseException:
            await conn.close()
            raise
        return store

    async def close(self) -> None:
        await self.conn.close()

    async def _init_schema(self) -> None:
        # Every statement is idempotent, so concurrent first starts (server and CLI) are safe.
        async with self._lock:
            await self.conn.executescript(SCHEMA)
            await self.conn.execute(
                "INSERT OR IGNORE INTO account_meta(key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """Run a write transaction; nothing else uses the connection until it ends."""
        async with self._lock:
            await self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                await self.conn.execute("ROLLBACK")
                raise
            else:
                await self.conn.execute("COMMIT")

    async def _fetchall(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row | tuple[Any, ...]]:
        async with self._lock:
            async with self.conn.execute(sql, tuple(params)) as cur:
                return list(await cur.fetchall())

    async def _fetchone(self, sql: str, params: Iterable[Any] = ()) -> tuple[Any, ...] | None:
        rows = await self._fetchall(sql, params)
        return tuple(rows[0]) if rows else None

    # -- users -----------------------------------------------------------------------------------

    async def create_user(
        self, *, email: str, display_name: str, password_hash: str, roles: Iterable[str] = (), now: float
    ) -> str:
        user_id = uuid.uuid4().hex
        try:
            async with self.transaction() as db:
                await db.execute(
                    "INSERT INTO account_users(user_id, email, display_name, password_hash, created_at,"
                    " updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (user_id, email, display_name, password_hash, now, now),
                )
                for role in roles:
                    await db.execute(
                        "INSERT OR IGNORE INTO account_roles(user_id, role, granted_at) VALUES (?, ?, ?)",
                        (user_id, role, now),
                    )
        except sqlite3.IntegrityError as e:
            if "account_users.email" in str(e):
                raise EmailTaken() from None
            raise
        return user_id

    async def _user_from_row(self, row: tuple[Any, ...]) -> User:
        user_id = row[0]
        roles = await self._fetchall(
            "SELECT role FROM account_roles WHERE user_id = ? ORDER BY role", (user_id,)
        )
        shops = await self._fetchall(
            "SELECT shop_id, relation FROM account_shop_members WHERE user_id = ? ORDER BY shop_id",
            (user_id,),
        )
        return User(
            user_id=user_id,
            email=row[1],
            display_name=row[2],
            roles=tuple(r[0] for r in roles),
            owner_of=tuple(s[0] for s in shops if s[1] == SHOP_OWNER),
            staff_of=tuple(s[0] for s in shops if s[1] == SHOP_STAFF),
            created_at=row[3],
            disabled=row[4] is not None,
        )

    _USER_COLS = "user_id, email, display_name, created_at, disabled_at, password_hash"

    async def get_user(self, user_id: str) -> User | None:
        row = await self._fetchone(
            f"SELECT {self._USER_COLS} FROM account_users WHERE user_id = ?", (user_id,)
        )
        return await self._user_from_row(row) if row else None

    async def get_user_with_hash(self, email: str) -> tuple[User, str] | None:
        row = await self._fetchone(f"SELECT {self._USER_COLS} FROM account_users WHERE email = ?", (email,))
        return (await self._user_from_row(row), row[5]) if row else None

    async def list_users(self) -> list[User]:
        rows = await self._fetchall(f"SELECT {self._USER_COLS} FROM account_users ORDER BY created_at, email")
        return [await self._user_from_row(tuple(r)) for r in rows]

    async def replace_password_hash(
        self, user_id: str, new_hash: str, *, old_hash: str | None, now: float
    ) -> bool:
        """Store ``new_hash``; with ``old_hash``, only if the stored hash is still that one (a
        login's rehash must not overwrite a password reset that happened meanwhile)."""
        async with self.transaction() as db:
            if old_hash is None:
                cur = await db.execute(
                    "UPDATE account_users SET password_hash = ?, updated_at = ? WHERE user_id = ?",
                    (new_hash, now, user_id),
                )
            else:
                cur = await db.execute(
                    "UPDATE account_users SET password_hash = ?, updated_at = ? WHERE user_id = ?"
                    " AND password_hash = ?",
                    (new_hash, now, user_id, old_hash),
                )
            return cur.rowcount == 1

    async def set_disabled(self, user_id: str, disabled: bool, *, now: float) -> None:
        async with self.transaction() as db:
            await db.execute(
                "UPDATE account_users SET disabled_at = ?, updated_at = ? WHERE user_id = ?",
                (now if disabled else None, now, user_id),
            )

    async def disabled_user_ids(self) -> list[str]:
        return [
            r[0]
            for r in await self._fetchall("SELECT user_id FROM account_users WHERE disabled_at IS NOT NULL")
        ]

    async def grant_role(self, user_id: str, role: str, *, now: float) -> bool:
        async with self.transaction() as db:
            cur = await db.execute(
                "INSERT OR IGNORE INTO account_roles(user_id, role, granted_at) VALUES (?, ?, ?)",
                (user_id, role, now),
            )
            return cur.rowcount == 1

    async def revoke_role(self, user_id: str, role: str) -> bool:
        async with self.transaction() as db:
            cur = await db.execute(
                "DELETE FROM account_roles WHERE user_id = ? AND role = ?", (user_id, role)
            )
            return cur.rowcount == 1

    async def grant_shop(self, user_id: str, shop_id: str, relation: str, *, now: float) -> bool:
        async with self.transaction() as db:
            cur = await db.execute(
                "INSERT OR IGNORE INTO account_shop_members(user_id, shop_id, relation, granted_at)"
                " VALUES (?, ?, ?, ?)",
                (user_id, shop_id, relation, now),
            )
            return cur.rowcount == 1

    async def revoke_shop(self, user_id: str, shop_id: str, relation: str) -> bool:
        async with self.transaction() as db:
            cur = await db.execute(
                "DELETE FROM account_shop_members WHERE user_id = ? AND shop_id = ? AND relation = ?",
                (user_id, shop_id, relation),
            )
            return cur.rowcount == 1

    # -- refresh families ------------------------------------------------------------------------

    async def create_family(
        self, *, family_id: str, user_id: str, jti: str, expires_at: float, now: float
    ) -> None:
        async with self.transaction() as db:
            await db.execute(
                "INSERT INTO auth_refresh_families(family_id, user_id, created_at, last_used_at)"
                " VALUES (?, ?, ?, ?)",
                (family_id, user_id, now, now),
            )
            await db.execute(
                "INSERT INTO auth_refresh_tokens(jti_hash, family_id, issued_at, expires_at)"
                " VALUES (?, ?, ?, ?)",
                (_sha256(jti), family_id, now, expires_at),
            )

    async def rotate_refresh(
        self, *, jti: str, new_jti: str, new_expires_at: float, now: float
    ) -> RotateResult:
        """Spend refresh token ``jti`` and record ``new_jti`` in its family, atomically.

        A token spent before (reuse) revokes the family in the same transaction, so two
        concurrent uses of one token cannot both succeed.
        """
        async with self.transaction() as db:
            async with db.execute(
                "SELECT t.family_id, t.used_at, f.user_id, f.revoked_at FROM auth_refresh_tokens t"
                " JOIN auth_refresh_families f ON f.family_id = t.family_id WHERE t.jti_hash = ?",
                (_sha256(jti),),
            ) as cur:
                row = await cur.fetchone()
            if row is None:
                return RotateResult("unknown")
            family_id, used_at, user_id, revoked_at = row
            if revoked_at is not None:
                return RotateResult("revoked", family_id, user_id)
            if used_at is not None:
                await db.execute(
                    "UPDATE auth_refresh_families SET revoked_at = ?, revoke_reason = 'refresh_reuse'"
                    " WHERE family_id = ?",
                    (now, family_id),
                )
                return RotateResult("reused", family_id, user_id)
            await db.execute(
                "UPDATE auth_refresh_tokens SET used_at = ? WHERE jti_hash = ?", (now, _sha256(jti))
            )
            await db.execute(
                "INSERT INTO auth_refresh_tokens(jti_hash, family_id, issued_at, expires_at)"
                " VALUES (?, ?, ?, ?)",
                (_sha256(new_jti), family_id, now, new_expires_at),
            )
            await db.execute(
                "UPDATE auth_refresh_families SET last_used_at = ? WHERE family_id = ?", (now, family_id)
            )
            return RotateResult("ok", family_id, user_id)

    async def revoke_family(self, family_id: str, *, reason: str, now: float) -> bool:
        async with self.transaction() as db:
            cur = await db.execute(
                "UPDATE auth_refresh_families SET revoked_at = ?, revoke_reason = ?"
                " WHERE family_id = ? AND revoked_at IS NULL",
                (now, reason, family_id),
            )
            return cur.rowcount == 1

    async def revoke_user_families(self, user_id: str, *, reason: str, now: float) -> list[str]:
        async with self.transaction() as db:
            async with db.execute(
                "SELECT family_id FROM auth_refresh_families WHERE user_id = ? AND revoked_at IS NULL",
                (user_id,),
            ) as cur:
                families = [r[0] for r in await cur.fetchall()]
            await db.execute(
                "UPDATE auth_refresh_families SET revoked_at = ?, revoke_reason = ?"
                " WHERE user_id = ? AND revoked_at IS NULL",
                (now, reason, user_id),
            )
        return families

    async def revoked_families_since(self, since: float) -> list[tuple[str, float]]:
        rows = await self._fetchall(
            "SELECT family_id, revoked_at FROM auth_refresh_families WHERE revoked_at >= ?", (since,)
        )
        return [(r[0], r[1]) for r in rows]

    async def family_status(self, family_id: str) -> tuple[str, float | None] | None:
        """``(user_id, revoked_at)`` of a family, or ``None`` if unknown."""
        return await self._fetchone(
            "SELECT user_id, revoked_at FROM auth_refresh_families WHERE family_id = ?", (family_id,)
        )

    # -- password resets -------------------------------------------------------------------------

    async def add_reset(self, *, token: str, user_id: str, expires_at: float, now: float) -> None:
        async with self.transaction() as db:
            await db.execute(
                "INSERT INTO auth_password_resets(token_hash, user_id, created_at, expires_at)"
                " VALUES (?, ?, ?, ?)",
                (_sha256(token), user_id, now, expires_at),
            )

    async def consume_reset(self, token: str, *, now: float) -> str | None:
        """Mark a live reset token used and return its user; ``None`` if unknown/expired/used.
        Every other outstanding reset token of that user is spent with it."""
        async with self.transaction() as db:
            async with db.execute(
                "SELECT user_id FROM auth_password_resets WHERE token_hash = ?"
                " AND used_at IS NULL AND expires_at > ?",
                (_sha256(token), now),
            ) as cur:
                row = await cur.fetchone()
            if row is None:
                return None
            user_id: str = row[0]
            await db.execute(
                "UPDATE auth_password_resets SET used_at = ? WHERE user_id = ? AND used_at IS NULL",
                (now, user_id),
            )
            return user_id

    # -- events ----------------------------------------------------------------------------------

    async def add_event(
        self, kind: str, *, user_id: str | None = None, family_id: str | None = None, origin: str, now: float
    ) -> None:
        async with self._lock:
            await self.conn.execute(
                "INSERT INTO account_events(kind, user_id, family_id, origin, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (kind, user_id, family_id, origin, now),
            )

    async def max_event_id(self) -> int:
        row = await self._fetchone("SELECT COALESCE(MAX(id), 0) FROM account_events")
        return int(row[0]) if row else 0

    async def events_after(self, event_id: int, limit: int = 1000) -> list[AccountEvent]:
        rows = await self._fetchall(
            "SELECT id, kind, user_id, family_id, origin, created_at FROM account_events WHERE id > ?"
            " ORDER BY id LIMIT ?",
            (event_id, limit),
        )
        return [AccountEvent(*r) for r in rows]

    # -- housekeeping and stats ------------------------------------------------------------------

    async def prune(self, *, now: float, keep_s: float) -> None:
        """Delete rows that can no longer matter: expired refresh tokens and resets, families
        with no live token, old events. ``keep_s`` must exceed every token lifetime."""
        cutoff = now - keep_s
        async with self.transaction() as db:
            await db.execute("DELETE FROM auth_refresh_tokens WHERE expires_at < ?", (cutoff,))
            await db.execute(
                "DELETE FROM auth_refresh_families WHERE last_used_at < ? AND NOT EXISTS"
                " (SELECT 1 FROM auth_refresh_tokens t WHERE t.family_id = auth_refresh_families.family_id)",
                (cutoff,),
            )
            await db.execute("DELETE FROM auth_password_resets WHERE expires_at < ?", (cutoff,))
            await db.execute("DELETE FROM account_events WHERE created_at < ?", (cutoff,))

    async def counts(self, *, now: float) -> dict[str, int]:
        row = await self._fetchone(
            "SELECT COUNT(*), COUNT(disabled_at),"
            " (SELECT COUNT(DISTINCT user_id) FROM account_roles WHERE role = 'admin'),"
            " (SELECT COUNT(*) FROM auth_refresh_families f WHERE f.revoked_at IS NULL AND EXISTS"
            "   (SELECT 1 FROM auth_refresh_tokens t WHERE t.family_id = f.family_id"
            "    AND t.used_at IS NULL AND t.expires_at > ?))"
            " FROM account_users",
            (now,),
        )
        total, disabled, admins, sessions = row or (0, 0, 0, 0)
        return {
            "users": int(total),
            "users_active": int(total) - int(disabled),
            "users_disabled": int(disabled),
            "admins": int(admins),
            "sessions_active": int(sessions),
        }


# --------------------------------------------------------------------------------------------
# hooks

FamilyRevokedCallback = Callable[[str, str], Awaitable[None] | None]
UserCallback = Callable[[str], Awaitable[None] | None]


@dataclass
class AuthHooks:
    """Callbacks for other relay components (the websocket layer closes connections here).

    * ``on_family_revoked(family_id, user_id)``: a refresh family was revoked (logout, refresh
      reuse, password reset, account disabled); close connections whose token has ``fam ==
      family_id``.
    * ``on_user_disabled(user_id)``: the account was disabled; close all its connections.
    * ``on_user_changed(user_id)``: roles or shop grants changed; re-check read rights.

    Callbacks may be plain functions or coroutines; an exception in one is logged and does not
    stop the others.
    """

    on_family_revoked: list[FamilyRevokedCallback] = field(default_factory=list)
    on_user_disabled: list[UserCallback] = field(default_factory=list)
    on_user_changed: list[UserCallback] = field(default_factory=list)

    async def family_revoked(self, family_id: str, user_id: str) -> None:
        await self._run(self.on_family_revoked, family_id, user_id)

    async def user_disabled(self, user_id: str) -> None:
        await self._run(self.on_user_disabled, user_id)

    async def user_changed(self, user_id: str) -> None:
        await self._run(self.on_user_changed, user_id)

    @staticmethod
    async def _run(callbacks: Iterable[Callable[..., Awaitable[None] | None]], *args: str) -> None:
        for callback in list(callbacks):
            try:
                result = callback(*args)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception(
                    "auth hook failed", extra={"hook": getattr(callback, "__name__", repr(callback))}
                )


# --------------------------------------------------------------------------------------------
# service


class AccountService:
    """The auth flows, over the store, the key store, the token service and the mailer."""

    def __init__(
        self,
        config: RelayConfig,
        *,
        store: AccountStore,
        keys: KeyStore,
        tokens: TokenService,
        hasher: PasswordHasher,
        mailer: Mailer,
        metrics: MetricsRegistry,
        hooks: AuthHooks | None = None,
        origin: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.store = store
        self.keys = keys
        self.tokens = tokens
        self.hasher = hasher
        self.mailer = mailer
        self.metrics = metrics
        self.hooks = hooks or AuthHooks()
        self.origin = origin or f"{os.uname().nodename}:{os.getpid()}:{secrets.token_hex(4)}"
        self.clock = clock
        self._background: set[asyncio.Task[None]] = set()
        self._event_cursor = 0
        self._last_prune = 0.0
        self._m_logins = metrics.counter("relay_auth_logins_total", "Login attempts by result", ["result"])
        self._m_refresh = metrics.counter(
            "relay_auth_refreshes_total", "Refresh attempts by result", ["result"]
        )
        self._m_failures = metrics.counter(
            "relay_auth_failures_total", "Authentication failures by reason", ["reason"]
        )
        self._m_revoked = metrics.counter(
            "relay_auth_families_revoked_total", "Refresh families revoked by reason", ["reason"]
        )
        self._m_hash = metrics.histogram(
            "relay_password_hash_seconds",
            "Time to hash or verify a password",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
        )
        self._m_resets = metrics.counter("relay_auth_password_resets_total", "Password reset steps", ["step"])

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load revocation state, remember where the event log ends, prepare the dummy hash."""
        # Cursor first, state second: a change committed in between is both loaded and replayed
        # (harmless), never neither.
        self._event_cursor = await self.store.max_event_id()
        now = self.clock()
        horizon = self.tokens.revocations.horizon_s
        for family_id, revoked_at in await self.store.revoked_families_since(now - horizon):
            self.tokens.revocations.revoke_family(family_id, revoked_at)
        for user_id in await self.store.disabled_user_ids():
            self.tokens.revocations.disable_user(user_id)
        await self.hasher.warm_up()

    async def aclose(self, timeout_s: float = 5.0) -> None:
        """Let background mail finish (bounded), then stop."""
        if self._background:
            await asyncio.wait(list(self._background), timeout=timeout_s)
            for task in self._background:
                task.cancel()

    def count_failure(self, reason: str) -> None:
        """Count an authentication failure (also used by the HTTP layer for bearer tokens)."""
        self._m_failures.labels(reason=reason).inc()

    # -- registration and users ------------------------------------------------------------------

    def check_password_policy(self, password: str) -> None:
        if not isinstance(password, str):
            raise WeakPassword()
        if len(password) < self.config.password_min_length:
            raise WeakPassword(f"passwords need at least {self.config.password_min_length} characters")
        if len(password) > self.config.password_max_length:
            raise WeakPassword(f"passwords are at most {self.config.password_max_length} characters")

    @staticmethod
    def clean_display_name(name: str) -> str:
        name = unicodedata.normalize("NFC", name or "").strip()
        if not 1 <= len(name) <= 100 or any(unicodedata.category(c) in ("Cc", "Cf") for c in name):
            raise InvalidInput("display names are 1-100 printable characters")
        return name

    async def _hash(self, password: str) -> str:
        start = time.perf_counter()
        try:
            return await self.hasher.hash(password)
        finally:
            self._m_hash.observe(time.perf_counter() - start)

    async def register(
        self, email: str, password: str, display_name: str, *, roles: Iterable[str] = ()
    ) -> User:
        """Create an account; raises :class:`EmailTaken`, :class:`InvalidEmail`, ..."""
        email = normalize_email(email)
        display_name = self.clean_display_name(display_name)
        self.check_password_policy(password)
        password_hash = await self._hash(password)
        user_id = await self.store.create_user(
            email=email, display_name=display_name, password_hash=password_hash, roles=roles, now=self.clock()
        )
        user = await self.store.get_user(user_id)
        assert user is not None
        log_event(log, "user registered", user_id=user_id)
        return user

    async def require_user(self, email: str) -> User:
        found = await self.store.get_user_with_hash(normalize_email(email))
        if found is None:
            raise UserNotFound()
        return found[0]

    async def set_disabled(self, email: str, disabled: bool) -> User:
        """Disable (revoking every session) or re-enable an account."""
        user = await self.require_user(email)
        now = self.clock()
        await self.store.set_disabled(user.user_id, disabled, now=now)
        if disabled:
            self.tokens.revocations.disable_user(user.user_id)
            await self.store.add_event(EV_USER_DISABLED, user_id=user.user_id, origin=self.origin, now=now)
            await self.revoke_all_sessions(user.user_id, reason="account_disabled")
            await self.hooks.user_disabled(user.user_id)
        else:
            self.tokens.revocations.enable_user(user.user_id)
            await self.store.add_event(EV_USER_ENABLED, user_id=user.user_id, origin=self.origin, now=now)
        log_event(log, "user disabled" if disabled else "user enabled", user_id=user.user_id)
        updated = await self.store.get_user(user.user_id)
        assert updated is not None
        return updated

    async def grant(
        self, email: str, *, role: str | None = None, owner: str | None = None, staff: str | None = None
    ) -> User:
        """Grant a role or a shop relation; the next device certificate carries it."""
        user = await self.require_user(email)
        now = self.clock()
        if role is not None:
            if role not in KNOWN_ROLES:
                raise InvalidInput(f"unknown role {role!r}")
            await self.store.grant_role(user.user_id, role, now=now)
        if owner is not None:
            await self.store.grant_shop(user.user_id, validate_shop_id(owner), SHOP_OWNER, now=now)
        if staff is not None:
            await self.store.grant_shop(user.user_id, validate_shop_id(staff), SHOP_STAFF, now=now)
        await self.store.add_event(EV_USER_CHANGED, user_id=user.user_id, origin=self.origin, now=now)
        await self.hooks.user_changed(user.user_id)
        log_event(log, "user granted", user_id=user.user_id, role=role, owner=owner, staff=staff)
        updated = await self.store.get_user(user.user_id)
        assert updated is not None
        return updated

    # -- login, refresh, logout ------------------------------------------------------------------

    async def authenticate(self, email: str, password: str) -> User:
        """Check credentials; same error and similar work for unknown email and wrong password."""
        try:
            email = normalize_email(email)
        except InvalidEmail:
            email = ""
        found = await self.store.get_user_with_hash(email) if email else None
        if not isinstance(password, str) or len(password) > self.config.password_max_length:
            password = ""
        start = time.perf_counter()
        if found is None:
            await self.hasher.verify_dummy(password)
            ok = False
        else:
            ok = await self.hasher.verify(password, found[1])
        self._m_hash.observe(time.perf_counter() - start)
        if found is None or not ok:
            self._m_logins.labels(result="invalid_credentials").inc()
            self.count_failure("invalid_credentials")
            raise InvalidCredentials()
        user, stored_hash = found
        if user.disabled:
            self._m_logins.labels(result="disabled").inc()
            self.count_failure("account_disabled")
            raise AccountDisabled()
        if self.hasher.needs_rehash(stored_hash):
            new_hash = await self._hash(password)
            if await self.store.replace_password_hash(
                user.user_id, new_hash, old_hash=stored_hash, now=self.clock()
            ):
                log_event(log, "password rehashed", user_id=user.user_id, scheme=_scheme(stored_hash))
        return user

    async def login(self, email: str, password: str, device_public_key: bytes | None = None) -> Session:
        user = await self.authenticate(email, password)
        family_id = secrets.token_urlsafe(16)
        refresh = self.tokens.issue(REFRESH, user.user_id, family_id)
        await self.store.create_family(
            family_id=family_id,
            user_id=user.user_id,
            jti=refresh.claims.jti,
            expires_at=refresh.claims.exp,
            now=self.clock(),
        )
        access = self.tokens.issue(ACCESS, user.user_id, family_id)
        self._m_logins.labels(result="ok").inc()
        log_event(log, "login", user_id=user.user_id, family_id=family_id)
        return Session(access, refresh, user, self._certificate(user, device_public_key))

    async def refresh(self, refresh_token: str, device_public_key: bytes | None = None) -> Session:
        """Rotate a refresh token. Raises ``TokenError`` subclasses for bad tokens,
        :class:`RefreshTokenReused`, :class:`SessionRevoked` or :class:`AccountDisabled`."""
        try:
            claims = self.tokens.decode(refresh_token, REFRESH)
        except TokenError as e:
            self._m_refresh.labels(result=e.code).inc()
            self.count_failure(e.code)
            raise
        new_refresh = self.tokens.issue(REFRESH, claims.sub, claims.fam)
        result = await self.store.rotate_refresh(
            jti=claims.jti,
            new_jti=new_refresh.claims.jti,
            new_expires_at=new_refresh.claims.exp,
            now=self.clock(),
        )
        if result.status != "ok" or result.family_id != claims.fam or result.user_id != claims.sub:
            self._m_refresh.labels(result=result.status).inc()
            self.count_failure(f"refresh_{result.status}")
            if result.status == "reused" and result.family_id and result.user_id:
                log_event(
                    log,
                    "refresh token reuse: family revoked",
                    user_id=result.user_id,
                    family_id=result.family_id,
                )
                await self._family_revoked(result.family_id, result.user_id, "refresh_reuse", record=True)
                raise RefreshTokenReused()
            raise SessionRevoked()
        user = await self.store.get_user(claims.sub)
        if user is None or user.disabled:
            await self.revoke_family(claims.fam, claims.sub, reason="account_disabled")
            self._m_refresh.labels(result="disabled").inc()
            raise AccountDisabled()
        access = self.tokens.issue(ACCESS, claims.sub, claims.fam)
        self._m_refresh.labels(result="ok").inc()
        return Session(access, new_refresh, user, self._certificate(user, device_public_key))

    async def current_user(self, claims: Claims) -> User:
        """The user behind verified access-token claims; refuses disabled or deleted users."""
        user = await self.store.get_user(claims.sub)
        if user is None or user.disabled:
            raise TokenRevoked("account disabled")
        return user

    async def logout(self, claims: Claims) -> None:
        await self.revoke_family(claims.fam, claims.sub, reason="logout")
        log_event(log, "logout", user_id=claims.sub, family_id=claims.fam)

    async def revoke_family(self, family_id: str, user_id: str, *, reason: str) -> None:
        """Revoke one family (no-op if it already was) and tell everyone who cares."""
        if await self.store.revoke_family(family_id, reason=reason, now=self.clock()):
            await self._family_revoked(family_id, user_id, reason, record=True)

    async def revoke_all_sessions(self, user_id: str, *, reason: str) -> int:
        families = await self.store.revoke_user_families(user_id, reason=reason, now=self.clock())
        for family_id in families:
            await self._family_revoked(family_id, user_id, reason, record=True)
        return len(families)

    async def _family_revoked(self, family_id: str, user_id: str, reason: str, *, record: bool) -> None:
        now = self.clock()
        self.tokens.revocations.revoke_family(family_id, now)
        self._m_revoked.labels(reason=reason).inc()
        if record:
            await self.store.add_event(
                EV_FAMILY_REVOKED, user_id=user_id, family_id=family_id, origin=self.origin, now=now
            )
        await self.hooks.family_revoked(family_id, user_id)

    def _certificate(self, user: User, device_public_key: bytes | None) -> bytes | None:
        if device_public_key is None:
            return None
        return issue_device_certificate(
            user, device_public_key, keys=self.keys, ttl_s=self.config.certificate_ttl_s, now=self.clock()
        )

    # -- password reset --------------------------------------------------------------------------

    def request_password_reset(self, email: str) -> None:
        """Start a reset in the background and return at once, whether or not the account
        exists, so neither the answer nor its timing enumerates accounts."""
        self._m_resets.labels(step="requested").inc()
        self._spawn(self._send_reset(email))

    async def _send_reset(self, email: str) -> None:
        try:
            email = normalize_email(email)
        except InvalidEmail:
            return
        found = await self.store.get_user_with_hash(email)
        if found is None or found[0].disabled:
            log_event(log, "password reset for unknown or disabled account ignored")
            return
        user = found[0]
        token = secrets.token_urlsafe(32)
        now = self.clock()
        await self.store.add_reset(
            token=token, user_id=user.user_id, expires_at=now + self.config.reset_ttl_s, now=now
        )
        minutes = self.config.reset_ttl_s // 60
        link = ""
        if self.config.public_url:
            link = f"\nOr open: {self.config.public_url.rstrip('/')}/reset-password#token={token}\n"
        body = (
            f"Hello {user.display_name},\n\n"
            f"Someone asked to reset the password of your QuickSlot account ({user.email}).\n"
            f"If it was you, use this reset token within {minutes} minutes:\n\n"
            f"Reset token: {token}\n{link}\n"
            "It works once. If you did not ask for this, ignore this message; your password is unchanged.\n"
        )
        message = build_message(
            sender=self.config.mail_from, to=user.email, subject="Reset your QuickSlot password", body=body
        )
        await self.mailer.send(message)
        self._m_resets.labels(step="sent").inc()
        log_event(log, "password reset sent", user_id=user.user_id)

    async def confirm_password_reset(self, token: str, new_password: str) -> None:
        """Set a new password with a single-use token; revokes every session of the account."""
        self.check_password_policy(new_password)
        if not isinstance(token, str) or not 16 <= len(token) <= 128:
            raise InvalidResetToken()
        user_id = await self.store.consume_reset(token, now=self.clock())
        if user_id is None:
            self.count_failure("invalid_reset_token")
            raise InvalidResetToken()
        new_hash = await self._hash(new_password)
        await self.store.replace_password_hash(user_id, new_hash, old_hash=None, now=self.clock())
        revoked = await self.revoke_all_sessions(user_id, reason="password_reset")
        self._m_resets.labels(step="confirmed").inc()
        log_event(log, "password reset confirmed", user_id=user_id, sessions_revoked=revoked)

    # -- operator changes from other processes ---------------------------------------------------

    async def poll_events_once(self) -> int:
        """Apply events other processes (the CLI) recorded since the last poll; returns count."""
        events = await self.store.events_after(self._event_cursor)
        for ev in events:
            self._event_cursor = ev.id
            if ev.origin == self.origin:
                continue
            if ev.kind == EV_FAMILY_REVOKED and ev.family_id and ev.user_id:
                self.tokens.revocations.revoke_family(ev.family_id, ev.created_at)
                await self.hooks.family_revoked(ev.family_id, ev.user_id)
            elif ev.kind == EV_USER_DISABLED and ev.user_id:
                self.tokens.revocations.disable_user(ev.user_id)
                await self.hooks.user_disabled(ev.user_id)
            elif ev.kind == EV_USER_ENABLED and ev.user_id:
                self.tokens.revocations.enable_user(ev.user_id)
            elif ev.kind == EV_USER_CHANGED and ev.user_id:
                await self.hooks.user_changed(ev.user_id)
            elif ev.kind == EV_KEYS_ROTATED:
                # Reading key files takes a file lock: keep it off the event loop.
                await asyncio.to_thread(self.keys.reload)
                log_event(log, "signing keys reloaded", active_kid=self.keys.active_kid)
        return len(events)

    async def maintenance(self) -> None:
        """Periodic upkeep: forget expired revocations, prune old rows (hourly)."""
        now = self.clock()
        self.tokens.revocations.prune(now)
        if now - self._last_prune > 3600:
            self._last_prune = now
            keep = max(self.config.refresh_ttl_s, self.config.access_ttl_s, self.config.reset_ttl_s, 86400)
            await self.store.prune(now=now, keep_s=keep + self.config.clock_skew_s)

    async def run_event_poller(self, stop: asyncio.Event) -> None:
        """Poll ``account_events`` every ``events_poll_s`` until ``stop`` is set."""
        while not stop.is_set():
            try:
                await self.poll_events_once()
                if await asyncio.to_thread(self.keys.reload_if_changed):
                    log_event(log, "signing keys reloaded", active_kid=self.keys.active_kid)
                await self.maintenance()
            except Exception:
                log.exception("account event poll failed")
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.config.events_poll_s)
            except TimeoutError:
                pass

    async def record_keys_rotated(self) -> None:
        await self.store.add_event(EV_KEYS_ROTATED, origin=self.origin, now=self.clock())

    # -- misc ------------------------------------------------------------------------------------

    def _spawn(self, coro: Awaitable[None]) -> None:
        async def runner() -> None:
            try:
                await coro
            except Exception:
                log.exception("background task failed")

        task = asyncio.get_running_loop().create_task(runner())
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _scheme(encoded: str) -> str:
    if encoded.startswith("$argon2id$"):
        return "argon2id"
    if encoded.startswith(("$pbkdf2-sha256$", "pbkdf2_sha256$")):
        return "pbkdf2-sha256"
    return "unknown"


# --------------------------------------------------------------------------------------------
# assembly


@dataclass
class AuthComponents:
    """Everything auth needs, opened together (by the app's lifespan and by the CLI)."""

    config: RelayConfig
    epoch: str
    store: AccountStore
    keys: KeyStore
    tokens: TokenService
    service: AccountService

    async def aclose(self) -> None:
        await self.service.aclose()
        await self.store.close()


async def open_auth(
    config: RelayConfig,
    *,
    metrics: MetricsRegistry | None = None,
    hooks: AuthHooks | None = None,
    origin: str | None = None,
    warm_up: bool = True,
) -> AuthComponents:
    """Prepare the data directory and open the store, keys, tokens and service."""
    epoch = await asyncio.to_thread(prepare_data_dir, config)
    keys = await asyncio.to_thread(KeyStore.open, config.keys_dir)
    store = await AccountStore.open(config.db_path, busy_timeout_ms=config.sqlite_busy_timeout_ms)
    try:
        tokens = TokenService(
            keys,
            issuer=config.issuer,
            audience=config.audience,
            access_ttl_s=config.access_ttl_s,
            refresh_ttl_s=config.refresh_ttl_s,
            leeway_s=config.clock_skew_s,
            # Revoked families matter until the last access token issued before revocation expires.
            revocations=RevocationState(config.access_ttl_s + 2 * config.clock_skew_s),
        )
        hasher = PasswordHasher(
            Argon2Params(config.argon2_memory_kib, config.argon2_iterations, config.argon2_lanes),
            concurrency=config.hash_concurrency,
        )
        service = AccountService(
            config,
            store=store,
            keys=keys,
            tokens=tokens,
            hasher=hasher,
            mailer=make_mailer(config),
            metrics=metrics or MetricsRegistry(),
            hooks=hooks,
            origin=origin,
        )
        if warm_up:
            await service.start()
        else:
            service._event_cursor = await store.max_event_id()
    except BaseException:
        await store.close()
        raise
    return AuthComponents(config=config, epoch=epoch, store=store, keys=keys, tokens=tokens, service=service)
