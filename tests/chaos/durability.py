"""The durability check at each relay kill: what the relay acknowledged before it died is on disk.

Why at each kill and not only at the end: clients re-send whatever the relay lacks after every
reconnect (the catch-up diff), so an update the relay acknowledged and then lost comes back from
its author and the end state looks whole. The promise is stronger than "eventually stored": an
ack means *already durable*. So right after each SIGKILL, before the restart, every ack the
workers have journalled so far (they can only have received it before the kill) must be in what
the dead relay left on disk. The files are copied first (database and WAL, not the shared-memory
index), so the check reads exactly what a restarting relay would recover, and changes nothing.
"""

from __future__ import annotations

import base64
import json
import shutil
import tempfile
from pathlib import Path

from crdt_core.engine import Replica, parse_state_vector, state_vector_of_update
from tests.chaos.checker import load_relay_doc


class AckAudit:
    """Reads each journal from where the previous audit stopped (each ack is checked once)."""

    def __init__(self, journals: dict[str, Path]) -> None:
        self.journals = journals
        self.offsets = dict.fromkeys(journals, 0)
        self.checked = 0

    def _new_acks(self) -> list[tuple[str, dict[str, object]]]:
        found: list[tuple[str, dict[str, object]]] = []
        for name, path in self.journals.items():
            if not path.exists():
                continue
            with open(path, "rb") as f:
                f.seek(self.offsets[name])
                chunk = f.read()
            end = chunk.rfind(b"\n") + 1  # only whole lines; a line being written waits
            self.offsets[name] += end
            for line in chunk[:end].splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(rec, dict) and rec.get("kind") == "ack":
                    found.append((name, rec))
        return found

    def audit(self, relay_db: Path, generation: int) -> list[str]:
        """Violations: acks journalled so far whose update is not in the dead relay's files."""
        acks = self._new_acks()
        if not acks:
            return []
        with tempfile.TemporaryDirectory(prefix="chaos-audit-") as tmp:
            copy = Path(tmp) / relay_db.name
            shutil.copy(relay_db, copy)
            wal = relay_db.with_name(relay_db.name + "-wal")
            if wal.exists():
                shutil.copy(wal, copy.with_name(copy.name + "-wal"))
            docs: dict[str, Replica] = {}
            out: list[str] = []
            for name, rec in acks:
                doc = str(rec["doc"])
                if doc not in docs:
                    docs[doc], _ = load_relay_doc(copy, doc)
                have = docs[doc].state_clocks()
                need = parse_state_vector(state_vector_of_update(base64.b64decode(str(rec["update"]))))
                short = {c: k for c, k in need.items() if have.get(c, 0) < k}
                self.checked += 1
                if short:
                    out.append(
                        f"(a) relay generation {generation} died without {name}'s acked entry "
                        f"{rec['entry']} ({rec['op']} {rec['entity_id']}) of {doc} on disk"
                    )
            return out
