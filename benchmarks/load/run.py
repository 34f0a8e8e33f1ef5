"""Run one load test: relay, accounts, plan, driver processes, sampling, summary.

Phases, each visible in the progress output and in the RSS series:

* ``setup``: the relay starts (its own data directory, a free loopback port, the default sync
  limits unless ``relay_args`` override them), accounts and devices are created, the plan is built;
* ``connect``: the drivers open every connection (authenticated, subscribed, synced) and say READY;
* ``load``: from a common start time, each driver sends its connections' updates on schedule; a
  driver says DONE when every ack and delivery it expects has arrived or ``drain_s`` after the
  schedule ends, whichever is first (what is missing then counts as timed out);
* ``stop``: the drivers close their connections, the relay is stopped with SIGTERM.

The relay's ``VmRSS`` and CPU are read from ``/proc`` every second throughout. Only loopback is
used; every process is ended by its PID (the drivers and the relay also die with this process).
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.load.accounts import DEFAULT_DEVICE_MIX, create_devices
from benchmarks.load.driver import raise_open_files
from benchmarks.load.plan import LoadShape, Plan, build_plan
from benchmarks.relay_bench.loadgen import WorkerSpec
from benchmarks.relay_bench.orchestrate import split
from benchmarks.relay_bench.procs import CpuSample, ServerProcess, WorkerProcess, child_env, free_port
from benchmarks.relay_bench.servers import AUTH_LIMIT_ARGS, FAST_HASH_ARGS

__all__ = ["LoadError", "RunOptions", "RunRecord", "Sample", "run_load"]

REPO = Path(__file__).resolve().parents[2]
PROGRESS_EVERY_S = 5.0


class LoadError(RuntimeError):
    """The run could not be carried out (relay or driver failed to start, a driver died)."""


@dataclass
class RunOptions:
    shape: LoadShape
    out: Path
    """Directory for the summary, the plot and the logs."""
    drivers: int = 2
    drain_s: float = 30.0
    device_mix: tuple[int, ...] = DEFAULT_DEVICE_MIX
    relay_args: list[str] = field(default_factory=list)
    connect_concurrency: int = 32
    connect_timeout_s: float = 300.0
    log: Callable[[str], None] = print


@dataclass
class Sample:
    at_ns: int
    rss: int
    cpu: CpuSample
    phase: str


@dataclass
class RunRecord:
    """Everything measured; :mod:`benchmarks.load.report` reduces it."""

    options: RunOptions
    plan: Plan
    argv: list[str]
    relay_argv: list[str]
    accounts: int
    samples: list[Sample]
    t0_ns: int
    go_ns: int
    done_ns: int
    results: list[dict[str, Any]]
    driver_cpu_s: float
    relay_exit: int | None
    relay_log_errors: int
    relay_log_problems: list[str]
    rss_idle: int
    rss_connected: int
    peak_rss_hwm: int
    connect_s: float
    nofile_soft: int
    loadavg: dict[str, tuple[float, float, float]]
    """The machine's load average before and after the load phase (other work skews latencies)."""


def _env() -> dict[str, str]:
    return child_env("QUICKSLOT_RELAY_DATA")


class _Driver(WorkerProcess):
    """One driver process and its stdout, read a line at a time without blocking."""

    def __init__(self, spec: WorkerSpec, work: Path, n: int) -> None:
        super().__init__(
            "benchmarks.load.driver",
            spec,
            work / f"driver{n}.spec",
            work / f"driver{n}.out",
            work / f"driver{n}.log",
            _env(),
        )
        self.n = n
        assert self.proc.stdout is not None
        self.fd = self.proc.stdout.fileno()
        self._buf = b""
        self.ready: list[str] | None = None
        self.done: list[str] | None = None
        self.progress: list[int] = []

    def pump(self) -> None:
        """Read what is available and take in complete lines."""
        chunk = os.read(self.fd, 65536)
        if not chunk:
            if self.done is None:
                raise LoadError(f"driver {self.n} exited ({self.proc.poll()}):\n{self.log_tail()}")
            return
        self._buf += chunk
        *lines, self._buf = self._buf.split(b"\n")
        for line in lines:
            word, *rest = line.decode().split() or [""]
            if word == "READY":
                self.ready = rest
                self.progress = [int(rest[0]), *self.progress[1:]] if self.progress else [int(rest[0])]
            elif word == "DONE":
                self.done = rest
            elif word == "PROGRESS":
                self.progress = [int(x) for x in rest]


