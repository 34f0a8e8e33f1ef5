"""A bounded schemathesis run against a real relay (``tests.relay.schemathesis_run``): every
operation of the relay's own OpenAPI, generated and mutated requests, 0 server errors and 0 answers
outside the documented schema. The long run is ``make schemathesis``."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("schemathesis")

from tests.relay.schemathesis_run import run  # noqa: E402


def test_no_server_errors_and_no_schema_violations(tmp_path: Path) -> None:
    outcome = run(tmp_path, max_examples=8, seed=1)
    assert outcome.clean, outcome.output
    assert outcome.operations_tested >= 15 and outcome.generated > 200, outcome.output
