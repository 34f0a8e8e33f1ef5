"""The relay's signing keys in PostgreSQL, so every node signs and verifies with the same keys.

Why in the database rather than a shared ``DIR/keys`` directory: nodes already share the
database and nothing else. A shared directory would need a network filesystem on every node, and
``flock`` over NFS (what the file store relies on while rotating) is not dependable. In the
database a rotation is one transaction under an advisory lock, and every node learns of it from
the ``keys_rotated`` account event (pushed by NOTIFY), and in any case from a cheap "which kid is
newest?" check each poll.

Why a rotated-in key waits :data:`ACTIVATION_DELAY_S` before it signs: nodes learn of a rotation
a few milliseconds apart (up to ``events_poll_s`` if a node's listening connection is down). If
the new key signed at once, a token minted on the node that learned first could reach a node
that has not, which would refuse it as signed by an unknown key ("token_invalid": log in again).
So the new key is *published* (verifies) on every node at once, and every node switches to
*signing* with it at the same wall-clock time, ``activates_at``; the outgoing key keeps signing
until then (its ``retired_at`` is that same time, so the retired-key rule of ``relay.auth.tokens``
holds) and its private half is erased from the table once that time has passed. Keep
``events_poll_s`` below the delay.

The trade-off: whoever can read ``auth_signing_keys`` (a database dump, a backup) holds the
private signing key and can forge tokens and certificates. Set ``QUICKSLOT_RELAY_KEYS_PASSPHRASE``
on every node (and for the CLI) to store private keys encrypted (PKCS#8, the best encryption the
``cryptography`` package offers); the passphrase then lives only in the nodes' environment, and a
node started without it refuses to start with a clear error rather than running unable to sign.
Without it keys are stored in clear, protected by the database's access control, as the file
store protects them with file modes.

On first start against an empty table, an existing ``DIR/keys`` directory (a relay moving from
SQLite to PostgreSQL) is imported, so tokens and certificates it signed keep verifying; otherwise
a new key is made. The advisory lock makes concurrent first starts create exactly one key.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from relay.auth.account_schema_pg import LOCK_KEYS
from relay.auth.keys import (
    MANIFEST,
    ActiveKey,
    KeyStore,
    KeyStoreError,
    PublicKeyInfo,
    raw_public,
    thumbprint_kid,
)

PASSPHRASE_ENV = "QUICKSLOT_RELAY_KEYS_PASSPHRASE"
#: How long a rotated-in key is published before it signs (see the module docstring).
ACTIVATION_DELAY_S = 2.0


def passphrase_from_env() -> bytes | None:
    value = os.environ.get(PASSPHRASE_ENV)
    return value.encode("utf-8") if value else None


class PostgresKeyStore(KeyStore):
    """A :class:`KeyStore` whose keys live in ``auth_signing_keys``; use the async methods."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        import_dir: Path,
        passphrase: bytes | None,
        activation_delay_s: float = ACTIVATION_DELAY_S,
    ) -> None:
        super().__init__(import_dir)
        self.pool = pool
        self.activation_delay_s = activation_delay_s
        self._passphrase = passphrase
        self._newest_kid: str | None = None
        # The newest key while it waits for its activation time: (key, activates_at).
        self._pending: tuple[ActiveKey, float] | None = None

    @classmethod
    async def open_pg(
        cls,
        pool: asyncpg.Pool,
        *,
        import_dir: Path,
        passphrase: bytes | None = None,
        activation_delay_s: float = ACTIVATION_DELAY_S,
    ) -> PostgresKeyStore:
        """Load the keys, creating (or importing) the first one if the table is empty."""
        if passphrase is None:
            passphrase = passphrase_from_env()
        store = cls(pool, import_dir, passphrase, activation_delay_s)
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEYS)
            if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM auth_signing_keys)"):
                if not await store._import_files(conn):
                    await store._insert_new(conn)
        await store.reload_async()
        return store

    # -- the file store's sync face does not apply -------------------------------------------------

    def reload(self) -> None:
        raise KeyStoreError("signing keys live in PostgreSQL: use reload_async()")

    def reload_if_changed(self) -> bool:
        raise KeyStoreError("signing keys live in PostgreSQL: use reload_if_changed_async()")

    def rotate(self) -> str:
        raise KeyStoreError("signing keys live in PostgreSQL: use rotate_async()")

    # -- async face --------------------------------------------------------------------------------

    @property
    def active(self) -> ActiveKey:
        """The signing key; switches to a pending key once its activation time has come."""
        pending = self._pending
        if pending is not None and time.time() >= pending[1]:
            self._active, self._pending = pending[0], None
        return super().active

    async def reload_async(self) -> None:
        rows = await self.pool.fetch(
            "SELECT kid, public, private_pem, created_at, retired_at, activates_at FROM auth_signing_keys"
            " ORDER BY created_at"
        )
        now = time.time()
        public: dict[str, PublicKeyInfo] = {}
        newest = None
        outgoing = None  # the latest key that still signs while the newest waits
        for row in rows:
            raw = bytes(row["public"])
            if thumbprint_kid(raw) != row["kid"]:
                raise KeyStoreError(f"signing key {row['kid']} does not match its public key")
            public[row["kid"]] = PublicKeyInfo(row["kid"], raw, row["created_at"], row["retired_at"])
            if row["retired_at"] is None:
                newest = row
            elif row["retired_at"] > now and row["private_pem"] is not None:
                outgoing = row
        if newest is None or newest["private_pem"] is None:
            raise KeyStoreError("no active signing key in the database")
        key = ActiveKey(newest["kid"], self._load_pem(bytes(newest["private_pem"])))
        pending: tuple[ActiveKey, float] | None = None
        signer = key
        if newest["activates_at"] > now and outgoing is not None:
            pending = (key, float(newest["activates_at"]))
            signer = ActiveKey(outgoing["kid"], self._load_pem(bytes(outgoing["private_pem"])))
        self._install(public, signer)
        self._pending = pending
        self._newest_kid = newest["kid"]

    async def reload_if_changed_async(self) -> bool:
        """One indexed lookup: reload when another process rotated. Also erases private halves
        of keys whose retirement time has passed (any node may do it; it is idempotent)."""
        await self.pool.execute(
            "UPDATE auth_signing_keys SET private_pem = NULL"
            " WHERE retired_at <= $1 AND private_pem IS NOT NULL",
            time.time(),
        )
        kid = await self.pool.fetchval("SELECT kid FROM auth_signing_keys WHERE retired_at IS NULL")
        if kid is None or kid == self._newest_kid:
            return False
        await self.reload_async()
        return True

    async def rotate_async(self) -> str:
        """Add a key that verifies at once and signs after ``activation_delay_s``; returns its kid."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEYS)
            now = time.time()
            at = now + self.activation_delay_s
            # Keys whose retirement has come sign nothing again: erase their private halves.
            await conn.execute("UPDATE auth_signing_keys SET private_pem = NULL WHERE retired_at <= $1", now)
            # The outgoing key signs until the new one takes over, then it is retired.
            await conn.execute("UPDATE auth_signing_keys SET retired_at = $1 WHERE retired_at IS NULL", at)
            kid = await self._insert_new(conn, now=now, activates_at=at)
        await self.reload_async()
        return kid

    # -- helpers -----------------------------------------------------------------------------------

    async def _insert_new(
        self,
        conn: PoolConnectionProxy[asyncpg.Record],
        *,
        now: float | None = None,
        activates_at: float = 0.0,
    ) -> str:
        private = Ed25519PrivateKey.generate()
        raw = raw_public(private.public_key())
        kid = thumbprint_kid(raw)
        await conn.execute(
            "INSERT INTO auth_signing_keys(kid, public, private_pem, created_at, activates_at)"
            " VALUES ($1, $2, $3, $4, $5)",
            kid,
            raw,
            self._dump_pem(private),
            time.time() if now is None else now,
            activates_at,
        )
        return kid

    async def _import_files(self, conn: PoolConnectionProxy[asyncpg.Record]) -> bool:
        if not (self.keys_dir / MANIFEST).exists():
            return False
        files = await asyncio.to_thread(KeyStore.open, self.keys_dir, create=False)
        active = files.active
        for info in files.keys():
            private = self._dump_pem(active.private) if info.kid == active.kid else None
            await conn.execute(
                "INSERT INTO auth_signing_keys(kid, public, private_pem, created_at, retired_at)"
                " VALUES ($1, $2, $3, $4, $5)",
                info.kid,
                info.public,
                private,
                info.created_at,
                None if info.kid == active.kid else (info.retired_at or time.time()),
            )
        return True

    def _dump_pem(self, private: Ed25519PrivateKey) -> bytes:
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(self._passphrase)
            if self._passphrase
            else serialization.NoEncryption()
        )
        return private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )

    def _load_pem(self, pem: bytes) -> Ed25519PrivateKey:
        encrypted = b"ENCRYPTED" in pem.split(b"\n", 1)[0]
        if encrypted and not self._passphrase:
            raise KeyStoreError(f"the signing key is encrypted: set {PASSPHRASE_ENV}")
        try:
            key = serialization.load_pem_private_key(pem, password=self._passphrase if encrypted else None)
        except ValueError as e:
            raise KeyStoreError(f"cannot decrypt the signing key (wrong {PASSPHRASE_ENV}?)") from e
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyStoreError("the stored signing key is not an Ed25519 key")
        return key
