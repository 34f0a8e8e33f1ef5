"""Hypothesis strategies for hostile frames, built over a :class:`~tests.fuzz.cases.Corpus`.

Three families, so that both the codec and the code behind it are reached:

* **structured**: a msgpack map with the right ``v``/``t`` and field names, where some fields hold
  hostile values (wrong msgpack type, huge or negative ints, deep nesting, long strings, bad doc
  ids, ext types) and the map itself may be malformed (duplicate keys, a lying entry count, more
  than 32 entries, non-str keys);
* **payloads**: well-formed ``sub``/``upd`` messages whose Yjs bytes are hostile (random bytes,
  mutated, truncated or spliced valid updates, forged records, bogus state vectors) - these pass
  the codec and reach validation, storage and fan-out;
* **mutations**: byte-level edits of captured valid frames (bit flips, truncation, insertion,
  splicing, a msgpack length field set to 2^32-1).

Plus websocket-level cases (text, fragmented and malformed frames) and unauthenticated first
messages (forged tokens, wrong first message, silence).
"""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import Sequence
from typing import Any, TypeVar

import msgpack
from hypothesis import strategies as st

from crdt_core.messages import MAX_INT
from tests.fuzz.cases import (
    Case,
    Corpus,
    Fragments,
    FrameSpec,
    Message,
    RawFrames,
    Silence,
)
from tests.fuzz.wire import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_TEXT,
    Raw,
    deep_nesting,
    headers,
    huge_header,
    pack_map,
)
from tests.support.strategies import map_item, struct_block, varuint, yjs_update

CLIENT_TYPES = ("sub", "upd", "unsub", "auth")
OTHER_TYPES = ("welcome", "sync", "ack", "stamp", "stamped", "err", "hello", "challenge", "x", "")
#: Every field name the codec defines (they are global: one msgpack type per name).
FIELD_NAMES = (
    "token",
    "proof",
    "proof_time",
    "doc",
    "sv",
    "uid",
    "update",
    "seq",
    "user",
    "epoch",
    "server",
    "limits",
    "code",
    "reason",
    "retry",
    "stamps",
    "stamp",
    "nonce",
    "cert",
    "digest",
    "docs",
)
T = TypeVar("T")
REQUIRED = {"sub": ("doc", "sv"), "upd": ("doc", "uid", "update"), "unsub": ("doc",), "auth": ("token",)}


def pick(items: Sequence[T]) -> st.SearchStrategy[T]:
    """``sampled_from`` without putting the (large) items into the strategy's repr."""
    return st.integers(0, len(items) - 1).map(items.__getitem__)


# --- hostile scalars -------------------------------------------------------------------------------

EDGE_INTS = (0, 1, 127, 128, 255, 256, 2**31, 2**32, 2**53 + 1, MAX_INT, MAX_INT + 1, 2**64 - 1, -1, -(2**63))


def long_text(
    sizes: tuple[int, ...] = (200, 201, 256, 257, 1024, 8192, 8193, 70_000),
) -> st.SearchStrategy[str]:
    return st.tuples(st.sampled_from(sizes), st.sampled_from("a:é\x00 ~")).map(lambda p: p[1] * p[0])


def hostile_value() -> st.SearchStrategy[Any]:
    """A value of the wrong shape for (almost) any field."""
    return st.one_of(
        st.sampled_from(EDGE_INTS),
        st.integers(min_value=-(2**63), max_value=2**64 - 1),
        st.floats(allow_nan=True),
        st.booleans(),
        st.none(),
        st.text(max_size=40),
        long_text(),
        st.binary(max_size=64),
        st.lists(st.integers(min_value=-5, max_value=5), max_size=6),
        st.dictionaries(st.text(max_size=4), st.integers(min_value=0, max_value=9), max_size=4),
        st.integers(min_value=1, max_value=200_000).map(deep_nesting),
        st.integers(min_value=1, max_value=50_000).map(lambda d: deep_nesting(d, kind="map")),
        st.builds(msgpack.ExtType, st.integers(min_value=0, max_value=127), st.binary(max_size=16)),
        st.sampled_from(
            [Raw(b"\xc1"), Raw(b"\xd4\xff\x00"), Raw(b"\xdb\xff\xff\xff\xff"), Raw(b"\xc6\xff\xff\xff\xff")]
        ),
    )


