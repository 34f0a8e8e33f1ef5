"""REST endpoints: accounts under ``/api/v1/auth/`` and the operations endpoints.

Every error has one body shape, so clients switch on a stable ``code`` rather than on prose::

    {"code": "invalid_credentials", "message": "Wrong email or password."}

plus ``errors`` (field, message, type; never the submitted value, which may be a password) for
validation failures, and ``Retry-After`` on 429. Token problems answer 401 with
``WWW-Authenticate: Bearer error="invalid_token"`` and the codes ``token_expired`` (refresh and
retry), ``token_revoked`` (log in again) or ``token_invalid``, and for a token bound to a device
key without a valid proof of possession ``proof_required``, ``proof_stale`` or ``proof_invalid``.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from http import HTTPStatus
from importlib import metadata
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from crdt_core.b64 import b64url
from crdt_core.pop import PROOF_HEADER, PROOF_TIME_HEADER, ProofError, parse_proof, rest
from relay.auth.accounts import AccountError, InvalidEmail, Session, normalize_email
from relay.auth.device_certs import parse_device_public_key
from relay.auth.ratelimit import RateDecision, RateLimiter
from relay.auth.tokens import Claims, ProofFailed, TokenError
from relay.context import RelayContext
from relay.errors import RelayError
from relay.http import refresh_cookie
from relay.ops.config import SYNC_PROTOCOL_VERSION
from relay.ops.logging import get_logger, log_event
from relay.ops.metrics import CONTENT_TYPE, MetricsRegistry

log = get_logger(__name__)

try:
    SERVER_VERSION = metadata.version("quickslot-sync")
except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
    SERVER_VERSION = "0.0.0"

MAX_AUTH_BODY_BYTES = 64 * 1024


# --------------------------------------------------------------------------------------------
# errors


class ApiError(RelayError):
    """An HTTP error with a machine-readable code."""

    def __init__(
        self, status: int, code: str, message: str, *, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def error_response(
    status: int, code: str, message: str, *, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    return JSONResponse({"code": code, "message": message, **extra}, status_code=status, headers=headers)


_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


def install_error_handlers(app: FastAPI) -> None:
    """Give every error response the ``{"code", "message"}`` shape."""

    async def api_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error_response(exc.status, exc.code, exc.message, headers=exc.headers)

    async def account_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, AccountError)
        headers = {}
        if exc.retry_after_s is not None:
            headers["Retry-After"] = RateDecision(False, exc.retry_after_s).retry_after_header
        if exc.status == 401:
            headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
        return error_response(exc.status, exc.code, exc.message, headers=headers)

    async def token_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, TokenError)
        return error_response(
            401,
            exc.code,
            _TOKEN_MESSAGES.get(exc.code, "Invalid token."),
            headers={"WWW-Authenticate": f'Bearer error="invalid_token", error_description="{exc.code}"'},
        )

    async def validation_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = [
            {
                "field": ".".join(str(p) for p in e.get("loc", ()) if p != "body"),
                "message": e.get("msg", ""),
                "type": e.get("type", ""),
            }
            for e in exc.errors()
        ]
        return error_response(422, "validation_error", "The request body is invalid.", errors=errors)

    async def http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        code = _STATUS_CODES.get(exc.status_code, f"http_{exc.status_code}")
        message = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
        return error_response(exc.status_code, code, message, headers=getattr(exc, "headers", None))

    async def internal_error(_: Request, exc: Exception) -> Response:
        log_event(log, "unhandled_error", logging.ERROR, exc_info=exc)
        return error_response(500, "internal_error", "Internal server error.")

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(AccountError, account_error)
    app.add_exception_handler(TokenError, token_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, internal_error)


_TOKEN_MESSAGES = {
    "token_expired": "The token has expired; refresh it.",
    "token_revoked": "The session has been revoked; log in again.",
    "token_invalid": "The token is invalid.",
    "proof_required": "This token is bound to a device key: send QuickSlot-Proof and QuickSlot-Proof-Time.",
    "proof_stale": "The proof of possession's time is too far from the relay's clock (check the clock).",
    "proof_invalid": "The proof of possession failed.",
}


# --------------------------------------------------------------------------------------------
# middleware


class BodyLimitMiddleware:
    """Refuse HTTP request bodies over ``max_bytes`` (413) before anything parses them.

    Bodies under ``prefix`` are small JSON documents, so the middleware reads the whole body
    (stopping as soon as it exceeds the limit, whether declared by Content-Length or streamed
    in chunks) and replays it to the app. Raising from inside ``receive`` instead would be
    turned into a 400 by FastAPI's body parsing.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int, prefix: str = "/api/v1/auth/") -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and (not value.isdigit() or int(value) > self.max_bytes):
                await self._reject(scope, receive, send)
                return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                await self._reject(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(
            413, "payload_too_large", "Request body too large.", headers={"Connection": "close"}
        )
        await response(scope, receive, send)


class HttpMetricsMiddleware:
    """Count HTTP requests and their latency by method, route template and status."""

    def __init__(self, app: ASGIApp, *, metrics: MetricsRegistry) -> None:
        self.app = app
        self.requests = metrics.counter(
            "relay_http_requests_total",
            "HTTP requests by method, route and status",
            ["method", "route", "status"],
        )
        self.latency = metrics.histogram(
            "relay_http_request_duration_seconds", "HTTP request latency", ["method", "route"]
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            self.requests.labels(method, template, str(status)).inc()
            self.latency.labels(method, template).observe(time.perf_counter() - start)


# --------------------------------------------------------------------------------------------
# rate limiters


def _account_key(email: str) -> str:
    try:
        return normalize_email(email)
    except InvalidEmail:
        return (email or "").strip().lower()[:320]


def _client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def _enforce(ctx: RelayContext, scope: str, *checks: tuple[RateLimiter, str]) -> None:
    """Hit each limiter in turn; stop at (and report) the first that refuses."""
    for limiter, key in checks:
        decision = await limiter.take(key)
        if not decision.allowed:
            ctx.metrics.counter(
                "relay_rate_limited_total", "Requests refused by a rate limit", ["scope"]
            ).labels(scope=scope).inc()
            raise ApiError(
                429,
                "rate_limited",
                "Too many attempts; try again later.",
                headers={"Retry-After": decision.retry_after_header},
            )


# --------------------------------------------------------------------------------------------
# models


class UserOut(BaseModel):
    id: str
    email: str
    display_name: str
    roles: list[str]
    owner_of: list[str]
    staff_of: list[str]
    created_at: float
    disabled: bool


class RegisterIn(BaseModel):
    email: str = Field(max_length=320)
    password: str = Field(max_length=4096)
    display_name: str = Field(max_length=400)


class LoginIn(BaseModel):
    email: str = Field(max_length=320)
    password: str = Field(max_length=4096)
    device_public_key: str | None = Field(
        default=None, max_length=128, description="base64url of a 32-byte Ed25519 public key"
    )


class RefreshIn(BaseModel):
    refresh_token: str | None = Field(
        default=None,
        max_length=4096,
        description="The refresh token; omitted by a browser client whose token is the HttpOnly "
        "cookie (header QuickSlot-Refresh: cookie)",
    )
    device_public_key: str | None = Field(default=None, max_length=128)


class ResetRequestIn(BaseModel):
    email: str = Field(max_length=320)


class ResetConfirmIn(BaseModel):
    token: str = Field(max_length=256)
    new_password: str = Field(max_length=4096)


class TokenOut(BaseModel):
    access_token: str
    refresh_token: str | None = Field(
        description="null when the request asked for the refresh token as a cookie "
        "(QuickSlot-Refresh: cookie)"
    )
    token_type: str = "bearer"
    expires_in: int
    refresh_expires_in: int
    user: UserOut
    device_certificate: str | None = Field(default=None, description="base64url certificate bytes")


class StatusOut(BaseModel):
    status: str


class ErrorOut(BaseModel):
    code: str
    message: str


class SyncStatusOut(BaseModel):
    server_version: str
    protocol_version: int
    store_epoch: str
    server_time_ms: int
    server_time: str
    #: A restored relay's stamp hold (``relay.sync.stamp_hold``): ``active``, ``window_open``,
    #: ``until``, ``remaining_s``, ``held_claims``, ``stamped_claims``; None before sync starts.
    restore_stamp_hold: dict[str, Any] | None = None


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut},
    401: {"model": ErrorOut},
    403: {"model": ErrorOut},
    409: {"model": ErrorOut},
    422: {"model": ErrorOut},
    429: {"model": ErrorOut},
}


