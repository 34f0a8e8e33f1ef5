"""Memory over hours: a real relay under modest steady load, with day documents that roll over.

Why: a relay that leaks a little per booking, per connection or per document it ever loaded looks
flat in any run of minutes. This runs one relay process (SQLite store in a temporary directory,
on a free loopback port) for hours with a small, steady, realistic load and samples its RSS:

* ``--devices`` signed-in devices hold one connection each, subscribed to the "current" and the
  next day document of every shop; together they send ``--rate`` updates per second (bookings,
  and a share of cancellations of their own earlier bookings), which the relay stamps, stores and
  fans out to the other subscribers;
* time is compressed: every ``--day-seconds`` the current day advances, every connection
  unsubscribes from the day that ended and subscribes to the new next day, and the old day
  documents go quiet, so the relay can unload them (``--idle-unload``) as it would overnight;
* every ``--reconnect-seconds`` on average a device drops its connection and reconnects
  (catching up from an empty state vector), and every ``--newcomer-seconds`` a new device logs
  in, catches up on the current days and leaves a little later.

Every ``--sample-seconds`` the relay's RSS (``/proc/PID/status``) and a few of its own metrics
are appended to ``samples.jsonl``; a log line shows progress. At the end ``summary.json`` holds
the least-squares RSS slope after ``--warmup-seconds`` (MiB per hour; target under 1) and the
plot goes to ``--plot`` (default ``OUT/soak.png``).

``python -m benchmarks.relay_bench.soak --hours 2 --out /tmp/soak``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import websockets
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from websockets.asyncio.client import ClientConnection

from benchmarks.load.accounts import Device, create_devices
from benchmarks.relay_bench import promhist
from benchmarks.relay_bench.payloads import EMPTY_SV
from benchmarks.relay_bench.procs import ServerProcess, child_env, free_port
from benchmarks.relay_bench.servers import AUTH_LIMIT_ARGS, FAST_HASH_ARGS
from crdt_core.authoring import Author
from crdt_core.engine import Replica
from crdt_core.messages import ClientUpdate, Subscribe, Unsubscribe
from crdt_core.pop import SYNC, proof_headers

__all__ = ["SoakOptions", "main", "rss_slope_mib_per_hour", "run_soak"]

REPO = Path(__file__).resolve().parents[2]
METRICS = (
    "quickslot_loaded_documents",
    "quickslot_connections",
    "quickslot_updates_in_total",
    "quickslot_stamps_total",
    "quickslot_rejections_total",
)
MIB = 2**20


@dataclass
class SoakOptions:
    seconds: float
    out: Path
    devices: int = 8
    shops: int = 3
    rate: float = 3.0
    cancel_share: float = 0.2
    day_seconds: float = 120.0
    idle_unload: float = 60.0
    reconnect_seconds: float = 600.0
    newcomer_seconds: float = 120.0
    newcomer_stay: float = 30.0
    sample_seconds: float = 30.0
    warmup_seconds: float = 900.0
    plot: Path | None = None
    seed: int = 0
    tracemalloc: int = 0
    """> 0: run the relay under tracemalloc with this many frames per traceback, snapshot it at the
    end of the warm-up and at the end, and write the growth by allocation site to
    ``OUT/tracemalloc.txt`` (the relay runs slower: for finding a leak, not for the slope)."""


@dataclass
class Counters:
    sent: int = 0
    acked: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    delivered: int = 0
    synced: int = 0
    reconnects: int = 0
    newcomers: int = 0
    ack_ms: list[float] = field(default_factory=list)


def log(event: str, **fields: Any) -> None:
    """One structured progress line: ``soak event=... key=value ...``."""
    parts = " ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
    print(f"soak event={event} {parts}", flush=True)


def day_doc(shop: str, day: int) -> str:
    return f"bookings:{shop}:{(dt.date.today() + dt.timedelta(days=1 + day)).isoformat()}"


class Connection:
    """One device's websocket: subscribes, sends updates, counts what comes back."""

    def __init__(self, device: Device, url: str, counters: Counters) -> None:
        self.device = device
        self.url = url
        self.c = counters
        self.ws: ClientConnection | None = None
        self.docs: set[str] = set()
        self.pending: dict[int, int] = {}
        self.reader: asyncio.Task[None] | None = None
        self.closing = False

    async def open(self, docs: list[str]) -> None:
        ident = self.device.identity
        self.ws = await websockets.connect(
            self.url,
            additional_headers=proof_headers(
                ident.access, Ed25519PrivateKey.from_private_bytes(ident.device_key), SYNC
            ),
            open_timeout=30,
            ping_interval=None,
            close_timeout=2,
            max_size=64 * MIB,
        )
        welcome = msgpack.unpackb(await asyncio.wait_for(self.ws.recv(), 30))
        if welcome.get("t") != "welcome":
            raise RuntimeError(f"expected welcome, got {welcome}")
        self.reader = asyncio.create_task(self._read())
        for doc in docs:
            await self.subscribe(doc)

    async def subscribe(self, doc: str) -> None:
        if self.ws is not None and doc not in self.docs:
            self.docs.add(doc)
            await self.ws.send(Subscribe(doc, EMPTY_SV).to_wire())

    async def unsubscribe(self, doc: str) -> None:
        if self.ws is not None and doc in self.docs:
            self.docs.discard(doc)
            await self.ws.send(Unsubscribe(doc).to_wire())

    async def send(self, doc: str, uid: int, update: bytes) -> bool:
        if self.ws is None:
            return False
        self.pending[uid] = time.monotonic_ns()
        try:
            await self.ws.send(ClientUpdate(doc, uid, update).to_wire())
        except websockets.ConnectionClosed:
            self.pending.pop(uid, None)
            return False  # the reader logs and counts it
        self.c.sent += 1
        return True

    async def _read(self) -> None:
        ws = self.ws
        assert ws is not None
        try:
            async for data in ws:
                m = msgpack.unpackb(data)
                t = m.get("t")
                if t in ("ack", "stamped") and m.get("uid") in self.pending:
                    sent = self.pending.pop(m["uid"])
                    self.c.acked += 1
                    self.c.ack_ms.append((time.monotonic_ns() - sent) / 1e6)
                elif t in ("upd", "stamped"):  # another device's update (with its stamps) fanned out
                    self.c.delivered += 1
                elif t == "sync":
                    self.c.synced += 1
                elif t == "err":
                    code = str(m.get("code"))
                    self.c.errors[code] = self.c.errors.get(code, 0) + 1
                    self.pending.pop(m.get("uid"), None)
        except websockets.ConnectionClosed as exc:
            # Closed by the relay (or the network), not by us: count it, log why, and let the
            # main loop reconnect this device.
            if self.ws is ws and not self.closing:
                rcvd = exc.rcvd
                close_code = rcvd.code if rcvd is not None else None
                key = f"closed:{close_code}"
                self.c.errors[key] = self.c.errors.get(key, 0) + 1
                log("closed", device=self.device.identity.email, code=close_code,
                    reason=repr(rcvd.reason if rcvd is not None else str(exc)))  # fmt: skip
                self.ws = None
                self.docs.clear()
                self.pending.clear()

    async def close(self) -> None:
        """Close after the acks of what was sent (a real client would resend the rest on reconnect)."""
        deadline = time.monotonic() + 5
        while self.pending and self.ws is not None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        self.closing = True
        if self.ws is not None:
            await self.ws.close()
        if self.reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self.reader
        self.closing = False
        self.ws = None
        self.docs.clear()
        self.pending.clear()