def doc_ids(corpus: Corpus) -> st.SearchStrategy[str]:
    """Doc ids: the session's own, valid shapes the relay does not serve, and bad shapes."""
    return st.one_of(
        pick(corpus.docs),
        st.sampled_from(
            [
                "catalog",
                f"user:{corpus.other_user_id}",
                "bookings:zz:2026-02-30",
                "bookings:zz:9999-12-31",
                "bookings:zz:0000-01-01",
                "shop:",
                "user:",
                "foo:bar",
                "bookings:a:b:c",
                "shop:" + "s" * 195,
                "shop:" + "s" * 251,
                "x" * 256,
                "shop:../../etc",
                "shop:%00",
                "bookings:shop:2026-1-1",
            ]
        ),
        st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40),
        st.sampled_from(["", " ", "a b", "\x00", "é", "x" * 257, "shop:a\nb"]),
    )


# --- Yjs-level payloads ----------------------------------------------------------------------------


def mutate(data: bytes, ops: list[tuple[int, int, int]], other: bytes = b"") -> bytes:
    """Apply byte edits; each op is ``(what, position, argument)``, positions taken modulo length."""
    buf = bytearray(data)
    for what, pos, arg in ops:
        n = len(buf)
        p = pos % (n + 1)
        if what == 0 and n:  # flip a bit
            buf[p % n] ^= 1 << (arg % 8)
        elif what == 1 and n:  # set a byte
            buf[p % n] = arg & 0xFF
        elif what == 2:  # truncate
            del buf[p:]
        elif what == 3:  # insert bytes
            buf[p:p] = bytes([arg & 0xFF]) * (1 + arg % 7)
        elif what == 4:  # delete a run
            del buf[p : p + 1 + arg % 16]
        elif what == 5 and other:  # splice: our head, the other's tail
            cut = arg % (len(other) + 1)
            buf = bytearray(buf[:p] + other[cut:])
        elif what == 6:  # varint bomb
            buf[p:p] = b"\xff" * (1 + arg % 12) + b"\x7f"
    return bytes(buf)


