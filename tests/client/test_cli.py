"""The ``quickslot`` CLI in real subprocesses, against a real relay process and real profile dirs.

Every ``--json`` output is checked against ``client.cli.schemas.SCHEMAS`` with a tiny checker (required
keys and types); exit codes are checked for usage errors (2), missing login (3), an unreachable
relay (5), and an offline booking (0, queued). The end-to-end flow: an admin-granted owner creates
a category, a shop and a slot of capacity 1; two customers book the last seat while the relay is
down; both sync; one is told it is waitlisted.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from client.cli.schemas import SCHEMAS
from tests.support.relay_process import (
    PASSWORD,
    QUICK_ACCOUNT_EVENTS,
    REPO,
    FixedPortRelay,
    _env,
    applied_by_relay_blocking,
    free_port,
    run_cli,
    serving_fixed_port_relay,
    unique_email,
)

DAY = (_dt.date.today() + _dt.timedelta(days=30)).isoformat()
SHOP = "clishop1"
SLOT = "cut-10"


# --- a tiny schema checker ---------------------------------------------------------------------------


def check(value: Any, spec: Any, path: str = "$") -> None:
    """Assert ``value`` matches ``spec`` (see client.cli.app's docstring: types, tuples, dicts, lists)."""
    if spec is None:
        assert value is None, f"{path}: expected null, got {value!r}"
    elif isinstance(spec, tuple):
        errors = []
        for option in spec:
            try:
                check(value, option, path)
                return
            except AssertionError as exc:
                errors.append(str(exc))
        raise AssertionError(f"{path}: no option matched: {errors}")
    elif isinstance(spec, dict):
        assert isinstance(value, dict), f"{path}: expected an object, got {value!r}"
        for key, sub in spec.items():
            assert key in value, f"{path}: missing key {key!r} in {sorted(value)}"
            check(value[key], sub, f"{path}.{key}")
    elif isinstance(spec, list):
        assert isinstance(value, list), f"{path}: expected an array, got {value!r}"
        for i, item in enumerate(value):
            check(item, spec[0], f"{path}[{i}]")
    elif spec is int:
        assert isinstance(value, int) and not isinstance(value, bool), f"{path}: expected int, got {value!r}"
    elif spec is float:
        assert isinstance(value, float), f"{path}: expected float, got {value!r}"
    else:
        assert isinstance(value, spec), f"{path}: expected {spec.__name__}, got {value!r}"


def test_schema_checker_catches_mismatches() -> None:
    check({"a": [1, 2], "b": None}, {"a": [int], "b": (str, None)})
    for bad in ({"a": ["x"], "b": None}, {"a": [1]}, {"a": [True], "b": None}, {"a": [], "b": 3}):
        with pytest.raises(AssertionError):
            check(bad, {"a": [int], "b": (str, None)})


# --- running the CLI ---------------------------------------------------------------------------------------


class Cli:
    """One profile: runs ``python -m client.cli --home HOME ...`` in a subprocess."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.email = unique_email(home.name)

    def run(
        self, *args: str, stdin: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        env = _env()
        env["QUICKSLOT_SECRETS"] = "file"
        env.pop("QUICKSLOT_HOME", None)
        cmd = [sys.executable, "-m", "client.cli", "--home", str(self.home), *args]
        return subprocess.run(
            cmd, cwd=REPO, env=env, input=stdin, capture_output=True, text=True, timeout=timeout
        )

    def json(self, schema: str, *args: str, code: int = 0, stdin: str | None = None) -> dict[str, Any]:
        """Run with ``--json``, assert the exit code and the schema (the error schema when code != 0)."""
        result = self.run("--json", *args, stdin=stdin)
        assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
        data: dict[str, Any] = json.loads(result.stdout)
        check(data, SCHEMAS[schema] if code == 0 else SCHEMAS["error"])
        if code:
            assert data["error"]["exit_code"] == code
        return data

    def register_and_login(
        self, relay_url: str, grant: list[list[str]] | None = None, data_dir: Path | None = None
    ) -> str:
        reg = self.json(
            "register",
            "register",
            "--relay",
            relay_url,
            "--email",
            self.email,
            "--password-stdin",
            stdin=PASSWORD,
        )
        for extra in grant or []:
            assert data_dir is not None
            r = run_cli("user", "grant", self.email, *extra, data_dir=data_dir)
            assert r.returncode == 0, r.stderr
        if grant:
            applied_by_relay_blocking(relay_url)  # the relay picks up CLI grants by polling
        login = self.json("login", "login", "--email", self.email, "--password-stdin", stdin=PASSWORD)
        assert login["user_id"] == reg["user_id"] and login["relay"] == relay_url
        assert PASSWORD not in json.dumps(login)
        return str(login["user_id"])


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FixedPortRelay]:
    yield from serving_fixed_port_relay(tmp_path_factory.mktemp("clirelay"), *QUICK_ACCOUNT_EVENTS)


# --- tests ---------------------------------------------------------------------------------------------


def test_usage_errors_and_missing_login(tmp_path: Path) -> None:
    cli = Cli(tmp_path / "nobody")
    cli.json("error", "book", "shop1", code=2)  # missing arguments
    cli.json("error", "slots", "shop1", "not-a-date", code=2)
    cli.json("error", "frobnicate", code=2)
    cli.json("error", "book", "shop1", DAY, SLOT, "--party", "x", code=2)
    cli.json("error", "whoami", code=3)
    cli.json("error", "sync", code=3)
    cli.json("error", "book", "shop1", DAY, SLOT, code=3)
    cli.json(
        "error", "login", "--email", "a@example.com", "--password-stdin", stdin=PASSWORD, code=3
    )  # no relay
    status = cli.json("status", "status")
    assert status["logged_in"] is False and status["queue_size"] == 0 and status["relay"] is None
    assert cli.json("categories", "categories")["categories"] == []
    assert cli.json("shops", "shops")["shops"] == []
    human = cli.run("status")
    assert human.returncode == 0 and "not logged in" in human.stdout
    after = cli.run("status", "--json")  # the global options may also follow the command
    assert after.returncode == 0
    check(json.loads(after.stdout), SCHEMAS["status"])
    assert cli.run("--help").returncode == 0


def test_register_unreachable_relay_and_bad_password(relay: FixedPortRelay, tmp_path: Path) -> None:
    cli = Cli(tmp_path / "eve")
    dead = f"http://127.0.0.1:{free_port()}"
    cli.json(
        "error", "register", "--relay", dead, "--email", cli.email, "--password-stdin", stdin=PASSWORD, code=5
    )
    cli.register_and_login(relay.base_url)
    again = cli.json(
        "error", "register", "--relay", relay.base_url, "--email", cli.email, "--password-stdin",
        stdin=PASSWORD, code=4,
    )  # fmt: skip
    assert again["error"]["code"]
    bad = cli.run("--json", "login", "--email", cli.email, "--password-stdin", stdin="wrong password!!")
    assert bad.returncode == 3 and "wrong password" not in bad.stdout + bad.stderr
    out = cli.run("whoami")  # the failed login did not log the profile out
    assert out.returncode == 0 and cli.email in out.stdout
    cli.json("logout", "logout")
    cli.json("error", "whoami", code=3)


def test_last_seat_contended_offline_end_to_end(relay: FixedPortRelay, tmp_path: Path) -> None:
    owner, alice, bob = Cli(tmp_path / "owner"), Cli(tmp_path / "alice"), Cli(tmp_path / "bob")
    owner.register_and_login(relay.base_url, [["--admin"], ["--owner", SHOP]], relay.data_dir)
    me = owner.json("whoami", "whoami")
    assert me["admin"] is True and SHOP in me["owner_of"] and me["email"] == owner.email

    owner.json("category add", "category", "add", "hair", "Hair")
    created = owner.json(
        "shop create", "shop", "create", SHOP, "--name", "Cut Above", "--category", "hair",
        "--location", "Main St", "--lat", "1.5", "--lon", "2.5",
    )  # fmt: skip
    assert created["summary"]["name"] == "Cut Above" and created["queued"] is True
    slot = owner.json(
        "slot add", "slot", "add", SHOP, SLOT, "--service", "haircut", "--start", "10:00",
        "--duration", "30", "--capacity", "1",
    )  # fmt: skip
    assert slot["slot"]["capacity"] == 1
    edited = owner.json("shop edit", "shop", "edit", SHOP, "--description", "Walk-ins welcome")
    assert edited["profile"]["description"] == "Walk-ins welcome"
    synced = owner.json("sync", "sync")
    assert synced["pending"] == 0 and synced["rejected"] == [] and synced["acked"] >= 4, synced

    alice_id = alice.register_and_login(relay.base_url)
    bob_id = bob.register_and_login(relay.base_url)
    owner.json("staff add", "staff", "add", SHOP, bob_id)
    assert owner.json("sync", "sync")["pending"] == 0
    for customer in (alice, bob):
        customer.json("sync", "sync")  # the catalog
        cats = customer.json("categories", "categories")["categories"]
        assert {"id": "hair", "name": "Hair", "icon": None} in cats
        shops = customer.json("shops", "shops", "--category", "hair")["shops"]
        assert [s["id"] for s in shops] == [SHOP]
        assert customer.json("shops", "shops", "--search", SHOP.upper())["shops"] == shops
        assert customer.json("shops", "shops", "--search", "no such words")["shops"] == []
        customer.json("slots", "slots", SHOP, DAY)  # subscribes to the shop and the day
        customer.json("sync", "sync")
        detail = customer.json("shop show", "shop", "show", SHOP)
        assert [s["slot_id"] for s in detail["slots"]] == [SLOT]
        assert detail["profile"]["description"] == "Walk-ins welcome"
        day = customer.json("slots", "slots", SHOP, DAY)
        assert [(s["slot_id"], s["capacity"], s["seats_left"]) for s in day["slots"]] == [(SLOT, 1, 1)]
    table = alice.run("slots", SHOP, DAY)
    assert table.returncode == 0 and "SEATS_LEFT" in table.stdout and SLOT in table.stdout

    relay.stop()
    try:
        booked = {}
        for name, customer in (("alice", alice), ("bob", bob)):
            out = customer.json("book", "book", SHOP, DAY, SLOT)  # offline: queued, not an error
            assert out["queued"] is True and out["reservation"]["state"] == "confirmed"
            assert out["reservation"]["final"] is False
            booked[name] = out["reservation"]["reservation_id"]
        status = alice.json("status", "status")
        # Queued: the booking, and its day listed in Alice's own document (for her other devices).
        assert status["relay_reachable"] is False and status["pending"] == 2 and status["queue_size"] == 2
        assert [(e["entity_type"], e["entity_id"]) for e in status["entries"]] == [
            ("reservation", booked["alice"]),
            ("booked_day", f"{SHOP}/{DAY}"),
        ]
        alice.json("error", "sync", code=5)
        human = bob.run("book", SHOP, DAY, SLOT, "--party", "0")
        assert human.returncode == 2
    finally:
        relay.start()

    first = alice.json("sync", "sync")
    assert first["acked"] >= 1 and first["pending"] == 0, first
    told = bob.run("sync")
    assert told.returncode == 0, told.stderr
    assert f"your booking {booked['bob']}" in told.stdout and "is now waitlisted" in told.stdout, told.stdout
    mine = bob.json("reservations", "reservations")["reservations"]
    assert [(r["reservation_id"], r["state"]) for r in mine] == [(booked["bob"], "waitlisted")]
    assert mine[0]["customer"] == bob_id
    alice.json("sync", "sync")
    alices = alice.json("reservations", "reservations")["reservations"]
    assert [(r["reservation_id"], r["state"], r["customer"]) for r in alices] == [
        (booked["alice"], "confirmed", alice_id)
    ]
    listing = bob.run("reservations")
    assert listing.returncode == 0 and "waitlisted" in listing.stdout and "RESERVATION_ID" in listing.stdout

    # Staff actions: the owner syncs the day, confirms Alice and declines Bob.
    owner.json("slots", "slots", SHOP, DAY)
    owner.json("sync", "sync")
    owner.json("confirm", "confirm", booked["alice"])
    owner.json("decline", "decline", booked["bob"], "--reason", "full")
    owner.json("error", "no-show", "nosuchreservation", code=4)
    assert owner.json("sync", "sync")["rejected"] == []
    events = bob.json("sync", "sync")["events"]
    assert any(e.get("reservation_id") == booked["bob"] and e.get("state") == "declined" for e in events), (
        events
    )
    cancelled = alice.json("cancel", "cancel", booked["alice"])
    assert cancelled["reservation"]["state"] == "cancelled"
    alice.json("sync", "sync")
    status = alice.json("status", "status")
    assert status["relay_reachable"] is True and status["queue_size"] == 0
    assert isinstance(status["last_sync_ms"], int)

    # A booking still queued at logout goes out first: logging out revokes the session's device
    # certificate at the relay, and what it signed would be refused afterwards.
    def seats_taken() -> int:
        owner.json("sync", "sync")
        (row,) = [r for r in owner.json("slots", "slots", SHOP, DAY)["slots"] if r["slot_id"] == SLOT]
        return int(row["seats_taken"])

    before = seats_taken()
    alice.json("book", "book", SHOP, DAY, SLOT)
    assert alice.json("status", "status")["queue_size"] == 1
    assert alice.json("logout", "logout")["flushed"] == 1
    alice.json("error", "reservations", code=3)
    assert seats_taken() == before + 1  # it reached the relay, and the owner
    profile_text = (alice.home / "cli.json").read_text()
    assert PASSWORD not in profile_text and "token" not in profile_text


@pytest.mark.parametrize("transport", ["auto", "http"])
def test_sync_watch_prints_events_until_interrupted(
    relay: FixedPortRelay, tmp_path: Path, transport: str
) -> None:
    shop = f"clishop2{transport}"
    owner = Cli(tmp_path / "owner2")
    owner.register_and_login(relay.base_url, [["--owner", shop]], relay.data_dir)
    owner.json(
        "shop create", "shop", "create", shop, "--name", "Two", "--category", "hair", "--location", "X"
    )
    owner.json(
        "slot add", "slot", "add", shop, SLOT, "--service", "s", "--start", "09:00", "--duration", "15",
        "--capacity", "1",
    )  # fmt: skip
    env = _env()
    env["QUICKSLOT_SECRETS"] = "file"
    cmd = [sys.executable, "-m", "client.cli", "--home", str(owner.home), "--json", "sync", "--watch"]
    cmd += ["--transport", transport, "--poll", "0.5"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        # The queued changes go out first, each told as acknowledged; then synced.
        acked = []
        while (event := json.loads(proc.stdout.readline()))["type"] == "change_acked":
            check(event, SCHEMAS["event"])
            acked.append((event["entity_type"], event["operation"], event["doc_id"]))
        check(event, SCHEMAS["event"])
        assert event["type"] == "synced", event
        assert sorted(acked) == [
            ("shop", "create", "catalog"),
            ("shop", "create", f"shop:{shop}"),
            ("slot", "create", f"shop:{shop}"),
        ]
    finally:
        proc.send_signal(signal.SIGINT)  # stop cleanly
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    for extra in out.splitlines():
        check(json.loads(extra), SCHEMAS["event"])
    status = owner.json("status", "status")
    assert status["pending"] == 0
    assert status["last_transport"] == ("websocket" if transport == "auto" else "http"), status
    assert os.stat(owner.home).st_mode & 0o077 == 0


def test_sync_transport_is_remembered_and_shown_in_status(relay: FixedPortRelay, tmp_path: Path) -> None:
    cli = Cli(tmp_path / "carol")
    cli.register_and_login(relay.base_url)
    assert cli.json("status", "status")["transport"] == "auto"
    synced = cli.json("sync", "sync", "--transport", "http")
    assert synced["transport"] == "http" and "configured" in synced["transport_reason"], synced
    status = cli.json("status", "status")
    assert (status["transport"], status["last_transport"]) == ("http", "http"), status
    assert cli.json("sync", "sync")["transport"] == "http"  # remembered in the profile
    human = cli.run("status")
    assert human.returncode == 0 and "transport: http (last sync: http" in human.stdout, human.stdout
    back = cli.json("sync", "sync", "--transport", "auto")
    assert back["transport"] == "websocket" and back["transport_reason"].startswith("auto"), back
    assert cli.json("status", "status")["last_transport"] == "websocket"
