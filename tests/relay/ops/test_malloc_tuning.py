"""The relay's glibc allocator settings (relay/ops/malloc_tuning.py) take effect, and yield to the operator's.

The arena count is read from glibc itself (``malloc_info``) in a fresh interpreter whose threads
all allocate at once: without the settings glibc gives each thread an arena of its own, with them
it stops at two. The same script run without the settings is the control, so the test shows the
difference rather than a number glibc happens to produce anyway.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from relay.ops.malloc_tuning import ARENA_MAX, tune_malloc
from tests.support.relay_process import REPO, RelayProcess

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc allocator settings")

# Eight threads wait on a barrier so all are alive together, each allocates blocks too large
# for pymalloc (so glibc's malloc serves them), then the main thread asks glibc for its heaps.
ARENA_PROBE = r"""
import ctypes, ctypes.util, json, sys, tempfile, threading
if sys.argv[1] == "tuned":
    from relay.ops.malloc_tuning import tune_malloc
    assert tune_malloc({}).applied
libc = ctypes.CDLL(ctypes.util.find_library("c"))
THREADS = 8
ready, done = threading.Barrier(THREADS + 1), threading.Barrier(THREADS + 1)
def work():
    ready.wait()
    keep = [bytearray(4096) for _ in range(64)]
    done.wait()
    del keep
threads = [threading.Thread(target=work) for _ in range(THREADS)]
for t in threads:
    t.start()
ready.wait()
done.wait()
with tempfile.NamedTemporaryFile(mode="r") as out:
    libc.fopen.restype = ctypes.c_void_p
    libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    f = libc.fopen(out.name.encode(), b"w")
    assert libc.malloc_info(0, f) == 0
    libc.fclose(f)
    xml = out.read()
for t in threads:
    t.join()
print(json.dumps({"heaps": xml.count("<heap nr=")}))
"""


def _heaps(mode: str) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    env["PYTHONPATH"] = str(REPO)
    out = subprocess.run(
        [sys.executable, "-c", ARENA_PROBE, mode],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return int(json.loads(out.stdout)["heaps"])


def test_threads_share_at_most_two_arenas_once_tuned() -> None:
    untuned, tuned = _heaps("default"), _heaps("tuned")
    assert untuned > ARENA_MAX, f"control: glibc gave {untuned} heaps to 8 threads without the settings"
    assert tuned <= ARENA_MAX, f"{tuned} heaps with M_ARENA_MAX={ARENA_MAX}"


@pytest.mark.parametrize("variable", ["MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES"])
def test_the_operators_glibc_settings_are_left_alone(variable: str) -> None:
    result = tune_malloc({variable: "4"})
    assert not result.applied and variable in result.reason


def test_the_relay_applies_them_at_start_and_logs_it(tmp_path: Path) -> None:
    with RelayProcess(tmp_path / "data") as relay:
        lines = [json.loads(line) for line in relay.log_text().splitlines() if '"malloc_tuning"' in line]
    assert len(lines) == 1, relay.log_text()[-3000:]
    assert lines[0]["applied"] is True and lines[0]["arena_max"] == ARENA_MAX
