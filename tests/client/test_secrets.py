"""Tokens and the device key at rest: keyring when real, else a 0600 file; never shown, never logged."""

from __future__ import annotations

import base64
import logging
import os
import pickle
import shutil
import stat
import subprocess
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from keyring.backends import fail, null
from keyring.errors import PasswordDeleteError

import client.storage.secrets as secrets_mod
from client.storage.secrets import SECRETS_FILE, Secret, SecretStore, SecretStoreError, keyring_is_usable
from tests.support.clients import DAY, SHOP, FakeRelay, close_all, open_profile, pull, setup_shop
from tests.support.crdt_factory import World, fixed_seed_key

ACCESS = "eyJhbGciOiJFZERTQSJ9.access-token-secret-4f1c"
REFRESH = "refresh-token-secret-9d2e7b"


@pytest.fixture(autouse=True)
async def _close_clients() -> AsyncIterator[None]:
    yield
    await close_all()


class MemoryKeyring:
    """A keyring backend that keeps entries in a dict (stands in for Keychain/Secret Service).

    Duck-typed rather than a ``keyring.backend.KeyringBackend`` subclass: subclasses register
    themselves globally and could be picked by ``keyring.get_keyring()`` elsewhere in the run.
    """

    def __init__(self) -> None:
        self.entries: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.entries.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.entries[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        if (service, username) not in self.entries:
            raise PasswordDeleteError(username)
        del self.entries[(service, username)]


def failing() -> Any:
    """keyring's own "no backend here" backend (what a headless machine gets)."""
    return fail.Keyring()  # type: ignore[no-untyped-call]


def nulled() -> Any:
    return null.Keyring()  # type: ignore[no-untyped-call]


@pytest.fixture(autouse=True)
def fresh_warnings() -> None:
    secrets_mod._warned.clear()


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_fail_and_null_backends_are_not_keyrings() -> None:
    assert not keyring_is_usable(failing())
    assert not keyring_is_usable(nulled())
    assert keyring_is_usable(MemoryKeyring())


def test_file_fallback_is_owner_only_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    os.umask(0o022)  # a typical umask: files would be 0644 if we let it decide
    store = SecretStore(tmp_path, keyring_backend=failing())
    SecretStore(tmp_path, keyring_backend=failing())
    assert store.backend_name == "file"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "no OS keyring" in getattr(warnings[0], "hint", "")

    store.set_tokens(ACCESS, REFRESH)
    path = tmp_path / SECRETS_FILE
    assert mode_of(path) == 0o600
    assert path.stat().st_uid == os.getuid()
    # No temporary file left behind; the lock file holds nothing and is owner-only too.
    assert sorted(p.name for p in tmp_path.iterdir()) == [SECRETS_FILE, SECRETS_FILE + ".lock"]
    lock = tmp_path / (SECRETS_FILE + ".lock")
    assert mode_of(lock) == 0o600 and lock.stat().st_size == 0
    tokens = store.tokens()
    assert tokens is not None
    assert (tokens.access.reveal(), tokens.refresh.reveal()) == (ACCESS, REFRESH)

    store.clear()
    assert not path.exists()
    assert store.tokens() is None


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_other_users_cannot_read_the_file(tmp_path: Path) -> None:
    store = SecretStore(tmp_path, backend="file")
    store.set_tokens(ACCESS, REFRESH)
    os.chmod(tmp_path, 0o755)  # the directory lets others in: only the file's own mode protects it
    cat = shutil.which("cat")
    assert cat is not None
    probe = subprocess.run(
        [cat, str(tmp_path / SECRETS_FILE)],
        user=65534,
        group=65534,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert probe.returncode != 0
    assert "Permission denied" in probe.stderr
    assert ACCESS not in probe.stdout + probe.stderr


def test_a_widened_file_is_tightened_and_a_foreign_one_refused(tmp_path: Path) -> None:
    store = SecretStore(tmp_path, backend="file")
    store.set_tokens(ACCESS, REFRESH)
    path = tmp_path / SECRETS_FILE
    path.chmod(0o644)
    assert store.tokens() is not None
    assert mode_of(path) == 0o600
    if os.geteuid() == 0:
        os.chown(path, 65534, 65534)
        with pytest.raises(SecretStoreError, match="another user"):
            store.tokens()


def test_keyring_backend_when_one_exists(tmp_path: Path) -> None:
    ring = MemoryKeyring()
    one = SecretStore(tmp_path / "one", keyring_backend=ring)
    two = SecretStore(tmp_path / "two", keyring_backend=ring)
    assert one.backend_name.startswith("keyring")
    one.set_tokens(ACCESS, REFRESH)
    two.set_tokens("other-access", "other-refresh")
    assert not (tmp_path / "one" / SECRETS_FILE).exists()  # nothing on disk
    tokens = one.tokens()
    assert tokens is not None and tokens.access.reveal() == ACCESS
    assert len({service for service, _ in ring.entries}) == 2  # one service name per profile
    one.clear()
    one.clear()  # idempotent
    assert one.tokens() is None
    assert two.tokens() is not None
    with pytest.raises(SecretStoreError):
        SecretStore(tmp_path, backend="keyring", keyring_backend=failing())


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    """Several stores (threads standing in for processes) update different names at once."""
    stores = [SecretStore(tmp_path, backend="file") for _ in range(3)]
    names = ["access_token", "refresh_token", "device_key"]

    def writer(store: SecretStore, name: str) -> None:
        for i in range(30):
            store.set(name, f"{name}-{i}")

    threads = [threading.Thread(target=writer, args=(st, n)) for st, n in zip(stores, names, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name in names:
        held = stores[0].get(name)
        assert held is not None and held.reveal() == f"{name}-29"


def test_device_key_round_trip(tmp_path: Path) -> None:
    store = SecretStore(tmp_path, backend="file")
    assert store.device_key() is None
    key = fixed_seed_key(42)
    store.set_device_key(key)
    loaded = store.device_key()
    assert loaded is not None and loaded.private_bytes_raw() == key.private_bytes_raw()


def test_secrets_are_redacted_everywhere(tmp_path: Path) -> None:
    store = SecretStore(tmp_path, backend="file")
    store.set_tokens(ACCESS, REFRESH)
    tokens = store.tokens()
    assert tokens is not None
    percent = "%s" % tokens.refresh  # noqa: UP031 - the formatting logging itself uses
    shown = [repr(tokens), str(tokens), f"{tokens.access}", percent, repr(store)]
    shown.append(repr(tokens.access) + str(tokens.access) + format(tokens.access, ">40"))
    for text in shown:
        assert ACCESS not in text and REFRESH not in text
    assert "***" in repr(tokens.access)
    assert tokens.access == Secret(ACCESS) and tokens.access != Secret(REFRESH)
    with pytest.raises(TypeError):
        pickle.dumps(tokens.access)
    with pytest.raises(ValueError):
        store.set("password", "x")


async def test_no_secret_reaches_any_log_record(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    world = World()
    relay = FakeRelay(world)
    owner = await setup_shop(tmp_path, world, relay)
    client = await open_profile(tmp_path / "alice", world, "u-alice")
    client.secrets.set_tokens(ACCESS, REFRESH)
    assert client.identity is not None
    device_b64 = base64.b64encode(client.identity.device.private.private_bytes_raw()).decode()
    await pull(client, relay, ["catalog", f"shop:{SHOP}"])
    await client.book(SHOP, DAY, "cut-10")
    logging.getLogger("test").info("tokens are %s / %r", client.secrets.tokens(), client.identity)
    await client.close()
    again = await open_profile(tmp_path / "alice", world)  # restores the device key from the file
    assert again.identity is not None
    await again.logout("log in again")
    assert again.identity is None
    assert not (tmp_path / "alice" / SECRETS_FILE).exists()  # logout removed the file
    await again.close()
    await owner.close()
    fallback = SecretStore(tmp_path / "fallback", keyring_backend=failing())
    fallback.set_tokens(ACCESS, REFRESH)
    fallback.clear()

    # aiosqlite logs every statement with its parameters at DEBUG: this also proves no secret is
    # ever a SQL parameter.
    assert any(r.name == "aiosqlite" for r in caplog.records)
    for record in caplog.records:
        text = record.getMessage() + repr(record.args) + (record.exc_text or "")
        for secret in (ACCESS, REFRESH, device_b64):
            assert secret not in text, record
