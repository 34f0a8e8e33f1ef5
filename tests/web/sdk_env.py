"""Where the JavaScript SDK lives and the Node that runs it, for the tests that drive it from Python.

Without node or the SDK's installed dependencies (``make test-web`` runs ``npm ci``) those tests
skip with the reason, never pass silently.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

SDK = Path(__file__).resolve().parents[2] / "web" / "sdk"


def node_or_skip() -> str:
    """The node executable, or skip the calling test when it or the SDK's dependencies are missing."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    if not (SDK / "node_modules" / "yjs").is_dir():
        pytest.skip("web/sdk dependencies missing: run `make test-web` (npm ci)")
    return node
