"""A real PostgreSQL server for tests: temporary directory, free loopback port, optional replica.

Why this shape:

* **One server per pytest worker, one database per test.** ``initdb`` + start costs 1-2 s, a
  ``CREATE DATABASE`` a few tens of ms, so :func:`shared_server` starts one server per process
  (stopped at exit) and the ``pg_dsn`` fixture hands each test a fresh database on it.
* **Not as root.** PostgreSQL refuses to run as root, and the tests do run as root in CI, so the
  server processes run as an unprivileged user (``nobody``) that owns the temporary directory;
  the Unix socket lives in that directory too, so nothing touches ``/var/run/postgresql``.
* **Trust authentication on 127.0.0.1 only.** The server listens on loopback and nowhere else;
  there is nothing to protect but test data and no password to leak into a log.
* **fsync stays on**: the store's durability (SIGKILL of a relay, acknowledged = committed) is
  what several tests check; only memory settings are made small.
* **Streaming replica** (:meth:`PostgresServer.start_replica`): ``pg_basebackup -R`` of the
  primary, started on its own port, for the store's replica reads.

Usage::

    with PostgresServer.start() as pg:             # or: pg = shared_server()
        dsn = pg.create_database("t1")              # postgresql://quickslot@127.0.0.1:PORT/t1
        with pg.start_replica() as replica:
            replica.dsn("t1")

In pytest: the ``pg_server`` (session) and ``pg_dsn`` (per test, fresh database) fixtures come
from :mod:`tests.support.servers.pytest_plugin`; both skip with the reason of :func:`unavailable_reason`
when PostgreSQL is missing.
"""

from __future__ import annotations

import asyncio
import atexit
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

import asyncpg

__all__ = [
    "PostgresServer",
    "PostgresUnavailable",
    "create_database",
    "acreate_database",
    "find_bin_dir",
    "fresh_database",
    "running_server",
    "shared_server",
    "stop_shared_server",
    "unavailable_reason",
]

#: The superuser the tests connect as (``initdb -U``); trust auth, so no password.
SUPERUSER = "quickslot"
#: The unprivileged account the server processes run as when the tests run as root.
RUN_AS = "nobody"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0

# Small memory settings: many servers may run at once on a 2-core test machine.
_SERVER_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "shared_buffers": "16MB",
    "max_connections": "200",
    "max_wal_senders": "4",
    "wal_level": "replica",
    "hot_standby": "on",
    "fsync": "on",
    "synchronous_commit": "on",
    "logging_collector": "off",
    "log_min_messages": "warning",
    "dynamic_shared_memory_type": "posix",
    "max_worker_processes": "4",
    "max_parallel_workers": "0",
    "autovacuum_naptime": "10s",
}


class PostgresUnavailable(RuntimeError):
    """PostgreSQL cannot be started here (binaries missing); tests turn this into a skip."""


def find_bin_dir() -> Path | None:
    """The newest ``/usr/lib/postgresql/*/bin`` that holds ``postgres`` and ``initdb``.

    ``QUICKSLOT_PG_BIN`` overrides it (a PostgreSQL installed elsewhere).
    """
    override = os.environ.get("QUICKSLOT_PG_BIN")
    candidates = [override] if override else glob.glob("/usr/lib/postgresql/*/bin")

    def version(path: str) -> tuple[int, ...]:
        name = Path(path).parent.name
        return tuple(int(p) for p in name.split(".") if p.isdigit()) or (0,)

    for path in sorted(candidates, key=version, reverse=True):
        d = Path(path)
        if all(os.access(d / exe, os.X_OK) for exe in ("postgres", "initdb", "pg_basebackup")):
            return d
    return None


