"""Install the y-websocket server (Node) into the suite's cache, ``bench-results/.node``.

Why the suite installs it itself: baselines are "installed by the suite", and the
npm packages are not project files (``bench-results/`` is ignored by git). The first run calls
``npm install`` once (a few seconds); later runs find the cache and skip it.

Which package: y-websocket 3.x no longer ships a server (``npm view y-websocket bin`` is empty);
the server moved to ``@y/websocket-server``. Its newest releases (0.1.2 and later) require the
Yjs 14 prerelease; 0.1.1 is the last one on stable Yjs 13, the Yjs that pycrdt and y-py
interoperate with and the one deployed y-websocket servers run, so that is the one pinned here.
Its ``utils.js`` imports ``y-leveldb`` unconditionally (used only with ``YPERSISTENCE``), so that
optional dependency is installed too; ``ws`` is the version range the package declares.

Hocuspocus (``@hocuspocus/server``, the second Node baseline) goes into its own directory,
``bench-results/.node/hocuspocus``: it needs ``ws`` 8 where the y-websocket server pins ``ws`` 6,
and ``npm install --no-save`` of one set into a shared ``node_modules`` would prune the other.
3.4.4 is pinned: the 4.x releases require Node 22, and 3.x is the line deployed on Node 20.

The same-work Hocuspocus lane (``hocuspocus_samework_server.mjs``: SQLite persistence, JWT and
signature checks) also needs ``@hocuspocus/extension-sqlite`` and with it ``sqlite3``, a native
module built or fetched by its install script. Its packages are pinned by a committed lock file,
``benchmarks/baselines/hocuspocus/package-lock.json``, and installed with ``npm ci`` into
``bench-results/.node/hocuspocus-locked`` (again only when the lock file changed).
"""

from __future__ import annotations

import fcntl
import json
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "HOCUSPOCUS_PACKAGES",
    "PACKAGES",
    "NodeUnavailable",
    "ensure_hocuspocus",
    "ensure_hocuspocus_locked",
    "ensure_y_websocket",
    "installed_versions",
]

PACKAGES = {
    "@y/websocket-server": "0.1.1",
    "yjs": "^13.6.0",
    "ws": "^6.2.1",
    "y-leveldb": "^0.1.0",
}


HOCUSPOCUS_PACKAGES = {
    "@hocuspocus/server": "3.4.4",
    "yjs": "^13.6.8",
    "y-protocols": "^1.0.6",
}


class NodeUnavailable(RuntimeError):
    """Node or npm is missing, or the install failed: the y-websocket baseline is skipped."""


def _module_dir(cache: Path) -> Path:
    return cache / "node_modules"


def installed_versions(cache: Path, packages: dict[str, str] | None = None) -> dict[str, str]:
    out = {}
    for name in PACKAGES if packages is None else packages:
        pkg = _module_dir(cache) / name / "package.json"
        try:
            out[name] = json.loads(pkg.read_text(encoding="utf-8"))["version"]
        except (OSError, ValueError, KeyError):
            pass
    return out


def ensure_y_websocket(cache: Path, timeout: float = 300.0) -> Path:
    """Return the ``node_modules`` directory holding @y/websocket-server, installing it if needed.

    Raises:
        NodeUnavailable: no ``node``/``npm`` on PATH, or ``npm install`` failed.
    """
    return _ensure(cache, PACKAGES, timeout)


def ensure_hocuspocus(cache: Path, timeout: float = 300.0) -> Path:
    """Return the ``node_modules`` directory holding @hocuspocus/server (``cache/hocuspocus``).

    Raises:
        NodeUnavailable: no ``node``/``npm`` on PATH, or ``npm install`` failed.
    """
    return _ensure(cache / "hocuspocus", HOCUSPOCUS_PACKAGES, timeout)


LOCKED_DIR = Path(__file__).resolve().parents[1] / "baselines" / "hocuspocus"


def ensure_hocuspocus_locked(cache: Path, timeout: float = 900.0) -> Path:
    """Return the ``node_modules`` installed by ``npm ci`` from ``benchmarks/baselines/hocuspocus``'s
    lock file (``cache/hocuspocus-locked``), installing it when the lock file changed.

    Raises:
        NodeUnavailable: no ``node``/``npm`` on PATH, or ``npm ci`` failed.
    """
    npm = shutil.which("npm")
    if shutil.which("node") is None or npm is None:
        raise NodeUnavailable("node and npm are not both on PATH")
    target = cache / "hocuspocus-locked"
    lock = (LOCKED_DIR / "package-lock.json").read_bytes()
    stamp = target / "node_modules" / ".installed-lock.json"
    with _installing(target):
        if stamp.exists() and stamp.read_bytes() == lock:
            return _module_dir(target)
        target.mkdir(parents=True, exist_ok=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copyfile(LOCKED_DIR / name, target / name)
        _npm([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], target, timeout, lambda: True)
        stamp.write_bytes(lock)
        return _module_dir(target)


@contextmanager
def _installing(target: Path) -> Iterator[None]:
    """Hold an exclusive lock on installing into ``target`` (a file lock beside it).

    Why: the test suite's workers and parallel benchmark runs share ``bench-results/.node``; two
    ``npm ci`` runs in one directory at once fail each other (each removes ``node_modules``
    first), so the second waits and then finds the install done.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.install-lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _ensure(cache: Path, packages: dict[str, str], timeout: float) -> Path:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        raise NodeUnavailable("node and npm are not both on PATH")
    cache.mkdir(parents=True, exist_ok=True)
    with _installing(cache):
        if set(installed_versions(cache, packages)) == set(packages):
            return _module_dir(cache)
        manifest = cache / "package.json"
        if not manifest.exists():
            manifest.write_text(json.dumps({"name": "quickslot-bench-node", "private": True}) + "\n")
        specs = [f"{name}@{version}" for name, version in packages.items()]
        _npm(
            [npm, "install", "--no-audit", "--no-fund", "--no-save", "--ignore-scripts", *specs],
            cache,
            timeout,
            lambda: set(installed_versions(cache, packages)) == set(packages),
        )
        return _module_dir(cache)


def _npm(argv: list[str], cwd: Path, timeout: float, installed: Callable[[], bool]) -> None:
    """Run an npm command; NodeUnavailable unless it succeeded and ``installed()`` agrees."""
    what = f"npm {argv[1]}"
    try:
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        raise NodeUnavailable(f"{what} failed: {exc}") from exc
    if done.returncode != 0 or not installed():
        raise NodeUnavailable(f"{what} failed ({done.returncode}): {(done.stderr or done.stdout)[-800:]}")
