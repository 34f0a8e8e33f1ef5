"""`make demo`, end to end: a real relay process and six real ``quickslot`` CLI profiles.

Run it with ``python -m demos.e2e`` (``--verbose`` also prints every process's duration,
``--keep`` keeps the temporary directory). It:

1. prepares a temporary relay data directory (the embedded SQLite store) with ``relay.cli user
   add``/``user grant`` (an admin, the shop's owner, a staff member) and starts ``relay.cli serve``
   on a free loopback port. The demo uses a cheap Argon2 setting (1 MiB, one pass, one lane) and
   generous login rate limits so that it runs in seconds: never do that in production;
2. the admin creates a category, a shop and a slot of capacity 2; the owner names the staff
   member; three customers register;
3. Carol books offline (``quickslot book`` never touches the network: the booking is queued) and
   syncs: one seat of two is taken, Alice and Bob see one seat left;
4. the relay goes down; Alice and Bob both book the last seat while disconnected;
5. the relay comes back; everyone syncs; every profile shows the same verdict, and whichever of
   Alice and Bob reached the relay second is told (by the events in its ``sync`` output) that it
   is waitlisted;
6. Carol cancels; the waitlisted customer is promoted and told so; the staff member confirms both
   bookings; everyone syncs again and every view agrees once more.

Every client step is its own ``python -m client.cli --home DIR --json ...`` process in the
actor's own profile directory; independent steps run concurrently. The demo prints one timeline
line per step (``[actor] what happened``), checks every invariant, prints the total time, and exits
1 if an invariant fails (2 if a step itself failed). The relay is stopped (SIGTERM, then kill) and
the temporary directory removed in every case.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["DemoError", "main"]

REPO = Path(__file__).resolve().parents[1]
PASSWORD = "demo password, not a secret"
SHOP = "barber1"
SLOT = "cut-10"
CATEGORY = "hair"
CAPACITY = 2
# Demo only: a cheap password hash, and generous limits (every process logs in from 127.0.0.1).
FAST_HASH = ["--argon2-memory-kib", "1024", "--argon2-iterations", "1", "--argon2-lanes", "1"]
LIMITS = [
    "--login-rate-address", "1000/60", "--login-rate-account", "1000/60",
    "--register-rate-address", "1000/60",
]  # fmt: skip
STEP_TIMEOUT_S = 60.0
PYCACHE = "pycache"
#: What the client processes import between them: compiled once, before they start (see ``_env``).
CLIENT_MODULES = "import client.cli.app, client.sync.service, httpx"

T = TypeVar("T")
A = TypeVar("A")
Row = dict[str, Any]


class DemoError(Exception):
    """A step itself failed (a process exited unexpectedly, the relay did not start, ...)."""


class Timeline:
    """Prints ``  1.23s [actor]   text`` lines (thread-safe) and collects failed checks."""

    def __init__(self, verbose: bool = False) -> None:
        self.started = time.monotonic()
        self.verbose = verbose
        self.failures: list[str] = []
        self.processes = 0
        self._lock = threading.Lock()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def say(self, actor: str, text: str) -> None:
        line = f"{self.elapsed():6.2f}s {'[' + actor + ']':<9} {text}"
        with self._lock:
            print(line, flush=True)

    def ran(self, what: str, seconds: float) -> None:
        with self._lock:
            self.processes += 1
            if self.verbose:
                print(f"{'':8}({what}: {seconds:.2f}s)", flush=True)

    def check(self, ok: bool, what: str) -> bool:
        self.say("check", f"{'ok  ' if ok else 'FAIL'} {what}")
        if not ok:
            with self._lock:
                self.failures.append(what)
        return ok


def _env(pycache: Path | None = None) -> dict[str, str]:
    """The environment of every child process.

    ``pycache``: where the client processes keep their bytecode when the caller's environment
    forbids writing it (``PYTHONDONTWRITEBYTECODE``, so the shared checkout stays clean): without
    a cache each of the ~70 CLI processes recompiles every client and crdt_core module, ~80 ms of
    CPU apiece. A private tree under the demo's temporary directory keeps the checkout untouched.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["QUICKSLOT_SECRETS"] = "file"  # each profile keeps its tokens in its own 0600 file
    for name in ("QUICKSLOT_HOME", "QUICKSLOT_RELAY_DATA"):
        env.pop(name, None)
    if pycache is not None and env.get("PYTHONDONTWRITEBYTECODE"):
        env.pop("PYTHONDONTWRITEBYTECODE")
        env["PYTHONPYCACHEPREFIX"] = str(pycache)
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def parallel(*calls: Callable[[], T]) -> list[T]:
    """Run ``calls`` concurrently (each mostly waits on subprocesses); re-raise the first failure."""
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        futures = [pool.submit(call) for call in calls]
        return [f.result() for f in futures]


