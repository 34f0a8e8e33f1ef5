"""The chaos run's verdict on the system: the invariants, checked from evidence the system cannot edit.

The evidence: each worker's fsynced journal (what the relay acknowledged to it, every verdict it
showed over time), each worker's final report (after a quiet sync), and the relay's SQLite file,
opened directly (read-only) rather than asked through the relay.

The invariants (docs/design.md, "Booking verdict" and "Invariants"; ``crdt_core/verdict.py``):

(a) **acked ⇒ stored**: every update the relay acknowledged is contained in the relay's stored
    document (its Yjs state vector covers the update's), and every acknowledged booking holds a
    stamp there.
(b) **convergence**: after the quiet sync every client holds byte-identical documents (compared
    as their maps' records), equal to the relay's.
(c) **agreement**: every client computes the same verdict for every document.
(d) **capacity**: in *every* verdict any client ever showed, the seats held in a slot never
    exceed its capacity.
(e) **finality**: docs/design.md says a stamped, confirmed claim "is never demoted by a claim that
    arrives later. Only a cancellation, a staff decision or a capacity cut changes it", and a
    replica shows a claim as final only when it holds the gap-free stamp prefix up to it. The
    chaos run never cuts capacity, so the precise invariant checked is: once a client has shown
    a claim as *final* and holding seats (``confirmed``, or ``no_show``, which keeps its seat),
    no later verdict of that client shows it ``waitlisted`` or lacks it, and its stamp number
    never changes; ``cancelled`` and ``declined`` are allowed (the claim's own event, i.e. a
    cancellation or a staff decision). Across clients: a claim anyone ever showed final and
    holding seats is confirmed, no-show, cancelled or declined in the agreed final verdict,
    with the same stamp. (A *non*-final confirmed claim may be demoted: it is tentative.)
(f) **the relay only dies by our hand**: every relay process exited by our SIGKILL (-9) or, at
    the end, cleanly on SIGTERM (0); and each stored document's stamps are unique and gap-free
    (numbers 1..N, one per reservation, every stored reservation stamped, ``doc_head.next_stamp``
    = N + 1).
"""

from __future__ import annotations

import base64
import contextlib
import sqlite3
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crdt_core.engine import Replica, parse_state_vector, state_vector_of_update
from crdt_core.reader import read_bookings, read_map
from crdt_core.schema import Stamp, parse_doc_id
from tests.chaos.client_worker import doc_digest
from tests.chaos.journal import read_journal

HOLDING = ("confirmed", "no_show")
ALLOWED_AFTER_FINAL = ("confirmed", "no_show", "cancelled", "declined")


@dataclass
class CheckResult:
    violations: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    def fail(self, message: str) -> None:
        if len(self.violations) < 200:
            self.violations.append(message)

    @property
    def ok(self) -> bool:
        return not self.violations


def load_relay_doc(db_path: Path, doc_id: str) -> tuple[Replica, int | None]:
    """The relay's stored document (snapshot, then log rows in order) and its ``next_stamp``."""
    replica = Replica()
    with contextlib.closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)) as db:
        snap = db.execute("SELECT data FROM doc_snapshot WHERE doc_id = ?", (doc_id,)).fetchone()
        if snap is not None:
            replica.apply_update(bytes(snap[0]))
        for (data,) in db.execute("SELECT data FROM doc_log WHERE doc_id = ? ORDER BY seq", (doc_id,)):
            replica.apply_update(bytes(data))
        head = db.execute("SELECT next_stamp FROM doc_head WHERE doc_id = ?", (doc_id,)).fetchone()
    return replica, (int(head[0]) if head is not None else None)


def check_stamps(doc_id: str, replica: Replica, next_stamp: int | None, result: CheckResult) -> int:
    """(f) unique, gap-free stamps in the relay's copy; returns how many."""
    doc = parse_doc_id(doc_id)
    raw = read_map(replica, doc, Stamp.ROOT)
    stamps = [r for r in raw.values() if isinstance(r, Stamp)]
    numbers = sorted(s.no for s in stamps)
    if numbers != list(range(1, len(numbers) + 1)):
        result.fail(f"(f) {doc_id}: stamp numbers not 1..N: {numbers}")
    by_res = Counter(s.reservation for s in stamps)
    twice = sorted(r for r, n in by_res.items() if n > 1)
    if twice:
        result.fail(f"(f) {doc_id}: reservations stamped more than once: {twice}")
    state = read_bookings(replica, doc)
    unstamped = sorted(set(state.reservations) - set(by_res))
    if unstamped:
        result.fail(f"(f) {doc_id}: stored reservations without a stamp: {unstamped}")
    if next_stamp is not None and next_stamp != len(numbers) + 1:
        result.fail(f"(f) {doc_id}: doc_head.next_stamp {next_stamp} but {len(numbers)} stamps stored")
    return len(numbers)


