"""The account tables' versioned schema in PostgreSQL, applied at start.

Why versioned migrations rather than ``CREATE TABLE IF NOT EXISTS`` (what SQLite uses): several
nodes of different releases can point at one database during a rolling upgrade, and a later
release will need to *change* tables, which idempotent DDL cannot express. The mechanism is the
document store's (``relay.store.pg_migrations``): one ``schema_migrations`` table keyed by
component, applied under one advisory lock in one transaction, refusing a database newer than the
code. Accounts are the ``accounts`` component, numbered on their own, so neither store's
releases have to wait for the other's.
"""

from __future__ import annotations

import asyncpg

from relay.store.pg_migrations import Migration, apply_migrations

COMPONENT = "accounts"

# Advisory lock ids taken by the account code (64-bit; "QSAC" + a small number, apart from the
# migration lock and from each other).
LOCK_EVENTS = 0x5153_4143_0000_0002
LOCK_KEYS = 0x5153_4143_0000_0003

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "accounts, refresh families, resets, events",
        """
        CREATE TABLE account_users (
            user_id       TEXT PRIMARY KEY,
            email         TEXT NOT NULL CONSTRAINT account_users_email_key UNIQUE,
            display_name  TEXT NOT NULL,
            password_hash TEXT NOT NULL,
            created_at    DOUBLE PRECISION NOT NULL,
            updated_at    DOUBLE PRECISION NOT NULL,
            disabled_at   DOUBLE PRECISION
        );
        CREATE TABLE account_roles (
            user_id    TEXT NOT NULL REFERENCES account_users(user_id) ON DELETE CASCADE,
            role       TEXT NOT NULL,
            granted_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (user_id, role)
        );
        CREATE TABLE account_shop_members (
            user_id    TEXT NOT NULL REFERENCES account_users(user_id) ON DELETE CASCADE,
            shop_id    TEXT NOT NULL,
            relation   TEXT NOT NULL CHECK (relation IN ('owner', 'staff')),
            granted_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (user_id, shop_id, relation)
        );
        CREATE INDEX account_shop_members_shop ON account_shop_members(shop_id);
        CREATE TABLE auth_refresh_families (
            family_id     TEXT PRIMARY KEY,
            user_id       TEXT NOT NULL REFERENCES account_users(user_id) ON DELETE CASCADE,
            created_at    DOUBLE PRECISION NOT NULL,
            last_used_at  DOUBLE PRECISION NOT NULL,
            revoked_at    DOUBLE PRECISION,
            revoke_reason TEXT
        );
        CREATE INDEX auth_refresh_families_user ON auth_refresh_families(user_id);
        CREATE INDEX auth_refresh_families_revoked ON auth_refresh_families(revoked_at);
        CREATE TABLE auth_refresh_tokens (
            jti_hash   BYTEA PRIMARY KEY,
            family_id  TEXT NOT NULL REFERENCES auth_refresh_families(family_id) ON DELETE CASCADE,
            issued_at  DOUBLE PRECISION NOT NULL,
            expires_at DOUBLE PRECISION NOT NULL,
            used_at    DOUBLE PRECISION
        );
        CREATE INDEX auth_refresh_tokens_family ON auth_refresh_tokens(family_id);
        CREATE TABLE auth_password_resets (
            token_hash BYTEA PRIMARY KEY,
            user_id    TEXT NOT NULL REFERENCES account_users(user_id) ON DELETE CASCADE,
            created_at DOUBLE PRECISION NOT NULL,
            expires_at DOUBLE PRECISION NOT NULL,
            used_at    DOUBLE PRECISION
        );
        CREATE INDEX auth_password_resets_user ON auth_password_resets(user_id);
        CREATE TABLE account_events (
            id         BIGSERIAL PRIMARY KEY,
            kind       TEXT NOT NULL,
            user_id    TEXT,
            family_id  TEXT,
            origin     TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL
        );
        CREATE INDEX account_events_created ON account_events(created_at);
        """,
    ),
    Migration(
        2,
        "rate-limit token buckets shared by every node",
        """
        CREATE TABLE auth_rate_buckets (
            scope   TEXT NOT NULL,
            key     TEXT NOT NULL,
            tokens  DOUBLE PRECISION NOT NULL,
            at      DOUBLE PRECISION NOT NULL,
            allowed BOOLEAN NOT NULL,
            PRIMARY KEY (scope, key)
        );
        CREATE INDEX auth_rate_buckets_at ON auth_rate_buckets(scope, at);
        """,
    ),
    Migration(
        3,
        "signing keys shared by every node",
        """
        CREATE TABLE auth_signing_keys (
            kid         TEXT PRIMARY KEY,
            public      BYTEA NOT NULL,
            private_pem BYTEA,
            created_at  DOUBLE PRECISION NOT NULL,
            retired_at  DOUBLE PRECISION,
            -- A rotated-in key is published at once but signs only from here on (relay.auth.keys_pg).
            activates_at DOUBLE PRECISION NOT NULL DEFAULT 0
        );
        CREATE UNIQUE INDEX auth_signing_keys_one_active ON auth_signing_keys((retired_at IS NULL))
            WHERE retired_at IS NULL;
        """,
    ),
    Migration(
        4,
        "device certificates per session, so revoking a session revokes its certificates",
        """
        CREATE TABLE auth_family_certs (
            cert_id    TEXT PRIMARY KEY,
            family_id  TEXT NOT NULL,
            expires_at DOUBLE PRECISION NOT NULL
        );
        CREATE INDEX auth_family_certs_family ON auth_family_certs(family_id);
        """,
    ),
)


async def migrate(conn: asyncpg.Connection) -> list[int]:
    """Bring the account tables up to date; returns the versions applied now."""
    return await apply_migrations(conn, COMPONENT, MIGRATIONS)
