"""``python -m demos.e2e`` (`make demo`) as a subprocess: it passes, tells its story, and cleans up.

The demo starts its own relay and CLI processes; this only checks its exit code, the key lines
of its timeline (the offline contention, the waitlist and promotion notices, the staff
confirmations, every invariant "ok"), and that the relay and the temporary directory are gone.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    for name in ("QUICKSLOT_HOME", "QUICKSLOT_RELAY_DATA", "QUICKSLOT_SECRETS"):
        env.pop(name, None)
    return env


def _line(out: str, pattern: str) -> re.Match[str]:
    match = re.search(pattern, out, re.MULTILINE)
    assert match is not None, f"no line matching {pattern!r} in:\n{out}"
    return match


@pytest.mark.slow
def test_demo_e2e_passes_and_tells_the_story() -> None:
    done = subprocess.run(
        # No time target here: the suite runs it beside other tests on a loaded machine (the
        # target is make demo's; test_a_demo_past_its_time_target_fails_loudly checks the rule).
        [sys.executable, "-m", "demos.e2e", "--target", "0"],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    out = done.stdout
    assert done.returncode == 0, f"exit {done.returncode}\n{out}\n{done.stderr}"
    assert "FAIL" not in out and "demo FAILED" not in done.stderr

    # Setup: accounts through the relay's CLI, a relay on loopback, the catalog by the admin.
    _line(out, r"\[relay\] +operator: `relay\.cli user add admin@example\.com --admin`")
    _line(out, r"\[relay\] +operator: .*`user grant --owner barber1`")
    _line(out, r"\[relay\] +operator: .*`user grant --staff barber1`")
    port = _line(out, r"\[relay\] +serving http://127\.0\.0\.1:(\d+) ").group(1)
    _line(out, r"\[admin\] +adds slot 'cut-10' at 10:00 with capacity 2")
    _line(out, r"\[owner\] +names staff@example\.com staff of barber1")
    for name in ("carol", "alice", "bob"):
        _line(out, rf"\[{name}\] +registers as {name}@example\.com")
        _line(out, rf"\[{name}\] +books cut-10 on \S+ offline -> queued=True, shows confirmed \(tentative\)")

    # Carol's seat, then the last seat contended while the relay is down.
    _line(out, r"\[carol\] +told: carol's booking \[\w+\] is now confirmed \(final\)")
    _line(out, r"\[alice\] +views barber1 on \S+: 1/2 seats taken, 1 left")
    _line(out, r"\[bob\] +views barber1 on \S+: 1/2 seats taken, 1 left")
    _line(out, r"\[relay\] +stopped \(SIGTERM\)")
    _line(out, r"\[alice\] +tries to sync: exit 5 \(relay_unreachable\)")
    _line(out, r"\[relay\] +back on ")

    # One verdict: the loser is told it is waitlisted, later promoted; staff confirm both.
    verdict = _line(out, r"\[all\] +verdict: (alice|bob) reached the relay first.*(alice|bob) is waitlisted")
    winner, loser = verdict.group(1), verdict.group(2)
    assert {winner, loser} == {"alice", "bob"}
    _line(out, rf"\[{loser}\] +told: {loser}'s booking \[\w+\] is now waitlisted .*waitlist position 1")
    _line(out, r"\[carol\] +cancels \[\w+\] -> cancelled")
    _line(out, rf"\[{loser}\] +told: {loser}'s booking \[\w+\] is now confirmed \(promoted\)")
    _line(out, rf"\[staff\] +confirms {winner}'s booking")
    _line(out, rf"\[staff\] +confirms {loser}'s booking")
    _line(out, r"\[all\] +after the cancellation: all 6 profiles synced; cut-10 shows 2/2 seats taken")

    # Every invariant checked, twice where it applies.
    oks = re.findall(r"\[check\] +ok +(.*)$", out, re.MULTILINE)
    assert sum("all 6 profiles show the same availability" in c for c in oks) == 2, oks
    assert sum("capacity never exceeded" in c for c in oks) == 2, oks
    assert any(c == f"{loser} was told once that it is waitlisted" for c in oks), oks
    assert any(c == f"{loser} was told once that it was promoted" for c in oks), oks
    assert "nobody else was told of a waitlist or a promotion" in oks
    assert "the relay rejected no change" in oks
    seconds = float(_line(out, r"^demo passed in ([\d.]+)s").group(1))
    assert seconds < 240

    # Cleaned up: the temporary directory is gone and nothing listens on the relay's port.
    root = _line(out, r"six profiles under (\S+)$").group(1)
    assert not Path(root).exists(), root
    with socket.socket() as s, pytest.raises(OSError):
        s.settimeout(1.0)
        s.connect(("127.0.0.1", int(port)))


def test_a_demo_past_its_time_target_fails_loudly() -> None:
    """`make demo` once said "passed" at 32.8 s against its 30 s target: now that is exit 3."""
    from demos.e2e import TARGET_S, outcome

    assert outcome(12.0, TARGET_S, None, 0) == (
        0,
        "demo passed in 12.0s (target: under 30s): every invariant holds",
    )
    code, line = outcome(32.8, TARGET_S, None, 0)
    assert code == 3 and line.startswith("demo FAILED its time target") and "32.8s" in line
    assert outcome(99.0, 0, None, 0)[0] == 0  # --target 0: no target
    assert outcome(5.0, TARGET_S, None, 2)[0] == 1
    assert outcome(5.0, TARGET_S, "boom", 0)[0] == 2
