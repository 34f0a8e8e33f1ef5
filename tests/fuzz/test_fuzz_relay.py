"""Short seeded frame fuzzing against one live relay process (the ``make test`` version).

Every example is a batch of cases on one lane; after every batch the session checks its oracles
(harness docstring): the relay is alive, answers ``/healthz``, stays under its memory bound
(baseline + ``RSS_HEADROOM_MIB``), answered every message with the answer the protocol prescribes
or a documented close code, never forwarded a refused update to the watcher, and still acks a
well-behaved client. ``derandomize=True``: the same cases every run, so a failure replays. The
long run is ``make fuzz`` (``python -m tests.fuzz``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, Phase, given, settings, strategies as st

from tests.fuzz.generators import auth_cases, framing_cases, unauth_cases
from tests.fuzz.harness import FuzzSession

SHORT = settings(
    max_examples=25,
    derandomize=True,
    database=None,
    deadline=None,
    phases=(Phase.explicit, Phase.generate, Phase.shrink),
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzSession]:
    session = FuzzSession(tmp_path_factory.mktemp("fuzz")).start()
    try:
        yield session
    finally:
        print("\nfuzz summary:", session.summary())
        code = session.stop()
        assert code == 0, f"relay exited with {code} on SIGTERM:\n{session.relay.log_text()[-3000:]}"


def run_clean(fuzz: FuzzSession, lane: str, cases: list) -> None:  # type: ignore[type-arg]
    fuzz.run(lane, cases)
    found, fuzz.stats.violations = fuzz.stats.violations, []
    assert not found, "\n".join(found[:20])


@settings(SHORT, max_examples=20)
@given(data=st.data())
def test_unauthenticated_first_messages(fuzz: FuzzSession, data: st.DataObject) -> None:
    """Forged tokens, wrong first messages, garbage, oversized first frames and silence."""
    assert fuzz.corpus is not None
    cases = data.draw(st.lists(unauth_cases(fuzz.corpus), min_size=3, max_size=8), label="cases")
    run_clean(fuzz, "unauth", cases)


@settings(SHORT, max_examples=30)
@given(data=st.data())
def test_authenticated_hostile_messages(fuzz: FuzzSession, data: st.DataObject) -> None:
    """Hostile fields, Yjs payloads, state vectors, forged records and mutated frames."""
    assert fuzz.corpus is not None
    cases = data.draw(st.lists(auth_cases(fuzz.corpus), min_size=5, max_size=20), label="cases")
    run_clean(fuzz, "auth", cases)


@settings(SHORT, max_examples=20)
@given(data=st.data(), lane=st.sampled_from(["auth", "unauth"]))
def test_websocket_framing(fuzz: FuzzSession, data: st.DataObject, lane: str) -> None:
    """Text frames, fragmented messages and malformed frames, before and after authentication."""
    assert fuzz.corpus is not None
    cases = data.draw(st.lists(framing_cases(fuzz.corpus), min_size=4, max_size=10), label="cases")
    run_clean(fuzz, lane, cases)


def test_the_fuzz_reached_the_validator(fuzz: FuzzSession) -> None:
    """The batches above are not vacuous: hostile updates were refused, valid ones acknowledged,
    and the memory bound held (checked after every batch; stated here for the record)."""
    assert fuzz.corpus is not None
    from tests.fuzz.cases import Case, Message
    from tests.fuzz.generators import client_message

    bookings = fuzz.corpus.docs[0]
    forged = [
        Case("forged-record", (Message(client_message("upd", doc=bookings, uid=i, update=u)),))
        for i, (_, u) in enumerate(fuzz.corpus.forged)
    ]
    valid = [
        Case(
            "update", (Message(client_message("upd", doc=bookings, uid=100, update=fuzz.corpus.updates[-2])),)
        )
    ]
    run_clean(fuzz, "auth", forged + valid)
    assert fuzz.stats.errors["rejected"] >= len(fuzz.corpus.forged) - 1, fuzz.stats.errors
    assert fuzz.stats.acks >= 1
    assert fuzz.stats.good_updates >= 1 and fuzz.stats.peak_rss <= fuzz.rss_bound


def test_the_oracles_can_fail(fuzz: FuzzSession) -> None:
    """A leaked update and a memory bound below the current RSS are both reported: the checks
    after every batch are not vacuous."""
    fuzz.seen.add(b"\x01\x02never-acknowledged")
    headroom, fuzz.rss_headroom = fuzz.rss_headroom, -(1 << 30)
    try:
        fuzz.run("auth", [])
    finally:
        fuzz.rss_headroom = headroom
    found, fuzz.stats.violations = fuzz.stats.violations, []
    assert any("never acknowledged" in v for v in found), found
    assert any("VmHWM" in v for v in found), found


def test_a_bound_token_opens_the_message_path_only_with_its_proof(fuzz: FuzzSession) -> None:
    """The fuzzing user's token is bound to its device key: as the first message it is refused
    (4003) bare or with a proof for another purpose, and welcomed with the genuine proof. The
    oracle predicts each answer (a wrong prediction is a violation) and the counts show both."""
    assert fuzz.corpus is not None and fuzz.fuzzer is not None
    from crdt_core.messages import Auth
    from crdt_core.pop import auth_proof, make_proof, rest, token_binding
    from tests.fuzz.cases import Case, Message

    token, key = fuzz.corpus.token, fuzz.fuzzer.author.device.private
    binding, proof = token_binding(token), auth_proof(token, key)
    assert binding is not None and proof is not None
    wrong = make_proof(key, rest("GET", "/api/v1/auth/me"), binding.audience, binding.jti)
    frames = [
        Auth(token).to_wire(),
        Auth(token, wrong.signature, wrong.at).to_wire(),
        Auth(token, proof.signature, proof.at).to_wire(),
    ]
    welcomes, refusals = fuzz.stats.welcomes, fuzz.stats.closes[4003]
    run_clean(fuzz, "unauth", [Case("token", (Message(frame),)) for frame in frames])
    assert (fuzz.stats.welcomes - welcomes, fuzz.stats.closes[4003] - refusals) == (1, 2)
