"""The relay's console entry point, under its current and its earlier name."""

from __future__ import annotations

import tomllib

import pytest

from relay import cli
from relay.cli import commands
from tests.support.relay_process import REPO


def test_the_declared_entry_point_exists() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    assert scripts["quickslot-relay"] == "relay.cli.commands:main"
    assert callable(commands.main)


def test_a_script_installed_before_the_move_still_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """Editable installs made before the CLI became a package call ``relay.cli:main``."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    assert "serve" in capsys.readouterr().out
