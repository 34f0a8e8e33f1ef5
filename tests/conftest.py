"""Hypothesis profiles: ``ci`` (what ``make test`` runs), ``dev`` (fast local loops), ``thorough``.

The CI profile keeps the search wide (same strategies, same rules) but bounds examples and drops
the per-example deadline, because a loaded 2-core CI machine makes wall-clock deadlines flaky.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=60,
    deadline=None,
    derandomize=False,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=25, deadline=None)
settings.register_profile(
    "thorough", max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

# Fixtures for the real servers the scale-out tests start (pg_server, pg_dsn, ...).
pytest_plugins = ["tests.support.servers.pytest_plugin"]

#: Modules that keep one ``make test`` worker busy longest, heaviest first (seconds of wall time
#: on a loaded 2-core machine, from ``pytest --durations``). ``--dist loadfile`` hands modules to
#: workers in collection order, so one of these collected last would run alone at the end; started
#: first, the short modules fill in around them (longest-first scheduling).
HEAVY_MODULES = (
    "tests/test_bench_relay_harness.py",
    "tests/client/test_cli.py",
    "tests/relay/sync/test_sync_sessions.py",
    "tests/client/test_newcomer.py",
    "tests/cluster/test_cluster.py",
    "tests/web/test_sdk_client.py",
    "tests/web/test_app_browser.py",
    "tests/relay/sync/test_restore_stamp_hold.py",
    "tests/client/test_tls.py",
    "tests/test_bench_harness.py",
    "tests/web/test_sdk_differential.py",
    "tests/client/test_demo_e2e.py",
    "tests/chaos/test_chaos_short.py",
    "tests/client/test_sync_relay.py",
    "tests/client/test_sync_reliability.py",
    "tests/client/test_shop_rules_cli.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(HEAVY_MODULES)}
    last = len(HEAVY_MODULES)
    # sorted() is stable: every module's tests stay together and in their own order.
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], last))
