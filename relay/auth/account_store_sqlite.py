"""The account tables in the relay's SQLite file: the one-node, embedded :class:`AccountStore`.

Other relay components open their own connections to the same file, so the schema uses
``CREATE TABLE IF NOT EXISTS``, the connection sets a busy timeout, and every multi-statement
change runs in one ``BEGIN IMMEDIATE`` transaction guarded by an asyncio lock (one aiosqlite
connection is shared by all coroutines, and interleaving two coroutines' statements inside one
transaction would mix their changes). SQLite serialises writers, so event ids are handed out in
commit order and a reader's cursor can never jump over a later-committing event.
"""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from relay.auth.account_types import (
    COUNTS_SQL,
    SHOP_OWNER,
    SHOP_STAFF,
    AccountEvent,
    EmailTaken,
    RotateResult,
    User,
    counts_from_row,
    refresh_verdict,
    sha256_text as _sha256,
)

SCHEMA_VERSION = 1

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
CREATE TABLE IF NOT EXISTS auth_family_certs (
    cert_id    TEXT PRIMARY KEY,
    family_id  TEXT NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS auth_family_certs_family ON auth_family_certs(family_id);
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


class SQLiteAccountStore:
    """The account tables, through one aiosqlite connection."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self.conn = conn
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path, *, busy_timeout_ms: int = 5000) -> SQLiteAccountStore:
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
            verdict = refresh_verdict(row)
            family_id = verdict.family_id
            if verdict.status == "reused":
                await db.execute(
                    "UPDATE auth_refresh_families SET revoked_at = ?, revoke_reason = 'refresh_reuse'"
                    " WHERE family_id = ?",
                    (now, family_id),
                )
            if verdict.status != "ok":
                return verdict
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
            return verdict

    async def add_family_cert(self, family_id: str, cert_id: str, *, expires_at: float) -> None:
        async with self.transaction() as db:
            await db.execute(
                "INSERT INTO auth_family_certs(cert_id, family_id, expires_at) VALUES (?, ?, ?)"
                " ON CONFLICT(cert_id) DO NOTHING",
                (cert_id, family_id, expires_at),
            )

    async def family_cert_ids(self, family_id: str, *, now: float) -> list[str]:
        rows = await self._fetchall(
            "SELECT cert_id FROM auth_family_certs WHERE family_id = ? AND expires_at > ?", (family_id, now)
        )
        return [str(r[0]) for r in rows]

    async def revoked_cert_ids(self, *, now: float) -> list[str]:
        rows = await self._fetchall(
            "SELECT c.cert_id FROM auth_family_certs c JOIN auth_refresh_families f"
            " ON f.family_id = c.family_id WHERE f.revoked_at IS NOT NULL AND c.expires_at > ?",
            (now,),
        )
        return [str(r[0]) for r in rows]

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

    async def listen(self, wake: Callable[[], None]) -> None:
        """SQLite cannot push: other processes' events arrive with the next poll."""

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
            await db.execute("DELETE FROM auth_family_certs WHERE expires_at < ?", (now,))

    async def counts(self, *, now: float) -> dict[str, int]:
        return counts_from_row(await self._fetchone(COUNTS_SQL.format(now="?"), (now,)))
