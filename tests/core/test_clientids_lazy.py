"""``crdt_core.clientids`` derives a signer's ids lazily; the answers must not depend on the order
of the questions (the cache holds a prefix of the generations)."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from crdt_core import clientids
from crdt_core.clientids import GENERATIONS, client_id_for, client_ids_of, generation_of, owns_client


def _brute(signer: str, client: int) -> int | None:
    for g in range(GENERATIONS):
        if client_id_for(signer, g) == client:
            return g
    return None


@given(
    signer=st.text(min_size=1, max_size=12),
    asks=st.lists(st.one_of(st.integers(0, GENERATIONS - 1), st.integers(0, 2**53 - 1)), max_size=8),
)
def test_generation_of_matches_every_generation_compared(signer: str, asks: list[int]) -> None:
    signer = "lazy-test:" + signer  # a signer no other test has cached
    for ask in asks:
        client = client_id_for(signer, ask) if ask < GENERATIONS else ask
        assert generation_of(signer, client) == _brute(signer, client)
        assert owns_client(signer, client) == (_brute(signer, client) is not None)


def test_a_miss_then_a_late_generation_still_found() -> None:
    signer = "lazy-test:miss-first"
    assert generation_of(signer, 12345) is None
    assert generation_of(signer, client_id_for(signer, GENERATIONS - 1)) == GENERATIONS - 1
    assert generation_of(signer, client_id_for(signer, 3)) == 3
    ids = client_ids_of(signer)
    assert ids == {client_id_for(signer, g): g for g in range(GENERATIONS)}
    clientids.forget_derived()  # a fresh process: the same answers, derived again
    assert generation_of(signer, client_id_for(signer, 5)) == 5 and generation_of(signer, 12345) is None


def test_first_generation_costs_one_derivation(monkeypatch: pytest.MonkeyPatch) -> None:
    """A catch-up meets one new certificate per booking device: one hash each, not 64."""
    calls: list[int] = []

    def counting(signer: str, generation: int) -> int:
        calls.append(generation)
        return client_id_for(signer, generation)

    signer = "lazy-test:one-hash"
    target = client_id_for(signer, 0)
    monkeypatch.setattr(clientids, "client_id_for", counting)
    assert clientids.owns_client(signer, target)
    assert clientids.owns_client(signer, target)
    assert calls == [0]
