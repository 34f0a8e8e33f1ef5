"""Fixtures of the scale-out tests: a Redis of the test's own (it may be restarted or wiped)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.servers import redis


@pytest.fixture
def redis_server() -> Iterator[redis.RedisServer]:
    reason = redis.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    with redis.running_redis() as server:
        yield server
