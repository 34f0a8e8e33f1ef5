"""Yjs on Node, the reference implementation of the format the Yrs engines speak, as a baseline.

Why a subprocess: Yjs is JavaScript. The adapter keeps one long-lived Node process running
``benchmarks/node/yjs_driver.mjs`` and talks to it with length-prefixed frames over stdin/stdout
(a JSON header plus raw binary blobs). Documents live in Node; Python holds their ids.

Why the timing is Node's: one round trip costs tens of microseconds, more than a map write, so
the wall time of a call would measure the pipe. Every reply carries the nanoseconds Node measured
around the engine work alone, and :meth:`YjsNodeAdapter.clock` advances only by those; the
harness reads timed regions from the adapter's clock. Loops that a workload runs per edit
(``write_many``, ``edit_many``, ``apply_many``, a concurrent trace) are shipped as one command and
run in JavaScript, so Yjs is measured as a JavaScript program would use it. IPC, JSON and the
Python side of each call are excluded; results say so.

Installation: ``yjs`` (stable 13.x, the version the Yrs engines interoperate with) is installed
by npm into ``bench-results/.node/engine`` on first use, beside the relay suite's y-websocket
install but in its own directory, so neither ``npm install`` prunes the other's packages. Set
``QUICKSLOT_BENCH_NO_INSTALL=1`` to never install (the tests do): the engine is then skipped
with the reason when it is missing.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import struct
import subprocess
import tempfile
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from benchmarks.adapters.base import BaseAdapter, EngineUnavailable, Entry, Patch

__all__ = ["NODE_CACHE", "YjsNodeAdapter", "YjsTimeout", "ensure_yjs"]

REPO = Path(__file__).resolve().parents[2]
NODE_CACHE = REPO / "bench-results" / ".node" / "engine"
DRIVER = Path(__file__).resolve().parents[1] / "node" / "yjs_driver.mjs"
YJS_SPEC = "yjs@^13.6.0"
NO_INSTALL_ENV = "QUICKSLOT_BENCH_NO_INSTALL"


class YjsTimeout(Exception):
    """Node did not answer before the deadline; the process was killed (and restarts on next use)."""


def _installed_version(cache: Path) -> str | None:
    try:
        data = json.loads((cache / "node_modules" / "yjs" / "package.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    found = data.get("version")
    return found if isinstance(found, str) else None


def ensure_yjs(cache: Path = NODE_CACHE, timeout: float = 300.0) -> Path:
    """Return the ``node_modules`` directory holding yjs, installing it with npm if needed.

    Raises:
        EngineUnavailable: no node or npm, installing is disabled, or ``npm install`` failed.
    """
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None:
        raise EngineUnavailable("node is not on PATH")
    if _installed_version(cache) is not None:
        return cache / "node_modules"
    if os.environ.get(NO_INSTALL_ENV):
        raise EngineUnavailable(f"yjs is not installed in {cache} and {NO_INSTALL_ENV} is set")
    if npm is None:
        raise EngineUnavailable("npm is not on PATH")
    cache.mkdir(parents=True, exist_ok=True)
    manifest = cache / "package.json"
    if not manifest.exists():
        manifest.write_text(json.dumps({"name": "quickslot-bench-engine", "private": True}) + "\n")
    try:
        done = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--no-save", "--ignore-scripts", YJS_SPEC],
            cwd=cache,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise EngineUnavailable(f"npm install {YJS_SPEC} failed: {exc}") from exc
    if done.returncode != 0 or _installed_version(cache) is None:
        raise EngineUnavailable(f"npm install {YJS_SPEC} failed: {(done.stderr or done.stdout)[-400:]}")
    return cache / "node_modules"


class NodeDoc:
    """A handle on a document living in the Node process; freed there when this is collected."""

    __slots__ = ("id", "generation", "_owner", "__weakref__")

    def __init__(self, owner: YjsNodeAdapter, doc_id: int, generation: int) -> None:
        self.id = doc_id
        self.generation = generation
        self._owner = weakref.ref(owner)

    def __del__(self) -> None:
        owner = self._owner()
        if owner is not None and owner.generation == self.generation:
            owner.pending_free.append(self.id)


class YjsNodeAdapter(BaseAdapter):
    name = "yjs"
    supports_text = True
    notes = (
        "Yjs on Node, one long-lived subprocess; loops run in JavaScript and every time is measured "
        "inside Node around the engine work (IPC excluded)"
    )

    def __init__(self, cache: Path = NODE_CACHE) -> None:
        self._modules = ensure_yjs(cache)
        self._cache = cache
        self._node = shutil.which("node") or "node"
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._ns = 0
        self.generation = 0
        self.pending_free: list[int] = []

    # --- process ----------------------------------------------------------------------------

    def _start(self) -> subprocess.Popen[bytes]:
        if self._proc is None or self._proc.poll() is not None:
            self.generation += 1
            self.pending_free = []
            self._stderr = tempfile.TemporaryFile()
            self._proc = subprocess.Popen(
                [self._node, "--max-old-space-size=8192", str(DRIVER), str(self._modules)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
            )
        return self._proc

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.stdin is not None:
                proc.stdin.close()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()
            proc.wait()

    def _read_exact(self, stream: IO[bytes], n: int, deadline: float | None) -> bytes:
        chunks: list[bytes] = []
        fd = stream.fileno()
        while n:
            if deadline is not None:
                left = deadline - time.monotonic()
                ready, _, _ = select.select([fd], [], [], max(left, 0))
                if not ready:
                    self._kill()
                    raise YjsTimeout("Node did not finish before the time limit")
            chunk = os.read(fd, min(n, 1 << 20))
            if not chunk:
                err = b""
                if self._stderr is not None:
                    self._stderr.seek(0)
                    err = self._stderr.read()[-600:]
                self._proc = None
                raise RuntimeError(f"the Yjs driver exited: {err.decode(errors='replace')}")
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def call(
        self, header: dict[str, Any], blobs: Sequence[bytes] = (), timeout: float | None = None
    ) -> tuple[dict[str, Any], list[bytes]]:
        """One command; returns the reply header and blobs. Adds the reply's ``ns`` to the clock."""
        proc = self._start()
        assert proc.stdin is not None and proc.stdout is not None
        if self.pending_free:
            header["free"], self.pending_free = self.pending_free, []
        header["blobs"] = [len(b) for b in blobs]
        head = json.dumps(header, separators=(",", ":")).encode()
        total = 4 + len(head) + sum(map(len, blobs))
        proc.stdin.write(struct.pack("<II", total, len(head)) + head)
        for blob in blobs:
            proc.stdin.write(blob)
        proc.stdin.flush()
        deadline = None if timeout is None else time.monotonic() + timeout
        raw_size = self._read_exact(proc.stdout, 4, deadline)
        (size,) = struct.unpack("<I", raw_size)
        if size > 1 << 31:  # not a frame: something printed to stdout; the stream is lost
            self._kill()
            raise RuntimeError(f"the Yjs driver wrote something that is not a frame: {raw_size!r}...")
        frame = self._read_exact(proc.stdout, size, deadline)
        (head_len,) = struct.unpack_from("<I", frame)
        reply: dict[str, Any] = json.loads(frame[4 : 4 + head_len])
        if "error" in reply:
            raise RuntimeError(f"Yjs driver: {reply['error']}")
        self._ns += int(reply.get("ns", 0))
        out, offset = [], 4 + head_len
        for n in reply.get("blobs", []):
            out.append(frame[offset : offset + n])
            offset += n
        return reply, out

    # --- the adapter interface -------------------------------------------------------------------

    def clock(self) -> float:
        return self._ns / 1e9

    def version(self) -> str:
        return _installed_version(self._cache) or "?"

    def node_version(self) -> str:
        reply, _ = self.call({"op": "hello"})
        return str(reply["node"])

    def new_doc(self, client_id: int) -> NodeDoc:
        self._start()
        generation = self.generation
        reply, _ = self.call({"op": "new", "client": client_id})
        return NodeDoc(self, int(reply["doc"]), generation)

    def write(self, doc: NodeDoc, entries: Sequence[Entry]) -> bytes:
        return self.write_many(doc, [entries])[0]

    def write_many(self, doc: NodeDoc, transactions: Sequence[Sequence[Entry]]) -> list[bytes]:
        blobs: list[bytes] = []
        txs = []
        for entries in transactions:
            tx = []
            for root, key, value in entries:
                tx.append((root, key, len(blobs)))
                blobs.append(value)
            txs.append(tx)
        _, updates = self.call({"op": "write", "doc": doc.id, "txs": txs}, blobs)
        return updates

    def edit_text(self, doc: NodeDoc, root: str, patches: Sequence[Patch]) -> bytes:
        return self.edit_many(doc, root, [patches])[0]

    def edit_many(
        self,
        doc: NodeDoc,
        root: str,
        transactions: Sequence[Sequence[Patch]],
        keep_updates: bool = True,
        timeout: float | None = None,
    ) -> list[bytes]:
        header = {"op": "edit", "doc": doc.id, "root": root, "txs": transactions, "keep": keep_updates}
        _, updates = self.call(header, timeout=timeout)
        return updates

    def replay_concurrent(
        self,
        root: str,
        agents: int,
        steps: Sequence[int],
        txns: Sequence[Sequence[Patch]],
        client_base: int,
        timeout: float | None = None,
    ) -> list[str]:
        """Run a concurrent trace's schedule in Node (see ``benchmarks.traces``); each agent's text."""
        header = {
            "op": "concurrent",
            "root": root,
            "agents": agents,
            "steps": list(steps),
            "txns": txns,
            "clientBase": client_base,
        }
        reply, _ = self.call(header, timeout=timeout)
        return [str(t) for t in reply["texts"]]

    def text(self, doc: NodeDoc, root: str) -> str:
        reply, _ = self.call({"op": "text", "doc": doc.id, "root": root})
        return str(reply["text"])

    def encode_state(self, doc: NodeDoc) -> bytes:
        return self.call({"op": "encode", "doc": doc.id})[1][0]

    def state_vector(self, doc: NodeDoc) -> bytes:
        return self.call({"op": "sv", "doc": doc.id})[1][0]

    def diff(self, doc: NodeDoc, state_vector: bytes) -> bytes:
        return self.call({"op": "diff", "doc": doc.id}, [state_vector])[1][0]

    def apply(self, doc: NodeDoc, update: bytes) -> None:
        self.call({"op": "apply", "doc": doc.id}, [update])

    def apply_many(self, doc: NodeDoc, updates: Sequence[bytes]) -> None:
        self.call({"op": "apply", "doc": doc.id}, updates)

    def merge(self, updates: Sequence[bytes]) -> bytes:
        return self.call({"op": "merge"}, updates)[1][0]

    def read(self, doc: NodeDoc, root: str) -> dict[str, bytes]:
        reply, values = self.call({"op": "read", "doc": doc.id, "root": root})
        return dict(zip(reply["keys"], values, strict=True))
