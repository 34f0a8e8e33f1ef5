"""glibc allocator settings for a long-running relay process.

Why: under sustained traffic the relay's resident memory kept creeping although nothing it
holds grows (docs/reliability.md, "Memory"). Two glibc defaults account for a measured part of it:

* **One arena per thread, up to 8 x cores.** The relay's worker threads (SQLite commits, key
  derivation, ``asyncio.to_thread``) each get an arena of their own on their first allocation, and
  memory freed into one arena is never reused by another thread's allocations. Two arenas are
  enough for one event loop plus its helpers.
* **A sliding mmap threshold.** glibc raises the threshold above which it serves a block with
  ``mmap`` every time such a block is freed, up to 32 MiB. After a few large documents or batches
  the big buffers land in the heap instead, where a single live small block pins the pages around
  it. Fixing the threshold at 128 KiB keeps large, short-lived buffers in ``mmap``: returned to the
  system as soon as they are freed.

Measured on the fuzzing relay (16 minutes of hostile traffic), both together kept its RSS
13-15 MiB lower. Operators who configure glibc themselves (``MALLOC_ARENA_MAX``,
``MALLOC_MMAP_THRESHOLD_``, ``GLIBC_TUNABLES``) keep their settings: this module then changes
nothing. On a C library other than glibc it changes nothing either.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
from collections.abc import Mapping
from dataclasses import dataclass

from relay.ops.logging import get_logger

log = get_logger(__name__)

#: ``mallopt`` parameter numbers from glibc's ``malloc.h``.
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

ARENA_MAX = 2
MMAP_THRESHOLD = 128 * 1024

#: Environment variables through which glibc reads the same settings at start-up.
OPERATOR_SETTINGS = ("MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES")


@dataclass(frozen=True)
class MallocTuning:
    """What :func:`tune_malloc` did, for the start-up log line and the tests."""

    applied: bool
    reason: str
    arena_max: int | None = None
    mmap_threshold: int | None = None


def tune_malloc(environ: Mapping[str, str] | None = None) -> MallocTuning:
    """Apply the relay's allocator settings once, early, before worker threads start."""
    env = os.environ if environ is None else environ
    chosen = [name for name in OPERATOR_SETTINGS if name in env]
    if chosen:
        return MallocTuning(False, f"left to the operator's {', '.join(chosen)}")
    libc_name, _version = platform.libc_ver()
    if libc_name != "glibc":
        return MallocTuning(False, f"not glibc ({libc_name or 'unknown C library'})")
    path = ctypes.util.find_library("c")
    if path is None:
        return MallocTuning(False, "C library not found")
    libc = ctypes.CDLL(path, use_errno=True)
    mallopt = libc.mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success and 0 on error.
    if mallopt(M_ARENA_MAX, ARENA_MAX) != 1 or mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1:
        return MallocTuning(False, "mallopt refused the settings")
    return MallocTuning(True, "glibc", ARENA_MAX, MMAP_THRESHOLD)


def tune_malloc_and_log(environ: Mapping[str, str] | None = None) -> MallocTuning:
    from relay.ops.logging import log_event

    result = tune_malloc(environ)
    log_event(
        log,
        "malloc_tuning",
        applied=result.applied,
        reason=result.reason,
        arena_max=result.arena_max,
        mmap_threshold=result.mmap_threshold,
    )
    return result
