"""The JavaScript SDK (web/sdk) reaches crdt_core's outcome on every cross-check case.

``tests/web/sdk_cases.py`` computes a few dozen cases with crdt_core (signed records valid and
tampered, updates of every refusal reason, verdicts and verdict histories with their diffs) and
the SDK's node test runner must agree with each one. ``make test-web`` installs the SDK's
dependencies; without node or them this test is skipped (with the reason), never silently passed.
"""

from __future__ import annotations

import importlib
import os
import subprocess
from pathlib import Path

import pytest

from tests.web.sdk_env import SDK, node_or_skip


def _record_format() -> int:
    records = importlib.import_module("crdt_core.records")
    return int(getattr(records, "RECORD_FORMAT", 1))


def test_sdk_agrees_with_crdt_core(tmp_path: Path) -> None:
    if _record_format() != 2:
        pytest.skip("the SDK implements record format 2; this crdt_core still writes format 1")
    node = node_or_skip()
    from tests.web.sdk_cases import write_all

    counts = write_all(tmp_path)
    assert sum(counts.values()) >= 60
    run = subprocess.run(
        [node, "--test", "--test-reporter=dot", "test/crosscheck.test.js"],
        cwd=SDK,
        env={**os.environ, "QUICKSLOT_CROSSCHECK": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
