"""Talking to the relay's REST auth API: register, log in, refresh, log out.

Why a module of its own: the sync service needs exactly one thing from authentication (a fresh
access token, or the news that the user must log in again), while the CLI needs the whole
login ceremony. Keeping the ceremony here means the secrets are handled in one place:

* a login generates a **fresh Ed25519 device key** and asks the relay to certify it, so every
  record this profile signs is attributable to this device under a relay-issued certificate;
* the relay's public keys come from ``/.well-known/jwks.json`` at login and are cached in the
  profile, because every update that arrives (from the relay or a peer) is validated with them,
  offline;
* the access token the relay issues is **bound** to that device key (``cnf``), so every request
  made with it carries a proof of possession signed by the key (:mod:`crdt_core.pop`): a peer
  that sees the token in a peer handshake cannot use it at the relay;
* tokens go to the :class:`~client.storage.secrets.SecretStore` (keyring or a 0600 file) and are never
  logged; a refresh token is **rotated** on every refresh (the relay revokes the whole family if
  a spent one is presented again), so the new pair is stored before anything else happens;
* a refresh the relay refuses (401/403) clears the secrets: the only way out is to log in again,
  and keeping a dead token would only make every later attempt fail the same way;
* a certificate the client does not trust (no CA for it, or a ``--pin`` mismatch, see
  :mod:`client.sync.tls`) is :class:`RelayInsecure`, not "unreachable": waiting will not fix it, it may
  be an attack, and the user must be told which. It still subclasses :class:`RelayUnavailable`,
  so code that only retries later stays correct (and never falls back to plain HTTP).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from client.errors import ClientError
from client.local.client import LocalClient
from client.log import get_logger
from client.sync.tls import tls_failure
from client.sync.urls import http_base
from crdt_core.b64 import b64url, b64url_decode
from crdt_core.certs import DeviceKey, public_bytes
from crdt_core.pop import proof_headers, rest

if TYPE_CHECKING:
    # httpx is imported where a request is made: most CLI commands never talk HTTP, and every
    # one of them would otherwise pay ~0.1 s of start-up for it.
    import httpx

__all__ = [
    "AuthClient",
    "AuthError",
    "LoginRequired",
    "LoginResult",
    "RelayInsecure",
    "RelayUnavailable",
    "fetch_relay_keys",
    "http_base",
]

log = get_logger(__name__)

DEFAULT_TIMEOUT_S = 10.0


class AuthError(ClientError):
    """The relay refused an auth request; ``code`` is its machine-readable error code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.status = status
        self.code = code
        self.message = message


class LoginRequired(AuthError):
    """No usable tokens (never logged in, refresh refused, session revoked): log in again."""


class RelayUnavailable(ClientError):
    """The relay could not be reached over HTTP (connection refused, timeout, 5xx)."""


class RelayInsecure(RelayUnavailable):
    """The relay's TLS certificate failed the check (untrusted, or no pin matched): nothing was sent."""


def unavailable(exc: httpx.TransportError) -> RelayUnavailable:
    """The error to raise for a failed request: :class:`RelayInsecure` when TLS verification failed."""
    insecure = tls_failure(exc)
    if insecure is not None:
        return RelayInsecure(insecure)
    return RelayUnavailable(str(exc) or type(exc).__name__)


@dataclass(frozen=True)
class LoginResult:
    """What a login left in the profile. No tokens here: they stay in the secret store."""

    user_id: str
    email: str
    cert_id: str
    relay_keys: dict[str, bytes]


def _error(response: httpx.Response) -> tuple[str, str]:
    code: object = None
    message: object = None
    with contextlib.suppress(ValueError):
        body = response.json()
        if isinstance(body, dict):
            code = body.get("code")
            message = body.get("message")
            if code is None and isinstance(body.get("detail"), dict):
                code = body["detail"].get("code")
                message = body["detail"].get("message")
    status = response.status_code
    generic = message in (None, "", "Not Found", "Method Not Allowed")
    if code is not None and not (status in (404, 405) and generic):
        return str(code), str(message or "")
    # No route of the relay's API answered: most likely the URL names another server, or a path.
    if status in (404, 405):
        return "not_a_relay", (
            f"{response.request.url} answered HTTP {status}: is --relay the relay's base URL "
            "(e.g. http://127.0.0.1:8765, no path)?"
        )
    return f"http_{status}", f"{response.request.url} answered HTTP {status}"


