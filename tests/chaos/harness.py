"""The chaos run: a real relay process, a fault proxy, and client processes, killed on a schedule.

Shape of a run (:func:`run_chaos`):

1. **Setup, quiet network.** A relay on a free port, the proxy in front of it. An owner account
   (granted its shop with the relay's CLI) creates one shop with small-capacity slots; customer
   accounts log in and subscribe to the shop and its bookings days. Everyone talks to the relay
   only through the proxy's stable address.
2. **Chaos.** One worker process per account (:mod:`tests.chaos.client_worker`: the real
   LocalClient and SyncService on their own SQLite profiles) books, cancels, confirms, declines,
   while the proxy delays, drops, duplicates, reorders and truncates frames and cuts connections.
   The relay is SIGKILLed after a random uptime and restarted on a new port with the same data
   directory (the proxy follows it); client processes are SIGKILLed and restarted; now and then
   the proxy cuts every connection at once (a partition).
3. **Quiet sync.** Faults off; the workers stop; each profile syncs to quiescence in fresh
   processes (rounds until every client holds the same documents).
4. **Check** (:mod:`tests.chaos.checker`) against the journals, the final reports and the relay's
   SQLite file opened directly.

Everything is seeded: the schedule (uptimes, which client dies when), the workers' actions and
the proxy's faults. Process timing is not, so a seed reproduces the same *kind* of run, and the
proxy's fault sequence per connection exactly.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import json
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from client.local.client import LocalClient
from client.storage.secrets import SecretStore
from client.sync.auth import AuthClient
from client.sync.service import SyncService
from tests.chaos.checker import CheckResult, check_run
from tests.chaos.durability import AckAudit
from tests.faults.proxy import FaultProxy, FaultRates
from tests.support.relay_process import (
    GENEROUS_LIMITS,
    PASSWORD,
    REPO,
    RelayProcess,
    _env,
    cli_json,
    unique_email,
)

#: What the chaos phase injects, per data message and direction.
CHAOS_RATES = FaultRates(
    delay=0.05, drop=0.01, duplicate=0.02, reorder=0.02, cut=0.005, truncate=0.002, delay_max_s=0.1
)
SHOP = "chaos"


@dataclass
class ChaosConfig:
    seed: int
    workdir: Path
    clients: int = 3
    relay_kills: int = 8
    client_kills: int = 2
    partitions: int = 2
    uptime_s: tuple[float, float] = (0.3, 1.5)
    """How long each relay generation lives once the clients are back on it (seeded uniform)."""
    downtime_s: tuple[float, float] = (0.0, 0.3)
    capacity: int = 3
    slots: int = 2
    days: int = 2
    day_window_s: float | None = None
    """With many days: the clients book one day at a time, moving on every window (long runs)."""
    action_interval_s: float = 0.25
    rates: FaultRates = CHAOS_RATES
    max_duration_s: float | None = None
    """Stop scheduling kills after this long (the run still ends with the quiet sync and checks)."""
    progress: Callable[[str], None] | None = None


@dataclass
class ChaosReport:
    seed: int
    ok: bool
    violations: list[str]
    figures: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(
            {"seed": self.seed, "ok": self.ok, "violations": self.violations, "figures": self.figures},
            indent=1, sort_keys=True,
        )  # fmt: skip


class Relay:
    """The relay process across generations: killed with SIGKILL, restarted on a new port."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.generation = 0
        self.process: RelayProcess | None = None
        self.exits: list[tuple[int, int, str]] = []
        self.startup_s: list[float] = []

    async def start(self) -> int:
        self.generation += 1
        proc = RelayProcess(self.data_dir, *GENEROUS_LIMITS, "--events-poll", "0.2")
        began = time.monotonic()
        await asyncio.to_thread(proc.start, 60.0)
        self.startup_s.append(time.monotonic() - began)
        self.process = proc
        return proc.port

    def crashed(self) -> bool:
        """The current generation died without our signal (recorded once)."""
        p = self.process
        if p is None or p.proc is None or p.proc.poll() is None:
            return False
        self.exits.append((self.generation, int(p.proc.returncode), "crashed"))
        self.process = None
        return True

    async def kill(self) -> None:
        p = self.process
        if p is None or p.proc is None or self.crashed():
            return
        p.proc.send_signal(signal.SIGKILL)
        code = await asyncio.to_thread(p.proc.wait, 30)
        self.exits.append((self.generation, int(code), "sigkill"))
        self.process = None

    async def stop(self) -> None:
        p = self.process
        if p is None or self.crashed():
            return
        code = await asyncio.to_thread(p.stop, 30.0)
        self.exits.append((self.generation, int(code), "sigterm"))
        self.process = None

    def log_tail(self) -> str:
        log = self.data_dir.parent / f"{self.data_dir.name}-relay.log"
        return log.read_text(errors="replace")[-3000:] if log.exists() else ""