@dataclass
class Writer:
    """A device's own replicas of the day documents it writes (its own records only) and its bookings."""

    device: Device
    replicas: dict[str, Replica] = field(default_factory=dict)
    bookings: dict[str, list[str]] = field(default_factory=dict)
    seq: int = 0

    def update(self, doc: str, rng: random.Random, cancel_share: float) -> bytes:
        author = self.device.identity.author
        assert isinstance(author, Author)
        replica = self.replicas.get(doc)
        if replica is None:
            replica = self.replicas[doc] = Replica(author.client_id())
        mine = self.bookings.setdefault(doc, [])
        if mine and rng.random() < cancel_share:
            res_id = mine.pop(rng.randrange(len(mine)))
            return author.event(replica, doc, res_id, "cancel")[1]
        self.seq += 1
        res, update = author.book(replica, doc, f"s{self.seq}", 1 + self.seq % 3, note="soak")
        mine.append(res.id)
        return update

    def forget_before(self, docs: set[str]) -> None:
        for doc in [d for d in self.replicas if d not in docs]:
            del self.replicas[doc]
            self.bookings.pop(doc, None)


def read_rss(pid: int) -> dict[str, int]:
    """``rss`` and its parts ``rss_anon`` (heap: what a leak grows) and ``rss_file`` (mapped files:
    code, libraries), in bytes, from ``/proc/PID/status``."""
    names = {"VmRSS:": "rss", "RssAnon:": "rss_anon", "RssFile:": "rss_file"}
    out = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            name = names.get(line.split(":", 1)[0] + ":")
            if name is not None:
                out[name] = int(line.split()[1]) * 1024
    return out