async def fetch_relay_keys(http: httpx.AsyncClient) -> dict[str, bytes]:
    """The relay's Ed25519 public keys (kid -> raw 32 bytes) from its JWK Set.

    Only OKP/Ed25519 keys are taken: nothing else can have signed a certificate or a stamp.
    """
    import httpx

    try:
        response = await http.get("/.well-known/jwks.json")
    except httpx.TransportError as exc:
        raise unavailable(exc) from exc
    if response.status_code != 200:
        code, message = _error(response)
        raise AuthError(response.status_code, code, message)
    keys: dict[str, bytes] = {}
    for jwk in response.json().get("keys", []):
        if jwk.get("kty") == "OKP" and jwk.get("crv") == "Ed25519" and "kid" in jwk and "x" in jwk:
            raw = b64url_decode(str(jwk["x"]))
            if len(raw) == 32:
                keys[str(jwk["kid"])] = raw
    if not keys:
        raise AuthError(response.status_code, "no_keys", "the relay published no Ed25519 key")
    return keys


class AuthClient:
    """REST auth for one profile against one relay.

    Args:
        local: the opened profile; its secret store holds the tokens and the device key.
        relay_url: the relay (``http(s)://`` or ``ws(s)://``; the HTTP base is derived).
        verify: passed to httpx: True (system CAs) or an ``ssl.SSLContext``, e.g.
            :meth:`client.sync.tls.TlsSettings.verify` for a CA file and pins.
    """

    def __init__(
        self,
        local: LocalClient,
        relay_url: str,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        verify: Any = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.local = local
        self.base_url = http_base(relay_url)
        self._timeout = timeout_s
        self._verify = verify
        self._refresh_lock = asyncio.Lock()
        self._clock = clock
        #: Seconds to add to this device's clock to get the relay's, for the times of proofs of
        #: possession (0 until :meth:`learn_relay_clock` measured it).
        self.clock_offset_s = 0.0

    def proof_clock(self) -> float:
        """Now, on the relay's clock as far as this client knows it (proof times use it)."""
        return self._clock() + self.clock_offset_s

    async def learn_relay_clock(self) -> float:
        """Measure the relay's clock (``/api/v1/sync/status``) and adopt the offset.

        Why: the relay accepts a proof's time within ``crdt_core.pop.WINDOW_S`` of its own clock; a
        device whose clock is further off would otherwise be refused (4003) and logged out, though
        nothing is wrong with its session.

        Raises:
            RelayUnavailable: the relay could not be asked.
        """
        import httpx

        async with self._http() as http:
            before = self._clock()
            try:
                response = await http.get("/api/v1/sync/status")
            except httpx.TransportError as exc:
                raise unavailable(exc) from exc
            after = self._clock()
        if response.status_code != 200:
            raise RelayUnavailable(f"relay answered {response.status_code} for its clock")
        server_s = float(response.json()["server_time_ms"]) / 1000
        self.clock_offset_s = server_s - (before + after) / 2
        log.warning(
            "this device's clock is %.0f s off the relay's: proofs use the relay's", self.clock_offset_s
        )
        return self.clock_offset_s

    def _http(self) -> httpx.AsyncClient:
        import httpx

        return httpx.AsyncClient(base_url=self.base_url, timeout=self._timeout, verify=self._verify)

    async def _post(
        self, http: httpx.AsyncClient, path: str, body: dict[str, Any] | None = None, token: str | None = None
    ) -> httpx.Response:
        import httpx

        headers = self._token_headers(token, "POST", path) if token else None
        try:
            response = await http.post(path, json=body, headers=headers)
        except httpx.TransportError as exc:
            raise unavailable(exc) from exc
        if response.status_code >= 500:
            raise RelayUnavailable(f"relay answered {response.status_code}")
        return response

    def _token_headers(self, token: str, method: str, path: str) -> dict[str, str]:
        """``Authorization`` and, for a token bound to this device's key, the proof of possession
        the relay requires for exactly this call (``crdt_core.pop``)."""
        identity = self.local.identity
        key = identity.device.private if identity is not None else None
        try:
            return proof_headers(token, key, rest(method, path), clock=self.proof_clock)
        except ValueError as exc:  # bound to a key this profile no longer holds
            raise LoginRequired(401, "proof_invalid", f"log in again ({exc})") from None

    # --- account -------------------------------------------------------------------------------

    async def register(self, email: str, password: str, display_name: str) -> dict[str, Any]:
        """Create an account. Raises :class:`AuthError` (``email_taken``, weak password...)."""
        async with self._http() as http:
            response = await self._post(
                http,
                "/api/v1/auth/register",
                {"email": email, "password": password, "display_name": display_name},
            )
        if response.status_code != 201:
            code, message = _error(response)
            raise AuthError(response.status_code, code, message)
        body: dict[str, Any] = response.json()
        return body

    async def login(self, email: str, password: str) -> LoginResult:
        """Log in with a fresh device key; store tokens, key, certificate and relay keys.

        A fresh key per login (rather than reusing one) means a certificate always matches the
        rights the account has now (grants made since the last login are carried).
        """
        key = Ed25519PrivateKey.generate()
        async with self._http() as http:
            relay_keys = await fetch_relay_keys(http)
            response = await self._post(
                http,
                "/api/v1/auth/login",
                {"email": email, "password": password, "device_public_key": b64url(public_bytes(key))},
            )
        if response.status_code != 200:
            code, message = _error(response)
            raise AuthError(response.status_code, code, message)
        body = response.json()
        cert_text = body.get("device_certificate")
        if not cert_text:
            raise AuthError(200, "no_certificate", "the relay issued no device certificate")
        device = DeviceKey(key, b64url_decode(cert_text))
        user_id = str(body["user"]["id"])
        # The identity first (it verifies the certificate against the keys), then the tokens.
        await self.local.set_identity(user_id, device, relay_keys)
        await asyncio.to_thread(self.local.secrets.set_tokens, body["access_token"], body["refresh_token"])
        log.info("logged in as %s", user_id)
        return LoginResult(user_id, email, device.cert_id, relay_keys)

    async def find_user(self, shop_id: str, email: str) -> dict[str, Any]:
        """The ``{user_id, display_name}`` of the account with ``email``: asked as an owner of
        ``shop_id`` (``relay.http.staff_lookup``), to name that person in the shop's staff list.

        Raises:
            AuthError: ``no_such_user``, ``forbidden`` (not an owner of the shop), ...
            LoginRequired: no tokens, or the relay refused them.
        """
        path = f"/api/v1/shops/{shop_id}/staff-lookup"
        async with self._http() as http:
            response = await self._post(http, path, {"email": email}, await self.access_token())
            if response.status_code == 401 and _error(response)[0] == "token_expired":
                response = await self._post(http, path, {"email": email}, await self.refresh())
        if response.status_code != 200:
            code, message = _error(response)
            raise AuthError(response.status_code, code, message)
        body: dict[str, Any] = response.json()
        return body

    async def access_token(self) -> str:
        """The stored access token (it may be expired: the relay says so with close 4001).

        Raises:
            LoginRequired: no tokens stored.
        """
        tokens = await asyncio.to_thread(self.local.secrets.tokens)
        if tokens is None:
            raise LoginRequired(401, "not_logged_in", "log in again")
        return tokens.access.reveal()

    async def refresh(self) -> str:
        """Rotate the refresh token and return the new access token.

        Concurrent callers share one rotation (presenting the same refresh token twice would
        make the relay revoke the session). A refused refresh clears the secrets.

        Raises:
            LoginRequired: no refresh token, or the relay refused it (the secrets are cleared).
            RelayUnavailable: the relay could not be reached; the tokens are kept.
        """
        before = await asyncio.to_thread(self.local.secrets.tokens)
        async with self._refresh_lock:
            tokens = await asyncio.to_thread(self.local.secrets.tokens)
            if tokens is None:
                raise LoginRequired(401, "not_logged_in", "log in again")
            if before is not None and tokens.access != before.access:
                return tokens.access.reveal()  # another caller rotated while we waited
            body: dict[str, Any] = {"refresh_token": tokens.refresh.reveal()}
            identity = self.local.identity
            if identity is not None:
                body["device_public_key"] = b64url(public_bytes(identity.device.private))
            async with self._http() as http:
                response = await self._post(http, "/api/v1/auth/refresh", body)
            if response.status_code in (400, 401, 403):
                code, message = _error(response)
                log.warning("refresh refused (%s): log in again", code)
                await asyncio.to_thread(self.local.secrets.clear)
                raise LoginRequired(response.status_code, code, message or "log in again")
            if response.status_code != 200:
                code, message = _error(response)
                raise AuthError(response.status_code, code, message)
            data = response.json()
            await asyncio.to_thread(
                self.local.secrets.set_tokens, data["access_token"], data["refresh_token"]
            )
            cert_text = data.get("device_certificate")
            if identity is not None and cert_text:
                # A renewed certificate carries the account's current grants.
                device = DeviceKey(identity.device.private, b64url_decode(cert_text))
                try:
                    await self.local.set_identity(identity.user_id, device, identity.relay_keys)
                except Exception as exc:  # noqa: BLE001 - keep the old certificate, it still signs
                    log.warning("renewed certificate not adopted: %s", exc)
            log.info("access token refreshed")
            return str(data["access_token"])

    async def logout(self) -> None:
        """Revoke the session at the relay (best effort) and forget tokens and device key locally."""
        tokens = await asyncio.to_thread(self.local.secrets.tokens)
        if tokens is not None:
            try:
                async with self._http() as http:
                    await self._post(http, "/api/v1/auth/logout", None, tokens.access.reveal())
            except RelayUnavailable as exc:
                log.warning("relay unreachable at logout (%s); forgetting the tokens anyway", exc)
            except LoginRequired as exc:
                log.warning("logout not sent (%s); forgetting the tokens anyway", exc)
        await self.local.logout("logged out")
