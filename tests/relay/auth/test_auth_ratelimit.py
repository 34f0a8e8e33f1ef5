"""Login, register and reset rate limits on a real relay, per account and per client address.

Loopback has a whole /8, so the client binds to 127.0.0.2, 127.0.0.3, ... to act as different
addresses against the same relay. The relay tests run on both stores: in memory for SQLite, in
the shared ``auth_rate_buckets`` table for PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from relay.auth.ratelimit import TokenBucketLimiter
from relay.ops.config import RateLimit
from tests.support.relay_process import PASSWORD, STORES, RelayProcess, register, store_args, unique_email


@pytest.fixture(scope="module", params=STORES)
def relay(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    args = [
        "--login-rate-account", "3/60", "--login-rate-address", "8/60", "--register-rate-address", "100/60",
        "--reset-rate-account", "2/600", "--reset-rate-address", "100/60",
        *store_args(request, request.param),
    ]  # fmt: skip
    with RelayProcess(tmp_path_factory.mktemp("rl") / "data", *args) as proc:
        yield proc


def attempt(client: httpx.Client, email: str, password: str = "wrong password!") -> httpx.Response:
    return client.post("/api/v1/auth/login", json={"email": email, "password": password})


def test_per_account_limit(relay: RelayProcess) -> None:
    email = unique_email("victim")
    with relay.client("127.0.0.2") as a, relay.client("127.0.0.3") as b:
        register(a, email)
        assert [attempt(a, email).status_code for _ in range(2)] == [401, 401]
        assert attempt(b, email).status_code == 401  # another address, same account
        r = attempt(b, email, PASSWORD)
        assert (r.status_code, r.json()["code"]) == (429, "rate_limited")
        retry_after = int(r.headers["Retry-After"])
        assert 1 <= retry_after <= 60
        # Case and spaces do not make a new account key.
        assert attempt(a, "  " + email.upper()).status_code == 429
        # Another account from the same address is unaffected.
        other = unique_email("bystander")
        register(a, other)
        assert attempt(a, other, PASSWORD).status_code == 200


def test_per_address_limit(relay: RelayProcess) -> None:
    with relay.client("127.0.0.4") as sprayer, relay.client("127.0.0.5") as innocent:
        codes = [attempt(sprayer, unique_email("spray")).status_code for _ in range(8)]
        assert codes == [401] * 8
        r = attempt(sprayer, unique_email("spray"))
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        email = unique_email("innocent")
        register(innocent, email)
        assert attempt(innocent, email, PASSWORD).status_code == 200


def test_reset_request_limit(relay: RelayProcess) -> None:
    email = unique_email("mailbomb")
    with relay.client("127.0.0.6") as c:
        codes = [
            c.post("/api/v1/auth/password-reset/request", json={"email": email}).status_code for _ in range(3)
        ]
    assert codes == [202, 202, 429]


def test_metrics_count_rate_limited(relay: RelayProcess) -> None:
    # Hits a limit itself: under xdist the module's other tests may run on another worker's relay.
    with relay.client("127.0.0.7") as c:
        email = unique_email("counted")
        assert [attempt(c, email).status_code for _ in range(4)] == [401, 401, 401, 429]
        text = c.get("/metrics").text
    assert 'relay_rate_limited_total{scope="login"}' in text


def test_token_bucket_refills() -> None:
    now = [0.0]
    limiter = TokenBucketLimiter(RateLimit(2, 10.0), max_keys=3, clock=lambda: now[0])
    assert limiter.hit("k").allowed and limiter.hit("k").allowed
    denied = limiter.hit("k")
    assert not denied.allowed and denied.retry_after_s == pytest.approx(5.0)
    assert denied.retry_after_header == "5"
    now[0] = 5.0
    assert limiter.hit("k").allowed
    assert not limiter.hit("k").allowed
    # Memory is bounded: the least recently used keys are forgotten (forgiven).
    for key in ("a", "b", "c", "d"):
        limiter.hit(key)
    assert len(limiter) == 3
    assert limiter.hit("k").allowed  # "k" was evicted, so it starts with a full bucket