def each(items: Sequence[A], call: Callable[[A], T]) -> list[T]:
    """``call`` on every item concurrently, results in order; re-raise the first failure."""
    with ThreadPoolExecutor(max_workers=max(1, len(items))) as pool:
        return list(pool.map(call, items))


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def run(
    cmd: list[str], timeline: Timeline, what: str, stdin: str | None, pycache: Path | None = None
) -> subprocess.CompletedProcess[str]:
    started = time.monotonic()
    done = subprocess.run(
        cmd, cwd=REPO, env=_env(pycache), input=stdin, capture_output=True, text=True,
        timeout=STEP_TIMEOUT_S,
    )  # fmt: skip
    timeline.ran(what, time.monotonic() - started)
    return done


# --- the relay ------------------------------------------------------------------------------------------


class Relay:
    """``relay.cli serve`` on one loopback port that stays the same across restarts."""

    def __init__(self, data_dir: Path, log_path: Path, timeline: Timeline) -> None:
        self.data_dir = data_dir
        self.log_path = log_path
        self.timeline = timeline
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def admin(self, *args: str, stdin: str | None = None) -> Row:
        """``relay.cli ARGS --data DIR --json``: the operator's account administration."""
        cmd = [sys.executable, "-m", "relay.cli", *args, "--data", str(self.data_dir), "--json"]
        done = run(cmd, self.timeline, f"relay.cli {' '.join(args[:2])}", stdin)
        if done.returncode != 0:
            raise DemoError(f"relay.cli {' '.join(args)} exited {done.returncode}:\n{_tail(done.stderr)}")
        data: Row = json.loads(done.stdout)
        return data

    def start(self, timeout: float = 20.0) -> None:
        cmd = [
            sys.executable, "-m", "relay.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port),
            "--data", str(self.data_dir), "--log-level", "WARNING", *FAST_HASH, *LIMITS,
        ]  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=log, stderr=log)
            while self.proc.poll() is None and time.monotonic() < deadline:
                if self._healthy():
                    return
                time.sleep(0.05)
            if self.proc.poll() is None:
                break  # running but never healthy: give up
            time.sleep(0.2)  # exited (the port still held by the previous run?): try again
        self.stop()
        log_text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        raise DemoError(f"the relay did not start on port {self.port}:\n{_tail(log_text)}")

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=1.0) as response:
                return int(response.status) == 200
        except (OSError, urllib.error.URLError):
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; idempotent."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- the clients ----------------------------------------------------------------------------------------


def short(reservation_id: str) -> str:
    return reservation_id[:8]


def describe(event: Row, names: dict[str, str]) -> str:
    """A booking event from ``sync --json`` as one sentence."""
    rid = str(event.get("reservation_id", "?"))
    text = f"{names.get(rid, 'a')} booking [{short(rid)}] is now {event.get('state')} ({event.get('kind')})"
    if event.get("state") == "waitlisted" and event.get("position") is not None:
        text += f", waitlist position {event['position']}"
    return text + (", final" if event.get("final") and event.get("kind") != "final" else "")


def seats(view: Row) -> str:
    if not view.get("known") or "seats_taken" not in view:
        return "the day is not known here yet"
    return (
        f"{view['seats_taken']}/{view['capacity']} seats taken, {view['seats_left']} left, "
        f"{view['waitlisted']} waitlisted"
    )


