"""The refresh token as an HttpOnly cookie (``relay.http.refresh_cookie``), against a real relay
process over loopback http: set at login for a client that asks (``QuickSlot-Refresh: cookie``),
``HttpOnly; SameSite=Strict; Path=/api/v1/auth/refresh``, accepted by the refresh endpoint in
place of a body token and rotated (the spent one, presented again, revokes the family), cleared
and refused after logout, refused from another origin, and never given to a client that did not
ask. The access tokens it yields stay bound to the device key. ``Secure`` is decided per request:
the rule is checked on request scopes.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from http.cookies import SimpleCookie

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from starlette.requests import Request

from crdt_core.pop import proof_headers, rest
from relay.http.refresh_cookie import COOKIE_NAME, COOKIE_PATH, cookie_secure, cross_origin, same_origin
from tests.support.relay_process import GENEROUS_LIMITS, PASSWORD, RelayProcess, register, unique_email

COOKIE = {"QuickSlot-Refresh": "cookie"}
REFRESH = "/api/v1/auth/refresh"


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    with RelayProcess(tmp_path_factory.mktemp("cookie") / "data", *GENEROUS_LIMITS) as proc:
        yield proc


@pytest.fixture
def client(relay: RelayProcess) -> Iterator[httpx.Client]:
    with relay.client() as c:
        yield c


def post(
    client: httpx.Client, path: str, body: dict[str, str], headers: dict[str, str], token: str | None = None
) -> httpx.Response:
    """POST with exactly the refresh cookie given (none kept from earlier responses)."""
    client.cookies.clear()
    cookie = {"Cookie": f"{COOKIE_NAME}={token}"} if token is not None else {}
    return client.post(path, json=body, headers={**headers, **cookie})


def set_cookie(response: httpx.Response) -> tuple[str, dict[str, str | bool]]:
    """The one refresh cookie a response sets: its value and attributes (lower-case names)."""
    headers = response.headers.get_list("set-cookie")
    assert len(headers) == 1, headers
    jar: SimpleCookie = SimpleCookie()
    jar.load(headers[0])
    morsel = jar[COOKIE_NAME]
    attrs: dict[str, str | bool] = {k: v for k, v in morsel.items() if v}
    lowered = headers[0].lower()
    attrs["httponly"] = "httponly" in lowered
    attrs["secure"] = "secure" in lowered
    return morsel.value, attrs


def cookie_login(client: httpx.Client, email: str, **extra: str) -> tuple[dict[str, object], str]:
    r = client.post(
        "/api/v1/auth/login", json={"email": email, "password": PASSWORD, **extra}, headers=COOKIE
    )
    assert r.status_code == 200, r.text
    token, attrs = set_cookie(r)
    assert attrs["httponly"] is True and attrs["samesite"] == "strict" and attrs["path"] == COOKIE_PATH
    assert attrs["secure"] is False  # plain http on loopback (test_secure_is_decided_per_request)
    assert int(str(attrs["max-age"])) == r.json()["refresh_expires_in"] == 7 * 24 * 3600
    return r.json(), token


def refresh_with(client: httpx.Client, token: str | None, **body: str) -> httpx.Response:
    return post(client, REFRESH, body, COOKIE, token)


def test_login_sets_the_cookie_and_refresh_rotates_it(client: httpx.Client) -> None:
    email = unique_email("cookie")
    register(client, email)
    body, first = cookie_login(client, email)
    assert body["refresh_token"] is None  # nothing for page script to keep
    assert body["access_token"]

    r = refresh_with(client, first)
    assert r.status_code == 200, r.text
    second, attrs = set_cookie(r)
    assert second != first and attrs["httponly"] is True and attrs["samesite"] == "strict"
    assert r.json()["refresh_token"] is None
    me = client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {r.json()['access_token']}"})
    assert me.status_code == 200

    # the rotated cookie works once more; the spent one revokes the family, as a body token does
    assert refresh_with(client, second).status_code == 200
    r = refresh_with(client, first)
    assert (r.status_code, r.json()["code"]) == (401, "refresh_token_reused")


def test_refresh_without_the_cookie_or_from_another_origin_is_refused(client: httpx.Client) -> None:
    email = unique_email("cookie")
    register(client, email)
    _, token = cookie_login(client, email)
    r = refresh_with(client, None)
    assert (r.status_code, r.json()["code"]) == (401, "missing_token")
    # the cookie alone, without the custom header, is not read (a form post cannot add headers)
    r = post(client, REFRESH, {}, {}, token)
    assert (r.status_code, r.json()["code"]) == (401, "missing_token")
    for headers in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
        r = post(client, REFRESH, {}, {**COOKIE, **headers}, token)
        assert (r.status_code, r.json()["code"]) == (403, "cross_origin"), headers
    # the page's own origin passes (the relay as the browser addressed it)
    own = {"Origin": str(client.base_url).rstrip("/"), "Sec-Fetch-Site": "same-origin"}
    r = post(client, REFRESH, {}, {**COOKIE, **own}, token)
    assert r.status_code == 200, r.text


def test_logout_clears_the_cookie_and_it_is_refused_after(client: httpx.Client) -> None:
    email = unique_email("cookie")
    register(client, email)
    body, token = cookie_login(client, email)
    r = client.post(
        "/api/v1/auth/logout", headers={**COOKIE, "Authorization": f"Bearer {body['access_token']}"}
    )
    assert r.status_code == 204
    cleared, attrs = set_cookie(r)
    assert cleared == "" and attrs["max-age"] == "0" and attrs["path"] == COOKIE_PATH
    r = refresh_with(client, token)  # a copy kept anyway is dead: its family is revoked
    assert (r.status_code, r.json()["code"]) == (401, "token_revoked")


def new_key() -> tuple[Ed25519PrivateKey, str]:
    key = Ed25519PrivateKey.generate()
    return key, base64.urlsafe_b64encode(key.public_key().public_bytes_raw()).rstrip(b"=").decode()


def cnf_of(token: str) -> object:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))).get("cnf")


def test_bound_tokens_keep_working_through_the_cookie(client: httpx.Client) -> None:
    email = unique_email("cookie")
    register(client, email)
    key, public = new_key()
    body, token = cookie_login(client, email, device_public_key=public)
    assert body["device_certificate"]
    # the cookie's refresh token is bound to the device key too: script that can make the browser
    # send it cannot get tokens or a certificate for a key of its own, nor spend it
    assert cnf_of(token) == {"jwk": {"kty": "OKP", "crv": "Ed25519", "x": public}}
    for other in ({"device_public_key": new_key()[1]}, {}):
        r = refresh_with(client, token, **other)
        assert (r.status_code, r.json()["code"]) == (401, "token_invalid"), other
    r = refresh_with(client, token, device_public_key=public)
    assert r.status_code == 200, r.text
    assert cnf_of(set_cookie(r)[0]) == cnf_of(token)  # and stays bound when it rotates
    access = r.json()["access_token"]
    assert r.json()["device_certificate"]
    me = rest("GET", "/api/v1/auth/me")
    bare = client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {access}"})
    assert (bare.status_code, bare.json()["code"]) == (401, "proof_required")
    proven = client.get("/api/v1/auth/me", headers=proof_headers(access, key, me))
    assert proven.status_code == 200


def test_clients_that_do_not_ask_get_body_tokens_and_no_cookie(client: httpx.Client) -> None:
    email = unique_email("body")
    register(client, email)
    public = new_key()[1]
    r = client.post(
        "/api/v1/auth/login", json={"email": email, "password": PASSWORD, "device_public_key": public}
    )
    assert r.status_code == 200 and r.json()["refresh_token"]
    assert r.headers.get_list("set-cookie") == [] and cnf_of(r.json()["refresh_token"]) is None
    r = client.post(REFRESH, json={"refresh_token": r.json()["refresh_token"]})
    assert r.status_code == 200 and r.json()["refresh_token"]
    assert r.headers.get_list("set-cookie") == []

    # a body token presented with the header moves into a cookie, bound from then on
    r = refresh_with(client, None, refresh_token=r.json()["refresh_token"], device_public_key=public)
    assert r.status_code == 200 and r.json()["refresh_token"] is None
    assert cnf_of(set_cookie(r)[0]) == {"jwk": {"kty": "OKP", "crv": "Ed25519", "x": public}}


def _request(scheme: str, host: str, peer: str = "127.0.0.1", **headers: str) -> Request:
    scope = {
        "type": "http",
        "scheme": scheme,
        "method": "POST",
        "path": REFRESH,
        "headers": [(b"host", host.encode())]
        + [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()],
        "client": (peer, 50000),
        "server": ("127.0.0.1", 8080),
        "query_string": b"",
    }
    return Request(scope)


@pytest.mark.parametrize(
    ("scheme", "host", "peer", "secure"),
    [
        ("http", "127.0.0.1:8080", "127.0.0.1", False),
        ("http", "localhost:8080", "127.0.0.1", False),
        ("http", "[::1]:8080", "::1", False),
        ("https", "127.0.0.1:8080", "127.0.0.1", True),
        ("https", "book.example", "203.0.113.9", True),
        # plain http from a TLS proxy that is not trusted to say so: the browser spoke https
        ("http", "book.example", "127.0.0.1", True),
        # a loopback name, but the request came from elsewhere
        ("http", "localhost:8080", "203.0.113.9", True),
        ("http", "192.168.1.10:8080", "192.168.1.20", True),
    ],
)
def test_secure_is_decided_per_request(scheme: str, host: str, peer: str, secure: bool) -> None:
    assert cookie_secure(_request(scheme, host, peer)) is secure


@pytest.mark.parametrize(
    ("scheme", "host", "origin", "same"),
    [
        ("http", "127.0.0.1:8080", "http://127.0.0.1:8080", True),
        ("https", "book.example", "https://book.example", True),
        ("https", "book.example", "https://BOOK.example:443", True),
        # TLS ended at a proxy that does not say so (the HAProxy example): http at the relay
        ("http", "book.example", "https://book.example", True),
        ("http", "book.example:8443", "https://book.example:8443", True),
        ("https", "book.example", "http://book.example", False),  # a downgraded page
        ("https", "book.example", "https://evil.example", False),
        ("https", "book.example", "https://book.example:8443", False),
        ("http", "127.0.0.1:8080", "http://127.0.0.1:8081", False),
        ("https", "book.example", "null", False),  # an opaque origin (sandboxed frame, file:)
        ("https", "book.example", "https://book.example:99999", False),
    ],
)
def test_the_origin_must_be_the_relay_as_the_browser_addressed_it(
    scheme: str, host: str, origin: str, same: bool
) -> None:
    assert same_origin(origin, _request(scheme, host)) is same
    assert (cross_origin(_request(scheme, host, origin=origin)) is None) is same
    assert cross_origin(_request(scheme, host)) is None  # a browser that says nothing: the other checks
    assert cross_origin(_request(scheme, host, sec_fetch_site="same-site")) is not None
