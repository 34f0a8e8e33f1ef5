"""A real HAProxy in front of relay nodes, for the cluster tests: generated config, free port.

What the generated config does and why (``deploy/haproxy.cfg`` is the operator's version):

* ``mode http`` with ``timeout tunnel``: HAProxy sees the websocket upgrade, then relays the
  connection as a tunnel whose idle timeout is ``timeout tunnel`` (not ``timeout server``), so a
  quiet sync connection is not cut after a few seconds.
* ``option httpchk GET /healthz`` with ``http-check expect status 200``: a node that is down, or
  draining (the relay answers 503 once SIGTERM arrived), leaves the rotation within
  ``fall * inter``; the tests use a short ``inter`` so a SIGKILLed node is noticed quickly (a
  refused connection fails a check at once). ``timeout check`` is long on purpose: a node busy
  under load may take longer than ``inter`` to answer, and a check that times out would mark a
  healthy node down and cut all its clients (seen in the relay benchmark before it was set).
* ``balance roundrobin``: the sync protocol needs no stickiness; every node serves every
  document (the fan-out carries updates between nodes), so clients spread evenly.
* ``option redispatch`` + ``retries``: a connection attempt that hits a node that has just died
  is retried on another one instead of failing the client.
* ``on-marked-down shutdown-sessions``: when a node is marked down, HAProxy also closes the
  client side of its tunnels at once, so clients reconnect now instead of waiting for TCP.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

__all__ = ["HAProxy", "HAProxyUnavailable", "find_haproxy", "render_config", "unavailable_reason"]

START_TIMEOUT_S = 15.0


class HAProxyUnavailable(RuntimeError):
    """haproxy cannot be started here; tests turn this into a skip."""


def find_haproxy() -> str | None:
    override = os.environ.get("QUICKSLOT_HAPROXY")
    if override:
        return override if os.access(override, os.X_OK) else None
    found = shutil.which("haproxy")
    if found:
        return found
    return "/usr/sbin/haproxy" if os.access("/usr/sbin/haproxy", os.X_OK) else None


def unavailable_reason() -> str | None:
    if find_haproxy() is None:
        return "haproxy not found (tools/ensure-servers, run by `make test`, installs Debian's haproxy)"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def render_config(
    port: int,
    backends: Sequence[tuple[str, int]],
    *,
    check_inter_ms: int = 300,
    fall: int = 2,
    rise: int = 2,
    check_timeout_ms: int = 3000,
    stats_socket: Path | None = None,
) -> str:
    """The HAProxy config for ``backends`` (``(host, port)`` each) behind ``127.0.0.1:port``."""
    servers = "\n".join(
        f"    server node{i} {host}:{bport} check inter {check_inter_ms} fall {fall} rise {rise}"
        for i, (host, bport) in enumerate(backends, start=1)
    )
    stats = f"    stats socket {stats_socket} mode 600 level admin\n" if stats_socket else ""
    return f"""global
    maxconn 4096
{stats}
defaults
    mode http
    option http-server-close
    option redispatch
    retries 3
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout tunnel 1h
    timeout client-fin 5s
    timeout http-request 10s
    timeout check {check_timeout_ms}ms

frontend relay_front
    bind 127.0.0.1:{port}
    default_backend relay_nodes

backend relay_nodes
    balance roundrobin
    option httpchk GET /healthz
    http-check expect status 200
    default-server on-marked-down shutdown-sessions
{servers}
"""


class HAProxy:
    """One haproxy process (foreground, master-less). Use as a context manager."""

    def __init__(self, root: Path, port: int, proc: subprocess.Popen[bytes]) -> None:
        self.root = root
        self.port = port
        self.proc = proc
        self._stopped = False

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/api/v1/sync"

    @classmethod
    def start(cls, backends: Sequence[tuple[str, int]], *, check_inter_ms: int = 300) -> HAProxy:
        exe = find_haproxy()
        if exe is None:
            raise HAProxyUnavailable(str(unavailable_reason()))
        root = Path(tempfile.mkdtemp(prefix="qs-haproxy-"))
        try:
            last = ""
            for _attempt in range(3):
                port = _free_port()
                conf = root / "haproxy.cfg"
                conf.write_text(render_config(port, backends, check_inter_ms=check_inter_ms))
                check = subprocess.run([exe, "-c", "-q", "-f", str(conf)], capture_output=True, timeout=30)
                if check.returncode != 0:
                    reason = check.stderr.decode(errors="replace")
                    raise RuntimeError(f"haproxy rejected its config:\n{reason}")
                log = open(root / "haproxy.log", "ab")  # noqa: SIM115 - closed when the process is
                proc = subprocess.Popen(
                    [exe, "-db", "-f", str(conf)], stdout=log, stderr=log, start_new_session=True
                )
                log.close()
                server = cls(root, port, proc)
                if server._wait_listening():
                    return server
                server._kill()
                last = server.log_text
                if "Address already in use" not in last and "cannot bind" not in last:
                    break
            raise RuntimeError(f"haproxy did not start:\n{last}")
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise

    def _wait_listening(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return True
            except OSError:
                time.sleep(0.01)
        return False

    def wait_healthy(self, timeout: float = 20.0) -> None:
        """Wait until ``/healthz`` answers 200 through the proxy (some node is up and checked)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.http_url}/healthz", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"no healthy relay behind haproxy within {timeout}s:\n{self.log_text}")

    @property
    def log_text(self) -> str:
        try:
            return (self.root / "haproxy.log").read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGUSR1)  # soft stop: finish what is open, then exit
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self._kill()
        shutil.rmtree(self.root, ignore_errors=True)

    def _kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()

    def __enter__(self) -> HAProxy:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
