"""The auth REST API against a real relay process: accounts, tokens, families, keys, ops.

Every test runs twice: on the embedded SQLite store and on a PostgreSQL database (``--store``),
where accounts, tokens, revocations, rate limits and signing keys live in the database.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from relay.auth.passwords import legacy_pbkdf2_hash
from tests.support.eventually import eventually_blocking
from tests.support.relay_process import (
    GENEROUS_LIMITS,
    PASSWORD,
    STORES,
    RelayProcess,
    bearer,
    login,
    register,
    store_args,
    unique_email,
)


@pytest.fixture(scope="module", params=STORES)
def relay(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    with RelayProcess(
        tmp_path_factory.mktemp("api") / "data",
        *GENEROUS_LIMITS,
        "--events-poll",
        "0.2",
        *store_args(request, request.param),
    ) as proc:
        yield proc


@pytest.fixture
def client(relay: RelayProcess) -> Iterator[httpx.Client]:
    with relay.client() as c:
        yield c


def test_register_login_me(client: httpx.Client) -> None:
    email = unique_email("Ann")
    user = register(client, email.upper(), name="  Ann  ")
    assert user["email"] == email.lower()
    assert user["display_name"] == "Ann"
    assert user["roles"] == [] and user["owner_of"] == [] and not user["disabled"]

    tokens = login(client, email)
    assert tokens["token_type"] == "bearer"
    assert tokens["expires_in"] == 30 * 60
    assert tokens["refresh_expires_in"] == 7 * 24 * 3600
    assert tokens["user"]["id"] == user["id"]
    header = jwt.get_unverified_header(tokens["access_token"])
    assert header["alg"] == "EdDSA" and header["kid"] and header["typ"] == "at+jwt"
    claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    assert claims["sub"] == user["id"] and claims["typ"] == "access" and claims["fam"]

    r = client.get("/api/v1/auth/me", headers=bearer(tokens["access_token"]))
    assert r.status_code == 200
    assert r.json()["id"] == user["id"]


def test_register_validation(client: httpx.Client) -> None:
    email = unique_email()
    register(client, email)
    r = client.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD, "display_name": "x"})
    assert (r.status_code, r.json()["code"]) == (409, "email_taken")
    r = client.post(
        "/api/v1/auth/register", json={"email": "not-an-email", "password": PASSWORD, "display_name": "x"}
    )
    assert (r.status_code, r.json()["code"]) == (422, "invalid_email")
    r = client.post(
        "/api/v1/auth/register", json={"email": unique_email(), "password": "short", "display_name": "x"}
    )
    assert (r.status_code, r.json()["code"]) == (422, "weak_password")
    r = client.post(
        "/api/v1/auth/register", json={"email": unique_email(), "password": PASSWORD, "display_name": " "}
    )
    assert (r.status_code, r.json()["code"]) == (422, "invalid_input")
    # Pydantic errors never echo the submitted values (which may be passwords).
    secret = "s3cret-value-that-must-not-echo"
    r = client.post("/api/v1/auth/register", json={"email": 5, "password": secret})
    assert r.status_code == 422 and r.json()["code"] == "validation_error"
    assert secret not in r.text
    assert {e["field"] for e in r.json()["errors"]} >= {"display_name"}


def test_unknown_email_and_wrong_password_look_the_same(client: httpx.Client) -> None:
    email = unique_email()
    register(client, email)
    wrong = client.post("/api/v1/auth/login", json={"email": email, "password": "wrong password!"})
    unknown = client.post("/api/v1/auth/login", json={"email": unique_email(), "password": "wrong password!"})
    assert wrong.status_code == unknown.status_code == 401
    assert (
        wrong.json()
        == unknown.json()
        == {"code": "invalid_credentials", "message": "Wrong email or password."}
    )


def test_login_and_refresh_issue_device_certificates(client: httpx.Client, relay: RelayProcess) -> None:
    email = unique_email()
    user = register(client, email)
    device = Ed25519PrivateKey.generate().public_key()
    raw = device.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    b64 = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    tokens = login(client, email, device_public_key=b64)
    assert login(client, email)["device_certificate"] is None  # no device key, no certificate
    r = client.post(
        "/api/v1/auth/login", json={"email": email, "password": PASSWORD, "device_public_key": "AAAA"}
    )
    assert (r.status_code, r.json()["code"]) == (422, "invalid_device_key")

    certs = pytest.importorskip("crdt_core.certs")
    trusted = {
        k["kid"]: base64.urlsafe_b64decode(k["x"] + "==")
        for k in client.get("/.well-known/jwks.json").json()["keys"]
    }
    cert = certs.parse_certificate(base64.urlsafe_b64decode(tokens["device_certificate"] + "=="), trusted)
    assert cert.user_id == user["id"] and cert.device_key == raw
    assert cert.roles == frozenset() and cert.owner_of == frozenset()
    assert cert.expires_at_ms - cert.issued_at_ms == 7 * 24 * 3600 * 1000

    # A role change shows up in the next certificate (here: on refresh).
    relay.cli_json("user", "grant", email, "--owner", "shop-7")
    r = client.post(
        "/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"], "device_public_key": b64}
    )
    assert r.status_code == 200
    cert = certs.parse_certificate(base64.urlsafe_b64decode(r.json()["device_certificate"] + "=="), trusted)
    assert cert.owner_of == frozenset({"shop-7"}) and cert.device_key == raw


def test_refresh_rotates(client: httpx.Client) -> None:
    email = unique_email()
    register(client, email)
    first = login(client, email)
    r = client.post("/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert r.status_code == 200, r.text
    second = r.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    fam1 = jwt.decode(first["access_token"], options={"verify_signature": False})["fam"]
    fam2 = jwt.decode(second["access_token"], options={"verify_signature": False})["fam"]
    assert fam1 == fam2
    # The new pair works; the old access token (same family, not expired) still works too.
    assert client.get("/api/v1/auth/me", headers=bearer(second["access_token"])).status_code == 200
    assert client.get("/api/v1/auth/me", headers=bearer(first["access_token"])).status_code == 200
    r = client.post("/api/v1/auth/refresh", json={"refresh_token": second["refresh_token"]})
    assert r.status_code == 200


def test_refresh_reuse_revokes_the_family(client: httpx.Client) -> None:
    email = unique_email()
    register(client, email)
    other = login(client, email)  # a second session (family) of the same user
    first = login(client, email)
    second = client.post("/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]}).json()

    r = client.post("/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert (r.status_code, r.json()["code"]) == (401, "refresh_token_reused")
    # The whole family is gone: the rotated refresh token and both access tokens.
    r = client.post("/api/v1/auth/refresh", json={"refresh_token": second["refresh_token"]})
    assert (r.status_code, r.json()["code"]) == (401, "token_revoked")
    for token in (first["access_token"], second["access_token"]):
        r = client.get("/api/v1/auth/me", headers=bearer(token))
        assert (r.status_code, r.json()["code"]) == (401, "token_revoked")
        assert r.headers["www-authenticate"].startswith("Bearer")
    # Other families of the same user are untouched.
    assert client.get("/api/v1/auth/me", headers=bearer(other["access_token"])).status_code == 200


def test_logout_revokes_the_family(client: httpx.Client) -> None:
    email = unique_email()
    register(client, email)
    tokens = login(client, email)
    r = client.post("/api/v1/auth/logout", headers=bearer(tokens["access_token"]))
    assert r.status_code == 204
    r = client.get("/api/v1/auth/me", headers=bearer(tokens["access_token"]))
    assert (r.status_code, r.json()["code"]) == (401, "token_revoked")
    r = client.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert (r.status_code, r.json()["code"]) == (401, "token_revoked")
    r = client.post("/api/v1/auth/logout")
    assert (r.status_code, r.json()["code"]) == (401, "missing_token")


def test_disabled_user_is_shut_out(client: httpx.Client, relay: RelayProcess) -> None:
    email = unique_email()
    register(client, email)
    tokens = login(client, email)
    out = relay.cli_json("user", "disable", email)
    assert out["disabled"] is True

    r = client.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
    assert (r.status_code, r.json()["code"]) == (403, "account_disabled")
    # A disabled user's wrong-password attempt still says invalid_credentials (no oracle).
    r = client.post("/api/v1/auth/login", json={"email": email, "password": "wrong password!"})
    assert r.json()["code"] == "invalid_credentials"
    # The running server learns of the CLI's change through account_events.
    eventually_blocking(
        lambda: client.get("/api/v1/auth/me", headers=bearer(tokens["access_token"])).status_code == 401
    )
    assert (
        client.get("/api/v1/auth/me", headers=bearer(tokens["access_token"])).json()["code"]
        == "token_revoked"
    )
    r = client.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert r.status_code == 401

    relay.cli_json("user", "enable", email)
    eventually_blocking(
        lambda: (
            client.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD}).status_code == 200
        )
    )
    # Sessions from before the disable stay dead.
    r = client.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert r.status_code == 401


@pytest.mark.parametrize("style", ["passlib", "django"])
def test_legacy_pbkdf2_hash_logs_in_and_is_upgraded(
    client: httpx.Client, relay: RelayProcess, style: str
) -> None:
    email = unique_email("legacy")
    user = register(client, email, password="placeholder-password")
    legacy = legacy_pbkdf2_hash("old backend password", iterations=100_000, style=style)
    relay.sql("UPDATE account_users SET password_hash = ? WHERE user_id = ?", legacy, user["id"])

    r = client.post("/api/v1/auth/login", json={"email": email, "password": "wrong password!"})
    assert r.status_code == 401
    [(stored,)] = relay.sql("SELECT password_hash FROM account_users WHERE user_id = ?", user["id"])
    assert stored == legacy  # a failed login changes nothing

    login(client, email, password="old backend password")
    [(stored,)] = relay.sql("SELECT password_hash FROM account_users WHERE user_id = ?", user["id"])
    assert stored.startswith("$argon2id$v=19$m=1024,t=1,p=1$")
    login(client, email, password="old backend password")


def test_jwks_and_key_rotation_keep_old_tokens_valid(client: httpx.Client, relay: RelayProcess) -> None:
    email = unique_email()
    register(client, email)
    before = login(client, email)
    old_kid = jwt.get_unverified_header(before["access_token"])["kid"]
    jwks = client.get("/.well-known/jwks.json").json()
    assert old_kid in {k["kid"] for k in jwks["keys"]}
    for key in jwks["keys"]:
        assert key["kty"] == "OKP" and key["crv"] == "Ed25519" and key["alg"] == "EdDSA"
        assert len(base64.urlsafe_b64decode(key["x"] + "==")) == 32

    rotated = relay.cli_json("keys", "rotate")
    new_kid = rotated["active_kid"]
    assert rotated["retired_kid"] == old_kid and new_kid != old_kid

    def new_key_in_use() -> bool:
        tokens = login(client, email)
        return bool(jwt.get_unverified_header(tokens["access_token"])["kid"] == new_kid)

    eventually_blocking(new_key_in_use)
    kids = [k["kid"] for k in client.get("/.well-known/jwks.json").json()["keys"]]
    assert kids[0] == new_kid and old_kid in kids
    # Tokens signed with the retired key stay valid until they expire.
    assert client.get("/api/v1/auth/me", headers=bearer(before["access_token"])).status_code == 200
    r = client.post("/api/v1/auth/refresh", json={"refresh_token": before["refresh_token"]})
    assert r.status_code == 200
    assert jwt.get_unverified_header(r.json()["access_token"])["kid"] == new_kid
    # Every published key verifies what it signed.
    for key in client.get("/.well-known/jwks.json").json()["keys"]:
        pub = jwt.PyJWK(key).key
        if key["kid"] == old_kid:
            jwt.decode(before["access_token"], pub, algorithms=["EdDSA"], audience="quickslot-sync")


def test_ops_endpoints(client: httpx.Client, relay: RelayProcess) -> None:
    # Its own login, for the metrics below: under xdist this module's tests are spread over
    # workers, each with its own relay, so no earlier test is sure to have logged in here.
    email = unique_email()
    register(client, email)
    login(client, email)
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    status = client.get("/api/v1/sync/status").json()
    assert status["protocol_version"] == 1
    if relay.store_url is None:
        assert status["store_epoch"] == (relay.data_dir / "epoch").read_text().strip()
    else:  # every node on the database announces the database's epoch
        [(epoch,)] = relay.sql("SELECT value FROM relay_meta WHERE key = 'epoch'")
        assert status["store_epoch"] == epoch
    assert status["server_version"] and abs(status["server_time_ms"] / 1000 - __import__("time").time()) < 60
    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = metrics.text
    assert "# TYPE relay_auth_logins_total counter" in text
    assert 'relay_auth_logins_total{result="ok"}' in text
    assert "relay_http_request_duration_seconds_bucket" in text
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    for path in (
        "register",
        "login",
        "refresh",
        "me",
        "logout",
        "password-reset/request",
        "password-reset/confirm",
    ):
        assert f"/api/v1/auth/{path}" in paths
    for path, method in (("me", "get"), ("logout", "post")):  # what a bound token needs is listed
        params = paths[f"/api/v1/auth/{path}"][method]["parameters"]
        headers = {p["name"] for p in params if p["in"] == "header"}
        assert {"QuickSlot-Proof", "QuickSlot-Proof-Time"} <= headers, headers


def test_error_bodies_are_consistent(client: httpx.Client) -> None:
    r = client.get("/nope")
    assert (r.status_code, r.json()["code"]) == (404, "not_found")
    r = client.get("/api/v1/auth/login")
    assert (r.status_code, r.json()["code"]) == (405, "method_not_allowed")
    r = client.post("/api/v1/auth/login", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["code"] == "validation_error"
    r = client.post(
        "/api/v1/auth/login", content=b"x" * 100_000, headers={"content-type": "application/json"}
    )
    assert (r.status_code, r.json()["code"]) == (413, "payload_too_large")

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit must hold for streamed bodies too
        for _ in range(100):
            yield b"x" * 1000

    r = client.post("/api/v1/auth/login", content=chunks(), headers={"content-type": "application/json"})
    assert (r.status_code, r.json()["code"]) == (413, "payload_too_large")
    r = client.get("/api/v1/auth/me", headers={"Authorization": "Basic Zm9vOmJhcg=="})
    assert (r.status_code, r.json()["code"]) == (401, "missing_token")


def test_files_are_private(relay: RelayProcess) -> None:
    keys = relay.data_dir / "keys"
    assert keys.stat().st_mode & 0o777 == 0o700
    for f in keys.glob("*.key"):
        assert f.stat().st_mode & 0o777 == 0o600
    assert (relay.data_dir / "relay.sqlite3").stat().st_mode & 0o077 == 0


def test_zz_logs_are_json_without_secrets(client: httpx.Client, relay: RelayProcess) -> None:
    """Runs last in this module: everything above went through the log."""
    email = unique_email()
    register(client, email)
    tokens = login(client, email)
    client.get("/api/v1/auth/me", headers=bearer(tokens["access_token"]))
    lines = [ln for ln in relay.log_text().splitlines() if ln.strip()]
    assert lines
    for line in lines:
        entry = json.loads(line)  # every line is a JSON object
        assert {"ts", "level", "logger", "event"} <= entry.keys()
    text = relay.log_text()
    assert PASSWORD not in text and "old backend password" not in text
    assert tokens["access_token"] not in text and tokens["refresh_token"] not in text
    assert tokens["refresh_token"].split(".")[1] not in text
