"""Helpers for the auth tests: a real relay process on a free loopback port, and the CLI.

The relay runs as ``python -m relay.cli serve`` in a subprocess (real sockets, real files); the
fixture waits for ``/healthz`` and stops it with SIGTERM, checking that it exits cleanly. Argon2
runs with a test-only low cost (``FAST_HASH_ARGS``: 1 MiB, 1 pass, 1 lane) to keep the suite fast;
the default cost is asserted separately in ``test_auth_passwords.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from tests.support.eventually import eventually_blocking

REPO = Path(__file__).resolve().parents[2]
FAST_HASH_ARGS = ["--argon2-memory-kib", "1024", "--argon2-iterations", "1", "--argon2-lanes", "1"]
PASSWORD = "correct horse battery staple"
# Every test talks from 127.0.0.1, so per-address limits are raised where rate limiting is not
# what the module tests.
GENEROUS_LIMITS = [
    "--login-rate-address", "10000/60", "--login-rate-account", "10000/60",
    "--register-rate-address", "10000/60", "--reset-rate-address", "10000/60",
    "--reset-rate-account", "10000/60",
]  # fmt: skip


#: A relay flag for tests that change accounts with the CLI and wait for the relay to apply the
#: change (:func:`applied_by_relay`): poll ``account_events`` every 0.1 s instead of every second.
QUICK_ACCOUNT_EVENTS = ("--events-poll", "0.1")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("QUICKSLOT_RELAY_DATA", None)
    return env


def status_bytes(pid: int, field: str) -> int:
    """A size field of ``/proc/<pid>/status`` (``VmRSS``, ``VmHWM``...) in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for pid {pid}")


def rss_bytes(pid: int) -> int:
    return status_bytes(pid, "VmRSS")


def peak_rss_bytes(pid: int) -> int:
    """The highest resident set since the process started (the kernel's own high-water mark), so a
    transient allocation between two samples counts too."""
    return status_bytes(pid, "VmHWM")


class RelayProcess:
    """A relay subprocess; use as a context manager."""

    def __init__(
        self, data_dir: Path, *extra: str, host: str = "127.0.0.1", tls: tuple[Path, Path] | None = None
    ):
        self.data_dir = data_dir
        self.extra = list(extra)
        self.host = host
        self.tls = tls
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"{data_dir.name}-relay.log"
        self.returncode: int | None = None

    @property
    def base_url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> RelayProcess:
        for _attempt in range(3):
            self.port = free_port(self.host)
            args = [
                sys.executable, "-m", "relay.cli", "serve",
                "--host", self.host, "--port", str(self.port), "--data", str(self.data_dir),
                *FAST_HASH_ARGS, *self.extra,
            ]  # fmt: skip
            if self.tls:
                args += ["--certfile", str(self.tls[0]), "--keyfile", str(self.tls[1])]
            log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
            self.proc = subprocess.Popen(args, cwd=REPO, env=_env(), stdout=log, stderr=log)
            log.close()
            if self._wait_healthy(timeout):
                return self
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
                raise RuntimeError(f"relay did not become healthy:\n{self.log_text()[-4000:]}")
        raise RuntimeError(f"relay failed to start:\n{self.log_text()[-4000:]}")

    def _wait_healthy(self, timeout: float) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        verify: Any = ssl.create_default_context(cafile=str(self.tls[0])) if self.tls else True
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                r = httpx.get(f"{self.base_url}/healthz", timeout=1.0, verify=verify)
                if r.status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        return False

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, wait; returns the exit code (kills after ``timeout``)."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.returncode = self.proc.returncode
        return self.returncode

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def client(self, local_address: str | None = None) -> httpx.Client:
        transport = httpx.HTTPTransport(local_address=local_address) if local_address else None
        return httpx.Client(base_url=self.base_url, timeout=10.0, transport=transport)

    def __enter__(self) -> RelayProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        code = self.stop()
        assert code == 0, f"relay exited with {code}:\n{self.log_text()[-4000:]}"

    # -- conveniences --------------------------------------------------------------------------

    def db(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.data_dir / "relay.sqlite3", timeout=10)
        conn.isolation_level = None
        return conn

    @property
    def store_url(self) -> str | None:
        """The ``--store`` URL this relay was started with (``None``: the SQLite file)."""
        if "--store" in self.extra:
            return self.extra[self.extra.index("--store") + 1]
        return None

    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        """Run one statement (``?`` placeholders) on this relay's account store, SQLite or
        PostgreSQL, and return its rows."""
        if self.store_url is None:
            with self.db() as db:
                return [tuple(r) for r in db.execute(query, params).fetchall()]
        return pg_sql(self.store_url, query, *params)

    def run_cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """``quickslot-relay ARGS`` against this relay's data (and store)."""
        store = ["--store", self.store_url] if self.store_url else []
        return run_cli(*args, *store, data_dir=self.data_dir, stdin=stdin)

    def cli_json(self, *args: str, stdin: str | None = None) -> Any:
        result = self.run_cli(*args, "--json", stdin=stdin)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)


