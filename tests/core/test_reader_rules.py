"""The "which record is current" and "where stamping continues" rules of crdt_core.reader, which
the relay's projections, its restore path and the client now call instead of restating."""

from __future__ import annotations

from dataclasses import dataclass

from crdt_core.engine import Replica
from crdt_core.reader import highest_stamp, newest, newest_per
from crdt_core.schema import stamp_key

OLD, NEW = "0000000000001-000000-a", "0000000000002-000000-a"


@dataclass(frozen=True)
class _Rec:
    id: str
    hlc: str


def test_the_greatest_hlc_wins_and_the_record_key_breaks_ties() -> None:
    records = {"k1": _Rec("a", NEW), "k2": _Rec("a", OLD), "k0": _Rec("b", NEW), "k9": _Rec("b", NEW)}
    current = newest_per(records, lambda rec: rec.id)
    assert current == {"a": records["k1"], "b": records["k9"]}
    assert newest(records) is records["k9"]
    assert newest({}) is None


def test_highest_stamp_reads_the_stamp_keys() -> None:
    replica = Replica()
    assert highest_stamp(replica) == 0
    replica.write([("stamps", stamp_key(2), b"x"), ("stamps", stamp_key(11), b"x")])
    assert highest_stamp(replica) == 11
    replica.write([("stamps", "not-a-stamp", b"x"), ("stamps", "\u00b2", b"x")])  # isdigit, not int()
    assert highest_stamp(replica) == 11