MUTATION_OPS = st.lists(
    st.tuples(st.integers(0, 6), st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1, max_size=4
)


def many_items(n: int) -> bytes:
    """A structurally valid update with ``n`` map entries of junk: validation cost at size."""
    items = [map_item("reservations", f"k{i}", b"\x00") for i in range(n)]
    return yjs_update([struct_block(90_000 + n, 0, items)])


def yjs_updates(corpus: Corpus) -> st.SearchStrategy[bytes]:
    """Bytes for an ``upd``: hostile, mostly, so they reach the validator and must be refused."""
    updates = pick(corpus.updates)
    return st.one_of(
        st.binary(min_size=1, max_size=512),
        st.builds(mutate, updates, MUTATION_OPS, updates),
        st.tuples(updates, st.integers(0, 1 << 16)).map(lambda p: p[0][: 1 + p[1] % len(p[0])]),
        pick([label_update[1] for label_update in corpus.forged]),
        st.sampled_from([b"\x00\x00", b"\x00", b"\x01\x00", b"\x00\x01\x00", b"\xff" * 16]),
        st.tuples(st.integers(0, 2**64), st.integers(0, 2**64), st.integers(0, 2**64)).map(
            lambda t: b"\x01" + varuint(t[0]) + varuint(t[1]) + varuint(t[2]) + b"\x00"
        ),
        updates,  # a valid one now and then: accepted, acked, fanned out
        st.integers(1, 40_000).map(many_items),
    )


def state_vectors(corpus: Corpus) -> st.SearchStrategy[bytes]:
    svs = pick(corpus.state_vectors)
    pairs = st.lists(st.tuples(st.integers(0, 2**64), st.integers(0, 2**64)), max_size=4)
    return st.one_of(
        svs,
        st.binary(min_size=1, max_size=64),
        st.builds(mutate, svs, MUTATION_OPS),
        pairs.map(lambda ps: varuint(len(ps)) + b"".join(varuint(c) + varuint(k) for c, k in ps)),
        st.integers(0, 2**40).map(lambda n: varuint(n)),  # claims n clients, has none
    )


# --- structured messages ----------------------------------------------------------------------------


def valid_field(name: str, corpus: Corpus) -> st.SearchStrategy[Any]:
    if name == "doc":
        return doc_ids(corpus)
    if name == "sv":
        return state_vectors(corpus)
    if name == "update":
        return yjs_updates(corpus)
    if name in ("uid", "seq", "proof_time"):
        return st.one_of(st.integers(0, 1000), st.sampled_from([MAX_INT, 2**32, 0]))
    if name == "token":
        return tokens(corpus)
    return hostile_value()


def structured_messages(corpus: Corpus) -> st.SearchStrategy[bytes]:
    """A map with the right tags and field names; some values or the map shape are hostile."""

    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        t = draw(st.one_of(st.sampled_from(CLIENT_TYPES), st.sampled_from(OTHER_TYPES), hostile_value()))
        entries: list[tuple[Any, Any]] = [
            ("v", draw(st.one_of(st.just(1), st.just(1), hostile_value()))),
            ("t", t),
        ]
        names = list(REQUIRED.get(t, ())) if isinstance(t, str) else []
        names += draw(st.lists(st.sampled_from(FIELD_NAMES), max_size=3))
        hostile = draw(st.sets(st.sampled_from(names), max_size=2)) if names else set()
        for name in names:
            value = draw(hostile_value() if name in hostile else valid_field(name, corpus))
            entries.append((name, value))
        extra = draw(st.lists(st.tuples(st.text(max_size=8), hostile_value()), max_size=3))
        entries += extra
        order = draw(st.permutations(range(len(entries))))
        entries = [entries[i] for i in order]
        shape = draw(st.sampled_from(["ok"] * 6 + ["dup", "lie", "many", "key", "trail", "array"]))
        if shape == "dup":
            entries.append(entries[draw(st.integers(0, len(entries) - 1))])
        elif shape == "many":
            entries += [(f"x{i}", i) for i in range(33)]
        elif shape == "key":
            key = st.one_of(st.integers(-(2**63), 2**64 - 1), st.binary(max_size=4), st.none())
            entries.append((draw(key), 1))
        elif shape == "array":
            return msgpack.packb([v for _, v in entries if not isinstance(v, Raw)], use_bin_type=True)  # type: ignore[no-any-return]
        declared = None
        if shape == "lie":
            declared = draw(st.sampled_from([0, len(entries) + 1, len(entries) - 1, 65535, 2**32 - 1]))
            declared = max(declared, 0)
        data = pack_map(entries, declared=declared)
        if shape == "trail":
            data += draw(st.binary(min_size=1, max_size=8))
        return data

    return build()


def client_message(t: str, **fields: Any) -> bytes:
    """A well-formed client message (the codec's field order does not matter on the wire)."""
    return pack_map([("v", 1), ("t", t), *fields.items()])


def payload_messages(corpus: Corpus) -> st.SearchStrategy[tuple[str, bytes]]:
    """Well-formed ``sub``/``upd``/``unsub`` whose Yjs bytes or doc ids are hostile."""
    docs = pick(corpus.docs)
    uids = st.integers(0, MAX_INT)
    return st.one_of(
        st.builds(
            lambda d, u, b: ("update", client_message("upd", doc=d, uid=u, update=b)),
            docs,
            uids,
            yjs_updates(corpus),
        ),
        st.builds(
            lambda d, u, lu: (f"forged:{lu[0]}", client_message("upd", doc=d, uid=u, update=lu[1])),
            docs,
            uids,
            pick(corpus.forged),
        ),
        st.builds(
            lambda d, sv: ("state-vector", client_message("sub", doc=d, sv=sv)), docs, state_vectors(corpus)
        ),
        st.builds(
            lambda d, sv: ("doc-id", client_message("sub", doc=d, sv=sv)),
            doc_ids(corpus),
            state_vectors(corpus),
        ),
        st.builds(
            lambda d, u, b: ("doc-id", client_message("upd", doc=d, uid=u, update=b)),
            doc_ids(corpus),
            uids,
            yjs_updates(corpus),
        ),
        st.builds(lambda d: ("doc-id", client_message("unsub", doc=d)), doc_ids(corpus)),
    )


def mutated_frames(corpus: Corpus) -> st.SearchStrategy[bytes]:
    """Byte-level mutations of captured valid frames, including huge msgpack length fields."""
    frames = pick(corpus.frames)

    @st.composite
    def huge_length(draw: st.DrawFn) -> bytes:
        frame = draw(frames)
        found = list(headers(frame))
        h = found[draw(st.integers(0, len(found) - 1))]
        return frame[: h.offset] + huge_header(h.family) + frame[h.offset + h.size :]

    return st.one_of(
        st.builds(mutate, frames, MUTATION_OPS, frames),
        huge_length(),
        st.tuples(frames, frames).map(lambda p: p[0] + p[1]),  # two messages in one
        st.tuples(frames, st.integers(0, 1 << 16)).map(lambda p: p[0][: p[1] % max(1, len(p[0]))]),
    )


# --- tokens and the unauthenticated lane -----------------------------------------------------------


def _b64(obj: Any) -> str:
    raw = json.dumps(obj, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def tokens(corpus: Corpus) -> st.SearchStrategy[str]:
    """Access tokens an attacker can make without the relay's key."""
    real = corpus.token
    head, body, sig = (real.split(".") + ["", "", ""])[:3]
    forged_none = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{body}."
    forged_hs = f"{_b64({'alg': 'HS256', 'typ': 'JWT'})}.{body}.{sig}"
    swapped = f"{head}.{_b64({'sub': corpus.other_user_id, 'exp': 2**40})}.{sig}"
    return st.one_of(
        pick([forged_none, forged_hs, swapped, real[:-1], real + "A", "a.b.c", "....", real[::-1]]),
        st.builds(lambda ops: mutate(real.encode(), ops).decode("latin-1"), MUTATION_OPS),
        st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=64),
        st.sampled_from([8192, 8193, 16000]).map(lambda n: "x" * n),
    )


@functools.cache
def unauth_cases(corpus: Corpus) -> st.SearchStrategy[Case]:
    """First messages of a connection that has not authenticated (no header)."""
    auth = st.builds(lambda t: Case("token", (Message(client_message("auth", token=t)),)), tokens(corpus))
    wrong_first = st.builds(lambda kb: Case("first-not-auth", (Message(kb[1]),)), payload_messages(corpus))
    return st.one_of(
        auth,
        wrong_first,
        st.builds(lambda b: Case("structured", (Message(b),)), structured_messages(corpus)),
        st.builds(lambda b: Case("mutated-frame", (Message(b),)), mutated_frames(corpus)),
        st.builds(
            lambda n: Case(
                "oversized", (Message(b"\x81\xa1v" + b"\xc6" + n.to_bytes(4, "big") + b"\x00" * n),)
            ),
            st.sampled_from([16_384, 20_000, 300_000]),
        ),
        st.builds(lambda s: Case("text", (Message(s),)), st.text(max_size=64)),
        st.just(Case("silence", (Silence(),))),
    )


# --- websocket framing -----------------------------------------------------------------------------


@functools.cache
def framing_cases(corpus: Corpus) -> st.SearchStrategy[Case]:
    """Text, fragmented and malformed websocket frames (both lanes)."""
    valid = pick(corpus.frames)

    def split(data: bytes, cuts: list[int]) -> tuple[bytes, ...]:
        points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
        return tuple(data[a:b] for a, b in zip(points, points[1:], strict=False)) or (data,)

    fragmented = st.builds(
        lambda d, cuts: Case("fragmented", (Fragments(split(d, cuts)),)),
        valid,
        st.lists(st.integers(0, 4096), min_size=1, max_size=6),
    )
    text = st.builds(
        lambda s: Case("text", (Message(s),)),
        st.one_of(st.text(max_size=64), valid.map(lambda b: b.decode("latin-1"))),
    )
    text_fragments = st.builds(
        lambda s: Case("text", (Fragments((s[:3], s[3:])),)), st.text(min_size=4, max_size=32)
    )
    bad = st.one_of(
        st.builds(lambda d: (FrameSpec(OP_CONT, d),), valid),  # continuation with nothing to continue
        st.builds(lambda d, r: (FrameSpec(OP_BINARY, d, rsv=r),), valid, st.integers(1, 7)),  # reserved bits
        st.builds(lambda d: (FrameSpec(OP_BINARY, d, masked=False),), valid),  # clients must mask
        st.builds(lambda n: (FrameSpec(OP_PING, b"p" * n),), st.integers(126, 400)),  # control frame > 125
        st.builds(lambda d: (FrameSpec(OP_PING, d[:10], fin=False),), valid),  # fragmented control frame
        st.builds(
            lambda o, d: (FrameSpec(o, d),), st.sampled_from([0x3, 0x4, 0x7, 0xB, 0xF]), valid
        ),  # reserved opcodes
        st.builds(
            lambda d: (FrameSpec(OP_BINARY, d[:4], fin=False), FrameSpec(OP_BINARY, d[4:])), valid
        ),  # new message mid-message
        st.builds(
            lambda b: (FrameSpec(OP_TEXT, b),),
            st.sampled_from([b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"ok\x80"]),
        ),  # bad UTF-8
        st.builds(
            lambda n: (FrameSpec(OP_BINARY, b"", declared_length=n),),
            st.sampled_from([2**20 + 1, 2**31, 2**63 - 1]),
        ),  # huge length
        st.builds(
            lambda c: (FrameSpec(OP_CLOSE, c.to_bytes(2, "big") + b"bye"),),
            st.sampled_from([0, 999, 1004, 1005, 1006, 1015, 2999, 5000]),
        ),
        st.just((FrameSpec(OP_CLOSE, b"\x03\xe8\xff\xfe"),)),  # close reason not UTF-8
        st.just((FrameSpec(OP_CLOSE, b"\x03"),)),  # one-byte close payload
    )
    raw = bad.map(lambda frames: Case("raw-frame", (RawFrames(frames),)))
    return st.one_of(fragmented, text, text_fragments, raw)


# --- the authenticated lane ----------------------------------------------------------------------


@functools.cache
def auth_cases(corpus: Corpus) -> st.SearchStrategy[Case]:
    """Messages on an open, authenticated connection."""
    payload = payload_messages(corpus).map(
        lambda kb: Case(
            kb[0].split(":")[0] if not kb[0].startswith("forged") else "forged-record", (Message(kb[1]),)
        )
    )
    # Several updates without waiting for answers, with distinct uids (a re-used unanswered uid
    # is a protocol violation, tested as such by the structured cases).
    pipelined = st.tuples(
        st.integers(0, MAX_INT - 8),
        st.lists(st.tuples(pick(corpus.docs), yjs_updates(corpus)), min_size=2, max_size=6),
    ).map(
        lambda p: Case(
            "pipelined",
            tuple(
                Message(client_message("upd", doc=d, uid=p[0] + i, update=u)) for i, (d, u) in enumerate(p[1])
            ),
        )
    )
    return st.one_of(
        payload,
        payload,
        st.builds(lambda b: Case("structured", (Message(b),)), structured_messages(corpus)),
        st.builds(lambda b: Case("mutated-frame", (Message(b),)), mutated_frames(corpus)),
        pipelined,
    )
