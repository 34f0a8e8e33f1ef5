"""Accounts, refresh-token families and password resets: the service above an account store.

The store is an :class:`~relay.auth.account_types.AccountStore`: the embedded SQLite one
(``relay.auth.account_store_sqlite``) by default, the PostgreSQL one (``relay.auth.account_store_pg``) when
``config.store_url`` is set, so several relay nodes share users, sessions, revocations, rate
limits and signing keys.

The service (:class:`AccountService`) implements the auth flows. Decisions worth knowing:

* Refresh tokens rotate on every use. Each belongs to a family (one login = one family). The
  server stores only SHA-256 of each refresh ``jti``. Presenting a refresh token that was already
  spent means a copy leaked (or a client raced itself): the whole family is revoked, its access
  tokens stop verifying, and ``on_family_revoked`` tells the websocket layer to close the
  family's connections. Logout, password reset and disabling an account revoke families too.
* Unknown email and wrong password give the same error after the same work (a dummy Argon2
  verification), so login cannot enumerate accounts; password-reset requests always succeed and
  do their work in the background so their timing does not tell either.
* Other processes change the same tables: the operator CLI, and with PostgreSQL the other relay
  nodes. Every revocation, disable, enable, grant and key rotation is recorded in
  ``account_events``; each server reads the events after its cursor, updates its in-memory
  revocation state and fires the same hooks as for its own changes (events carry their writer's
  ``origin`` and a process skips its own). SQLite is polled every ``events_poll_s`` (default 1 s).
  PostgreSQL also pushes: the event insert sends a NOTIFY in the same transaction and a listening
  connection wakes the reader at once, so another node's logout closes this node's websockets
  well within the 1 s bound the cluster tests hold it to (median 67 ms, worst 160 ms of 30,
  logout request included, on a loaded 2-core test machine). The table stays the source of truth
  and the poll the fallback: NOTIFY alone is lost while the listening connection is down, the
  table alone would cost up to a whole poll interval; together, a missed notification costs at
  most one poll interval (``events_poll_s``), and the listener's reconnect triggers a read too.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import secrets
import time
import unicodedata
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from crdt_core.certs import cert_id_of
from relay.auth.account_store_sqlite import SQLiteAccountStore
from relay.auth.account_types import (
    EV_FAMILY_REVOKED,
    EV_KEYS_ROTATED,
    EV_USER_CHANGED,
    EV_USER_DISABLED,
    EV_USER_ENABLED,
    KNOWN_ROLES,
    ROLE_ADMIN,
    SHOP_OWNER,
    SHOP_STAFF,
    AccountDisabled,
    AccountError,
    AccountEvent,
    AccountStore,
    EmailTaken,
    InvalidCredentials,
    InvalidEmail,
    InvalidInput,
    InvalidResetToken,
    RefreshTokenReused,
    RotateResult,
    Session,
    SessionRevoked,
    StoreUnavailable,
    User,
    UserNotFound,
    WeakPassword,
    normalize_email,
    validate_shop_id,
)
from relay.auth.device_certs import issue_device_certificate
from relay.auth.keys import KeyStore
from relay.auth.mail import Mailer, build_message, make_mailer
from relay.auth.passwords import Argon2Params, PasswordHasher
from relay.auth.ratelimit import RateLimiter
from relay.auth.tokens import (
    ACCESS,
    REFRESH,
    Claims,
    RevocationState,
    TokenError,
    TokenInvalid,
    TokenRevoked,
    TokenService,
)
from relay.ops.config import RateLimit, RelayConfig, prepare_data_dir
from relay.ops.logging import get_logger, log_event
from relay.ops.metrics import MetricsRegistry
from relay.store.base import load_or_create_epoch

__all__ = [
    "EV_FAMILY_REVOKED", "EV_KEYS_ROTATED", "EV_USER_CHANGED", "EV_USER_DISABLED", "EV_USER_ENABLED",
    "KNOWN_ROLES", "ROLE_ADMIN", "SHOP_OWNER", "SHOP_STAFF", "AccountDisabled", "AccountError",
    "AccountEvent", "AccountService", "AccountStore", "AuthComponents", "AuthHooks", "EmailTaken",
    "InvalidCredentials", "InvalidEmail", "InvalidInput", "InvalidResetToken", "RefreshTokenReused",
    "RotateResult", "Session", "SessionRevoked", "SQLiteAccountStore", "StoreUnavailable", "User",
    "UserNotFound",
    "WeakPassword", "normalize_email", "open_auth", "validate_shop_id",
]  # fmt: skip

log = get_logger(__name__)

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
                log_event(
                    log,
                    "auth_hook_failed",
                    logging.ERROR,
                    exc_info=True,
                    hook=getattr(callback, "__name__", repr(callback)),
                )


# --------------------------------------------------------------------------------------------
# service


class AccountService:
    """The auth flows, over the store, the key store, the token service and the mailer.

    Why one class of about 440 lines: each public method is one flow of the REST auth API
    (register, login, refresh, logout, password reset, grants) or of the operator's CLI, and
    they share one set of collaborators, one failure accounting (``count_failure`` and the
    metrics) and the account-events cursor that tells every node of revocations.
    """

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
        # Lets a test (or an operator) see that a change made with the CLI has been applied: the
        # second read completed after the change was recorded has seen it.
        self._m_event_polls = metrics.counter(
            "relay_account_event_polls_total",
            "Completed reads of account_events (changes from the CLI or other nodes)",
        )

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
        if user.roles:
            # An account created with a role (``user add --admin``) while a relay serves from the
            # same store: the serving process must learn the role without a restart, exactly as
            # it learns a later ``user grant``.
            await self.store.add_event(EV_USER_CHANGED, user_id=user_id, origin=self.origin, now=self.clock())
            await self.hooks.user_changed(user_id)
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
            # The websocket layer's rights cache marked the user disabled: make it re-read them.
            await self.hooks.user_changed(user.user_id)
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

    async def login(
        self, email: str, password: str, device_public_key: bytes | None = None, *, bind_refresh: bool = False
    ) -> Session:
        """Log in; with ``bind_refresh`` the refresh token is bound to ``device_public_key`` too
        (a refresh must present that key: :meth:`refresh`)."""
        user = await self.authenticate(email, password)
        family_id = secrets.token_urlsafe(16)
        refresh_key = device_public_key if bind_refresh else None
        refresh = self.tokens.issue(REFRESH, user.user_id, family_id, device_key=refresh_key)
        await self.store.create_family(
            family_id=family_id,
            user_id=user.user_id,
            jti=refresh.claims.jti,
            expires_at=refresh.claims.exp,
            now=self.clock(),
        )
        access = self.tokens.issue(ACCESS, user.user_id, family_id, device_key=device_public_key)
        self._m_logins.labels(result="ok").inc()
        log_event(log, "login", user_id=user.user_id, family_id=family_id)
        return Session(access, refresh, user, await self._certificate(user, device_public_key, family_id))

    async def refresh(
        self, refresh_token: str, device_public_key: bytes | None = None, *, bind_refresh: bool = False
    ) -> Session:
        """Rotate a refresh token. A bound one (``cnf``) is rotated only for its own device key,
        and stays bound; ``bind_refresh`` binds an unbound one to ``device_public_key`` from now
        on. Raises ``TokenError`` subclasses for bad tokens (``token_invalid`` for another key,
        without spending the token), :class:`RefreshTokenReused`, :class:`SessionRevoked` or
        :class:`AccountDisabled`."""
        try:
            claims = self.tokens.decode(refresh_token, REFRESH)
            if claims.cnf_key is not None and claims.cnf_key != device_public_key:
                raise TokenInvalid("refresh token bound to another device key")
        except TokenError as e:
            self._m_refresh.labels(result=e.code).inc()
            self.count_failure(e.code)
            raise
        refresh_key = claims.cnf_key or (device_public_key if bind_refresh else None)
        new_refresh = self.tokens.issue(REFRESH, claims.sub, claims.fam, device_key=refresh_key)
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
        access = self.tokens.issue(ACCESS, claims.sub, claims.fam, device_key=device_public_key)
        self._m_refresh.labels(result="ok").inc()
        certificate = await self._certificate(user, device_public_key, claims.fam)
        return Session(access, new_refresh, user, certificate)

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

    async def _certificate(self, user: User, device_public_key: bytes | None, family_id: str) -> bytes | None:
        """A device certificate for this session, remembered with it: logging out (or any other
        revocation of the session) revokes the certificate too, so a stolen device key stops
        signing at the relay then, not when the certificate expires."""
        if device_public_key is None:
            return None
        now = self.clock()
        ttl_s = self.config.certificate_ttl_s
        cert = issue_device_certificate(user, device_public_key, keys=self.keys, ttl_s=ttl_s, now=now)
        await self.store.add_family_cert(family_id, cert_id_of(cert), expires_at=now + ttl_s)
        return cert

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
                await self.hooks.user_changed(ev.user_id)
            elif ev.kind == EV_USER_CHANGED and ev.user_id:
                await self.hooks.user_changed(ev.user_id)
            elif ev.kind == EV_KEYS_ROTATED:
                await self.keys.reload_async()
                log_event(log, "signing keys reloaded", active_kid=self.keys.active_kid)
        self._m_event_polls.inc()
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
        """Read ``account_events`` every ``events_poll_s``, and at once when the store pushes a
        wake-up (PostgreSQL NOTIFY), until ``stop`` is set."""
        wake = asyncio.Event()
        try:
            await self.store.listen(wake.set)
        except Exception:
            log_event(
                log, "account_events_listener_failed", logging.ERROR, exc_info=True, hint="polling only"
            )
        while not stop.is_set():
            # Cleared before reading: a notification arriving during the read triggers another.
            wake.clear()
            try:
                await self.poll_events_once()
                if await self.keys.reload_if_changed_async():
                    log_event(log, "signing keys reloaded", active_kid=self.keys.active_kid)
                await self.maintenance()
            except Exception:
                log_event(log, "account_events_poll_failed", logging.ERROR, exc_info=True)
            stopped = asyncio.ensure_future(stop.wait())
            woken = asyncio.ensure_future(wake.wait())
            try:
                await asyncio.wait(
                    [stopped, woken], timeout=self.config.events_poll_s, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                stopped.cancel()
                woken.cancel()

    async def record_keys_rotated(self) -> None:
        await self.store.add_event(EV_KEYS_ROTATED, origin=self.origin, now=self.clock())

    # -- misc ------------------------------------------------------------------------------------

    def _spawn(self, coro: Awaitable[None]) -> None:
        async def runner() -> None:
            try:
                await coro
            except Exception:
                log_event(log, "background_task_failed", logging.ERROR, exc_info=True)

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
    # With a shared store, the rate limiters every node must share: ``factory(purpose, limit)``
    # (``relay.context.Limiters.from_config`` takes it). ``None``: in-memory, per process.
    limiter_factory: Callable[[str, RateLimit], RateLimiter] | None = None

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
    """Prepare the data directory and open the store, keys, tokens and service.

    ``config.store_url`` set: accounts, keys and rate limits live in that PostgreSQL database
    (shared by every node, see ``relay.auth.account_store_pg`` and ``relay.auth.keys_pg``) and the epoch is
    the database's; otherwise the SQLite file, ``DIR/keys`` and in-memory limits of one node.
    """
    await asyncio.to_thread(prepare_data_dir, config)
    epoch = await asyncio.to_thread(load_or_create_epoch, config.data_dir)
    store: AccountStore
    keys: KeyStore
    limiter_factory: Callable[[str, RateLimit], RateLimiter] | None = None
    if config.store_url is not None:
        from relay.auth.account_store_pg import PostgresAccountStore
        from relay.auth.keys_pg import PostgresKeyStore
        from relay.auth.ratelimit_pg import PostgresRateLimiter

        pg = await PostgresAccountStore.open(config.store_url)
        try:
            epoch = pg.epoch
            keys = await PostgresKeyStore.open_pg(pg.pool, import_dir=config.keys_dir)
        except BaseException:
            await pg.close()
            raise
        store = pg

        def limiter_factory(purpose: str, limit: RateLimit) -> RateLimiter:
            return PostgresRateLimiter(pg.pool, purpose, limit)
    else:
        keys = await asyncio.to_thread(KeyStore.open, config.keys_dir)
        store = await SQLiteAccountStore.open(config.db_path, busy_timeout_ms=config.sqlite_busy_timeout_ms)
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
    return AuthComponents(
        config=config,
        epoch=epoch,
        store=store,
        keys=keys,
        tokens=tokens,
        service=service,
        limiter_factory=limiter_factory,
    )
