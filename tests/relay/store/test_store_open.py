"""Choosing the store: ``--store``/``--store-replica`` (and their environment variables) reach the
configuration, bad values are refused plainly, and ``open_document_store`` opens what they name."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from relay.cli.parser import build_parser, config_from_args
from relay.ops.config import RelayConfig, redact_url
from relay.store import PostgresDocumentStore, SQLiteDocumentStore, open_document_store
from tests.support.relay_process import REPO, _env


def parse(*argv: str) -> RelayConfig:
    return config_from_args(build_parser().parse_args(list(argv)))


def test_store_flags_reach_the_config_for_serve_and_admin_commands() -> None:
    primary, replica = "postgresql://u@db1/relay", "postgresql://u@db2/relay"
    serve = parse("serve", "--store", primary, "--store-replica", replica)
    assert (serve.store_url, serve.store_replica_url) == (primary, replica)
    assert parse("--store", primary, "stats").store_url == primary  # before the command
    assert parse("compact", "--store", primary).store_url == primary  # or after it
    assert parse("serve").store_url is None  # the embedded SQLite default


def test_store_environment_variable_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUICKSLOT_RELAY_STORE", "postgresql://env@db/relay")
    assert parse("serve").store_url == "postgresql://env@db/relay"
    assert parse("serve", "--store", "postgresql://flag@db/relay").store_url == "postgresql://flag@db/relay"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--store", "mysql://u@h/d"], "--store must be a postgresql:// URL"),
        (["--store-replica", "postgresql://u@h/d"], "--store-replica needs --store"),
    ],
)
def test_bad_store_flags_are_a_usage_error(tmp_path: Path, flags: list[str], message: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "relay.cli", "serve", "--data", str(tmp_path / "d"), *flags],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert message in done.stderr


def test_passwords_stay_out_of_logged_urls() -> None:
    assert redact_url("postgresql://relay:s3cret@db:5432/relay") == "postgresql://relay:***@db:5432/relay"
    assert redact_url("postgresql://relay@db/relay") == "postgresql://relay@db/relay"
    assert "s3cret" not in repr(RelayConfig(store_url="postgresql://relay:s3cret@db/relay"))


async def test_open_document_store_follows_the_config(tmp_path: Path, pg_dsn: str) -> None:
    embedded = await open_document_store(RelayConfig(data_dir=tmp_path))
    try:
        assert isinstance(embedded, SQLiteDocumentStore)
        assert embedded.path.parent == tmp_path
    finally:
        await embedded.close()
    shared = await open_document_store(RelayConfig(data_dir=tmp_path, store_url=pg_dsn), auto_compact=False)
    try:
        assert isinstance(shared, PostgresDocumentStore)
        assert not shared.auto_compact
        assert shared.epoch != embedded.epoch  # the database's epoch, not the data directory's
    finally:
        await shared.close()
