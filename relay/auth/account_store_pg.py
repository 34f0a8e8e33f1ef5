"""The account tables in PostgreSQL (asyncpg): the :class:`AccountStore` several relay nodes share.

Same contract as the SQLite store; what differs is how concurrency is made safe, since writers on
other nodes run truly in parallel here:

* Refresh rotation locks the token and family rows (``SELECT ... FOR UPDATE``). Two nodes given
  the same refresh token at once: the second waits for the first's commit, then re-reads the row
  (READ COMMITTED re-checks locked rows), sees it spent and revokes the family: exactly one
  succeeds. A logout's ``UPDATE`` of the family row waits on the same lock, so a rotation cannot
  slip a live token into a family revoked under it.
* Single-use resets and revocations are one ``UPDATE ... WHERE used_at IS NULL`` /
  ``revoked_at IS NULL ... RETURNING``: the row lock decides the one winner.
* ``account_events`` ids come from a sequence, and sequence values are handed out at insert, not
  at commit: event 7 could become visible before event 6, a reader would move its cursor to 7,
  and 6 would be skipped forever. Inserts therefore take a transaction-scoped advisory lock, so
  the next id is only drawn after the previous inserter committed; events are rare (logouts,
  operator changes), so serialising them costs nothing that matters.
* The insert also sends ``NOTIFY quickslot_account_events`` in its transaction (delivered only
  if it commits). :meth:`listen` keeps one dedicated connection LISTENing and wakes the event
  reader on each notification; the connection is re-opened after a failure, and every
  (re)connect wakes the reader too, so nothing sent while it was down is missed for longer than
  the reader's poll interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import asyncpg

from relay.auth.account_schema_pg import LOCK_EVENTS, migrate
from relay.auth.account_types import (
    COUNTS_SQL,
    AccountEvent,
    EmailTaken,
    RotateResult,
    StoreUnavailable,
    User,
    counts_from_row,
    refresh_verdict,
    sha256_text as _sha256,
)
from relay.ops.config import redact_url
from relay.ops.logging import get_logger, log_event
from relay.store.pg_migrations import load_or_create_epoch

log = get_logger(__name__)

CHANNEL = "quickslot_account_events"
_LISTEN_RETRY_S = (0.1, 0.25, 0.5, 1.0, 2.0)

_USER_SELECT = """
SELECT u.user_id, u.email, u.display_name, u.created_at, u.disabled_at, u.password_hash,
       ARRAY(SELECT r.role FROM account_roles r WHERE r.user_id = u.user_id ORDER BY r.role) AS roles,
       ARRAY(SELECT s.shop_id FROM account_shop_members s
             WHERE s.user_id = u.user_id AND s.relation = 'owner' ORDER BY s.shop_id) AS owner_of,
       ARRAY(SELECT s.shop_id FROM account_shop_members s
             WHERE s.user_id = u.user_id AND s.relation = 'staff' ORDER BY s.shop_id) AS staff_of
