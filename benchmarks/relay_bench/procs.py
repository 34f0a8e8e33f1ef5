"""Server processes for the relay suite: start on loopback, wait for the port, read CPU and memory.

Why /proc and not psutil: psutil is not a project dependency, and the two numbers we need are one
file read each. CPU is the sum over the process's threads of ``/proc/PID/task/*/schedstat``
(nanoseconds: SQLite's writer thread and V8's GC threads count too), checked against
``/proc/PID/stat`` (clock ticks, but it includes threads that already exited); memory is
``VmRSS`` and ``VmHWM`` (peak RSS) from ``/proc/PID/status``.

Every process is started with ``PR_SET_PDEATHSIG`` so it dies with the benchmark even if the
benchmark itself is killed; normally :meth:`ServerProcess.stop` ends it by its PID (SIGTERM, then
SIGKILL after a grace period).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "CpuSample",
    "ServerProcess",
    "ServerStartError",
    "WorkerProcess",
    "child_env",
    "free_port",
    "wait_for_port",
]

REPO = Path(__file__).resolve().parents[2]

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class ServerStartError(RuntimeError):
    pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return True
        time.sleep(0.05)
    return False


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def child_env(*unset: str) -> dict[str, str]:
    """This environment for a child that imports the repository's packages, without ``unset``
    (settings of the caller's own relay that must not leak into a benchmark's)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    for name in unset:
        env.pop(name, None)
    return env


class WorkerProcess:
    """A load-generating ``python -m module SPEC OUT`` child of the benchmarks.

    The protocol both load harnesses use: the spec goes in as a pickle, commands (``GO``,
    ``EXIT``) as lines on stdin, progress words (``READY``, ``DONE``) come back as lines on stdout,
    the raw records as a pickle in ``out_path``, and stderr goes to ``log_path`` for the error
    message if the worker dies. Subclasses read stdout their own way.
    """

    def __init__(
        self, module: str, spec: object, spec_path: Path, out_path: Path, log_path: Path, env: dict[str, str]
    ) -> None:
        self.spec_path, self.out_path, self.log_path = spec_path, out_path, log_path
        with open(spec_path, "wb") as f:
            pickle.dump(spec, f)
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", module, str(spec_path), str(out_path)],
                cwd=REPO,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - no threads yet in this process
            )

    def say(self, line: str) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError, OSError):
            self.proc.stdin.write((line + "\n").encode())
            self.proc.stdin.flush()

    def cpu_seconds(self) -> float:
        try:
            with open(f"/proc/{self.proc.pid}/stat", encoding="ascii") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return 0.0

    def results(self) -> dict[str, Any]:
        with open(self.out_path, "rb") as f:
            data: dict[str, Any] = pickle.load(f)
        return data

    def stop(self, timeout: float = 30.0) -> None:
        """Ask it to exit; kill it if it has not within ``timeout``."""
        self.say("EXIT")
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""


@dataclass(frozen=True)
class CpuSample:
    sched_ns: int
    """Sum of the live threads' on-CPU nanoseconds (schedstat)."""
    ticks: int
    """utime + stime in clock ticks (stat), dead threads included."""
    at: float

    def seconds_since(self, earlier: CpuSample) -> float:
        """CPU seconds between two samples: schedstat's precision unless a thread died in between."""
        sched = (self.sched_ns - earlier.sched_ns) / 1e9
        ticks = (self.ticks - earlier.ticks) / _TICK
        if self.sched_ns and earlier.sched_ns and sched > 0 and abs(sched - ticks) <= 0.02 + 0.05 * ticks:
            return sched
        return ticks


class ServerProcess:
    """One server subprocess bound to 127.0.0.1; use as a context manager."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        port: int,
        host: str = "127.0.0.1",
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        log_path: Path,
        ready_timeout: float = 60.0,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.host = host
        self.port = port
        self.cwd = cwd
        self.env = env
        self.log_path = log_path
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> ServerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - single-threaded at this point
            )
        if not wait_for_port(self.host, self.port, self.ready_timeout, self.proc):
            self.stop()
            raise ServerStartError(f"{self.name} did not start on port {self.port}:\n{self.log_tail()}")
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM by PID, wait, SIGKILL if it will not go; returns the exit code."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(5)
        return proc.returncode

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    # --- measurements ----------------------------------------------------------------------------

    def cpu(self) -> CpuSample:
        pid = self.pid
        sched = 0
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError, ValueError, IndexError):
                    with open(f"/proc/{pid}/task/{tid}/schedstat", encoding="ascii") as f:
                        sched += int(f.read().split()[0])
        except OSError:
            sched = 0
        ticks = 0
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open(f"/proc/{pid}/stat", encoding="ascii") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
        return CpuSample(sched, ticks, time.monotonic())

    def memory(self) -> dict[str, int]:
        """``rss`` and ``peak_rss`` (VmHWM) in bytes; empty if the process is gone."""
        out: dict[str, int] = {}
        with contextlib.suppress(OSError):
            with open(f"/proc/{self.pid}/status", encoding="ascii") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        out["rss"] = int(line.split()[1]) * 1024
                    elif line.startswith("VmHWM:"):
                        out["peak_rss"] = int(line.split()[1]) * 1024
        return out

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
