"""Pytest fixtures for the real servers (registered by ``tests/conftest.py``'s ``pytest_plugins``).

* ``pg_server``: this worker's PostgreSQL server (session scope: started once per xdist worker).
* ``pg_dsn``: a fresh empty database on it for one test (``postgresql://quickslot@127.0.0.1:P/t_x``).
* ``pg_private_server``: a server of the test's own, for tests that stop it or replicate it.

All skip with a clear reason when PostgreSQL is not installed and could not be.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.servers import postgres


def _require_postgres() -> None:
    reason = postgres.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[postgres.PostgresServer]:
    _require_postgres()
    server = postgres.shared_server()
    yield server
    postgres.stop_shared_server()


@pytest.fixture
def pg_dsn(pg_server: postgres.PostgresServer) -> str:
    return pg_server.create_database()


@pytest.fixture
def pg_private_server() -> Iterator[postgres.PostgresServer]:
    _require_postgres()
    with postgres.running_server() as server:
        yield server
