"""A newcomer is never stuck silently: the README's steps run as written, and every dead end says
what to do. Real relay processes on free loopback ports; the CLI runs as subprocesses.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.client.test_cli import Cli
from tests.support.relay_process import (
    GENEROUS_LIMITS,
    PASSWORD,
    REPO,
    RelayProcess,
    _env,
    free_port,
    run_cli,
)

DAY = (_dt.date.today() + _dt.timedelta(days=30)).isoformat()
SHOP = "newshop1"
SLOT = "cut-10"


def readme_block() -> list[str]:
    """The command lines of the first ``sh`` block under "## Using it" in README.md."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Using it") :]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_readme_first_commands_are_make_demo_and_make_test() -> None:
    text = (REPO / "README.md").read_text()
    first = re.search(r"```sh\n(.*?)```", text, re.S)
    assert first is not None
    assert [line.split("#")[0].strip() for line in first.group(1).splitlines()] == ["make demo", "make test"]


def test_readme_using_it_runs_as_written(tmp_path: Path) -> None:
    """Each line of the block, in order, in a fresh directory (only the port is swapped for a free
    one); a ``--password-stdin`` line gets a password on stdin, a line ending in ``&`` runs in the
    background until its relay answers."""
    port = free_port()
    env = _env()
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env["PATH"]
    env["QUICKSLOT_SECRETS"] = "file"
    env.pop("QUICKSLOT_HOME", None)
    background: list[subprocess.Popen[bytes]] = []
    outputs: list[str] = []
    try:
        for line in readme_block():
            command = shlex.split(line, comments=True)
            command = [word.replace("8765", str(port)) for word in command]
            if command[-1] == "&":
                log = open(tmp_path / "relay.log", "wb")  # noqa: SIM115 - closed below
                background.append(
                    subprocess.Popen(command[:-1], cwd=tmp_path, env=env, stdout=log, stderr=log)
                )
                log.close()
                deadline = time.monotonic() + 60
                while True:
                    try:
                        if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    assert time.monotonic() < deadline, (tmp_path / "relay.log").read_text()
                    time.sleep(0.2)
                continue
            stdin = PASSWORD + "\n" if "--password-stdin" in command else None
            result = subprocess.run(
                command, cwd=tmp_path, env=env, input=stdin, capture_output=True, text=True, timeout=120
            )
            assert result.returncode == 0, (line, result.stdout, result.stderr)
            outputs.append(result.stdout)
    finally:
        for proc in background:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    assert "barber1" in outputs[-1] and "confirmed" in outputs[-1], outputs[-1]


# --- one relay for the rest ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    data = tmp_path_factory.mktemp("newcomer") / "data"
    with RelayProcess(data, "--max-docs", "6", "--max-party", "2", *GENEROUS_LIMITS) as process:
        yield process


@pytest.fixture(scope="module")
def owner(relay: RelayProcess, tmp_path_factory: pytest.TempPathFactory) -> Cli:
    owner = Cli(tmp_path_factory.mktemp("owner") / "owner")
    owner.register_and_login(relay.base_url, [["--admin"]], relay.data_dir)
    owner.json("category add", "category", "add", "hair", "Hair")
    owner.json("shop create", "shop", "create", SHOP, "--name", "New Shop", "--category", "hair")
    owner.json(
        "slot add", "slot", "add", SHOP, SLOT, "--service", "haircut", "--start", "10:00",
        "--duration", "30", "--capacity", "1",
    )  # fmt: skip
    owner.json(
        "slot add", "slot", "add", SHOP, "big", "--service", "group", "--start", "11:00",
        "--duration", "60", "--capacity", "5",
    )  # fmt: skip
    assert owner.json("sync", "sync")["pending"] == 0
    return owner


