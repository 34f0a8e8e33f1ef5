"""Hypothesis profiles: ``ci`` (what ``make test`` runs), ``dev`` (fast local loops), ``thorough``.

The CI profile keeps the search wide (same strategies, same rules) but bounds examples and drops
the per-example deadline, because a loaded 2-core CI machine makes wall-clock deadlines flaky.
"""

from __future__ import annotations

import os

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