class Workers:
    """The client processes: started, SIGKILLed and restarted; crashes (other exits) are recorded."""

    def __init__(self, plan_path: Path, names: list[str], seed: int, logs: Path) -> None:
        self.plan_path = plan_path
        self.names = names
        self.seed = seed
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.crashes: list[tuple[str, int]] = []
        self.kills = 0

    def _cmd(self, name: str, *extra: str) -> list[str]:
        return [sys.executable, "-m", "tests.chaos.client_worker", "--plan", str(self.plan_path),
                "--name", name, "--seed", str(self.seed), *extra]  # fmt: skip

    def start(self, name: str) -> None:
        with open(self.logs / f"{name}.log", "ab") as err:
            self.procs[name] = subprocess.Popen(
                self._cmd(name), cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=err
            )

    def start_all(self) -> None:
        for name in self.names:
            self.start(name)

    def reap(self) -> None:
        """Restart any worker that exited by itself, recording it as a crash."""
        for name, proc in list(self.procs.items()):
            code = proc.poll()
            if code is not None:
                self.crashes.append((name, code))
                self.start(name)

    async def kill(self, name: str) -> None:
        proc = self.procs[name]
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            await asyncio.to_thread(proc.wait, 30)
            self.kills += 1
        else:
            self.crashes.append((name, int(proc.returncode)))
        self.start(name)

    async def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in self.procs.items():
            try:
                code = await asyncio.to_thread(proc.wait, 30)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = await asyncio.to_thread(proc.wait, 30)
                self.crashes.append((name, -999))  # hung on SIGTERM
                continue
            if code != 0:
                self.crashes.append((name, code))

    def kill_now(self) -> None:
        """For cleanup on failure: SIGKILL whatever still runs."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    async def final(self, name: str, out: Path, barrier: Path | None) -> dict[str, Any] | None:
        extra = ["--final", str(out)] + (["--barrier", str(barrier)] if barrier is not None else [])
        with open(self.logs / f"{name}.log", "ab") as err:
            done = await asyncio.to_thread(
                subprocess.run, self._cmd(name, *extra), cwd=REPO, env=_env(),
                stdout=subprocess.DEVNULL, stderr=err, timeout=300,
            )  # fmt: skip
        if done.returncode != 0 or not out.exists():
            self.crashes.append((name + " (final)", done.returncode))
            return None
        report: dict[str, Any] = json.loads(out.read_text())
        return report


async def _open(home: Path) -> LocalClient:
    return await LocalClient.open(home, secret_store=SecretStore(home, backend="file"))


async def setup_accounts(cfg: ChaosConfig, relay: Relay, url: str, plan: dict[str, Any]) -> None:
    """The owner's shop and every customer's subscriptions, through the proxy with faults off."""
    days = plan["days"]
    names = list(plan["clients"])
    emails = {n: unique_email(n) for n in names}
    opened: list[LocalClient] = []
    try:
        auths: dict[str, tuple[LocalClient, AuthClient]] = {}
        for name in names:
            local = await _open(Path(plan["clients"][name]["home"]))
            opened.append(local)
            auth = AuthClient(local, url)
            await auth.register(emails[name], PASSWORD, name.title())
            auths[name] = (local, auth)
        await asyncio.to_thread(
            cli_json, "user", "grant", emails["owner"], "--owner", SHOP, data_dir=relay.data_dir
        )
        # admin too: a shop names a category the catalogue defines, and only admins add one
        await asyncio.to_thread(
            cli_json, "user", "grant", emails["owner"], "--admin", data_dir=relay.data_dir
        )
        await asyncio.sleep(0.6)  # the relay polls account events every 0.2 s
        for name, (_local, auth) in auths.items():
            await auth.login(emails[name], PASSWORD)
        owner, owner_auth = auths["owner"]
        await owner.add_category("hair", "Hair")
        await owner.create_shop(
            SHOP, name="Chaos Cuts", category="hair", location="Main St", lat=1.0, lon=2.0
        )
        for i, slot in enumerate(plan["slots"]):
            await owner.add_slot(  # customers book at random, the same slot again too
                SHOP, slot, service="haircut", start=f"{10 + i}:00", duration=30, capacity=cfg.capacity,
                per_customer=100,
            )  # fmt: skip
        for name, (local, auth) in auths.items():
            await local.follow(SHOP)
            for day in days:
                await local.subscribe(f"bookings:{SHOP}:{day}")
            summary = await SyncService(local, url, auth=auth, backoff_initial_s=0.1).sync_once()
            if summary.pending or summary.rejected:
                raise RuntimeError(f"setup sync of {name} incomplete: {summary}")
    finally:
        for local in opened:
            await local.close()


def _plan(cfg: ChaosConfig, url: str) -> dict[str, Any]:
    first = _dt.date.today() + _dt.timedelta(days=30)
    names = ["owner"] + [f"customer{i}" for i in range(1, cfg.clients)]
    return {
        "url": url,
        "shops": [SHOP],
        "days": [(first + _dt.timedelta(days=i)).isoformat() for i in range(cfg.days)],
        "slots": [f"cut-{10 + i}" for i in range(cfg.slots)],
        "action_interval_s": cfg.action_interval_s,
        "day_window_s": cfg.day_window_s,
        "clients": {
            n: {
                "home": str(cfg.workdir / "profiles" / n),
                "journal": str(cfg.workdir / "journals" / f"{n}.jsonl"),
                "role": "owner" if n == "owner" else "customer",
            }
            for n in names
        },
    }


def _schedule(cfg: ChaosConfig, rng: random.Random) -> list[str]:
    """The order of events: the relay kills, with the client kills and partitions placed at seeded
    random points in the first half (so a run cut short by its time budget still has them)."""
    steps = ["relay"] * cfg.relay_kills
    half = max(1, cfg.relay_kills // 2)
    for extra in ["client"] * cfg.client_kills + ["partition"] * cfg.partitions:
        steps.insert(rng.randint(1, half), extra)
    return steps


async def run_chaos(cfg: ChaosConfig) -> ChaosReport:
    say = cfg.progress or (lambda _msg: None)
    rng = random.Random(cfg.seed)
    for sub in ("profiles", "journals", "logs", "finals"):
        (cfg.workdir / sub).mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    relay = Relay(cfg.workdir / "relay-data")
    port = await relay.start()
    proxy = await FaultProxy(("127.0.0.1", port), seed=cfg.seed).start()
    plan = _plan(cfg, proxy.url)
    plan_path = cfg.workdir / "plan.json"
    plan_path.write_text(json.dumps(plan, indent=1))
    workers = Workers(plan_path, list(plan["clients"]), cfg.seed, cfg.workdir / "logs")
    figures: dict[str, Any] = {"seed": cfg.seed, "clients": cfg.clients, "capacity": cfg.capacity}
    try:
        await setup_accounts(cfg, relay, proxy.url, plan)
        figures["setup_s"] = round(time.monotonic() - started, 1)
        say(f"setup done in {figures['setup_s']} s; relay on :{port}, proxy on :{proxy.port}")
        proxy.set_rates(cfg.rates)
        workers.start_all()
        journals = {n: Path(plan["clients"][n]["journal"]) for n in workers.names}
        audit = AckAudit(journals)
        lost: list[str] = []
        db_path = cfg.workdir / "relay-data" / "relay.sqlite3"
        chaos_started = time.monotonic()
        relay_kills = partitions = 0
        for step in _schedule(cfg, rng):
            if cfg.max_duration_s is not None and time.monotonic() - chaos_started > cfg.max_duration_s:
                say("time budget reached: no more kills")
                break
            if step == "relay":
                await _clients_back(proxy, cfg.clients, timeout=3.0)
                await asyncio.sleep(rng.uniform(*cfg.uptime_s))
            else:
                await asyncio.sleep(rng.uniform(0.1, 0.5))
            if relay.crashed():
                say(f"! relay generation {relay.generation} died by itself:\n{relay.log_tail()}")
                proxy.set_upstream("127.0.0.1", await relay.start())
            workers.reap()
            if step == "relay":
                await relay.kill()
                relay_kills += 1
                lost += await asyncio.to_thread(audit.audit, db_path, relay.generation)
                await asyncio.sleep(rng.uniform(*cfg.downtime_s))
                proxy.set_upstream("127.0.0.1", await relay.start())
                say(
                    f"[{time.monotonic() - chaos_started:7.1f} s] "
                    f"relay kill {relay_kills}/{cfg.relay_kills}; "
                    f"client kills {workers.kills}; faults {proxy.fault_counts()}"
                )
            elif step == "client":
                victim = rng.choice(workers.names)
                await workers.kill(victim)
                say(f"killed client {victim}")
            else:
                partitions += 1
                proxy.cut_all()
        await asyncio.sleep(rng.uniform(*cfg.uptime_s))
        figures["chaos_s"] = round(time.monotonic() - chaos_started, 1)
        figures["relay_kills"] = relay_kills
        figures["partitions"] = partitions

        # quiet sync
        proxy.faults_off()
        if relay.crashed():
            proxy.set_upstream("127.0.0.1", await relay.start())
        workers.reap()
        await workers.stop_all()
        figures["client_kills"] = workers.kills
        say("chaos over: faults off, workers stopped; quiet sync")
        finals: dict[str, dict[str, Any]] = {}
        rounds = 0
        for rounds in range(1, 5):  # noqa: B007 - reported below
            outs = {n: cfg.workdir / "finals" / f"{n}-{rounds}.json" for n in workers.names}
            barrier = cfg.workdir / "finals" / f"barrier-{rounds}"
            barrier.mkdir()
            got = await asyncio.gather(*(workers.final(n, o, barrier) for n, o in outs.items()))
            finals = {n: r for n, r in zip(outs, got, strict=True) if r is not None}
            digests = {json.dumps(r["digests"], sort_keys=True) for r in finals.values()}
            if len(digests) == 1 and len(finals) == len(workers.names):
                break
        figures["quiet_rounds"] = rounds
        figures["quiet_s"] = round(time.monotonic() - chaos_started - figures["chaos_s"], 1)
        await relay.stop()
        figures["relay_generations"] = relay.generation
        figures["relay_startup_s_mean"] = round(sum(relay.startup_s) / len(relay.startup_s), 2)
        figures["faults"] = proxy.fault_counts()
        figures["proxy"] = {k: v for k, v in proxy.counters.items() if k not in figures["faults"]}
        doc_ids = [f"bookings:{SHOP}:{d}" for d in plan["days"]]
        check: CheckResult = await asyncio.to_thread(
            check_run, journals, finals, cfg.workdir / "relay-data" / "relay.sqlite3", doc_ids, relay.exits
        )
        for violation in lost:
            check.fail(violation)
        figures["acks_audited_at_kills"] = audit.checked
        for name, code in workers.crashes:
            check.fail(f"client {name} exited by itself with code {code}")
        figures.update(check.figures)
        figures["actions"] = _count_actions(journals)
        figures["duration_s"] = round(time.monotonic() - started, 1)
        return ChaosReport(cfg.seed, check.ok, check.violations, figures)
    finally:
        workers.kill_now()
        await proxy.stop()
        if relay.process is not None and relay.process.proc is not None and relay.process.proc.poll() is None:
            relay.process.proc.kill()
            relay.process.proc.wait()


async def _clients_back(proxy: FaultProxy, clients: int, timeout: float) -> None:
    """Wait (bounded) until every client holds a connection again, so a kill lands on live traffic."""
    deadline = time.monotonic() + timeout
    while proxy.open_connections < clients and time.monotonic() < deadline:
        await asyncio.sleep(0.02)


def _count_actions(journals: dict[str, Path]) -> dict[str, int]:
    from tests.chaos.journal import read_journal

    counts: dict[str, int] = {}
    for path in journals.values():
        for rec in read_journal(path):
            key = rec["op"] if rec["kind"] == "action" else rec["kind"]
            if rec["kind"] in ("action", "action_error", "rejected"):
                counts[key] = counts.get(key, 0) + 1
    return counts


def run_sync(cfg: ChaosConfig) -> ChaosReport:
    return asyncio.run(run_chaos(cfg))
