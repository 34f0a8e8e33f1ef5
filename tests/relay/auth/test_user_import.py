"""``quickslot-relay user import``: accounts from the original system keep their PBKDF2 hashes,
log in with their old passwords, and get Argon2id hashes at that first login."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from relay.auth.passwords import legacy_pbkdf2_hash
from tests.support.relay_process import RelayProcess, cli_json, login, run_cli

OLD_PASSWORD = "old system secret 42"


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    with RelayProcess(tmp_path_factory.mktemp("import") / "data") as running:
        yield running


def test_imported_pbkdf2_accounts_log_in_with_their_old_passwords(
    relay: RelayProcess, tmp_path: Path
) -> None:
    passlib = legacy_pbkdf2_hash(OLD_PASSWORD)
    django = legacy_pbkdf2_hash(OLD_PASSWORD, style="django")
    lines = [
        "# exported from the original backend",
        json.dumps({"email": "Ana@Example.com", "name": "Ana", "password_hash": passlib}),
        json.dumps({"email": "ben@example.com", "password_hash": django, "roles": ["admin"]}),
        json.dumps({"email": "eve@example.com", "password_hash": "md5$abc$def"}),
        "not json",
        json.dumps({"email": "ana@example.com", "password_hash": legacy_pbkdf2_hash("another")}),
    ]  # fmt: skip
    source = tmp_path / "users.jsonl"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = cli_json("user", "import", str(source), data_dir=relay.data_dir)
    assert [(r["line"], r["email"]) for r in result["imported"]] == [
        (2, "ana@example.com"),
        (3, "ben@example.com"),
    ]
    assert [s["line"] for s in result["skipped"]] == [4, 5, 6]
    assert "PBKDF2" in result["skipped"][0]["reason"]

    users = {u["email"]: u for u in cli_json("user", "list", data_dir=relay.data_dir)}
    assert users["ana@example.com"]["display_name"] == "Ana" and users["ben@example.com"]["roles"] == [
        "admin"
    ]
    with httpx.Client(base_url=relay.base_url, timeout=30) as http:
        for email in ("ana@example.com", "ben@example.com"):
            assert login(http, email, OLD_PASSWORD)["access_token"]
            assert login(http, email, OLD_PASSWORD)["access_token"]  # again, on the upgraded hash
        wrong = http.post("/api/v1/auth/login", json={"email": "ana@example.com", "password": "another"})
        assert wrong.status_code == 401

    human = run_cli("user", "import", str(source), data_dir=relay.data_dir)
    assert human.returncode == 0 and "imported 0 accounts, skipped 5" in human.stdout
