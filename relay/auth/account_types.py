"""What the account stores and the account service share: values, errors and the store interface.

The service (``relay.auth.accounts``) talks to an :class:`AccountStore`; two implementations exist, one
per deployment shape: ``relay.auth.account_store_sqlite`` (one node, the embedded default) and
``relay.auth.account_store_pg`` (several nodes on one PostgreSQL database). Keeping the interface here,
apart from both, lets either be imported without the other's driver.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from relay.auth.tokens import IssuedToken
from relay.errors import RelayError

ROLE_ADMIN = "admin"
KNOWN_ROLES = frozenset({ROLE_ADMIN})
SHOP_OWNER = "owner"
SHOP_STAFF = "staff"
_SHOP_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# Pragmatic address check (no dependency on email-validator): one @, a dotted domain, no spaces or
# control characters, RFC 5321 length limits. Deliverability is proven by the reset mail anyway.
_EMAIL = re.compile(
    r"^[^@\s\x00-\x1f\x7f]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$"
)


# account_events.kind values
EV_FAMILY_REVOKED = "family_revoked"
EV_USER_DISABLED = "user_disabled"
EV_USER_ENABLED = "user_enabled"
EV_USER_CHANGED = "user_changed"
EV_KEYS_ROTATED = "keys_rotated"

# --------------------------------------------------------------------------------------------
# errors


class AccountError(RelayError):
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


class StoreUnavailable(AccountError):
    """The account database cannot be reached."""

    code, status = "store_unavailable", 503


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


def sha256_text(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


def refresh_verdict(row: Iterable[Any] | None) -> RotateResult:
    """What presenting a refresh token means, from its locked row in both stores.

    ``row`` is ``(family_id, used_at, user_id, revoked_at)`` of the token and its family, or
    ``None`` for an unknown token. On ``reused`` the store must revoke the family, on ``ok`` spend
    the token and record its successor, both in the transaction that read the row; the decision
    itself is the same for every backend, so it lives here once.
    """
    if row is None:
        return RotateResult("unknown")
    family_id, used_at, user_id, revoked_at = row
    if revoked_at is not None:
        return RotateResult("revoked", family_id, user_id)
    if used_at is not None:
        return RotateResult("reused", family_id, user_id)
    return RotateResult("ok", family_id, user_id)


#: :meth:`AccountStore.counts`' query, ``{now}`` standing for the driver's placeholder of ``now``.
COUNTS_SQL = (
    "SELECT COUNT(*), COUNT(disabled_at),"
    " (SELECT COUNT(DISTINCT user_id) FROM account_roles WHERE role = 'admin'),"
    " (SELECT COUNT(*) FROM auth_refresh_families f WHERE f.revoked_at IS NULL AND EXISTS"
    "   (SELECT 1 FROM auth_refresh_tokens t WHERE t.family_id = f.family_id"
    "    AND t.used_at IS NULL AND t.expires_at > {now}))"
    " FROM account_users"
)


def counts_from_row(row: Iterable[Any] | None) -> dict[str, int]:
    """:meth:`AccountStore.counts` from the row of :data:`COUNTS_SQL`."""
    total, disabled, admins, sessions = row if row is not None else (0, 0, 0, 0)
    return {
        "users": int(total),
        "users_active": int(total) - int(disabled),
        "users_disabled": int(disabled),
        "admins": int(admins),
        "sessions_active": int(sessions),
    }


# --------------------------------------------------------------------------------------------
# the store interface


class AccountStore(Protocol):
    """The account tables. Every method is one atomic change or one consistent read.

    Implementations must make :meth:`rotate_refresh` safe against two concurrent uses of one
    token (exactly one may succeed, the other sees ``reused``), :meth:`consume_reset` single-use
    under concurrency, and :meth:`events_after` never skip an event that commits later with a
    smaller id than one already returned (the cursor only moves forward).
    """

    async def close(self) -> None: ...

    async def create_user(
        self, *, email: str, display_name: str, password_hash: str, roles: Iterable[str] = (), now: float
    ) -> str: ...

    async def get_user(self, user_id: str) -> User | None: ...

    async def get_user_with_hash(self, email: str) -> tuple[User, str] | None: ...

    async def list_users(self) -> list[User]: ...

    async def replace_password_hash(
        self, user_id: str, new_hash: str, *, old_hash: str | None, now: float
    ) -> bool: ...

    async def set_disabled(self, user_id: str, disabled: bool, *, now: float) -> None: ...

    async def disabled_user_ids(self) -> list[str]: ...

    async def grant_role(self, user_id: str, role: str, *, now: float) -> bool: ...

    async def revoke_role(self, user_id: str, role: str) -> bool: ...

    async def grant_shop(self, user_id: str, shop_id: str, relation: str, *, now: float) -> bool: ...

    async def revoke_shop(self, user_id: str, shop_id: str, relation: str) -> bool: ...

    async def create_family(
        self, *, family_id: str, user_id: str, jti: str, expires_at: float, now: float
    ) -> None: ...

    async def rotate_refresh(
        self, *, jti: str, new_jti: str, new_expires_at: float, now: float
    ) -> RotateResult: ...

    async def revoke_family(self, family_id: str, *, reason: str, now: float) -> bool: ...

    async def revoke_user_families(self, user_id: str, *, reason: str, now: float) -> list[str]: ...

    async def revoked_families_since(self, since: float) -> list[tuple[str, float]]: ...

    async def add_family_cert(self, family_id: str, cert_id: str, *, expires_at: float) -> None:
        """Remember a device certificate issued to a session (login or refresh), so revoking the
        session revokes the certificate too."""
        ...

    async def family_cert_ids(self, family_id: str, *, now: float) -> list[str]:
        """The unexpired certificates issued to one session."""
        ...

    async def revoked_cert_ids(self, *, now: float) -> list[str]:
        """The unexpired certificates of every revoked session (loaded at start)."""
        ...

    async def family_status(self, family_id: str) -> tuple[str, float | None] | None: ...

    async def add_reset(self, *, token: str, user_id: str, expires_at: float, now: float) -> None: ...

    async def consume_reset(self, token: str, *, now: float) -> str | None: ...

    async def add_event(
        self, kind: str, *, user_id: str | None = None, family_id: str | None = None, origin: str, now: float
    ) -> None: ...

    async def max_event_id(self) -> int: ...

    async def events_after(self, event_id: int, limit: int = 1000) -> list[AccountEvent]: ...

    async def listen(self, wake: Callable[[], None]) -> None:
        """Call ``wake()`` soon after another process adds an event, if the engine can push
        (PostgreSQL LISTEN/NOTIFY); SQLite cannot, and the poll interval is the bound there."""
        ...

    async def prune(self, *, now: float, keep_s: float) -> None: ...

    async def counts(self, *, now: float) -> dict[str, int]: ...
