"""The refresh token as an HttpOnly cookie, for browser clients that ask for it.

A web page keeps everything it stores (localStorage, IndexedDB) where its own script can read it,
so a script injected into the page could carry a refresh token away and use it for days. A
browser client therefore opts in with the request header ``QuickSlot-Refresh: cookie`` on
login, refresh and logout; the relay then:

* sets the refresh token as the cookie ``quickslot_refresh``: ``HttpOnly`` (no script reads it),
  ``SameSite=Strict`` (no other site's page sends it), ``Path=/api/v1/auth/refresh`` (sent to
  the refresh endpoint only), ``Max-Age`` the refresh token's lifetime, and ``Secure`` except on
  plain-http loopback (:func:`cookie_secure`); the response body's ``refresh_token`` is null;
* takes the refresh token from that cookie at ``/api/v1/auth/refresh`` when the body has none,
  rotating it as always (a new cookie replaces the spent one; a spent one presented again revokes
  the family, as a spent body token does);
* clears it at logout (``Max-Age=0``).

The cookie's refresh token is bound to the device key given at login (``cnf``, as bound access
tokens; ``relay.auth.accounts.AccountService.refresh`` checks it), so script that can make the
browser send the cookie gets tokens and certificates only for the page's own key.

Clients that send no such header (the CLI, the Python client, peers) get and present their
tokens in JSON bodies exactly as before.

Cross-site request forgery: a cookie is sent with requests no page of ours made, so a request
that uses or sets it must come from our own origin. Three checks, any one enough on its own in
today's browsers: ``SameSite=Strict``; the custom header, which a form cannot send and a
cross-origin script can send only after a CORS preflight the relay never approves; and, when the
browser says where the request comes from, ``Origin`` equal to the relay's own origin and
``Sec-Fetch-Site`` ``same-origin`` (403 ``cross_origin`` otherwise; :func:`same_origin` says
how the relay knows its own origin behind a proxy).
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from fastapi import Request, Response

__all__ = [
    "COOKIE_HEADER",
    "COOKIE_NAME",
    "COOKIE_PATH",
    "clear_refresh_cookie",
    "cookie_secure",
    "cross_origin",
    "same_origin",
    "set_refresh_cookie",
    "wants_cookie",
]

COOKIE_NAME = "quickslot_refresh"
COOKIE_PATH = "/api/v1/auth/refresh"
COOKIE_HEADER = "QuickSlot-Refresh"
COOKIE_MODE = "cookie"
_LOOPBACK_NAMES = {"localhost"}


def wants_cookie(request: Request) -> bool:
    """The client asked for the refresh token as a cookie (``QuickSlot-Refresh: cookie``)."""
    return request.headers.get(COOKIE_HEADER, "").strip().lower() == COOKIE_MODE


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _host_port(netloc: str, scheme: str) -> tuple[str, int] | None:
    """``host[:port]`` as (lower-case host, port), the port defaulting by ``scheme``."""
    try:
        parts = urlsplit(f"//{netloc}")
        return (parts.hostname or "", parts.port or _DEFAULT_PORTS.get(scheme, 0))
    except ValueError:
        return None


def same_origin(origin: str, request: Request) -> bool:
    """Whether ``origin`` (a browser's ``Origin`` header) is the relay as the browser addressed it:
    the same host and port as the ``Host`` header, and the request's scheme or ``https`` (TLS ended
    at a proxy that does not say so, such as the HAProxy example, reaches the relay as http)."""
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    scheme = parts.scheme.lower()
    if scheme not in (request.url.scheme, "https") or parts.netloc == "":
        return False
    return _host_port(parts.netloc, scheme) == _host_port(request.headers.get("host", ""), scheme)


def cross_origin(request: Request) -> str | None:
    """Why a cookie request came from another origin, as the browser says, or None."""
    origin = request.headers.get("origin")
    if origin is not None and not same_origin(origin, request):
        return "the request comes from another origin"
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return f"the request is {site}"
    return None


def _loopback(host: str) -> bool:
    name = host.strip().lower()
    if name.startswith("["):  # [::1]:8080
        name = name[1 : name.find("]")] if "]" in name else name
    elif name.count(":") == 1:  # 127.0.0.1:8080, localhost:8080
        name = name.rsplit(":", 1)[0]
    if name in _LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def cookie_secure(request: Request) -> bool:
    """``Secure`` unless the request is plain http to a loopback name from a loopback peer.

    Browsers store a ``Secure`` cookie only from an https page (Chromium makes no exception for
    http://127.0.0.1), so a relay on loopback for development or tests, reached over http, sets
    the cookie without ``Secure``: nothing on the way can read loopback traffic. Everything else
    gets ``Secure``, including plain http that arrives from a TLS proxy not trusted with
    ``--forwarded-allow-ips`` (the browser spoke https to the proxy, so it keeps the cookie); a
    browser on a plain-http, non-loopback address drops the cookie, so that session ends at its
    first refresh (log in again): serve the app over https.
    """
    if request.url.scheme != "http":
        return True
    peer = request.client.host if request.client is not None else ""
    return not (_loopback(request.headers.get("host", "")) and _loopback(peer))


def set_refresh_cookie(response: Response, request: Request, token: str, max_age: int) -> None:
    response.set_cookie(
        COOKIE_NAME,
        token,
        max_age=max_age,
        path=COOKIE_PATH,
        secure=cookie_secure(request),
        httponly=True,
        samesite="strict",
    )


def clear_refresh_cookie(response: Response, request: Request) -> None:
    response.delete_cookie(
        COOKIE_NAME, path=COOKIE_PATH, secure=cookie_secure(request), httponly=True, samesite="strict"
    )