def test_book_fetches_an_unseen_shop_and_names_wrong_slots_and_shops(
    relay: RelayProcess, owner: Cli, tmp_path: Path
) -> None:
    alice = Cli(tmp_path / "alice")
    alice.register_and_login(relay.base_url)
    # A slot the shop does not have: not "sync the shop first", but the slots it has.
    wrong = alice.run("book", SHOP, DAY, "nope")
    assert wrong.returncode == 4 and "sync the shop first" not in wrong.stderr
    assert "has no slot 'nope'" in wrong.stderr and SLOT in wrong.stderr, wrong.stderr
    unknown = alice.run("slots", "no-such-shop", DAY)
    assert unknown.returncode == 4 and "no shop 'no-such-shop'" in unknown.stderr, unknown.stderr
    assert "shop:no-such-shop" not in alice.run("following").stdout
    booked = alice.json("book", "book", SHOP, _day(31), SLOT)
    assert booked["reservation"]["slot_id"] == SLOT
    alice.json("sync", "sync")
    # After a sync, a day with no bookings is known (empty), not "not known here yet".
    out = alice.run("slots", SHOP, _day(40))
    assert out.returncode == 0
    alice.json("sync", "sync")
    out = alice.run("slots", SHOP, _day(40))
    assert out.returncode == 0 and "not fetched yet" not in out.stdout and "known here yet" not in out.stdout
    assert alice.json("slots", "slots", SHOP, _day(40))["known"] is True


def _day(days: int) -> str:
    return (_dt.date.today() + _dt.timedelta(days=days)).isoformat()


def _customer(relay: RelayProcess, home: Path, day: str) -> Cli:
    """A registered, logged-in profile that has looked at ``day`` of the shop and synced."""
    cli = Cli(home)
    cli.register_and_login(relay.base_url)
    cli.json("slots", "slots", SHOP, day)
    cli.json("sync", "sync")
    return cli


def test_messages_a_newcomer_can_act_on(relay: RelayProcess, tmp_path: Path) -> None:
    cli = Cli(tmp_path / "bob")
    # A URL that is not the relay's base URL: says so, not "http_404".
    wrong = cli.run(
        "register", "--relay", relay.base_url + "/api", "--email", cli.email, "--password-stdin",
        stdin=PASSWORD,
    )  # fmt: skip
    assert wrong.returncode == 4 and "http_404" not in wrong.stderr, wrong.stderr
    assert "relay's base URL" in wrong.stderr
    # Usage errors: one "quickslot:" prefix.
    usage = cli.run("frobnicate")
    assert usage.returncode == 2 and "quickslot: quickslot" not in usage.stderr, usage.stderr
    usage = cli.run("book", "shop1")
    assert usage.returncode == 2 and "quickslot: quickslot" not in usage.stderr, usage.stderr
    # A damaged profile database: its path and what to do.
    cli.run("status")
    db = cli.home / "quickslot.db"
    for extra in ("-wal", "-shm"):
        Path(str(db) + extra).unlink(missing_ok=True)
    db.write_bytes(b"SQLite format 3\x00" + b"\xff" * 4000)
    broken = cli.run("status")
    assert broken.returncode == 1, broken.stderr
    assert str(db) in broken.stderr and "move it aside" in broken.stderr, broken.stderr
    # A profile directory that cannot be used: its path and a hint.
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    other = Cli(blocker / "profile")
    out = other.run("status")
    assert out.returncode == 1 and str(blocker / "profile") in out.stderr and "--home" in out.stderr, (
        out.stderr
    )


def test_refused_changes_can_be_seen_retried_and_discarded(
    relay: RelayProcess, owner: Cli, tmp_path: Path
) -> None:
    carol = _customer(relay, tmp_path / "carol", _day(33))
    # The slot seats 5 but this relay takes parties of at most 2 (--max-party): refused at arrival.
    booked = carol.json("book", "book", SHOP, _day(33), "big", "--party", "3")
    sync = carol.run("--json", "sync")
    assert sync.returncode == 4, sync.stderr
    status = carol.run("status")
    assert "refused by the relay" in status.stdout and "quickslot refused" in status.stdout, status.stdout
    refused = carol.json("refused", "refused")["refused"]
    assert [r["entity_id"] for r in refused] == [booked["reservation"]["reservation_id"]]
    assert "party_too_large" in refused[0]["why"] and "--party" in refused[0]["what_to_do"]
    retried = carol.json("retry", "retry", str(refused[0]["id"]), "--party", "1")
    assert retried["reservation"]["party"] == 1
    assert carol.json("refused", "refused")["refused"] == []
    assert carol.json("sync", "sync")["pending"] == 0
    # Another refusal, discarded.
    carol.json("book", "book", SHOP, _day(33), "big", "--party", "4")
    carol.run("sync")
    (entry,) = carol.json("refused", "refused")["refused"]
    assert carol.json("discard", "discard", str(entry["id"]))["discarded"] == [entry["id"]]
    assert carol.json("status", "status")["rejected"] == 0
    carol.json("error", "discard", "999999", code=4)