def unavailable_reason() -> str | None:
    """Why PostgreSQL cannot run here, or ``None`` when it can."""
    if find_bin_dir() is None:
        return (
            "PostgreSQL binaries not found under /usr/lib/postgresql/*/bin "
            "(tools/ensure-servers, run by `make test`, installs Debian's postgresql)"
        )
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(RUN_AS)
        except KeyError:
            return f"running as root and there is no {RUN_AS!r} user to run PostgreSQL as"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Runner:
    """Runs PostgreSQL's programs as the unprivileged owner of the data (as-is when not root)."""

    def __init__(self) -> None:
        self.as_root = os.geteuid() == 0
        if self.as_root:
            pw = pwd.getpwnam(RUN_AS)
            self.uid, self.gid = pw.pw_uid, pw.pw_gid
        else:
            self.uid, self.gid = os.geteuid(), os.getegid()

    def argv(self, args: list[str], *, server: bool = False) -> list[str]:
        """``args`` run as the unprivileged user. For a ``server``, also: SIGQUIT (immediate
        shutdown) when the process that started it dies, so a test worker killed mid-run leaves
        no orphaned PostgreSQL behind. Only from the main thread: the kernel's "parent" is the
        starting *thread*, and a helper thread that exits would take the server with it."""
        if not self.as_root:
            return args
        setpriv = shutil.which("setpriv")
        if setpriv:
            extra = []
            if server and threading.current_thread() is threading.main_thread():
                extra = ["--pdeathsig", "SIGQUIT"]
            return [setpriv, f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups", *extra, *args]
        return [shutil.which("runuser") or "/usr/sbin/runuser", "-u", RUN_AS, "--", *args]

    def own(self, path: Path) -> None:
        if self.as_root:
            os.chown(path, self.uid, self.gid)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        env["LANG"] = "C"
        return env


class PostgresServer:
    """One running PostgreSQL cluster (a primary or a streaming replica). Use as a context manager."""

    def __init__(self, root: Path, port: int, proc: subprocess.Popen[bytes], *, replica: bool) -> None:
        self.root = root
        self.port = port
        self.proc = proc
        self.is_replica = replica
        self.user = SUPERUSER
        self.host = "127.0.0.1"
        self._replicas: list[PostgresServer] = []
        self._stopped = False

    # ------------------------------------------------------------------ start / stop

    @classmethod
    def start(cls) -> PostgresServer:
        """``initdb`` a new cluster in a temporary directory and start it on a free port."""
        reason = unavailable_reason()
        if reason is not None:
            raise PostgresUnavailable(reason)
        bin_dir = find_bin_dir()
        assert bin_dir is not None
        runner = _Runner()
        # Not under pytest's tmp_path: that is 0700 root, which the server's user cannot enter.
        root = Path(tempfile.mkdtemp(prefix="qs-pg-"))
        try:
            runner.own(root)
            data = root / "data"
            _run(
                runner,
                [str(bin_dir / "initdb"), "-D", str(data), "-U", SUPERUSER, "--auth=trust",
                 "--encoding=UTF8", "--locale=C", "--no-instructions"],
                what="initdb",
            )  # fmt: skip
            return cls._launch(root, data, runner, bin_dir, replica=False)
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise

    @classmethod
    def _launch(
        cls, root: Path, data: Path, runner: _Runner, bin_dir: Path, *, replica: bool
    ) -> PostgresServer:
        log_path = root / "server.log"
        last_error = ""
        for _attempt in range(3):  # a free port can be taken between probing and binding
            port = _free_port()
            settings: list[str] = []
            for key, value in _SERVER_SETTINGS.items():
                settings += ["-c", f"{key}={value}"]
            argv = [str(bin_dir / "postgres"), "-D", str(data), "-p", str(port), "-k", str(root), *settings]
            with open(log_path, "ab") as log:
                proc = subprocess.Popen(
                    runner.argv(argv, server=True),
                    stdout=log,
                    stderr=log,
                    env=runner.env(),
                    start_new_session=True,  # so a stop can signal the whole server at once
                )
            server = cls(root, port, proc, replica=replica)
            if server._wait_ready(data):
                return server
            server._kill()
            last_error = _tail(log_path)
            if "could not bind" not in last_error and "Address already in use" not in last_error:
                break
        raise RuntimeError(f"PostgreSQL did not start:\n{last_error}")

    def _wait_ready(self, data: Path) -> bool:
        """Wait until ``postmaster.pid`` says ``ready`` (what ``pg_ctl -w`` waits for)."""
        pid_file = data / "postmaster.pid"
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                lines = pid_file.read_text().splitlines()
            except (FileNotFoundError, PermissionError):
                lines = []
            if len(lines) >= 8 and lines[7].strip() == "ready" and _accepts(self.host, self.port):
                return True
            time.sleep(0.02)
        return False

    def stop(self, *, keep_files: bool = False) -> None:
        """Stop replicas, then this server; remove its files unless ``keep_files``.

        Without ``keep_files`` the data is thrown away, so the server gets an *immediate* shutdown
        (SIGQUIT: no shutdown checkpoint, which would fsync every test database for nothing, 10+ s
        after a busy session). With ``keep_files`` it gets a *fast* shutdown (SIGINT: checkpoint),
        so :meth:`restart` starts on clean data.
        """
        if self._stopped:
            return
        self._stopped = True
        for replica in self._replicas:
            replica.stop(keep_files=keep_files)
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGINT if keep_files else signal.SIGQUIT)
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._kill()
            except ProcessLookupError:
                pass
        if not keep_files:
            shutil.rmtree(self.root, ignore_errors=True)

    def kill(self) -> None:
        """SIGKILL the server (a crash); :meth:`restart` then runs crash recovery on its data."""
        self._kill()
        self._stopped = True

    def restart(self) -> None:
        """Start this server again on its data directory and the same port (after stop/kill)."""
        if self.proc.poll() is None:
            raise RuntimeError("server is still running")
        # After a SIGKILL the children may still be exiting; the postmaster.pid check handles it.
        runner = _Runner()
        bin_dir = find_bin_dir()
        assert bin_dir is not None
        data = self.root / "data"
        settings: list[str] = []
        for key, value in _SERVER_SETTINGS.items():
            settings += ["-c", f"{key}={value}"]
        argv = [
            str(bin_dir / "postgres"),
            "-D",
            str(data),
            "-p",
            str(self.port),
            "-k",
            str(self.root),
            *settings,
        ]
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            with open(self.root / "server.log", "ab") as log:
                self.proc = subprocess.Popen(
                    runner.argv(argv, server=True),
                    stdout=log,
                    stderr=log,
                    env=runner.env(),
                    start_new_session=True,
                )
            if self._wait_ready(data):
                self._stopped = False
                return
            self._kill()
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not restart:\n{_tail(self.root / 'server.log')}")
            time.sleep(0.2)  # old backends still hold the shared memory or the port: try again

    def _kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def __enter__(self) -> PostgresServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ databases

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{dbname}"

    def create_database(self, name: str | None = None) -> str:
        """Create a database (a fresh random name by default); returns its DSN."""
        return create_database(self.dsn(), name or _fresh_name())

    async def acreate_database(self, name: str | None = None) -> str:
        return await acreate_database(self.dsn(), name or _fresh_name())

    @property
    def log_text(self) -> str:
        return _tail(self.root / "server.log", 20_000)

    # ------------------------------------------------------------------ replica

    def start_replica(self) -> PostgresServer:
        """A hot-standby streaming replica of this server (``pg_basebackup -R``), on its own port.

        Stopped with this server (or earlier, by itself). Databases created on the primary after
        this call reach the replica through the WAL stream like any other write.
        """
        if self.is_replica:
            raise ValueError("start the replica from the primary")
        bin_dir = find_bin_dir()
        assert bin_dir is not None
        runner = _Runner()
        root = Path(tempfile.mkdtemp(prefix="qs-pg-replica-"))
        try:
            runner.own(root)
            data = root / "data"
            _run(
                runner,
                [str(bin_dir / "pg_basebackup"), "-D", str(data), "-h", self.host, "-p", str(self.port),
                 "-U", self.user, "-R", "-X", "stream", "--checkpoint=fast", "--no-sync"],
                what="pg_basebackup",
            )  # fmt: skip
            replica = self._launch(root, data, runner, bin_dir, replica=True)
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
        self._replicas.append(replica)
        return replica

    async def wait_replayed(self, replica: PostgresServer, timeout: float = 10.0) -> None:
        """Wait until ``replica`` has replayed everything this primary has written so far."""
        primary = await asyncpg.connect(self.dsn())
        try:
            lsn = await primary.fetchval("SELECT pg_current_wal_lsn()")
        finally:
            await primary.close()
        conn = await asyncpg.connect(replica.dsn())
        try:
            deadline = time.monotonic() + timeout
            while True:
                done = await conn.fetchval("SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn", lsn)
                if done:
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"replica did not replay up to {lsn} within {timeout}s")
                await asyncio.sleep(0.02)
        finally:
            await conn.close()


