"""Password reset end to end: through the .eml file backend and through a real SMTP server."""

from __future__ import annotations

import email
import email.policy
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller

from tests.support.eventually import eventually_blocking
from tests.support.relay_process import (
    GENEROUS_LIMITS,
    PASSWORD,
    RelayProcess,
    bearer,
    free_port,
    login,
    register,
    unique_email,
)

NEW_PASSWORD = "a brand new passphrase"
TOKEN_LINE = re.compile(r"Reset token: (\S+)")


def token_from(message_bytes: bytes) -> tuple[str, email.message.EmailMessage]:
    msg = email.message_from_bytes(message_bytes, policy=email.policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    body = msg.get_body(preferencelist=("plain",))
    assert body is not None
    match = TOKEN_LINE.search(body.get_content())
    assert match, body.get_content()
    return match.group(1), msg


def check_reset_flow(
    client: httpx.Client, relay: RelayProcess, user_email: str, fetch_mail: Callable[[str], bytes]
) -> None:
    """Shared body: request, receive, confirm, old sessions revoked, token single-use."""
    register(client, user_email)
    session = login(client, user_email)
    r = client.post("/api/v1/auth/password-reset/request", json={"email": user_email})
    assert r.status_code == 202 and r.json() == {"status": "accepted"}
    token, msg = token_from(fetch_mail(user_email))
    assert msg["To"] == user_email and "QuickSlot" in msg["Subject"]

    # A wrong token and a too-weak password are refused without spending the token.
    r = client.post(
        "/api/v1/auth/password-reset/confirm", json={"token": "x" * 43, "new_password": NEW_PASSWORD}
    )
    assert (r.status_code, r.json()["code"]) == (400, "invalid_reset_token")
    r = client.post("/api/v1/auth/password-reset/confirm", json={"token": token, "new_password": "short"})
    assert (r.status_code, r.json()["code"]) == (422, "weak_password")

    r = client.post(
        "/api/v1/auth/password-reset/confirm", json={"token": token, "new_password": NEW_PASSWORD}
    )
    assert r.status_code == 200, r.text
    # Single use.
    r = client.post(
        "/api/v1/auth/password-reset/confirm", json={"token": token, "new_password": "yet another pass"}
    )
    assert (r.status_code, r.json()["code"]) == (400, "invalid_reset_token")
    # Every refresh family of the account is revoked, with its access tokens.
    r = client.post("/api/v1/auth/refresh", json={"refresh_token": session["refresh_token"]})
    assert (r.status_code, r.json()["code"]) == (401, "token_revoked")
    assert client.get("/api/v1/auth/me", headers=bearer(session["access_token"])).status_code == 401
    # Old password no longer works, new one does.
    r = client.post("/api/v1/auth/login", json={"email": user_email, "password": PASSWORD})
    assert r.status_code == 401
    login(client, user_email, password=NEW_PASSWORD)
    # The token is stored hashed, never in clear.
    with relay.db() as db:
        stored = [row[0] for row in db.execute("SELECT token_hash FROM auth_password_resets")]
    assert stored and all(isinstance(h, bytes) and len(h) == 32 for h in stored)
    assert all(token.encode() not in h for h in stored)


# ---------------------------------------------------------------------------------------------
# file backend


@pytest.fixture(scope="module")
def file_relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    with RelayProcess(tmp_path_factory.mktemp("reset-file") / "data", *GENERAL_ARGS) as proc:
        yield proc


GENERAL_ARGS = GENEROUS_LIMITS


def read_mail_dir(mail_dir: Path, to: str) -> bytes:
    def find() -> bytes | None:
        for path in sorted(mail_dir.glob("*.eml")):
            data = path.read_bytes()
            if to.encode() in data:
                return data
        return None

    found: bytes = eventually_blocking(find)
    return found


def test_reset_through_mail_files(file_relay: RelayProcess) -> None:
    mail_dir = file_relay.data_dir / "mail"
    with file_relay.client() as client:
        check_reset_flow(client, file_relay, unique_email("reset"), lambda to: read_mail_dir(mail_dir, to))
    for path in mail_dir.glob("*.eml"):
        assert path.stat().st_mode & 0o777 == 0o600
    # The log says where the mail went but never contains the token.
    log = file_relay.log_text()
    assert '"mail written"' in log
    for path in mail_dir.glob("*.eml"):
        token, _ = token_from(path.read_bytes())
        assert token not in log


def test_reset_request_does_not_enumerate(file_relay: RelayProcess) -> None:
    mail_dir = file_relay.data_dir / "mail"
    before = set(mail_dir.glob("*.eml"))
    with file_relay.client() as client:
        unknown = client.post("/api/v1/auth/password-reset/request", json={"email": unique_email("ghost")})
        invalid = client.post("/api/v1/auth/password-reset/request", json={"email": "not an email"})
        known_email = unique_email("known")
        register(client, known_email)
        known = client.post("/api/v1/auth/password-reset/request", json={"email": known_email})
    assert unknown.status_code == invalid.status_code == known.status_code == 202
    assert unknown.json() == invalid.json() == known.json()
    read_mail_dir(mail_dir, known_email)
    time.sleep(0.3)
    new = set(mail_dir.glob("*.eml")) - before
    assert len(new) == 1


# ---------------------------------------------------------------------------------------------
# SMTP backend


class Collector:
    """aiosmtpd handler that keeps every message it receives."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], bytes]] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.messages.append((list(envelope.rcpt_tos), bytes(envelope.content)))
        return "250 Message accepted for delivery"

    def find(self, to: str) -> bytes | None:
        with self.lock:
            for rcpts, content in self.messages:
                if to in rcpts:
                    return content
        return None


@pytest.fixture(scope="module")
def smtp_server() -> Iterator[tuple[Collector, int]]:
    collector = Collector()
    port = free_port()
    controller = Controller(collector, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield collector, port
    finally:
        controller.stop()


@pytest.fixture(scope="module")
def smtp_relay(
    tmp_path_factory: pytest.TempPathFactory, smtp_server: tuple[Collector, int]
) -> Iterator[RelayProcess]:
    _, port = smtp_server
    data = tmp_path_factory.mktemp("reset-smtp") / "data"
    with RelayProcess(
        data, *GENERAL_ARGS, "--smtp", f"127.0.0.1:{port}", "--mail-from", "relay@example.org"
    ) as proc:
        yield proc


def test_reset_through_smtp(smtp_relay: RelayProcess, smtp_server: tuple[Collector, int]) -> None:
    collector, _ = smtp_server

    def fetch(to: str) -> bytes:
        found: bytes = eventually_blocking(lambda: collector.find(to))
        return found

    with smtp_relay.client() as client:
        check_reset_flow(client, smtp_relay, unique_email("smtp"), fetch)
    assert not list((smtp_relay.data_dir / "mail").glob("*.eml"))
    _, content = collector.messages[0]
    assert b"From: relay@example.org" in content