def pg_sql(dsn: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    """One statement on PostgreSQL with SQLite-style ``?`` placeholders (turned into ``$n``)."""
    import asyncio

    import asyncpg

    parts = query.split("?")
    numbered = parts[0] + "".join(f"${i}{part}" for i, part in enumerate(parts[1:], start=1))

    async def go() -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(dsn)
        try:
            return [tuple(r) for r in await conn.fetch(numbered, *params)]
        finally:
            await conn.close()

    return asyncio.run(go())


#: The account stores the auth tests run against (``store_args`` turns one into serve flags).
STORES = ["sqlite", "postgres"]


def store_args(request: Any, kind: str) -> list[str]:
    """``[]`` for SQLite; for PostgreSQL ``["--store", DSN]`` of a fresh database on this worker's
    server (the ``pg_server`` fixture, which skips the test when PostgreSQL is missing)."""
    if kind == "sqlite":
        return []
    server = request.getfixturevalue("pg_server")
    return ["--store", server.create_database()]


def run_cli(
    *args: str, data_dir: Path | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "relay.cli", *args]
    if data_dir is not None:
        cmd += ["--data", str(data_dir)]
    return subprocess.run(cmd, cwd=REPO, env=_env(), input=stdin, capture_output=True, text=True, timeout=60)


def cli_json(*args: str, data_dir: Path, stdin: str | None = None) -> Any:
    result = run_cli(*args, "--json", data_dir=data_dir, stdin=stdin)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


_counter = 0


def unique_email(prefix: str = "user") -> str:
    global _counter
    _counter += 1
    return f"{prefix}{_counter}-{os.getpid()}-{time.monotonic_ns()}@example.com"


def register(
    client: httpx.Client, email: str, password: str = PASSWORD, name: str = "Test User"
) -> dict[str, Any]:
    r = client.post(
        "/api/v1/auth/register", json={"email": email, "password": password, "display_name": name}
    )
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


def login(client: httpx.Client, email: str, password: str = PASSWORD, **extra: Any) -> dict[str, Any]:
    r = client.post("/api/v1/auth/login", json={"email": email, "password": password, **extra})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def account_event_polls(base_url: str) -> float:
    """How many reads of ``account_events`` the relay has completed (its metric)."""
    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith("relay_account_event_polls_total "):
            return float(line.split()[1])
    return 0.0


def applied_by_relay_blocking(base_url: str) -> None:
    """Wait until the relay at ``base_url`` has applied every account change recorded so far
    (``user grant`` and the other CLI commands reach it by its ``account_events`` poll; start the
    relay with :data:`QUICK_ACCOUNT_EVENTS` to make this quick). The second read that completes
    after this call starts began after the change, so it has applied it."""
    start = account_event_polls(base_url)
    eventually_blocking(
        lambda: account_event_polls(base_url) >= start + 2, timeout=30.0, what="two account event polls"
    )


async def applied_by_relay(relay: RelayProcess) -> None:
    """:func:`applied_by_relay_blocking` for async tests."""
    await asyncio.to_thread(applied_by_relay_blocking, relay.base_url)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class FixedPortRelay(RelayProcess):
    """A relay that always listens on the same port, so clients see it "come back"."""

    def __init__(self, data_dir: Path, *extra: str, port: int | None = None) -> None:
        super().__init__(data_dir, *GENEROUS_LIMITS, *extra)
        self.fixed_port = port or free_port()

    def start(self, timeout: float = 30.0) -> RelayProcess:
        self.port = self.fixed_port
        for _attempt in range(20):
            args = [
                sys.executable, "-m", "relay.cli", "serve", "--host", self.host, "--port", str(self.port),
                "--data", str(self.data_dir), *FAST_HASH_ARGS, *self.extra,
            ]  # fmt: skip
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(args, cwd=REPO, env=_env(), stdout=log, stderr=log)
            if self._wait_healthy(timeout):
                return self
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
                break
            time.sleep(0.2)  # the port may still be held by the previous process
        raise RuntimeError(f"relay did not start on port {self.port}:\n{self.log_text()[-4000:]}")


def serving_fixed_port_relay(root: Path, *extra: str) -> Iterator[FixedPortRelay]:
    """Body of a test module's relay fixture: start one under ``root``, stop it after the module."""
    process = FixedPortRelay(root / "data", *extra)
    process.start()
    try:
        yield process
    finally:
        process.stop()
