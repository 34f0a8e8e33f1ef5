"""CI goes red on a lint error: `.ci/run` runs `make test`, `make test` runs `lint` first, and
`lint` fails on code that breaks the repository's ruff rules or formatting.

Cheap on purpose: ruff reads one snippet from stdin through the repository's own pyproject.toml
(milliseconds), and make only prints what it would run (``make -n``); the real lint of the tree is
the `lint` target itself.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "pyproject.toml"


def _ruff() -> str:
    beside_python = Path(sys.executable).with_name("ruff")
    found = str(beside_python) if beside_python.exists() else shutil.which("ruff")
    if found is None:
        pytest.skip("ruff is not installed (it comes with the dev extra)")
    return found


def _ruff_stdin(*args: str, source: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_ruff(), *args, "--config", str(CONFIG), "--stdin-filename", "probe.py", "-"],
        input=source,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


def test_ruff_check_fails_on_a_lint_error_and_passes_clean_code() -> None:
    bad = _ruff_stdin("check", source="import os\n")  # F401: imported but unused
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "F401" in bad.stdout
    good = _ruff_stdin("check", source="import os\n\nprint(os.sep)\n")
    assert good.returncode == 0, good.stdout + good.stderr


def test_ruff_format_check_fails_on_unformatted_code() -> None:
    bad = _ruff_stdin("format", "--check", source="x = {'a':1}\n")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    good = _ruff_stdin("format", "--check", source='x = {"a": 1}\n')
    assert good.returncode == 0, good.stdout + good.stderr


def _make_dry_run(target: str) -> list[str]:
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    # A fresh stamp path and a python that exists: make then prints every recipe line without
    # rebuilding the real virtualenv (-n runs nothing).
    out = subprocess.run(
        [make, "-n", "--no-print-directory", target, "VENV=.venv-dry-run"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=True,
    ).stdout
    return [line.strip() for line in out.splitlines() if line.strip()]


def test_make_test_lints_the_whole_tree_before_the_suite() -> None:
    lines = _make_dry_run("test")

    def first(fragment: str) -> int:
        hits = [i for i, line in enumerate(lines) if fragment in line]
        assert hits, f"`make test` does not run {fragment!r}:\n" + "\n".join(lines)
        return hits[0]

    suite = first("-m pytest")
    assert first("ruff check .") < suite
    assert first("ruff format --check .") < suite
    assert first("mypy crdt_core relay client demos benchmarks tests") < suite
    assert "--cov" in lines[suite]


def test_ci_runs_what_the_readme_shows() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    commands = [
        line.strip()
        for line in ci.splitlines()
        if line.strip() and not line.lstrip().startswith("#") and not line.startswith(("set ", "cd "))
    ]
    readme = (ROOT / "README.md").read_text()
    assert commands, ".ci/run runs nothing"
    for command in commands:
        assert command.startswith("make "), command
        assert command in readme, f".ci/run runs {command!r}, which the README does not show"