def _run(runner: _Runner, argv: list[str], *, what: str) -> None:
    done = subprocess.run(runner.argv(argv), capture_output=True, env=runner.env(), timeout=120)
    if done.returncode != 0:
        out = (done.stdout + done.stderr).decode(errors="replace")
        raise RuntimeError(f"{what} failed with exit status {done.returncode}:\n{out[-4000:]}")


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return ""


def _fresh_name() -> str:
    return f"t_{uuid.uuid4().hex[:16]}"


def _check_name(name: str) -> str:
    if not name or len(name) > 63 or not all(c.isalnum() or c == "_" for c in name):
        raise ValueError(f"database name must be 1-63 letters, digits or '_', got {name!r}")
    return name


async def acreate_database(dsn: str, name: str) -> str:
    """``CREATE DATABASE name`` on the server of ``dsn``; returns the new database's DSN."""
    _check_name(name)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    base, _, _old = dsn.rpartition("/")
    return f"{base}/{name}"


def create_database(dsn: str, name: str) -> str:
    """Synchronous :func:`acreate_database`; callable from sync code and from inside an event loop.

    It runs on its own thread with its own loop, so a caller's running loop is not disturbed.
    """
    result: list[str] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            result.append(asyncio.run(acreate_database(dsn, name)))
        except BaseException as exc:  # handed to the caller's thread
            errors.append(exc)

    t = threading.Thread(target=work, name="pg-create-database")
    t.start()
    t.join()
    if errors:
        raise errors[0]
    return result[0]


_shared: PostgresServer | None = None
_shared_lock = threading.Lock()


def shared_server() -> PostgresServer:
    """This process's one PostgreSQL server, started on first use and stopped at exit.

    Under pytest-xdist every worker is its own process, so each worker has its own server.
    Raises :class:`PostgresUnavailable` when PostgreSQL is missing.
    """
    global _shared
    with _shared_lock:
        if _shared is None or _shared._stopped or _shared.proc.poll() is not None:
            _shared = PostgresServer.start()
            atexit.register(_shared.stop)
        return _shared


def stop_shared_server() -> None:
    global _shared
    with _shared_lock:
        if _shared is not None:
            _shared.stop()
            _shared = None


def fresh_database() -> str:
    """A new empty database on :func:`shared_server`; returns its DSN."""
    return shared_server().create_database()


@contextmanager
def running_server() -> Iterator[PostgresServer]:
    """A private server for a test that needs its own (e.g. one it stops or replicates)."""
    server = PostgresServer.start()
    try:
        yield server
    finally:
        server.stop()