class Actor:
    """One person with one profile directory; every action is one ``quickslot`` process."""

    def __init__(self, name: str, root: Path, timeline: Timeline, names: dict[str, str]) -> None:
        self.name = name
        self.home = root / name
        self.pycache = root / PYCACHE
        self.email = f"{name}@example.com"
        self.timeline = timeline
        self.names = names  # reservation id -> "alice's", shared by every actor
        self.user_id = ""
        self.events: list[Row] = []  # every booking event its syncs reported
        self.rejected: list[Row] = []
        self.pending = 0

    def say(self, text: str) -> None:
        self.timeline.say(self.name, text)

    def cli(self, *args: str, stdin: str | None = None, expect: int | tuple[int, ...] = 0) -> Row:
        cmd = [sys.executable, "-m", "client.cli", "--home", str(self.home), "--json", *args]
        done = run(cmd, self.timeline, f"{self.name} {args[0]}", stdin, self.pycache)
        if done.returncode not in (expect if isinstance(expect, tuple) else (expect,)):
            raise DemoError(
                f"[{self.name}] quickslot {' '.join(args)} exited {done.returncode} (expected {expect}):\n"
                f"{_tail(done.stdout)}\n{_tail(done.stderr)}"
            )
        try:
            data: Row = json.loads(done.stdout)
        except ValueError:
            raise DemoError(f"[{self.name}] quickslot {' '.join(args)}: not JSON: {done.stdout!r}") from None
        return data

    def register(self, relay: Relay) -> None:
        account = ["--relay", relay.url, "--email", self.email, "--password-stdin"]
        self.user_id = str(self.cli("register", *account, stdin=PASSWORD)["user_id"])
        self.say(f"registers as {self.email}")

    def login(self, relay: Relay, role: str) -> None:
        account = ["--relay", relay.url, "--email", self.email, "--password-stdin"]
        out = self.cli("login", *account, stdin=PASSWORD)
        self.user_id = str(out["user_id"])
        self.say(
            f"logs in as {role} (a fresh device key; certificate {short(out['cert_id'])} from the relay)"
        )

    def sync(self, quiet: bool = False) -> Row:
        """``quickslot sync``; narrates (and keeps) the booking events it reports."""
        out = self.cli("sync")
        self.rejected += out["rejected"]
        self.pending = int(out["pending"])
        told = [e for e in out["events"] if str(e.get("type", "")).startswith("booking_")]
        self.events += told
        if not quiet or told or out["rejected"]:
            self.say(
                f"syncs: {out['acked']} change(s) acked, {out['applied']} update(s) in, "
                f"{out['pending']} pending, {len(out['rejected'])} rejected"
            )
        for event in told:
            self.say("  told: " + describe(event, self.names))
        return out

    def slots(self, day: str) -> Row:
        """``quickslot slots SHOP DAY`` (browsing a day also subscribes to it): the slot's row."""
        out = self.cli("slots", SHOP, day)
        mine = [s for s in out["slots"] if s["slot_id"] == SLOT]
        return dict(mine[0]) if mine else {"known": out["known"]}

    def reservations(self) -> list[Row]:
        rows: list[Row] = self.cli("reservations")["reservations"]
        return rows

    def book(self, day: str) -> str:
        out = self.cli("book", SHOP, day, SLOT)
        row = out["reservation"]
        rid = str(row["reservation_id"])
        self.names[rid] = f"{self.name}'s"
        self.say(
            f"books {SLOT} on {day} offline -> queued={out['queued']}, shows {row['state']} "
            f"({'final' if row['final'] else 'tentative'}) [{short(rid)}]"
        )
        return rid

    def told(self, what: str) -> int:
        """How often this actor was told a booking of theirs became waitlisted / was promoted."""
        if what == "promoted":
            return sum(1 for e in self.events if e.get("type") == "booking_promoted")
        return sum(
            1 for e in self.events if e.get("state") == "waitlisted" and e.get("before") != "waitlisted"
        )


# --- the story ------------------------------------------------------------------------------------------


