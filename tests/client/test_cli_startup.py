"""CLI start-up: ``--help`` and argument errors load none of the library, the core or asyncio.

Every ``quickslot`` command pays its start-up (a script of 100 commands pays it 100 times), so the
parser is built from names and a command's module is imported only when it runs. Checked in a
fresh interpreter, by what got imported (stable on a loaded machine, unlike a wall-clock bound).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

HEAVY = ("asyncio", "pycrdt", "crdt_core.engine", "crdt_core.schema", "cryptography", "httpx", "websockets",
         "sqlite3", "client.local.client", "client.sync.service")  # fmt: skip

PROBE = """
import contextlib, io, json, sys
from client.cli.app import main
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    try:
        code = main(sys.argv[1:])
    except SystemExit as exc:
        code = exc.code
print(json.dumps({"code": code, "loaded": sorted(m for m in %r if m in sys.modules)}))
"""


def _loaded_by(*args: str) -> tuple[object, list[str]]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run(
        [sys.executable, "-c", PROBE % (HEAVY,), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    found = json.loads(out.stdout.strip().splitlines()[-1])
    return found["code"], found["loaded"]


def test_help_loads_no_heavy_module() -> None:
    for args in (["--help"], ["book", "--help"], ["peer", "sync", "--help"]):
        code, loaded = _loaded_by(*args)
        assert code == 0 and loaded == [], (args, loaded)


def test_a_usage_error_loads_no_heavy_module() -> None:
    for args in (["no-such-command"], ["book", "shop1"], ["discard", "not-a-number"]):
        code, loaded = _loaded_by(*args)
        # The message is printed through crdt_core.schema.printable (no raw control characters):
        # that module alone, without the engine.
        assert code == 2 and set(loaded) <= {"crdt_core.schema"}, (args, loaded)