class _Monitor:
    """Samples the relay every second and prints progress while waiting on the drivers."""

    def __init__(self, relay: ServerProcess, drivers: list[_Driver], log: Callable[[str], None]) -> None:
        self.relay = relay
        self.drivers = drivers
        self.log = log
        self.samples: list[Sample] = []
        self.phase = "setup"
        self._next_sample = 0.0
        self._next_print = time.monotonic() + PROGRESS_EVERY_S
        self.started = time.monotonic()

    def sample(self) -> None:
        mem = self.relay.memory()
        self.samples.append(Sample(time.monotonic_ns(), mem.get("rss", 0), self.relay.cpu(), self.phase))

    def wait(self, until: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not until():
            now = time.monotonic()
            if now > deadline:
                raise LoadError(f"timed out after {timeout:.0f} s waiting for {what}")
            if not self.relay.alive():
                raise LoadError(
                    f"the relay exited ({self.relay.proc and self.relay.proc.returncode}) during {what}"
                )
            if now >= self._next_sample:
                self.sample()
                self._next_sample = now + 1.0
            if now >= self._next_print:
                self.print_progress()
                self._next_print = now + PROGRESS_EVERY_S
            fds = [d.fd for d in self.drivers]
            readable, _, _ = select.select(
                fds, [], [], max(0.0, min(self._next_sample - time.monotonic(), 0.5))
            )
            for d in self.drivers:
                if d.fd in readable:
                    d.pump()

    def print_progress(self) -> None:
        totals = [0] * 6
        for d in self.drivers:
            for i, v in enumerate(d.progress[:6]):
                totals[i] += v
        rss = self.samples[-1].rss / 2**20 if self.samples else 0.0
        cpu = ""
        if len(self.samples) >= 6:
            a, b = self.samples[-6], self.samples[-1]
            cpu = f" cpu {100 * b.cpu.seconds_since(a.cpu) / max(1e-9, (b.at_ns - a.at_ns) / 1e9):.0f}%"
        self.log(
            f"[{time.monotonic() - self.started:6.1f}s {self.phase}] connected {totals[0]} sent {totals[1]} "
            f"acked {totals[2]} delivered {totals[3]} errors {totals[4]} closed {totals[5]} "
            f"relay rss {rss:.0f} MiB{cpu}"
        )


def _wait_healthy(relay: ServerProcess, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, urllib.error.URLError):
            with urllib.request.urlopen(f"http://127.0.0.1:{relay.port}/healthz", timeout=2) as r:  # noqa: S310
                if r.status == 200:
                    return
        time.sleep(0.05)
    raise LoadError(f"relay not healthy:\n{relay.log_tail()}")


def _save_metrics(port: int, path: Path) -> None:
    """Keep the relay's own view (``/metrics``: ack and commit latency, batch sizes) beside ours."""
    with contextlib.suppress(OSError, urllib.error.URLError):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:  # noqa: S310
            path.write_bytes(r.read())


def _log_problems(path: Path, keep: int = 20) -> tuple[int, list[str]]:
    """How many relay log lines are at error level or above (the relay logs JSON lines, and a
    stray traceback counts too), and the first ``keep`` lines at warning level or above."""
    errors, kept = 0, list[str]()
    with contextlib.suppress(OSError), open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            error = (
                '"level": "error"' in line or '"level": "critical"' in line or line.startswith("Traceback")
            )
            errors += error
            if (error or '"level": "warning"' in line) and len(kept) < keep:
                kept.append(line.strip()[:500])
    return errors, kept


def run_load(options: RunOptions, argv: list[str]) -> RunRecord:
    """Carry out one run (see the module docstring); raises :class:`LoadError` if it cannot."""
    shape, log = options.shape, options.log
    nofile = raise_open_files(shape.connections * 2 + 512)  # the relay inherits it: one fd per connection
    out = options.out
    work = out / "work"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    port = free_port()
    relay_argv = [
        sys.executable, "-m", "relay.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
        "--data", str(work / "relay-data"), "--log-level", "WARNING",
        *FAST_HASH_ARGS, *AUTH_LIMIT_ARGS, *options.relay_args,
    ]  # fmt: skip
    relay = ServerProcess("relay", relay_argv, port=port, cwd=REPO, env=_env(), log_path=out / "relay.log")
    if relay.log_path.exists():
        relay.log_path.unlink()
    drivers: list[_Driver] = []
    try:
        relay.start()
        _wait_healthy(relay)
        log(f"relay pid {relay.pid} on 127.0.0.1:{port}; open-file limit {nofile}")
        started = time.monotonic()
        devices = create_devices(f"http://127.0.0.1:{port}", shape.connections, options.device_mix)
        accounts = len({d.account for d in devices})
        log(f"{accounts} accounts, {len(devices)} devices logged in ({time.monotonic() - started:.1f} s)")
        started = time.monotonic()
        plan = build_plan(shape, devices, f"ws://127.0.0.1:{port}/api/v1/sync")
        log(
            f"plan: {plan.updates} signed bookings into {len(plan.doc_ids)} documents, "
            f"{plan.expected_deliveries} deliveries expected ({time.monotonic() - started:.1f} s)"
        )
        deadline_s = shape.duration_s + options.drain_s
        specs = [
            WorkerSpec(
                "live",
                part,
                compression=False,
                deadline_s=deadline_s,
                connect_concurrency=options.connect_concurrency,
            )
            for part in split(plan.clients, options.drivers)
        ]
        monitor = _Monitor(relay, drivers, log)
        monitor.sample()
        rss_idle = monitor.samples[-1].rss
        monitor.phase = "connect"
        connect_start = time.monotonic()
        drivers.extend(_Driver(spec, work, n) for n, spec in enumerate(specs))
        monitor.wait(lambda: all(d.ready is not None for d in drivers), options.connect_timeout_s, "READY")
        connect_s = time.monotonic() - connect_start
        monitor.print_progress()
        time.sleep(1.0)  # let the relay settle before the connected-memory reading
        monitor.sample()
        rss_connected = monitor.samples[-1].rss
        opened = sum(int(d.ready[0]) for d in drivers if d.ready)
        log(f"{opened} connections open in {connect_s:.1f} s; relay rss {rss_connected / 2**20:.0f} MiB")
        lg0 = sum(d.cpu_seconds() for d in drivers)
        t0_ns = time.monotonic_ns() + 300_000_000
        go_ns = time.monotonic_ns()
        loadavg = {"before": os.getloadavg()}
        monitor.phase = "load"
        for d in drivers:
            d.say(f"GO {t0_ns}")
        monitor.wait(lambda: all(d.done is not None for d in drivers), deadline_s + 60, "DONE")
        done_ns = time.monotonic_ns()
        loadavg["after"] = os.getloadavg()
        monitor.phase = "drained"
        monitor.sample()
        monitor.print_progress()
        driver_cpu = sum(d.cpu_seconds() for d in drivers) - lg0
        results = [d.results() for d in drivers]
        peak_hwm = relay.memory().get("peak_rss", 0)
        _save_metrics(port, out / "relay-metrics.txt")
        monitor.phase = "stop"
        for d in drivers:
            d.stop()
        monitor.sample()
        relay_exit = relay.stop()
    finally:
        for d in drivers:
            if d.proc.poll() is None:
                d.proc.kill()
                d.proc.wait(5)
        relay.stop()
    shutil.rmtree(work / "relay-data", ignore_errors=True)
    log_errors, log_problems = _log_problems(relay.log_path)
    return RunRecord(
        options=options, plan=plan, argv=argv, relay_argv=relay_argv, accounts=accounts,
        samples=monitor.samples, t0_ns=t0_ns, go_ns=go_ns, done_ns=done_ns, results=results,
        driver_cpu_s=driver_cpu, relay_exit=relay_exit, relay_log_errors=log_errors,
        relay_log_problems=log_problems,
        rss_idle=rss_idle, rss_connected=rss_connected, peak_rss_hwm=peak_hwm, connect_s=connect_s,
        nofile_soft=nofile, loadavg=loadavg,
    )  # fmt: skip