class Demo:
    def __init__(self, root: Path, timeline: Timeline) -> None:
        self.t = timeline
        self.day = (_dt.date.today() + _dt.timedelta(days=7)).isoformat()
        self.relay = Relay(root / "relay-data", root / "relay.log", timeline)
        names: dict[str, str] = {}
        self.admin, self.owner, self.staff, self.carol, self.alice, self.bob = (
            Actor(n, root, timeline, names) for n in ("admin", "owner", "staff", "carol", "alice", "bob")
        )
        self.customers = [self.carol, self.alice, self.bob]
        self.everyone = [self.admin, self.owner, self.staff, *self.customers]
        self.booked: dict[str, str] = {}  # customer name -> reservation id

    def run(self) -> None:
        self.provision()
        self.set_up_shop()
        self.first_booking()
        self.contend_offline()
        winner, loser = self.reconnect()
        self.cancel_promote_confirm(winner, loser)

    # -- steps --------------------------------------------------------------------------------------

    def provision(self) -> None:
        """The operator makes the admin account, then serves while adding the owner and staff.

        Account administration works on a serving relay (only ``compact`` needs it stopped), and
        nobody logs in before every account and grant exists, so the relay's start-up overlaps
        the other two accounts' ``user add``/``user grant`` processes. (A serving relay learns of
        a grant made by ``relay.cli`` at its next poll of the account events, within a second; the
        first record that needs one, the owner's staff entry, reaches it seconds later.)
        """
        add = ["--password-stdin", *FAST_HASH]
        parallel(
            lambda: self.relay.admin("user", "add", self.admin.email, "--admin", *add, stdin=PASSWORD),
            self.warm_up,
        )
        self.t.say("relay", f"operator: `relay.cli user add {self.admin.email} --admin`")

        def account(actor: Actor, grant: str) -> None:
            actor.user_id = str(self.relay.admin("user", "add", actor.email, *add, stdin=PASSWORD)["id"])
            self.relay.admin("user", "grant", actor.email, grant, SHOP)
            self.t.say("relay", f"operator: `relay.cli user add {actor.email}`, `user grant {grant} {SHOP}`")

        def serve() -> None:
            self.relay.start()
            self.t.say("relay", f"serving {self.relay.url} (temporary data directory, embedded SQLite)")

        parallel(lambda: account(self.owner, "--owner"), lambda: account(self.staff, "--staff"), serve)

    def warm_up(self) -> None:
        """Compile the client's modules once into the demo's bytecode cache (see ``_env``).

        Runs beside the first, sequential operator step, on a core that would otherwise idle;
        the six first client processes would otherwise each compile them at the same time.
        """
        pycache = self.admin.pycache
        if "PYTHONPYCACHEPREFIX" in _env(pycache):
            run([sys.executable, "-c", CLIENT_MODULES], self.t, "compile the client", None, pycache)

    def set_up_shop(self) -> None:
        """The admin builds the catalog while everyone else logs in or registers."""

        def admin() -> None:
            a = self.admin
            a.login(self.relay, "admin")
            a.cli("category", "add", CATEGORY, "Hair")
            a.say(f"adds category {CATEGORY!r} (queued locally)")
            a.cli("shop", "create", SHOP, "--name", "Cut Above", "--category", CATEGORY, "--location", "Main")
            a.say(f"creates shop {SHOP!r} (queued locally)")
            slot = [
                "--service",
                "haircut",
                "--start",
                "10:00",
                "--duration",
                "30",
                "--capacity",
                str(CAPACITY),
            ]
            out = a.cli("slot", "add", SHOP, SLOT, *slot)
            a.say(f"adds slot {SLOT!r} at 10:00 with capacity {out['slot']['capacity']} (queued locally)")
            a.sync()

        def member(actor: Actor, role: str) -> None:
            actor.login(self.relay, role)
            # Browsing the day subscribes to it (and the shop) for the next sync. The admin may not
            # have sent the shop yet (this runs alongside): a customer is then told so (exit 4),
            # while the shop's owner and staff keep following it.
            out = actor.cli("slots", SHOP, self.day, expect=(0, 4))
            if "error" in out:
                actor.say(f"opens {SHOP} on {self.day}: {out['error']['message']}")
            else:
                actor.say(f"opens {SHOP} on {self.day}: subscribed")

        def owner() -> None:
            member(self.owner, f"owner of {SHOP}")
            self.owner.cli("staff", "add", SHOP, self.staff.user_id)
            self.owner.say(f"names {self.staff.email} staff of {SHOP} (queued locally)")

        def customer(actor: Actor) -> None:
            actor.register(self.relay)
            member(actor, "a customer")

        parallel(
            admin,
            owner,
            lambda: member(self.staff, f"staff of {SHOP}"),
            lambda: each(self.customers, customer),
        )

    def first_booking(self) -> None:
        """Carol books offline and syncs; Alice and Bob see one seat left; the owner syncs."""

        def customers() -> None:
            self.carol.sync()
            self.booked["carol"] = self.carol.book(self.day)
            self.carol.sync()

            def look(actor: Actor) -> None:
                actor.sync(quiet=True)
                actor.say(f"views {SHOP} on {self.day}: {seats(actor.slots(self.day))}")

            each([self.alice, self.bob], look)

        parallel(customers, self.owner.sync, lambda: self.admin.slots(self.day))

    def contend_offline(self) -> None:
        self.relay.stop()
        self.t.say("relay", "stopped (SIGTERM): nobody can reach it")

        def alice() -> None:
            self.booked["alice"] = self.alice.book(self.day)
            err = self.alice.cli("sync", expect=5)["error"]
            self.alice.say(f"tries to sync: exit 5 ({err['code']}); the booking stays queued")

        def bob() -> None:
            self.booked["bob"] = self.bob.book(self.day)

        parallel(alice, bob)

    def reconnect(self) -> tuple[Actor, Actor]:
        """The relay returns; Alice and Bob race to it; everyone converges. Returns (winner, loser)."""
        self.relay.start()
        self.t.say("relay", f"back on {self.relay.url} with the same data")
        each([self.alice, self.bob], lambda a: a.sync())
        views, rows = self.converge("after the reconnect")
        state = {name: [r["state"] for r in rs] for name, rs in rows.items()}
        winners = [a for a in (self.alice, self.bob) if state[a.name] == ["confirmed"]]
        losers = [a for a in (self.alice, self.bob) if state[a.name] == ["waitlisted"]]
        if not self.t.check(
            len(winners) == 1 and len(losers) == 1, f"exactly one of alice/bob holds the last seat: {state}"
        ):
            raise DemoError("no single winner of the last seat: cannot go on")
        winner, loser = winners[0], losers[0]
        self.t.say("all", f"verdict: {winner.name} reached the relay first and holds the last seat, "
                          f"{loser.name} is waitlisted")  # fmt: skip
        expect = {"carol": "confirmed", winner.name: "confirmed", loser.name: "waitlisted"}
        self.check_views(views, rows, expect, waitlisted=1)
        finals = all(r["final"] for rs in rows.values() for r in rs)
        self.t.check(finals, "every verdict is final (stamped by the relay)")
        self.t.check(loser.told("waitlisted") == 1, f"{loser.name} was told once that it is waitlisted")
        return winner, loser

    def cancel_promote_confirm(self, winner: Actor, loser: Actor) -> None:
        def cancel_and_promote() -> None:
            rid = self.booked["carol"]
            out = self.carol.cli("cancel", rid, "--reason", "cannot make it")
            self.carol.say(f"cancels [{short(rid)}] -> {out['reservation']['state']} (queued locally)")
            self.carol.sync()
            loser.sync()  # Carol's seat is free: the loser moves up and is told so

        def confirm(actor: Actor) -> None:
            rid = self.booked[actor.name]
            self.staff.cli("confirm", rid)
            self.staff.say(f"confirms {actor.name}'s booking [{short(rid)}] (queued locally)")

        parallel(cancel_and_promote, lambda: confirm(winner))
        confirm(loser)  # after the promotion: the staff member confirms who now holds the seat
        self.staff.sync()

        views, rows = self.converge("after the cancellation")
        expect = {"carol": "cancelled", winner.name: "confirmed", loser.name: "confirmed"}
        self.check_views(views, rows, expect, waitlisted=0)
        acked = all(r["staff_confirmed"] for a in (winner, loser) for r in rows[a.name])
        self.t.check(acked, f"the staff confirmations reached {winner.name} and {loser.name}")
        self.t.check(loser.told("promoted") == 1, f"{loser.name} was told once that it was promoted")
        others = [
            a.name for a in self.customers if a is not loser and (a.told("waitlisted") or a.told("promoted"))
        ]
        self.t.check(not others, f"nobody else was told of a waitlist or a promotion {others or ''}".rstrip())
        rejected = {a.name: a.rejected for a in self.everyone if a.rejected}
        self.t.check(not rejected, f"the relay rejected no change {rejected or ''}".rstrip())
        pending = {a.name: a.pending for a in self.everyone if a.pending}
        self.t.check(not pending, f"every outbox is empty after the last sync {pending or ''}".rstrip())

    # -- convergence --------------------------------------------------------------------------------

    def converge(self, label: str) -> tuple[list[Row], dict[str, list[Row]]]:
        """Everyone syncs, then reads its slot view (and a customer its own reservations).

        Every change was acked before this starts, so each profile's sync brings it everything: its
        views can be read right after it, without waiting for the others.
        """
        rows: dict[str, list[Row]] = {}

        def one(actor: Actor) -> Row:
            actor.sync(quiet=True)
            if actor not in self.customers:
                return actor.slots(self.day)

            def own() -> Row:
                rows[actor.name] = actor.reservations()
                return {}

            return parallel(lambda: actor.slots(self.day), own)[0]  # two reads: no order between them

        views = each(self.everyone, one)
        self.t.say("all", f"{label}: all {len(views)} profiles synced; {SLOT} shows {seats(views[0])}")
        return views, {c.name: rows[c.name] for c in self.customers}

    def check_views(
        self, views: list[Row], rows: dict[str, list[Row]], expect: dict[str, str], waitlisted: int
    ) -> None:
        keys = ("known", "capacity", "seats_taken", "seats_left", "waitlisted")
        shapes = {a.name: tuple(v.get(k) for k in keys) for a, v in zip(self.everyone, views, strict=True)}
        same = len(set(shapes.values())) == 1 and views[0].get("known") is True
        self.t.check(same, f"all {len(shapes)} profiles show the same availability {keys}: {shapes['admin']}")
        taken = sum(r["party"] for rs in rows.values() for r in rs if r["holds_seats"])
        held_everywhere = all(v.get("seats_taken") == taken for v in views)
        self.t.check(
            held_everywhere and taken <= CAPACITY,
            f"capacity never exceeded: {taken} of {CAPACITY} seats held, the same on every profile",
        )
        self.t.check(
            all(v.get("waitlisted") == waitlisted for v in views),
            f"{waitlisted} waitlisted, on every profile",
        )
        states = {name: [(short(r["reservation_id"]), r["state"]) for r in rs] for name, rs in rows.items()}
        want = {name: [(short(self.booked[name]), state)] for name, state in expect.items()}
        self.t.check(states == want, f"each customer's own view agrees with that verdict: {states}")
        own = all(r["customer"] == c.user_id for c in self.customers for r in rows[c.name])
        self.t.check(own, "each customer lists only their own booking, under their own user id")