def check_verdict_capacity(where: str, verdict: dict[str, Any], result: CheckResult) -> None:
    """(d) seats held per slot never exceed its capacity."""
    held: Counter[str] = Counter()
    for rid, claim in verdict["claims"].items():
        state, _stamp, _final, holds, party, slot, _rank = claim
        if holds:
            held[slot] += party
        if state in HOLDING and not holds:
            result.fail(f"(d) {where}: {rid} is {state} but holds no seat")
    for slot, (capacity, taken) in verdict["slots"].items():
        if held[slot] > capacity or taken > capacity:
            result.fail(f"(d) {where}: slot {slot} holds {held[slot]} (says {taken}) > capacity {capacity}")


def replay_verdicts(records: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Each journalled verdict, whole: a worker writes a document's verdict whole the first time in
    each process (after ``start``) and then only the claims that changed."""
    held: dict[str, dict[str, Any]] = {}
    for rec in records:
        if rec["kind"] == "start":
            held = {}
        if rec["kind"] != "verdict":
            continue
        doc = rec["doc"]
        if rec["full"] or doc not in held:
            claims = dict(rec["set"])
        else:
            claims = {**held[doc]["claims"], **rec["set"]}
            for rid in rec["gone"]:
                claims.pop(rid, None)
        held[doc] = {"prefix": rec["prefix"], "slots": rec["slots"], "claims": claims}
        yield {"doc": doc, "t": rec["t"], "verdict": held[doc]}


def check_history(
    name: str, records: list[dict[str, Any]], result: CheckResult
) -> dict[str, tuple[str, int]]:
    """(d) and (e) over one client's verdicts in the order it showed them; returns the claims it
    ever showed final and holding seats, with their doc and stamp."""
    final_held: dict[str, tuple[str, int]] = {}
    for rec in records:
        doc, verdict = rec["doc"], rec["verdict"]
        check_verdict_capacity(f"{name} at {rec['t']} {doc}", verdict, result)
        claims = verdict["claims"]
        for rid, (fdoc, stamp) in final_held.items():
            if fdoc != doc:
                continue
            now = claims.get(rid)
            if now is None:
                result.fail(f"(e) {name} at {rec['t']}: final claim {rid} vanished from {doc}")
            elif now[0] not in ALLOWED_AFTER_FINAL:
                result.fail(
                    f"(e) {name} at {rec['t']}: final confirmed {rid} (stamp {stamp}) demoted to {now[0]}"
                )
            elif now[1] != stamp:
                result.fail(f"(e) {name} at {rec['t']}: final claim {rid} changed stamp {stamp} -> {now[1]}")
        for rid, (state, stamp, final, holds, *_rest) in claims.items():
            if final and state in HOLDING and holds and rid not in final_held:
                final_held[rid] = (doc, int(stamp))
    return final_held


def check_run(
    journals: dict[str, Path],
    finals: dict[str, dict[str, Any]],
    relay_db: Path,
    doc_ids: list[str],
    relay_exits: list[tuple[int, int, str]],
) -> CheckResult:
    """Every invariant (see the module doc). ``relay_exits``: (generation, exit code, how it ended)."""
    result = CheckResult()
    relay_docs: dict[str, Replica] = {}
    stamps_total = 0
    for doc_id in doc_ids:
        replica, next_stamp = load_relay_doc(relay_db, doc_id)
        relay_docs[doc_id] = replica
        stamps_total += check_stamps(doc_id, replica, next_stamp, result)
    result.figures["relay_stamps"] = stamps_total
    result.figures["relay_reservations"] = sum(
        len(read_bookings(r, parse_doc_id(d)).reservations) for d, r in relay_docs.items()
    )

    # (a) every acknowledged update is in the relay's store
    acked = acked_bookings = 0
    clocks: dict[str, dict[int, int]] = {}  # the relay's state vector per document
    stamped: dict[str, set[str]] = {}  # reservations holding a stamp in the relay, per document
    ever_final: dict[str, tuple[str, int, str]] = {}
    observations = 0
    for name, path in sorted(journals.items()):
        records = list(read_journal(path))
        for rec in records:
            if rec["kind"] != "ack":
                continue
            acked += 1
            doc = rec["doc"]
            if doc not in relay_docs:
                relay_docs[doc], _ = load_relay_doc(relay_db, doc)
            if doc not in clocks:
                clocks[doc] = relay_docs[doc].state_clocks()
            have = clocks[doc]
            need = parse_state_vector(state_vector_of_update(base64.b64decode(rec["update"])))
            short = {c: k for c, k in need.items() if have.get(c, 0) < k}
            if short:
                result.fail(
                    f"(a) {name}: acked entry {rec['entry']} ({rec['op']} {rec['entity_id']}) of {doc} "
                    f"not in the relay's store: needs {short}, has {[have.get(c) for c in short]}"
                )
            if rec["entity"] == "reservation" and rec["op"] == "create":
                acked_bookings += 1
                if doc.startswith("bookings:"):
                    if doc not in stamped:
                        state = read_bookings(relay_docs[doc], parse_doc_id(doc))
                        stamped[doc] = {s.reservation for s in state.stamps.values()}
                    if rec["entity_id"] not in stamped[doc]:
                        result.fail(f"(a) {name}: acked booking {rec['entity_id']} has no stamp in the relay")
        for rec in records:
            if rec["kind"] == "sync_ended":
                result.fail(
                    f"(liveness) {name}: the sync loop stopped for good at {rec['t']}: {rec['error']}"
                )
        history = list(replay_verdicts(records))
        observations += len(history)
        if name in finals:
            history += [{"doc": d, "verdict": v, "t": "final"} for d, v in finals[name]["verdicts"].items()]
        for rid, (doc, stamp) in check_history(name, history, result).items():
            ever_final.setdefault(rid, (doc, stamp, name))
    result.figures.update(
        acked_updates_checked=acked,
        acked_bookings=acked_bookings,
        verdicts_observed=observations,
        final_claims_tracked=len(ever_final),
    )

    # (b) convergence, (c) agreement
    names = sorted(finals)
    if len(names) != len(journals):
        result.fail(f"(b) final reports missing for {sorted(set(journals) - set(finals))}")
    for doc_id in doc_ids:
        digests = {n: finals[n]["digests"].get(doc_id) for n in names}
        relay_digest = doc_digest(relay_docs[doc_id].to_py())
        if len(set(digests.values())) != 1:
            result.fail(f"(b) {doc_id}: clients hold different documents: {digests}")
        elif relay_digest not in digests.values():
            result.fail(f"(b) {doc_id}: clients agree but differ from the relay's stored document")
        verdicts = {n: finals[n]["verdicts"].get(doc_id) for n in names}
        first = verdicts[names[0]] if names else None
        for n in names[1:]:
            if verdicts[n] != first:
                result.fail(f"(c) {doc_id}: verdict of {n} differs from {names[0]}")
    for n in names:
        if finals[n]["pending"]:
            result.fail(f"(b) {n}: {finals[n]['pending']} outbox entries still pending after the quiet sync")

    # (e) across clients: whatever anyone showed as final and seated stays so in the agreed verdict
    if names:
        agreed = finals[names[0]]["verdicts"]
        for rid, (doc, stamp, who) in ever_final.items():
            now = agreed.get(doc, {}).get("claims", {}).get(rid)
            if now is None or now[0] not in ALLOWED_AFTER_FINAL or now[1] != stamp:
                result.fail(f"(e) {rid} shown final+confirmed (stamp {stamp}) by {who}, finally {now}")
        result.figures["final_bookings"] = sum(len(v["claims"]) for v in agreed.values())
        result.figures["final_confirmed"] = sum(
            1 for v in agreed.values() for c in v["claims"].values() if c[0] == "confirmed"
        )

    # (f) the relay died only by our kills
    for generation, code, how in relay_exits:
        expected = 0 if how == "sigterm" else -9
        if how == "crashed" or code != expected:
            result.fail(f"(f) relay generation {generation} ended {how} with exit code {code}")
    result.figures["rejected_entries"] = sum(f.get("rejected", 0) for f in finals.values())
    return result
