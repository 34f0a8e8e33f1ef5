"""Accounts and devices for the load run, created through the relay's REST API.

Why not one account per connection: real traffic has households and shop staff signing in on
several devices with one account, and 1,000 registrations would spend the setup on account
creation instead of logins. So ``device_mix`` says how many devices each account gets (cycled:
the default gives accounts 1, 2, 1, 4, 1, 2, 1, 8 devices...), and each device is one login with
its own Ed25519 key and certificate, its own HLC node id (``d`` + 12 hex digits, as the client
makes them) and its own access token. Logins run on a few threads: each is an Argon2 hash on the
relay (at the test-only cost), and the relay hashes several at once.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from benchmarks.relay_bench.payloads import Identity
from benchmarks.relay_bench.servers import PASSWORD, _b64url, _b64url_decode, _post
from crdt_core.authoring import Author
from crdt_core.certs import DeviceKey, public_bytes
from crdt_core.hlc import HybridClock

__all__ = ["DEFAULT_DEVICE_MIX", "AccountSetupError", "Device", "accounts_for", "create_devices"]

DEFAULT_DEVICE_MIX = (1, 2, 1, 4, 1, 2, 1, 8)


class AccountSetupError(RuntimeError):
    """The relay refused a registration or a login the run needs."""


@dataclass(frozen=True)
class Device:
    """One signed-in device: which account (index) it belongs to and its identity."""

    account: int
    identity: Identity


def accounts_for(devices: int, mix: Sequence[int] = DEFAULT_DEVICE_MIX) -> list[int]:
    """How many devices each account gets so that they add up to ``devices``."""
    if not mix or min(mix) < 1:
        raise ValueError("the device mix needs positive counts")
    out: list[int] = []
    left = devices
    for n in itertools.cycle(mix):
        if left <= 0:
            return out
        out.append(min(n, left))
        left -= out[-1]
    raise AssertionError("unreachable")


def _register(base: str, account: int, tag: str) -> str:
    email = f"load{account}-{tag}@example.com"
    status, body = _post(
        base, "/api/v1/auth/register", {"email": email, "password": PASSWORD, "display_name": f"L{account}"}
    )
    if status != 201:
        raise AccountSetupError(f"register {email}: {status} {body}")
    return email


def _login(base: str, account: int, email: str) -> Device:
    key = Ed25519PrivateKey.generate()
    status, body = _post(
        base,
        "/api/v1/auth/login",
        {"email": email, "password": PASSWORD, "device_public_key": _b64url(public_bytes(key))},
    )
    if status != 200:
        raise AccountSetupError(f"login {email}: {status} {body}")
    user_id = body["user"]["id"]
    device = DeviceKey(key, _b64url_decode(body["device_certificate"]))
    author = Author(user_id, device, HybridClock("d" + secrets.token_hex(6)))
    return Device(account, Identity(user_id, email, body["access_token"], author))


def create_devices(
    base: str, devices: int, mix: Sequence[int] = DEFAULT_DEVICE_MIX, threads: int = 8
) -> list[Device]:
    """Register the accounts and log in every device; returns the devices in a stable order."""
    counts = accounts_for(devices, mix)
    tag = secrets.token_hex(4)
    with ThreadPoolExecutor(threads) as pool:
        emails = list(pool.map(lambda a: _register(base, a, tag), range(len(counts))))
        jobs = [(a, emails[a]) for a, n in enumerate(counts) for _ in range(n)]
        return list(pool.map(lambda job: _login(base, *job), jobs))
