"""A device certificate is valid when issued, whatever ``--cert-ttl`` (it used to be back-dated by
the full 300 s clock slack, so a ttl of 300 s or less issued certificates already expired)."""

from __future__ import annotations

from pathlib import Path

import pytest

from crdt_core.certs import parse_certificate, public_bytes
from relay.auth.account_types import User
from relay.auth.device_certs import CLOCK_SLACK_MS, issue_device_certificate
from relay.auth.keys import KeyStore
from tests.support.crdt_factory import fixed_seed_key

NOW = 1_790_000_000.0


@pytest.mark.parametrize("ttl_s", [1, 60, 299, 300, 600, 7 * 24 * 3600])
def test_a_certificate_is_valid_when_issued_and_lives_ttl_seconds(tmp_path: Path, ttl_s: int) -> None:
    keys = KeyStore.open(tmp_path / "keys")
    user = User("u1", "u1@example.com", "U", (), (), (), NOW, False)
    raw = issue_device_certificate(user, public_bytes(fixed_seed_key(5)), keys=keys, ttl_s=ttl_s, now=NOW)
    cert = parse_certificate(raw, keys.public_keys())
    now_ms = int(NOW * 1000)
    assert cert.valid_at(now_ms), (cert.issued_at_ms - now_ms, cert.expires_at_ms - now_ms)
    assert cert.expires_at_ms - cert.issued_at_ms == ttl_s * 1000
    assert now_ms - cert.issued_at_ms == min(CLOCK_SLACK_MS, ttl_s * 1000 // 2)