# --------------------------------------------------------------------------------------------
# dependencies


def get_ctx(request: Request) -> RelayContext:
    ctx: RelayContext = request.app.state.relay
    return ctx


CtxDep = Annotated["RelayContext", Depends(get_ctx)]


def bearer_token(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(
            401,
            "missing_token",
            "An access token is required (Authorization: Bearer <token>).",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return token.strip()


#: The proof headers as parameters, so the OpenAPI page shows clients what a bound token needs.
ProofHeader = Annotated[
    str | None,
    Header(
        alias=PROOF_HEADER,
        description="For an access token bound to a device key (claim cnf): base64url Ed25519 "
        "signature by that key over the proof statement for this method and path "
        "(docs/protocol.md, section 1.1).",
    ),
]
ProofTimeHeader = Annotated[
    str | None,
    Header(
        alias=PROOF_TIME_HEADER, description="The proof's time, Unix seconds (within 300 s of the relay's)."
    ),
]


def require_access(
    request: Request, proof_header: ProofHeader = None, proof_time: ProofTimeHeader = None
) -> Claims:
    """Dependency: verified, unrevoked access-token claims.

    A token bound to a device key needs the ``QuickSlot-Proof`` and ``QuickSlot-Proof-Time``
    headers, a proof made for this method and path (``crdt_core.pop``); 401 ``proof_required``,
    ``proof_stale`` or ``proof_invalid`` otherwise.
    """
    ctx = get_ctx(request)
    try:
        token = bearer_token(request)
        malformed: ProofError | None = None
        try:
            proof = parse_proof(proof_header, proof_time)
        except ProofError as exc:  # refused below only if the token needs a proof (bound)
            proof, malformed = None, exc
        try:
            return ctx.tokens.verify_access(
                token, purpose=rest(request.method, request.url.path), proof=proof
            )
        except ProofFailed as exc:
            if malformed is not None:
                raise ProofFailed(malformed) from None
            raise exc from None
    except TokenError as e:
        ctx.accounts.count_failure(e.code)
        raise


ClaimsDep = Annotated[Claims, Depends(require_access)]


def _device_key(text: str | None) -> bytes | None:
    if text is None:
        return None
    try:
        return parse_device_public_key(text)
    except ValueError:
        raise ApiError(
            422, "invalid_device_key", "device_public_key must be base64url of a 32-byte Ed25519 key."
        ) from None


#: The opt-in header of a browser client that keeps its refresh token as an HttpOnly cookie.
CookieHeader = Annotated[
    str | None,
    Header(
        alias=refresh_cookie.COOKIE_HEADER,
        description="`cookie`: the refresh token travels as the HttpOnly cookie quickslot_refresh "
        "(Path=/api/v1/auth/refresh), not in JSON bodies (docs/relay.md, auth)",
    ),
]


def _cookie_mode(request: Request) -> bool:
    """The client asked for the cookie; refused (403 ``cross_origin``) if the browser says the
    request comes from another origin (``relay.http.refresh_cookie``)."""
    if not refresh_cookie.wants_cookie(request):
        return False
    why = refresh_cookie.cross_origin(request)
    if why is not None:
        raise ApiError(403, "cross_origin", f"Refused: {why}.")
    return True


def _token_out(
    ctx: RelayContext, session: Session, cookie: tuple[Request, Response] | None = None
) -> TokenOut:
    """The token pair for the body; with ``cookie`` the refresh token goes into the cookie."""
    cert = session.device_certificate
    refresh_ttl = session.refresh.claims.exp - session.refresh.claims.iat
    if cookie is not None:
        refresh_cookie.set_refresh_cookie(cookie[1], cookie[0], session.refresh.token, refresh_ttl)
    return TokenOut(
        access_token=session.access.token,
        refresh_token=None if cookie is not None else session.refresh.token,
        expires_in=session.access.claims.exp - session.access.claims.iat,
        refresh_expires_in=refresh_ttl,
        user=UserOut(**session.user.public()),
        device_certificate=b64url(cert) if cert is not None else None,
    )


# --------------------------------------------------------------------------------------------
# routers

auth_router = APIRouter(prefix="/api/v1/auth", tags=["auth"], responses=_ERRORS)


@auth_router.post("/register", status_code=201, response_model=UserOut)
async def register(body: RegisterIn, request: Request, ctx: CtxDep) -> UserOut:
    """Create an account (email, password, display name)."""
    await _enforce(ctx, "register_address", (ctx.limiters.register_address, _client_address(request)))
    user = await ctx.accounts.register(body.email, body.password, body.display_name)
    return UserOut(**user.public())


@auth_router.post("/login", response_model=TokenOut)
async def login(
    body: LoginIn, request: Request, response: Response, ctx: CtxDep, _cookie: CookieHeader = None
) -> TokenOut:
    """Exchange email and password for an access/refresh token pair (and a device certificate
    when ``device_public_key`` is given). With ``QuickSlot-Refresh: cookie`` the refresh token is
    set as an HttpOnly cookie instead of returned."""
    cookie = _cookie_mode(request)
    device_key = _device_key(body.device_public_key)
    await _enforce(
        ctx,
        "login",
        (ctx.limiters.login_address, _client_address(request)),
        (ctx.limiters.login_account, _account_key(body.email)),
    )
    # a cookie session's refresh token is bound to the device key: only that key refreshes it
    session = await ctx.accounts.login(body.email, body.password, device_key, bind_refresh=cookie)
    return _token_out(ctx, session, (request, response) if cookie else None)


@auth_router.post("/refresh", response_model=TokenOut)
async def refresh(
    body: RefreshIn, request: Request, response: Response, ctx: CtxDep, _cookie: CookieHeader = None
) -> TokenOut:
    """Rotate a refresh token: the presented one is spent, a new pair is returned. Presenting a
    spent refresh token revokes the whole session family. With ``QuickSlot-Refresh: cookie`` the
    token comes from the body or else the cookie, and the new one goes into the cookie."""
    cookie = _cookie_mode(request)
    device_key = _device_key(body.device_public_key)
    token = body.refresh_token
    if token is None and cookie:
        token = request.cookies.get(refresh_cookie.COOKIE_NAME)
    if token is None:
        raise ApiError(
            401,
            "missing_token",
            "A refresh token is required (refresh_token, or the cookie with QuickSlot-Refresh: cookie).",
        )
    session = await ctx.accounts.refresh(token, device_key, bind_refresh=cookie)
    return _token_out(ctx, session, (request, response) if cookie else None)


@auth_router.get("/me", response_model=UserOut)
async def me(claims: ClaimsDep, ctx: CtxDep) -> UserOut:
    """The signed-in user."""
    user = await ctx.accounts.current_user(claims)
    return UserOut(**user.public())


@auth_router.post("/logout", status_code=204, response_class=Response)
async def logout(claims: ClaimsDep, request: Request, ctx: CtxDep, _cookie: CookieHeader = None) -> Response:
    """Revoke this session's refresh family (its access tokens stop working too); with
    ``QuickSlot-Refresh: cookie`` the refresh cookie is cleared as well."""
    cookie = _cookie_mode(request)
    await ctx.accounts.logout(claims)
    response = Response(status_code=204)
    if cookie:
        refresh_cookie.clear_refresh_cookie(response, request)
    return response


@auth_router.post("/password-reset/request", status_code=202, response_model=StatusOut)
async def password_reset_request(body: ResetRequestIn, request: Request, ctx: CtxDep) -> StatusOut:
    """Mail a single-use reset token if the account exists. Always 202, whether it does or not."""
    await _enforce(
        ctx,
        "password_reset",
        (ctx.limiters.reset_address, _client_address(request)),
        (ctx.limiters.reset_account, _account_key(body.email)),
    )
    ctx.accounts.request_password_reset(body.email)
    return StatusOut(status="accepted")


@auth_router.post("/password-reset/confirm", response_model=StatusOut)
async def password_reset_confirm(body: ResetConfirmIn, request: Request, ctx: CtxDep) -> StatusOut:
    """Set a new password with a reset token; every session of the account is revoked."""
    await _enforce(ctx, "password_reset", (ctx.limiters.reset_address, _client_address(request)))
    await ctx.accounts.confirm_password_reset(body.token, body.new_password)
    return StatusOut(status="password_changed")


ops_router = APIRouter(tags=["operations"])


@ops_router.get("/healthz")
async def healthz(ctx: CtxDep) -> JSONResponse:
    """Liveness and readiness: 200 once every component has started, 503 while stopping."""
    ready = ctx.ready and not ctx.stopping.is_set()
    for check in ctx.health_checks:
        if not await check():
            ready = False
    return JSONResponse(
        {"status": "ok" if ready else "unavailable", "epoch": ctx.epoch}, status_code=200 if ready else 503
    )


@ops_router.get("/metrics", response_class=PlainTextResponse)
async def metrics(ctx: CtxDep) -> PlainTextResponse:
    """Prometheus text exposition of every registered metric."""
    return PlainTextResponse(ctx.metrics.render(), media_type=CONTENT_TYPE)


@ops_router.get("/.well-known/jwks.json")
async def jwks(ctx: CtxDep) -> JSONResponse:
    """Public keys (OKP/Ed25519 JWKs with kid) that verify tokens, certificates and stamps."""
    return JSONResponse(ctx.keys.jwks(), headers={"Cache-Control": "public, max-age=60"})


@ops_router.get("/api/v1/sync/status", response_model=SyncStatusOut)
async def sync_status(ctx: CtxDep) -> SyncStatusOut:
    """Server and protocol version, the store epoch and the server clock."""
    now = time.time()
    return SyncStatusOut(
        server_version=SERVER_VERSION,
        protocol_version=SYNC_PROTOCOL_VERSION,
        store_epoch=ctx.epoch,
        server_time_ms=int(now * 1000),
        server_time=datetime.fromtimestamp(now, UTC).isoformat().replace("+00:00", "Z"),
        restore_stamp_hold=ctx.stamp_hold.status() if ctx.stamp_hold is not None else None,
    )
