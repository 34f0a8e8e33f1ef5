"""A real Redis server for tests: temporary directory, free loopback port, restartable.

Why this shape:

* **Its own directory and port per test.** Tests run under pytest-xdist; nothing is shared, so a
  test that stops or wipes its Redis disturbs nobody else.
* **Restartable on the same port, with or without its data.** The cluster tests restart Redis
  under load: :meth:`RedisServer.restart` stops it (SIGTERM: Redis writes its append-only file
  and exits) and starts it again on the same port from the same directory, so the relay nodes'
  reconnect loops find it where they left it; ``keep_data=False`` wipes the directory first, the
  case where the streams (and whatever they held) are lost. :meth:`RedisServer.kill` is SIGKILL.
* **Loopback only, no persistence surprises**: ``appendonly yes`` with ``appendfsync everysec``
  (what an operator would run for fan-out streams), no RDB snapshots, protected mode on.

Usage::

    with RedisServer.start() as redis:
        redis.url                      # redis://127.0.0.1:PORT/0
        redis.restart(keep_data=False)
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

__all__ = ["RedisServer", "RedisUnavailable", "find_redis_server", "running_redis", "unavailable_reason"]

START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0


class RedisUnavailable(RuntimeError):
    """redis-server cannot be started here; tests turn this into a skip."""


def find_redis_server() -> str | None:
    """``QUICKSLOT_REDIS_SERVER``, else ``redis-server`` on PATH or in /usr/bin."""
    override = os.environ.get("QUICKSLOT_REDIS_SERVER")
    if override:
        return override if os.access(override, os.X_OK) else None
    found = shutil.which("redis-server")
    if found:
        return found
    return "/usr/bin/redis-server" if os.access("/usr/bin/redis-server", os.X_OK) else None


def unavailable_reason() -> str | None:
    if find_redis_server() is None:
        return (
            "redis-server not found "
            "(tools/ensure-servers, run by `make test`, installs Debian's redis-server)"
        )
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ping(port: int) -> bool:
    """A raw RESP PING, so the launcher does not depend on a client library's event loop."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server process. Use as a context manager; :meth:`stop` removes its directory."""

    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None
        self._removed = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @classmethod
    def start(cls) -> RedisServer:
        reason = unavailable_reason()
        if reason is not None:
            raise RedisUnavailable(reason)
        root = Path(tempfile.mkdtemp(prefix="qs-redis-"))
        last = ""
        for _attempt in range(3):  # a probed free port can be taken before redis binds it
            server = cls(root, _free_port())
            try:
                server._launch()
                return server
            except RuntimeError as exc:
                last = str(exc)
                if "Address already in use" not in last:
                    break
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(last)

    def _launch(self) -> None:
        exe = find_redis_server()
        assert exe is not None
        data = self.root / "data"
        data.mkdir(exist_ok=True)
        conf = self.root / "redis.conf"
        conf.write_text(
            "\n".join(
                [
                    "bind 127.0.0.1",
                    f"port {self.port}",
                    f"dir {data}",
                    "daemonize no",
                    "appendonly yes",
                    "appendfsync everysec",
                    'save ""',
                    "protected-mode yes",
                    "loglevel warning",
                    f"logfile {self.root / 'redis.log'}",
                    "maxclients 1000",
                ]
            )
            + "\n"
        )
        self.proc = subprocess.Popen(
            [exe, str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}:\n{self.log_text}")
            if _ping(self.port):
                return
            time.sleep(0.01)
        self._kill()
        raise RuntimeError(f"redis-server did not answer within {START_TIMEOUT_S}s:\n{self.log_text}")

    @property
    def log_text(self) -> str:
        try:
            return (self.root / "redis.log").read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def shutdown(self) -> None:
        """Stop the process (SIGTERM, SIGKILL after a timeout); the directory stays."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._kill()

    def kill(self) -> None:
        """SIGKILL: whatever the append-only file had not fsynced is gone."""
        self._kill()

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()

    def restart(self, *, keep_data: bool = True, down_for: float = 0.0) -> None:
        """Stop and start again on the same port; ``keep_data=False`` starts from an empty directory."""
        self.shutdown()
        if not keep_data:
            shutil.rmtree(self.root / "data", ignore_errors=True)
        if down_for > 0:
            time.sleep(down_for)
        self._launch()

    def stop(self) -> None:
        self.shutdown()
        if not self._removed:
            self._removed = True
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


@contextmanager
def running_redis() -> Iterator[RedisServer]:
    server = RedisServer.start()
    try:
        yield server
    finally:
        server.stop()