def test_bookings_sync_past_the_relays_document_limit(
    relay: RelayProcess, owner: Cli, tmp_path: Path
) -> None:
    """The relay here allows 6 documents per connection; the profile follows more than that."""
    dave = Cli(tmp_path / "dave")
    dave.register_and_login(relay.base_url)
    for offset in range(50, 60):  # ten days looked at: ten more followed documents
        dave.json("slots", "slots", SHOP, _day(offset))
    dave.run("sync")
    booked = dave.json("book", "book", SHOP, _day(61), SLOT)
    synced = dave.run("--json", "sync")
    data = json.loads(synced.stdout)
    assert data["pending"] == 0 and data["acked"] >= 1, data  # was: "1 pending" forever, exit 0
    assert synced.returncode == 0 and data["deferred"] == [], (synced.stdout, synced.stderr)
    assert len(dave.json("following", "following")["following"]) > 6
    mine = dave.json("reservations", "reservations")["reservations"]
    assert [r["reservation_id"] for r in mine] == [booked["reservation"]["reservation_id"]]
    # Following is a list the user can trim; a booked day cannot be dropped while it matters.
    doc = f"bookings:{SHOP}:{_day(50)}"
    assert dave.json("unfollow", "unfollow", doc)["unfollowed"] == doc
    assert doc not in [f["doc"] for f in dave.json("following", "following")["following"]]
    dave.json("error", "unfollow", f"bookings:{SHOP}:{_day(61)}", code=2)
    # The same account on a new device: its first sync brings the booking, no day opened there.
    tablet = Cli(tmp_path / "dave-tablet")
    tablet.email = dave.email
    tablet.json("login", "login", "--relay", relay.base_url, "--email", dave.email, "--password-stdin",
                stdin=PASSWORD)  # fmt: skip
    listing = tablet.run("reservations")
    assert listing.returncode == 0 and "after `quickslot sync`" in listing.stdout, listing.stdout
    tablet.json("sync", "sync")
    (shown,) = tablet.json("reservations", "reservations")["reservations"]
    assert (shown["reservation_id"], shown["state"], shown["final"]) == (
        booked["reservation"]["reservation_id"], "confirmed", True,
    )  # fmt: skip


def test_past_settled_days_are_released(relay: RelayProcess, owner: Cli, tmp_path: Path) -> None:
    erin = Cli(tmp_path / "erin")
    erin.register_and_login(relay.base_url)
    erin.json("slots", "slots", SHOP, _day(-5))
    erin.json("slots", "slots", SHOP, _day(5))
    docs = [f["doc"] for f in erin.json("following", "following")["following"]]
    assert f"bookings:{SHOP}:{_day(5)}" in docs and f"bookings:{SHOP}:{_day(-5)}" not in docs


def test_a_change_that_cannot_be_sent_fails_the_sync_and_says_why(
    relay: RelayProcess, owner: Cli, tmp_path: Path
) -> None:
    frank = _customer(relay, tmp_path / "frank", _day(70))
    frank.json("book", "book", SHOP, _day(70), SLOT)
    # A change whose document the relay will not subscribe this user to stays unsent (made here
    # by pointing the queued entry at another user's document).
    with sqlite3.connect(frank.home / "quickslot.db") as db:
        db.execute("UPDATE outbox SET doc_id = 'user:someone-else'")
    out = frank.run("sync")
    assert out.returncode != 0, out.stdout
    assert "could not be sent" in out.stdout and "user:someone-else" in out.stdout, out.stdout
    assert run_cli("--help").returncode == 0