def read_metrics(base: str) -> dict[str, float]:
    """The relay's own figures the soak samples (empty while it does not answer)."""
    try:
        return promhist.values(promhist.scrape(base), METRICS)
    except (OSError, urllib.error.URLError):
        return {}


def rss_slope_mib_per_hour(samples: list[dict[str, Any]], warmup_s: float) -> tuple[float, int]:
    """Least-squares slope of RSS (MiB) against time (hours) over the samples after ``warmup_s``."""
    pts = [(s["t"] / 3600, s["rss"] / MIB) for s in samples if s["t"] >= warmup_s]
    n = len(pts)
    if n < 2:
        return float("nan"), n
    mx = sum(x for x, _ in pts) / n
    my = sum(y for _, y in pts) / n
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    if sxx == 0:
        return float("nan"), n
    return sum((x - mx) * (y - my) for x, y in pts) / sxx, n


class Soak:
    def __init__(self, opts: SoakOptions) -> None:
        self.o = opts
        self.rng = random.Random(opts.seed)
        self.c = Counters()
        self.shops = [f"soak{i}" for i in range(opts.shops)]
        self.samples: list[dict[str, Any]] = []
        self.day = 0
        self.uid = 0
        self.traced = False

    def docs_for(self, day: int) -> list[str]:
        return [day_doc(s, d) for s in self.shops for d in (day, day + 1)]

    async def run(self, relay: ServerProcess, base: str) -> None:
        o = self.o
        url = f"ws://127.0.0.1:{relay.port}/api/v1/sync"
        devices = await asyncio.to_thread(create_devices, base, o.devices, (1,), 4)
        writers = [Writer(d) for d in devices]
        conns = [Connection(d, url, self.c) for d in devices]
        for conn in conns:
            await conn.open(self.docs_for(0))
        log("connected", devices=len(conns), docs=len(self.docs_for(0)))
        t0 = time.monotonic()
        next_sample = t0
        next_send = t0
        next_newcomer = t0 + o.newcomer_seconds
        newcomers: list[tuple[float, Connection]] = []
        tick = 0.05
        while (now := time.monotonic()) - t0 < o.seconds:
            elapsed = now - t0
            day = int(elapsed // o.day_seconds)
            if day != self.day:
                await self._roll(conns, writers, day)
            while next_send <= now:
                next_send += self.rng.expovariate(o.rate)
                k = self.rng.randrange(len(conns))
                if conns[k].ws is None:
                    continue
                doc = day_doc(self.rng.choice(self.shops), self.day + (self.rng.random() < 0.3))
                self.uid += 1
                await conns[k].send(doc, self.uid, writers[k].update(doc, self.rng, o.cancel_share))
            for conn in conns:
                if conn.ws is None:  # the relay closed it: come back, as a client would
                    await conn.open(self.docs_for(self.day))
                    self.c.reconnects += 1
                elif self.rng.random() < tick / o.reconnect_seconds:
                    await conn.close()
                    await conn.open(self.docs_for(self.day))
                    self.c.reconnects += 1
            if now >= next_newcomer:
                next_newcomer += o.newcomer_seconds
                (dev,) = await asyncio.to_thread(create_devices, base, 1, (1,), 1)
                fresh = Connection(dev, url, self.c)
                await fresh.open(self.docs_for(self.day))
                newcomers.append((now + o.newcomer_stay, fresh))
                self.c.newcomers += 1
            for leave, conn in [n for n in newcomers if n[0] <= now]:
                await conn.close()
                newcomers.remove((leave, conn))
            if now >= next_sample:
                next_sample += o.sample_seconds
                self._sample(relay, base, elapsed)
                if o.tracemalloc and not self.traced and elapsed >= o.warmup_seconds:
                    self.traced = True
                    await asyncio.to_thread(snapshot_now, relay, o.out / "traces" / "trace-0.pickle")
            await asyncio.sleep(tick)
        await asyncio.sleep(2)  # the last acks
        self._sample(relay, base, time.monotonic() - t0)
        for conn in conns + [c for _, c in newcomers]:
            await conn.close()

    async def _roll(self, conns: list[Connection], writers: list[Writer], day: int) -> None:
        old, new = set(self.docs_for(self.day)), self.docs_for(day)
        self.day = day
        for conn in conns:
            for doc in old - set(new):
                await conn.unsubscribe(doc)
            for doc in new:
                await conn.subscribe(doc)
        for w in writers:
            w.forget_before(set(new))
        log("day", day=day, docs=" ".join(d.rsplit(":", 1)[1] for d in new[:2]))

    def _sample(self, relay: ServerProcess, base: str, elapsed: float) -> None:
        memory = read_rss(relay.pid)
        rss = memory.get("rss", 0)
        metrics = read_metrics(base)
        acks = self.c.ack_ms
        acks_sorted = sorted(acks)
        s = {
            "t": round(elapsed, 1),
            **memory,
            "day": self.day,
            "sent": self.c.sent,
            "acked": self.c.acked,
            "delivered": self.c.delivered,
            "errors": sum(self.c.errors.values()),
            "reconnects": self.c.reconnects,
            "newcomers": self.c.newcomers,
            "ack_p99_ms": round(acks_sorted[int(0.99 * (len(acks) - 1))], 2) if acks else None,
            **{k.removeprefix("quickslot_"): v for k, v in metrics.items()},
        }
        self.c.ack_ms = []
        self.samples.append(s)
        with open(self.o.out / "samples.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(s) + "\n")
        log(
            "sample",
            t=s["t"],
            rss_mib=rss / MIB,
            day=self.day,
            loaded_docs=int(metrics.get("quickslot_loaded_documents", -1)),
            sent=self.c.sent,
            acked=self.c.acked,
            delivered=self.c.delivered,
            errors=s["errors"],
            reconnects=self.c.reconnects,
            newcomers=self.c.newcomers,
        )


def snapshot_now(relay: ServerProcess, path: Path, timeout: float = 300.0) -> None:
    """Ask the traced relay for a tracemalloc snapshot (SIGUSR1) and wait until it is written."""
    os.kill(relay.pid, signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    size = -1
    while time.monotonic() < deadline:  # written once its size stops changing
        now = path.stat().st_size if path.exists() else -1
        if now > 0 and now == size:
            break
        size = now
        time.sleep(1.0)
    log("tracemalloc", snapshot=path.name, bytes=size)


def write_growth(traces: Path, out: Path, top: int = 25) -> None:
    """The allocation sites whose traced memory grew most between the two snapshots."""
    import tracemalloc

    before = tracemalloc.Snapshot.load(str(traces / "trace-0.pickle"))
    after = tracemalloc.Snapshot.load(str(traces / "trace-1.pickle"))
    lines = [
        f"traced Python memory: {sum(s.size for s in before.statistics('filename')) / MIB:.2f} MiB after the "
        f"warm-up, {sum(s.size for s in after.statistics('filename')) / MIB:.2f} MiB at the end",
        "",
    ]
    grown = sorted(after.compare_to(before, "traceback"), key=lambda st: st.size_diff, reverse=True)
    for stat in grown[:top]:
        lines.append(f"{stat.size_diff / 1024:+10.1f} KiB {stat.count_diff:+8d} blocks")
        lines.extend("      " + line for line in stat.traceback.format()[-12:])
    out.write_text("\n".join(lines) + "\n")
    log("tracemalloc", growth=out)


def plot(samples: list[dict[str, Any]], summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hours = [s["t"] / 3600 for s in samples]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.plot(hours, [s["rss"] / MIB for s in samples], color="tab:blue", label="relay RSS")
    if all("rss_anon" in s for s in samples):
        anon = [s["rss_anon"] / MIB for s in samples]
        ax.plot(hours, anon, color="tab:blue", linestyle=":", label="of it anonymous (heap)")
    warm = summary["warmup_seconds"] / 3600
    slope, icpt = summary["slope_mib_per_hour"], summary["intercept_mib"]
    if slope == slope:  # not NaN
        xs = [h for h in hours if h >= warm]
        ax.plot(xs, [icpt + slope * x for x in xs], color="tab:red", linestyle="--",
                label=f"fit after warm-up: {slope:+.2f} MiB/h")  # fmt: skip
    ax.axvline(warm, color="tab:gray", linestyle=":", label="end of warm-up")
    ax.set_xlabel("hours")
    ax.set_ylabel("RSS (MiB)")
    docs = ax.twinx()
    docs.plot(hours, [s.get("loaded_documents", 0) for s in samples], color="tab:green", alpha=0.5,
              linewidth=0.8, label="loaded documents")  # fmt: skip
    docs.set_ylabel("loaded documents")
    ax.set_title(
        f"relay memory: {summary['days']} days of {summary['options']['day_seconds']:g} s, "
        f"{summary['options']['rate']:g} updates/s, {summary['options']['devices']} devices"
    )
    lines = ax.get_legend_handles_labels()
    more = docs.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summarize(opts: SoakOptions, samples: list[dict[str, Any]], errors: dict[str, int]) -> dict[str, Any]:
    """The run's figures from its samples (the last one carries the final counters)."""
    slope, n = rss_slope_mib_per_hour(samples, opts.warmup_seconds)
    pts = [(s["t"] / 3600, s["rss"] / MIB) for s in samples if s["t"] >= opts.warmup_seconds]
    icpt = (sum(y for _, y in pts) / n - slope * sum(x for x, _ in pts) / n) if n >= 2 else float("nan")
    rss = [s["rss"] / MIB for s in samples]
    last = samples[-1] if samples else {}
    return {
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(opts).items()},
        "seconds": last.get("t", 0),
        "days": last.get("day", 0) + 1,
        "samples": len(samples),
        "fit_samples": n,
        "warmup_seconds": opts.warmup_seconds,
        "slope_mib_per_hour": slope,
        "intercept_mib": icpt,
        "rss_first_mib": rss[0] if rss else None,
        "rss_last_mib": rss[-1] if rss else None,
        "rss_max_mib": max(rss) if rss else None,
        **{k: last.get(k, 0) for k in ("sent", "acked", "delivered", "reconnects", "newcomers")},
        "errors": errors,
        "target_mib_per_hour": 1.0,
        "within_target": slope == slope and slope < 1.0,
    }


def write_results(opts: SoakOptions, samples: list[dict[str, Any]], errors: dict[str, int]) -> dict[str, Any]:
    summary = summarize(opts, samples, errors)
    (opts.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    plot_path = opts.plot or opts.out / "soak.png"
    plot(samples, summary, plot_path)
    log("done", slope_mib_per_hour=summary["slope_mib_per_hour"], plot=plot_path, errors=errors)
    return summary


def run_soak(opts: SoakOptions) -> dict[str, Any]:
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / "samples.jsonl").unlink(missing_ok=True)
    work = Path(tempfile.mkdtemp(prefix="quickslot-soak-"))
    port = free_port()
    launcher = ["-m", "relay.cli"]
    if opts.tracemalloc:
        launcher = [
            "-m",
            "benchmarks.relay_bench.traced_relay",
            str(opts.out / "traces"),
            str(opts.tracemalloc),
        ]
    argv = [
        sys.executable, *launcher, "serve", "--host", "127.0.0.1", "--port", str(port),
        "--data", str(work / "data"), *FAST_HASH_ARGS, *AUTH_LIMIT_ARGS,
        "--idle-unload", str(opts.idle_unload), "--access-ttl", str(int(opts.seconds) + 3600),
        "--log-level", "INFO",
    ]  # fmt: skip
    relay = ServerProcess(
        "relay",
        argv,
        port=port,
        cwd=REPO,
        env=child_env("QUICKSLOT_RELAY_DATA"),
        log_path=opts.out / "relay.log",
        ready_timeout=600.0 if opts.tracemalloc else 60.0,  # tracing every import is slow
    )
    soak = Soak(opts)
    base = f"http://127.0.0.1:{port}"
    try:
        relay.start()
        deadline = time.monotonic() + 60
        while not read_metrics(base) and time.monotonic() < deadline:
            time.sleep(0.1)
        log("relay", pid=relay.pid, port=port, data=work)
        asyncio.run(soak.run(relay, base))
        if not relay.alive():
            raise RuntimeError(f"the relay died:\n{relay.log_tail()}")
        if opts.tracemalloc:
            snapshot_now(relay, opts.out / "traces" / "trace-1.pickle")
            write_growth(opts.out / "traces", opts.out / "tracemalloc.txt")
    finally:
        relay.stop()
        shutil.rmtree(work, ignore_errors=True)
    return write_results(opts, soak.samples, soak.c.errors)


#: The options with a default in SoakOptions, each a command-line flag of the same name.
TUNABLE = (
    "devices", "shops", "rate", "cancel_share", "day_seconds", "idle_unload", "reconnect_seconds",
    "newcomer_seconds", "newcomer_stay", "sample_seconds", "warmup_seconds", "seed", "tracemalloc",
)  # fmt: skip


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.relay_bench.soak", description=__doc__.split("\n\n")[0]
    )
    length = p.add_mutually_exclusive_group()
    length.add_argument("--hours", type=float, default=2.0)
    length.add_argument("--seconds", type=float, help="run length in seconds (instead of --hours)")
    d = SoakOptions(0, Path())
    p.add_argument(
        "--out", type=Path, required=True, help="directory for samples.jsonl, summary.json, the plot"
    )
    p.add_argument("--plot", type=Path, help="where to write the plot (default OUT/soak.png)")
    p.add_argument(
        "--from-samples", action="store_true",
        help="run nothing: summarize and plot OUT/samples.jsonl again (e.g. with another --warmup-seconds)",
    )  # fmt: skip
    for name in TUNABLE:
        default = getattr(d, name)
        p.add_argument(
            "--" + name.replace("_", "-"), type=type(default), default=default, help=f"(default {default})"
        )
    return p


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    opts = SoakOptions(
        seconds=a.seconds if a.seconds is not None else a.hours * 3600,
        out=a.out,
        plot=a.plot,
        **{k: getattr(a, k) for k in TUNABLE},
    )
    if a.from_samples:
        lines = (opts.out / "samples.jsonl").read_text().splitlines()
        samples = [json.loads(line) for line in lines if line.strip()]
        old = opts.out / "summary.json"
        errors = json.loads(old.read_text())["errors"] if old.exists() else {}
        summary = write_results(opts, samples, errors)
    else:
        summary = run_soak(opts)
    return 0 if not summary["errors"] and summary["acked"] > 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
