"""Fixtures of the SDK's tests against real relays."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.relay_process import FixedPortRelay
from tests.web.test_sdk_books_at_relay import _node_command


@pytest.fixture
def fresh_relay(tmp_path: Path) -> Iterator[FixedPortRelay]:
    """A relay process of this test's own (skips without node or the SDK's dependencies)."""
    _node_command()
    process = FixedPortRelay(tmp_path / "relay-data")
    process.start()
    try:
        yield process
    finally:
        process.stop()