FROM account_users u
"""


def _user(row: asyncpg.Record) -> User:
    return User(
        user_id=row["user_id"],
        email=row["email"],
        display_name=row["display_name"],
        roles=tuple(row["roles"]),
        owner_of=tuple(row["owner_of"]),
        staff_of=tuple(row["staff_of"]),
        created_at=row["created_at"],
        disabled=row["disabled_at"] is not None,
    )


#: Errors that mean "the database is not reachable now", not "this request is wrong".
UNREACHABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
)

_T = TypeVar("_T")


def _unavailable_as_503(cls: type[_T]) -> type[_T]:
    """Turn a lost database into :class:`StoreUnavailable` in every public coroutine method, so
    clients get ``503 store_unavailable`` with ``Retry-After`` (a load balancer or client retries
    that; a bare 500 says "bug") and the log says what happened instead of a driver traceback."""

    def wrap(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(fn)
        async def guarded(*args: Any, **kwargs: Any) -> Any:
            try:
                return await fn(*args, **kwargs)
            except UNREACHABLE as e:
                log_event(log, "account_db_unreachable", logging.WARNING, error=repr(e))
                raise StoreUnavailable(
                    "The account database is unreachable; try again.", retry_after_s=1
                ) from e

        return guarded

    for name, member in list(vars(cls).items()):
        if (
            not name.startswith("_")
            and name not in ("open", "close", "listen")
            and inspect.iscoroutinefunction(member)
        ):
            setattr(cls, name, wrap(member))
    return cls


@_unavailable_as_503
class PostgresAccountStore:
    """The account tables through an asyncpg pool; see the module docstring for the locking."""

    def __init__(self, pool: asyncpg.Pool, dsn: str) -> None:
        self.pool = pool
        self._dsn = dsn
        self._listener: asyncio.Task[None] | None = None
        #: The database's epoch, the one the document store announces too (``relay_meta``).
        self.epoch = ""

    @classmethod
    async def open(cls, dsn: str, *, min_size: int = 1, max_size: int = 8) -> PostgresAccountStore:
        """Apply pending migrations on a connection of their own, then open the pool."""
        try:
            conn = await asyncpg.connect(dsn, timeout=30)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
            # The operator reads this line (CLI message, relay start log): say where and why.
            raise StoreUnavailable(f"cannot reach the account database {redact_url(dsn)}: {e}") from e
        try:
            applied = await migrate(conn)
            epoch = await load_or_create_epoch(conn)
        finally:
            await conn.close()
        log_event(log, "account schema ready", applied=applied)
        pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, command_timeout=30)
        store = cls(pool, dsn)
        store.epoch = epoch
        return store

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        await self.pool.close()

    # -- users -----------------------------------------------------------------------------------

    async def create_user(
        self, *, email: str, display_name: str, password_hash: str, roles: Iterable[str] = (), now: float
    ) -> str:
        user_id = uuid.uuid4().hex
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                await conn.execute(
                    "INSERT INTO account_users(user_id, email, display_name, password_hash, created_at,"
                    " updated_at) VALUES ($1, $2, $3, $4, $5, $5)",
                    user_id,
                    email,
                    display_name,
                    password_hash,
                    now,
                )
                for role in roles:
                    await conn.execute(
                        "INSERT INTO account_roles(user_id, role, granted_at) VALUES ($1, $2, $3)"
                        " ON CONFLICT DO NOTHING",
                        user_id,
                        role,
                        now,
                    )
        except asyncpg.UniqueViolationError as e:
            if e.constraint_name == "account_users_email_key":
                raise EmailTaken() from None
            raise
        return user_id

    async def get_user(self, user_id: str) -> User | None:
        row = await self.pool.fetchrow(_USER_SELECT + " WHERE u.user_id = $1", user_id)
        return _user(row) if row else None

    async def get_user_with_hash(self, email: str) -> tuple[User, str] | None:
        row = await self.pool.fetchrow(_USER_SELECT + " WHERE u.email = $1", email)
        return (_user(row), row["password_hash"]) if row else None

    async def list_users(self) -> list[User]:
        return [_user(r) for r in await self.pool.fetch(_USER_SELECT + " ORDER BY u.created_at, u.email")]

    async def replace_password_hash(
        self, user_id: str, new_hash: str, *, old_hash: str | None, now: float
    ) -> bool:
        """Store ``new_hash``; with ``old_hash``, only if the stored hash is still that one."""
        if old_hash is None:
            status = await self.pool.execute(
                "UPDATE account_users SET password_hash = $1, updated_at = $2 WHERE user_id = $3",
                new_hash,
                now,
                user_id,
            )
        else:
            status = await self.pool.execute(
                "UPDATE account_users SET password_hash = $1, updated_at = $2 WHERE user_id = $3"
                " AND password_hash = $4",
                new_hash,
                now,
                user_id,
                old_hash,
            )
        return _count(status) == 1

    async def set_disabled(self, user_id: str, disabled: bool, *, now: float) -> None:
        await self.pool.execute(
            "UPDATE account_users SET disabled_at = $1, updated_at = $2 WHERE user_id = $3",
            now if disabled else None,
            now,
            user_id,
        )

    async def disabled_user_ids(self) -> list[str]:
        rows = await self.pool.fetch("SELECT user_id FROM account_users WHERE disabled_at IS NOT NULL")
        return [r[0] for r in rows]

    async def grant_role(self, user_id: str, role: str, *, now: float) -> bool:
        status = await self.pool.execute(
            "INSERT INTO account_roles(user_id, role, granted_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            user_id,
            role,
            now,
        )
        return _count(status) == 1

    async def revoke_role(self, user_id: str, role: str) -> bool:
        status = await self.pool.execute(
            "DELETE FROM account_roles WHERE user_id = $1 AND role = $2", user_id, role
        )
        return _count(status) == 1

    async def grant_shop(self, user_id: str, shop_id: str, relation: str, *, now: float) -> bool:
        status = await self.pool.execute(
            "INSERT INTO account_shop_members(user_id, shop_id, relation, granted_at)"
            " VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            user_id,
            shop_id,
            relation,
            now,
        )
        return _count(status) == 1

    async def revoke_shop(self, user_id: str, shop_id: str, relation: str) -> bool:
        status = await self.pool.execute(
            "DELETE FROM account_shop_members WHERE user_id = $1 AND shop_id = $2 AND relation = $3",
            user_id,
            shop_id,
            relation,
        )
        return _count(status) == 1

    # -- refresh families ------------------------------------------------------------------------

    async def create_family(
        self, *, family_id: str, user_id: str, jti: str, expires_at: float, now: float
    ) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO auth_refresh_families(family_id, user_id, created_at, last_used_at)"
                " VALUES ($1, $2, $3, $3)",
                family_id,
                user_id,
                now,
            )
            await conn.execute(
                "INSERT INTO auth_refresh_tokens(jti_hash, family_id, issued_at, expires_at)"
                " VALUES ($1, $2, $3, $4)",
                _sha256(jti),
                family_id,
                now,
                expires_at,
            )

    async def rotate_refresh(
        self, *, jti: str, new_jti: str, new_expires_at: float, now: float
    ) -> RotateResult:
        """Spend ``jti`` and record ``new_jti``; the row locks make concurrent uses exclusive."""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT t.family_id, t.used_at, f.user_id, f.revoked_at FROM auth_refresh_tokens t"
                " JOIN auth_refresh_families f ON f.family_id = t.family_id WHERE t.jti_hash = $1"
                " FOR UPDATE",
                _sha256(jti),
            )
            verdict = refresh_verdict(row)
            family_id = verdict.family_id
            if verdict.status == "reused":
                await conn.execute(
                    "UPDATE auth_refresh_families SET revoked_at = $1, revoke_reason = 'refresh_reuse'"
                    " WHERE family_id = $2",
                    now,
                    family_id,
                )
            if verdict.status != "ok":
                return verdict
            await conn.execute(
                "UPDATE auth_refresh_tokens SET used_at = $1 WHERE jti_hash = $2", now, _sha256(jti)
            )
            await conn.execute(
                "INSERT INTO auth_refresh_tokens(jti_hash, family_id, issued_at, expires_at)"
                " VALUES ($1, $2, $3, $4)",
                _sha256(new_jti),
                family_id,
                now,
                new_expires_at,
            )
            await conn.execute(
                "UPDATE auth_refresh_families SET last_used_at = $1 WHERE family_id = $2", now, family_id
            )
            return verdict

    async def add_family_cert(self, family_id: str, cert_id: str, *, expires_at: float) -> None:
        await self.pool.execute(
            "INSERT INTO auth_family_certs(cert_id, family_id, expires_at) VALUES ($1, $2, $3)"
            " ON CONFLICT (cert_id) DO NOTHING",
            cert_id,
            family_id,
            expires_at,
        )

    async def family_cert_ids(self, family_id: str, *, now: float) -> list[str]:
        rows = await self.pool.fetch(
            "SELECT cert_id FROM auth_family_certs WHERE family_id = $1 AND expires_at > $2", family_id, now
        )
        return [str(r[0]) for r in rows]

    async def revoked_cert_ids(self, *, now: float) -> list[str]:
        rows = await self.pool.fetch(
            "SELECT c.cert_id FROM auth_family_certs c JOIN auth_refresh_families f"
            " ON f.family_id = c.family_id WHERE f.revoked_at IS NOT NULL AND c.expires_at > $1",
            now,
        )
        return [str(r[0]) for r in rows]

    async def revoke_family(self, family_id: str, *, reason: str, now: float) -> bool:
        status = await self.pool.execute(
            "UPDATE auth_refresh_families SET revoked_at = $1, revoke_reason = $2"
            " WHERE family_id = $3 AND revoked_at IS NULL",
            now,
            reason,
            family_id,
        )
        return _count(status) == 1

    async def revoke_user_families(self, user_id: str, *, reason: str, now: float) -> list[str]:
        rows = await self.pool.fetch(
            "UPDATE auth_refresh_families SET revoked_at = $1, revoke_reason = $2"
            " WHERE user_id = $3 AND revoked_at IS NULL RETURNING family_id",
            now,
            reason,
            user_id,
        )
        return [r[0] for r in rows]

    async def revoked_families_since(self, since: float) -> list[tuple[str, float]]:
        rows = await self.pool.fetch(
            "SELECT family_id, revoked_at FROM auth_refresh_families WHERE revoked_at >= $1", since
        )
        return [(r[0], r[1]) for r in rows]

    async def family_status(self, family_id: str) -> tuple[str, float | None] | None:
        row = await self.pool.fetchrow(
            "SELECT user_id, revoked_at FROM auth_refresh_families WHERE family_id = $1", family_id
        )
        return (row[0], row[1]) if row else None

    # -- password resets -------------------------------------------------------------------------

    async def add_reset(self, *, token: str, user_id: str, expires_at: float, now: float) -> None:
        await self.pool.execute(
            "INSERT INTO auth_password_resets(token_hash, user_id, created_at, expires_at)"
            " VALUES ($1, $2, $3, $4)",
            _sha256(token),
            user_id,
            now,
            expires_at,
        )

    async def consume_reset(self, token: str, *, now: float) -> str | None:
        """Spend a live reset token (and the user's other outstanding ones); ``None`` if none."""
        async with self.pool.acquire() as conn, conn.transaction():
            user_id: str | None = await conn.fetchval(
                "UPDATE auth_password_resets SET used_at = $1 WHERE token_hash = $2"
                " AND used_at IS NULL AND expires_at > $1 RETURNING user_id",
                now,
                _sha256(token),
            )
            if user_id is None:
                return None
            await conn.execute(
                "UPDATE auth_password_resets SET used_at = $1 WHERE user_id = $2 AND used_at IS NULL",
                now,
                user_id,
            )
            return user_id

    # -- events ----------------------------------------------------------------------------------

    async def add_event(
        self, kind: str, *, user_id: str | None = None, family_id: str | None = None, origin: str, now: float
    ) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            # Ids in commit order (module docstring): the next inserter waits for this commit.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_EVENTS)
            event_id = await conn.fetchval(
                "INSERT INTO account_events(kind, user_id, family_id, origin, created_at)"
                " VALUES ($1, $2, $3, $4, $5) RETURNING id",
                kind,
                user_id,
                family_id,
                origin,
                now,
            )
            await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, str(event_id))

    async def max_event_id(self) -> int:
        return int(await self.pool.fetchval("SELECT COALESCE(MAX(id), 0) FROM account_events"))

    async def events_after(self, event_id: int, limit: int = 1000) -> list[AccountEvent]:
        rows = await self.pool.fetch(
            "SELECT id, kind, user_id, family_id, origin, created_at FROM account_events WHERE id > $1"
            " ORDER BY id LIMIT $2",
            event_id,
            limit,
        )
        return [AccountEvent(*r) for r in rows]

    async def listen(self, wake: Callable[[], None]) -> None:
        """Keep a LISTENing connection open in the background; ``wake()`` on every notification
        and after every (re)connect. Returns once the first connection listens (or failed once:
        the poll still works, and the background task keeps trying)."""
        if self._listener is not None:
            return
        ready = asyncio.Event()
        self._listener = asyncio.create_task(self._listen_forever(wake, ready), name="account-events-listen")
        await ready.wait()

    async def _listen_forever(self, wake: Callable[[], None], ready: asyncio.Event) -> None:
        attempt = 0

        def on_notify(*_args: Any) -> None:
            wake()

        while True:
            lost = asyncio.Event()
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self._dsn, timeout=10)
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                await conn.add_listener(CHANNEL, on_notify)
                attempt = 0
                ready.set()
                wake()  # catch up on whatever was written while nobody listened
                while not lost.is_set():
                    # A dead TCP peer is not always reported: probe now and then.
                    try:
                        await asyncio.wait_for(lost.wait(), timeout=5.0)
                    except TimeoutError:
                        await conn.execute("SELECT 1", timeout=5.0)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log_event(
                    log,
                    "account_events_listener_lost",
                    logging.WARNING,
                    error=repr(e),
                    hint="polling instead",
                )
            finally:
                ready.set()
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(Exception):
                        await asyncio.shield(conn.close(timeout=2))
            await asyncio.sleep(_LISTEN_RETRY_S[min(attempt, len(_LISTEN_RETRY_S) - 1)])
            attempt += 1

    # -- housekeeping and stats ------------------------------------------------------------------

    async def prune(self, *, now: float, keep_s: float) -> None:
        cutoff = now - keep_s
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("DELETE FROM auth_refresh_tokens WHERE expires_at < $1", cutoff)
            await conn.execute(
                "DELETE FROM auth_refresh_families f WHERE last_used_at < $1 AND NOT EXISTS"
                " (SELECT 1 FROM auth_refresh_tokens t WHERE t.family_id = f.family_id)",
                cutoff,
            )
            await conn.execute("DELETE FROM auth_password_resets WHERE expires_at < $1", cutoff)
            await conn.execute("DELETE FROM account_events WHERE created_at < $1", cutoff)
            await conn.execute("DELETE FROM auth_family_certs WHERE expires_at < $1", now)

    async def counts(self, *, now: float) -> dict[str, int]:
        return counts_from_row(await self.pool.fetchrow(COUNTS_SQL.format(now="$1"), now))


def _count(status: str) -> int:
    """Rows affected, from a command tag such as ``UPDATE 1`` or ``INSERT 0 1``."""
    try:
        return int(status.rsplit(" ", 1)[-1])
    except (ValueError, IndexError):
        return 0
