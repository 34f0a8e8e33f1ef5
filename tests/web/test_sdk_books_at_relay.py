"""The JavaScript SDK books at a real relay: register, log in with a fresh device key (bound
token, proof of possession), subscribe, write a signed reservation under its own Yjs client id,
and get it stored and stamped (``web/sdk/examples/book.js``). Two customers book in turn, so the
second also validates and applies the first one's records, as the relay serves them.
"""

from __future__ import annotations

import importlib
import json
import subprocess
from pathlib import Path

import pytest

from tests.support.relay_process import GENEROUS_LIMITS, PASSWORD, RelayProcess
from tests.web.sdk_env import SDK, node_or_skip


def _node_command() -> list[str]:
    node = node_or_skip()
    if int(getattr(importlib.import_module("crdt_core.records"), "RECORD_FORMAT", 1)) != 2:
        pytest.skip("the SDK implements record format 2; this relay still writes format 1")
    has_websocket = subprocess.run(
        [node, "-e", "process.exit(typeof WebSocket === 'function' ? 0 : 1)"], check=False
    )
    # Node 20 has WebSocket behind a flag; Node 22 and browsers have it built in
    return [node] if has_websocket.returncode == 0 else [node, "--experimental-websocket"]


def _book(command: list[str], relay: RelayProcess, email: str, party: int) -> dict[str, object]:
    run = subprocess.run(
        [*command, "examples/book.js", relay.base_url, email, PASSWORD, "s1", "s-9", str(party)],
        cwd=SDK,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:] + relay.log_text()[-3000:]
    result: dict[str, object] = json.loads(run.stdout.strip().splitlines()[-1])
    return result


def test_sdk_books_at_a_relay(tmp_path: Path) -> None:
    command = _node_command()
    with RelayProcess(tmp_path / "relay", *GENEROUS_LIMITS) as relay:
        first = _book(command, relay, "ann@example.com", 2)
        second = _book(command, relay, "ben@example.com", 3)
    assert first["stamps"] == [[1, first["reservation"]]]
    assert second["stamps"] == [[2, second["reservation"]]]
    # No slot template for s-9 in shop s1: both claims wait, in stamp order, and are final.
    assert first["claim"] == {
        "reservationId": first["reservation"], "slot": "s-9", "customer": first["user"], "party": 2,
        "state": "waitlisted", "position": 1, "stamp": 1, "final": True, "rank": 0,
        "staffConfirmed": False, "holdsSeats": False,
    }  # fmt: skip
    claim = second["claim"]
    assert isinstance(claim, dict)
    assert (claim["state"], claim["position"], claim["rank"], claim["final"]) == ("waitlisted", 2, 1, True)
