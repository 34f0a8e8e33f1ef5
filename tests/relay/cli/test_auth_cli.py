"""The operator CLI on a real data directory.

Output, exit codes and the console entry point are checked through real processes
(``python -m relay.cli``); the longer command sequences call ``relay.cli.commands.main`` in-process, which
runs the same code without paying interpreter start-up for every command.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import ipaddress
import json
import socket
import ssl
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from relay.cli.commands import main
from tests.support.relay_process import FAST_HASH_ARGS, PASSWORD, RelayProcess, free_port, pg_sql, run_cli


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "data"


def local_json(*argv: str, data_dir: Path, stdin: str = "") -> Any:
    """Run ``main([... , "--json", "--data", DIR])`` in-process and parse its stdout."""
    out = io.StringIO()
    old_stdin = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        with contextlib.redirect_stdout(out):
            code = main([*argv, "--json", "--data", str(data_dir)])
    finally:
        sys.stdin = old_stdin
    assert code == 0, out.getvalue()
    return json.loads(out.getvalue())


def add_user(data: Path, email: str, *extra: str) -> dict[str, Any]:
    out: dict[str, Any] = local_json(
        "user",
        "add",
        email,
        "--password-stdin",
        *FAST_HASH_ARGS,
        *extra,
        data_dir=data,
        stdin=PASSWORD + "\n",
    )
    return out


def test_user_lifecycle_json(data: Path) -> None:
    admin = add_user(data, "Boss@Example.com", "--admin", "--name", "The Boss")
    assert admin["email"] == "boss@example.com" and admin["roles"] == ["admin"]
    assert admin["display_name"] == "The Boss"
    staff = add_user(data, "staff@example.com")
    assert staff["display_name"] == "staff" and staff["roles"] == []

    out = local_json("user", "grant", "staff@example.com", "--owner", "shop-1", data_dir=data)
    assert out["owner_of"] == ["shop-1"]
    out = local_json("user", "grant", "staff@example.com", "--staff", "shop-2", data_dir=data)
    assert out["owner_of"] == ["shop-1"] and out["staff_of"] == ["shop-2"]
    out = local_json("user", "grant", "staff@example.com", "--admin", data_dir=data)
    assert out["roles"] == ["admin"]

    users = local_json("user", "list", data_dir=data)
    assert [u["email"] for u in users] == ["boss@example.com", "staff@example.com"]
    assert all("password" not in json.dumps(u) for u in users)

    out = local_json("user", "disable", "staff@example.com", data_dir=data)
    assert out["disabled"] is True
    stats = local_json("stats", data_dir=data)
    assert stats["accounts"]["users"] == 2 and stats["accounts"]["users_disabled"] == 1
    assert stats["accounts"]["admins"] == 2
    assert stats["epoch"] == (data / "epoch").read_text().strip()
    out = local_json("user", "enable", "STAFF@example.com", data_dir=data)
    assert out["disabled"] is False


def test_keys_rotate_and_list(data: Path) -> None:
    add_user(data, "a@example.com")
    keys = local_json("keys", "list", data_dir=data)
    assert len(keys) == 1 and keys[0]["active"]
    rotated = local_json("keys", "rotate", data_dir=data)
    assert rotated["retired_kid"] == keys[0]["kid"]
    keys = local_json("keys", "list", data_dir=data)
    assert [k["active"] for k in keys] == [False, True]
    assert keys[0]["retired_at"] is not None
    # The retired private key is gone, its public key stays in the manifest.
    assert not (data / "keys" / f"{rotated['retired_kid']}.key").exists()
    assert (data / "keys" / f"{rotated['active_kid']}.key").exists()


def test_admin_commands_on_postgres(data: Path, pg_dsn: str) -> None:
    """With ``--store``, users, grants, stats and keys are the database's, not the data dir's."""
    store = ("--store", pg_dsn)
    admin = add_user(data, "boss@example.com", "--admin", *store)
    assert admin["roles"] == ["admin"]
    add_user(data, "staff@example.com", *store)
    out = local_json("user", "grant", "staff@example.com", "--owner", "shop-1", *store, data_dir=data)
    assert out["owner_of"] == ["shop-1"]
    assert [u["email"] for u in local_json("user", "list", *store, data_dir=data)] == [
        "boss@example.com",
        "staff@example.com",
    ]
    assert local_json("user", "disable", "staff@example.com", *store, data_dir=data)["disabled"] is True
    stats = local_json("stats", *store, data_dir=data)
    assert stats["accounts"]["users"] == 2 and stats["accounts"]["users_disabled"] == 1
    [(epoch,)] = pg_sql(pg_dsn, "SELECT value FROM relay_meta WHERE key = 'epoch'")
    assert stats["epoch"] == epoch
    # The same database seen from another data directory (another node's host) is the same.
    elsewhere = data.parent / "elsewhere"
    assert len(local_json("user", "list", *store, data_dir=elsewhere)) == 2

    keys = local_json("keys", "list", *store, data_dir=data)
    assert len(keys) == 1 and keys[0]["active"]
    rotated = local_json("keys", "rotate", *store, data_dir=elsewhere)
    assert rotated["retired_kid"] == keys[0]["kid"]
    keys = local_json("keys", "list", *store, data_dir=data)
    # Both listed; the new one signs once its activation delay is over (relay.auth.keys_pg).
    assert [k["kid"] for k in keys] == [rotated["retired_kid"], rotated["active_kid"]]
    assert sum(k["active"] for k in keys) == 1
    assert not list((data / "keys").glob("*.key")) and not list((elsewhere / "keys").glob("*.key"))
    # The SQLite file of the data directory holds none of it.
    assert local_json("user", "list", data_dir=data) == []


def test_human_output(data: Path) -> None:
    r = run_cli(
        "user", "add", "h@example.com", "--password-stdin", *FAST_HASH_ARGS, data_dir=data, stdin=PASSWORD
    )
    assert r.returncode == 0 and r.stdout.startswith("added h@example.com")
    r = run_cli("user", "list", data_dir=data)
    assert r.returncode == 0
    assert r.stdout.splitlines()[0].split()[:2] == ["EMAIL", "NAME"] and "h@example.com" in r.stdout
    r = run_cli("stats", data_dir=data)
    assert r.returncode == 0 and "users: 1" in r.stdout
    r = run_cli("keys", "rotate", data_dir=data)
    assert r.returncode == 0 and r.stdout.startswith("new active key")


def local_failure(*argv: str, data_dir: Path, stdin: str = "") -> str:
    """Run ``main`` in-process expecting exit code 1; returns stderr."""
    err = io.StringIO()
    old_stdin = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main([*argv, "--data", str(data_dir)])
    finally:
        sys.stdin = old_stdin
    assert code == 1, err.getvalue()
    return err.getvalue()


def test_unreachable_store_is_a_plain_error(data: Path) -> None:
    """No server at the ``--store`` address: one line naming it (password masked), exit 1."""
    url = f"postgresql://relay:hunter2@127.0.0.1:{free_port()}/quickslot"
    for argv in (("user", "list"), ("keys", "list"), ("stats",)):
        err = local_failure(*argv, "--store", url, data_dir=data)
        assert "cannot reach the account database" in err and "relay:***@127.0.0.1" in err
        assert "hunter2" not in err and "Traceback" not in err


def test_failures_exit_1(data: Path) -> None:
    add_user(data, "dup@example.com")
    r = run_cli(
        "user",
        "add",
        "dup@example.com",
        "--password-stdin",
        "--json",
        *FAST_HASH_ARGS,
        data_dir=data,
        stdin=PASSWORD,
    )
    assert r.returncode == 1
    assert json.loads(r.stdout)["error"]["code"] == "email_taken"
    assert "already exists" in r.stderr
    r = run_cli("user", "list", data_dir=data.parent / "missing")
    assert r.returncode == 1 and "no relay data" in r.stderr
    assert not (data.parent / "missing").exists()
    add = ["user", "add", "--password-stdin", *FAST_HASH_ARGS]
    assert "at least" in local_failure(*add, "weak@example.com", data_dir=data, stdin="short\n")
    assert "no password" in local_failure(*add, "empty@example.com", data_dir=data, stdin="")
    assert "No such user" in local_failure("user", "disable", "ghost@example.com", data_dir=data)
    assert "shop ids" in local_failure(
        "user", "grant", "dup@example.com", "--owner", "bad:shop", data_dir=data
    )
    assert "valid email" in local_failure(*add, "not-an-email", data_dir=data, stdin=PASSWORD)


def usage_exit(*argv: str) -> tuple[int, str]:
    """Parse in-process (argparse exits before any work); returns (exit code, stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exc:
        main(list(argv))
    return int(exc.value.code or 0), err.getvalue()


def test_usage_errors_exit_2(data: Path) -> None:
    d = ["--data", str(data)]
    assert usage_exit("user", "add", "x@example.com", *d)[0] == 2  # no --password-stdin
    assert usage_exit("user", "grant", "x@example.com", "--owner", "a", "--staff", "b", *d)[0] == 2
    assert usage_exit("user", "grant", "x@example.com", *d)[0] == 2
    assert usage_exit("frobnicate", *d)[0] == 2
    assert usage_exit(*d)[0] == 2
    code, err = usage_exit("serve", "--certfile", "c.pem", *d)
    assert code == 2 and "--keyfile" in err
    assert usage_exit("serve", "--login-rate-account", "lots", *d)[0] == 2
    assert usage_exit("serve", "--smtp", "nohostport", *d)[0] == 2
    assert not data.exists()
    # And through the real console entry point.
    assert run_cli("user", "grant", "x@example.com", data_dir=data).returncode == 2


def test_options_after_or_before_the_command(data: Path) -> None:
    add_user(data, "o@example.com")
    r = run_cli("--json", "--data", str(data), "user", "list")
    assert r.returncode == 0 and json.loads(r.stdout)[0]["email"] == "o@example.com"


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    certfile, keyfile = tmp / "cert.pem", tmp / "key.pem"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return certfile, keyfile


def test_serve_with_tls(tmp_path: Path) -> None:
    certfile, keyfile = _self_signed(tmp_path)
    with RelayProcess(tmp_path / "data", tls=(certfile, keyfile)) as relay:
        with httpx.Client(
            base_url=relay.base_url, verify=ssl.create_default_context(cafile=str(certfile))
        ) as c:
            assert c.get("/healthz").json()["status"] == "ok"
            assert c.get("/.well-known/jwks.json").json()["keys"]
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{relay.port}/healthz", timeout=2)
    assert relay.returncode == 0
    assert '"relay stopped"' in relay.log_text()


def test_serve_failures_exit_1(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    r = run_cli("serve", "--port", "1", data_dir=not_a_dir)
    assert r.returncode == 1 and "cannot use data directory" in r.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        r = run_cli("serve", "--port", port, *FAST_HASH_ARGS, data_dir=tmp_path / "data")
    assert r.returncode == 1 and "address already in use" in r.stderr