#: What `make demo` must take at most on the reference machine (2 cores), end to end.
TARGET_S = 30.0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demos.e2e", description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--verbose", action="store_true", help="print every process's duration")
    parser.add_argument(
        "--target",
        type=float,
        default=TARGET_S,
        metavar="S",
        help="fail (exit 3) when the demo takes longer than S seconds (default: %(default)s; 0: no target)",
    )
    args = parser.parse_args(argv)
    timeline = Timeline(verbose=args.verbose)
    root = Path(tempfile.mkdtemp(prefix="quickslot-demo-"))
    demo = Demo(root, timeline)
    timeline.say("demo", f"{SHOP}/{SLOT} on {demo.day}; relay data and six profiles under {root}")
    timeline.say("demo", "demo-only settings: fast Argon2 (1 MiB, 1 pass, 1 lane), generous login limits")
    error: str | None = None
    try:
        demo.run()
    except DemoError as exc:
        error = str(exc)
    except subprocess.TimeoutExpired as exc:
        error = f"a step took too long: {exc}"
    finally:
        demo.relay.stop()
        if args.keep:
            timeline.say("demo", f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    took = timeline.elapsed()
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"{timeline.processes} processes, {cpu.ru_utime + cpu.ru_stime:.1f}s of CPU; {took:.1f}s in all")
    code, line = outcome(took, args.target, error, len(timeline.failures))
    print(line, file=sys.stderr if code else sys.stdout)
    return code


def outcome(took: float, target: float, error: str | None, broken: int) -> tuple[int, str]:
    """The demo's exit status and last line.

    A demo that holds every invariant but misses its time target fails too (exit 3): CLI start-up
    and the relay's first answers are what a new user waits on, so a slow demo is a regression
    to see, not a pass.
    """
    if error is not None:
        return 2, f"demo FAILED after {took:.1f}s: {error}"
    if broken:
        return 1, f"demo FAILED in {took:.1f}s: {broken} invariant(s) broken"
    if target and took > target:
        return (
            3,
            f"demo FAILED its time target: every invariant holds, but it took {took:.1f}s"
            f" (target: {target:g}s)",
        )
    goal = f" (target: under {target:g}s)" if target else ""
    return 0, f"demo passed in {took:.1f}s{goal}: every invariant holds"


if __name__ == "__main__":
    raise SystemExit(main())
