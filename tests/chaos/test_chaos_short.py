"""The short seeded chaos run, part of ``make test``: 3 client processes, up to 8 relay SIGKILLs
(as many as fit in 30 s of chaos), 2 client SIGKILLs and 2 partitions through the fault proxy,
then every invariant of
:mod:`tests.chaos.checker`. The long run is ``make chaos``.

The checker is shown able to fail on the same run's evidence: a stored update removed from (a
copy of) the relay's database, a demotion and an over-capacity verdict added to (a copy of) a
client's journal each turn the verdict into a failure naming the broken invariant.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

from tests.chaos.checker import check_run
from tests.chaos.harness import ChaosConfig, run_chaos

SEED = 20261127


def _finals(workdir: Path) -> dict[str, dict[str, Any]]:
    """The last round's final report of each client."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted((workdir / "finals").glob("*.json"), key=lambda p: int(p.stem.rsplit("-", 1)[1])):
        out[path.stem.rsplit("-", 1)[0]] = json.loads(path.read_text())
    return out


async def test_short_chaos_run_keeps_every_invariant(tmp_path: Path) -> None:
    cfg = ChaosConfig(
        seed=SEED, workdir=tmp_path, clients=3, relay_kills=8, client_kills=2, partitions=2,
        uptime_s=(0.2, 1.0), downtime_s=(0.0, 0.2), action_interval_s=0.35, max_duration_s=30.0,
    )  # fmt: skip
    report = await run_chaos(cfg)
    f = report.figures
    print(json.dumps(f, sort_keys=True))  # shown with -s, and in the failure report
    assert report.ok, "\n".join(report.violations) + "\n" + json.dumps(f, indent=1)
    # 8 relay kills fit in the 30 s budget at a load of ~3 on 2 cores; a busier machine gets fewer.
    assert f["relay_kills"] >= 4 and f["client_kills"] == 2 and f["partitions"] == 2, f
    # The run had material to judge: acked updates, contention for the last seats, final claims.
    assert f["acked_updates_checked"] >= 20 and f["acked_bookings"] >= 10, f
    assert f["final_claims_tracked"] >= 1 and f["verdicts_observed"] >= 20, f
    # Some live connection was cut, by a fault or by a partition (on a loaded machine a partition
    # can find every client between connections, and cut none).
    assert sum(f["faults"].values()) >= 10, f
    assert f["faults"].get("cut", 0) + f["proxy"]["cut_all"] >= 1, f

    # --- the checker fails when the evidence shows a broken invariant -----------------------
    plan = json.loads((tmp_path / "plan.json").read_text())
    docs = [f"bookings:chaos:{d}" for d in plan["days"]]
    journals = {n: Path(c["journal"]) for n, c in plan["clients"].items()}
    finals = _finals(tmp_path)
    exits = [(1, -9, "sigkill"), (2, 0, "sigterm")]
    db = tmp_path / "relay-data" / "relay.sqlite3"
    assert check_run(journals, finals, db, docs, exits).ok

    lossy = tmp_path / "lossy.sqlite3"
    shutil.copy(db, lossy)
    with sqlite3.connect(lossy) as conn:  # the relay "forgot" every document's newest update
        newest = "SELECT doc_id, MAX(seq) FROM doc_log GROUP BY doc_id"
        conn.execute(f"DELETE FROM doc_log WHERE (doc_id, seq) IN ({newest})")
        conn.execute("DELETE FROM doc_snapshot")
    broken = check_run(journals, finals, lossy, docs, exits)
    assert not broken.ok and any(v.startswith(("(a)", "(b)", "(f)")) for v in broken.violations)

    crashed = check_run(journals, finals, db, docs, [(1, 1, "crashed")])
    assert any(v.startswith("(f) relay generation 1 ended crashed") for v in crashed.violations)

    name, first = next(
        (n, r) for n, p in journals.items() for r in map(json.loads, p.read_text().splitlines())
        if r["kind"] == "verdict" and any(c[2] and c[0] == "confirmed" for c in r["set"].values())
    )  # fmt: skip
    rid, claim = next((k, c) for k, c in first["set"].items() if c[2] and c[0] == "confirmed")
    demoted = {**first, "full": False, "set": {rid: ["waitlisted", *claim[1:]]}, "gone": []}
    over = {**first, "full": True, "set": {rid: claim}, "slots": {s: [0, 0] for s in first["slots"]}}
    for forged, invariant in ((demoted, "(e)"), (over, "(d)")):
        fake = tmp_path / f"forged-{invariant[1]}.jsonl"
        fake.write_text(journals[name].read_text() + json.dumps(forged) + "\n")
        result = check_run({**journals, name: fake}, finals, db, docs, exits)
        assert any(v.startswith(invariant) for v in result.violations), (invariant, result.violations)
