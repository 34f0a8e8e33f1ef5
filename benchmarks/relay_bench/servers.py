"""The servers the relay suite compares, each started as a real process on a free loopback port.

* ``quickslot``: the relay itself, ``python -m relay.cli serve`` (uvicorn, FastAPI's websocket,
  SQLite with ``synchronous=FULL``: it acknowledges only durable updates), with the sync limits
  raised through its own flags so the benchmark measures work, not rate limiting.
* ``quickslot direct``: the same ``SyncHub`` served straight from ``websockets``
  (:mod:`benchmarks.relay_bench.direct_server`), reading accounts and keys from the relay's data
  directory, with its own document store: the ASGI-versus-direct experiment of docs/design.md. Like the relay
  (``relay/cli/commands.py`` serves with ``ws_per_message_deflate=False``), it refuses permessage-deflate,
  so the transport is the only difference.
* ``quickslot direct batched``: the same, writing every frame a connection has queued in one
  event-loop turn with one syscall (what serving from ``websockets`` makes possible and ASGI
  does not).
* ``y-websocket``: the reference Yjs server on Node (:mod:`benchmarks.relay_bench.node` installs
  it), in-memory only.
* ``pycrdt-websocket``: pycrdt's ``WebsocketServer`` under uvicorn, in-memory only.
* ``quickslot postgresql``: the relay again, as a real process with ``--store`` on a PostgreSQL
  server the suite starts itself (``tests/support/servers/postgres.py``: temporary directory, loopback,
  ``fsync`` on): one node on the shared store against one node on the embedded SQLite file. It has
  its own data directory, accounts and keys. Its CPU figures are the relay process's only; the
  PostgreSQL server's CPU is reported beside them (``extra.store_cpu_s``).
* ``hocuspocus``: ``@hocuspocus/server`` 3.4 on Node (the second Node baseline), in-memory
  only, no auth hook; it drops a document when its last connection closes, so it takes part in
  the live workloads (fan-out, many documents, idle connections), not in catch-up or idle memory.
* ``hocuspocus same-work``: the same Hocuspocus with the work QuickSlot does per booking
  (``hocuspocus_samework_server.mjs``): SQLite persistence (``@hocuspocus/extension-sqlite``),
  the relay's own access token checked on connect (EdDSA JWT against the relay's published keys),
  and every record of every update opened and its Ed25519 signature verified before the update is
  applied. Its clients send the same signed booking updates as QuickSlot's; it acknowledges (echoes)
  before storing. Fan-out and many documents only.

A subject that cannot run here (no Node, pycrdt-websocket not installable) is *unavailable*: the
suite reports it as such and goes on with the others. QuickSlot itself must always run.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from benchmarks.relay_bench import promhist
from benchmarks.relay_bench.loadgen import Dialect
from benchmarks.relay_bench.node import (
    HOCUSPOCUS_PACKAGES,
    NodeUnavailable,
    ensure_hocuspocus,
    ensure_hocuspocus_locked,
    ensure_y_websocket,
    installed_versions,
)
from benchmarks.relay_bench.payloads import Identity
from benchmarks.relay_bench.procs import ServerProcess, child_env, free_port

__all__ = [
    "BASELINE",
    "SUBJECTS",
    "Hocuspocus",
    "HocuspocusSameWork",
    "PycrdtWebsocket",
    "QuickSlotAsgi",
    "QuickSlotCluster",
    "QuickSlotDirect",
    "QuickSlotPostgres",
    "Subject",
    "Unavailable",
    "YWebsocket",
    "ensure_pycrdt_websocket",
]

REPO = Path(__file__).resolve().parents[2]
BASELINES = REPO / "benchmarks" / "baselines"
NODE_CACHE = REPO / "bench-results" / ".node"

QUICKSLOT, DIRECT, BATCHED = "quickslot", "quickslot direct", "quickslot direct batched"
QUICKSLOT_PG = "quickslot postgresql"
Y_WEBSOCKET, PYCRDT_WEBSOCKET, HOCUSPOCUS = "y-websocket", "pycrdt-websocket", "hocuspocus"
HOCUSPOCUS_SAME = "hocuspocus same-work"
QUICKSLOT_CLUSTER = "quickslot 3 nodes"  # QuickSlotCluster, at the end of this module
SUBJECTS = (
    QUICKSLOT, QUICKSLOT_PG, QUICKSLOT_CLUSTER, DIRECT, BATCHED, Y_WEBSOCKET, PYCRDT_WEBSOCKET, HOCUSPOCUS,
    HOCUSPOCUS_SAME,
)  # fmt: skip
BASELINE = Y_WEBSOCKET

#: Test-only Argon2 cost (1 MiB, 1 pass): account setup is not what the suite measures.
FAST_HASH_ARGS = ["--argon2-memory-kib", "1024", "--argon2-iterations", "1", "--argon2-lanes", "1"]
#: Every benchmark client comes from 127.0.0.1, so the per-address auth limits are raised.
AUTH_LIMIT_ARGS = [
    "--login-rate-address", "1000000/60", "--login-rate-account", "1000000/60",
    "--register-rate-address", "1000000/60",
]  # fmt: skip
#: Sync limits raised for measuring: updates per second and burst per connection, documents per
#: connection, connections, and a send queue deep enough that the measuring clients, which share
#: the cores with the server, are never cut off as slow consumers mid-run (a measurement of
#: throughput, not of the cut-off, which tests/relay/sync/test_slow_consumer.py covers).
SYNC_LIMIT_ARGS = [
    "--sync-rate", "1000000", "--sync-burst", "1000000", "--max-docs", "100000",
    "--max-connections", "100000", "--send-queue-bytes", str(256 * 1024 * 1024),
    "--idle-unload", "86400", "--max-message", str(4 * 1024 * 1024),
]  # fmt: skip
PASSWORD = "benchmark password 1"


class Unavailable(RuntimeError):
    """This subject cannot run on this machine (the reason is reported in the results)."""


def _env() -> dict[str, str]:
    return child_env("QUICKSLOT_RELAY_DATA", "YPERSISTENCE")


def ensure_pycrdt_websocket() -> str:
    """Return pycrdt-websocket's version, installing it into this interpreter's env if missing.

    Raises:
        Unavailable: pip could not install it.
    """
    if importlib.util.find_spec("pycrdt.websocket") is None:
        try:
            done = subprocess.run(
                [sys.executable, "-m", "pip", "install", "--quiet", "pycrdt-websocket"],
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise Unavailable(f"pip install pycrdt-websocket failed: {exc}") from exc
        importlib.invalidate_caches()
        if done.returncode != 0 or importlib.util.find_spec("pycrdt.websocket") is None:
            raise Unavailable(f"pip install pycrdt-websocket failed: {(done.stderr or done.stdout)[-500:]}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pycrdt-websocket")
    except PackageNotFoundError:
        return "unknown"


class Subject(ABC):
    """One server under test; ``process`` is the PID whose CPU and memory are measured."""

    name: str
    dialect: Dialect
    process: ServerProcess

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = 0

    @abstractmethod
    def start(self) -> None: ...

    def stop(self) -> int | None:
        return self.process.stop() if getattr(self, "process", None) is not None else None

    @abstractmethod
    def url(self, doc: str) -> str: ...

    def version(self) -> str:
        return ""

    def token(self, client: int) -> str | None:
        return None

    def device_key(self, client: int) -> bytes | None:
        """The raw Ed25519 private key ``token(client)`` is bound to (the proof of possession)."""
        return None

    @property
    def signed_records(self) -> bool:
        """Whether its clients send QuickSlot's signed booking updates (else plain map inserts)."""
        return self.dialect == "quickslot"


# --- QuickSlot ------------------------------------------------------------------------------------


def _post(base: str, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(
        base + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - loopback only
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class QuickSlotAsgi(Subject):
    name = QUICKSLOT
    dialect: Dialect = "quickslot"

    def __init__(self, workdir: Path, *, extra_args: list[str] | None = None) -> None:
        super().__init__(workdir)
        self.data = workdir / "quickslot-data"
        self.extra_args = extra_args or []
        self.identities: list[Identity] = []
        self.log_name = "quickslot.log"

    def start(self) -> None:
        self.port = free_port()
        argv = [
            sys.executable, "-m", "relay.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port),
            "--data", str(self.data), "--log-level", "WARNING",
            *FAST_HASH_ARGS, *AUTH_LIMIT_ARGS, *SYNC_LIMIT_ARGS, *self.extra_args,
        ]  # fmt: skip
        self.process = ServerProcess(
            self.name, argv, port=self.port, cwd=REPO, env=_env(), log_path=self.workdir / self.log_name
        ).start()
        self._wait_healthy()

    def _wait_healthy(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2) as r:  # noqa: S310
                    if r.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"relay not healthy:\n{self.process.log_tail()}")

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, doc: str) -> str:
        return f"ws://127.0.0.1:{self.port}/api/v1/sync"

    def version(self) -> str:
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("quickslot-sync")
        except PackageNotFoundError:
            return "dev"

    def ensure_identities(self, n: int) -> list[Identity]:
        """Register and log in accounts until there are ``n``, each with a certified device key."""
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        from crdt_core.authoring import Author
        from crdt_core.certs import DeviceKey, public_bytes
        from crdt_core.hlc import HybridClock

        while len(self.identities) < n:
            i = len(self.identities)
            email = f"bench{i}-{os.getpid()}@example.com"
            status, body = _post(
                self.base,
                "/api/v1/auth/register",
                {"email": email, "password": PASSWORD, "display_name": f"B{i}"},
            )
            if status not in (201, 409):
                raise RuntimeError(f"register failed: {status} {body}")
            key = Ed25519PrivateKey.generate()
            status, body = _post(
                self.base,
                "/api/v1/auth/login",
                {"email": email, "password": PASSWORD, "device_public_key": _b64url(public_bytes(key))},
            )
            if status != 200:
                raise RuntimeError(f"login failed: {status} {body}")
            user_id = body["user"]["id"]
            cert = _b64url_decode(body["device_certificate"])
            author = Author(user_id, DeviceKey(key, cert), HybridClock(user_id[:32]))
            self.identities.append(Identity(user_id, email, body["access_token"], author))
        return self.identities[:n]

    def token(self, client: int) -> str | None:
        return self.identities[client].access

    def device_key(self, client: int) -> bytes | None:
        return self.identities[client].device_key

    def metric(self, name: str) -> float | None:
        """One unlabelled value from ``/metrics`` (e.g. ``quickslot_loaded_documents``)."""
        try:
            text = promhist.scrape(self.base)
        except (OSError, urllib.error.URLError):
            return None
        return promhist.values(text, (name,)).get(name)


class QuickSlotPostgres(QuickSlotAsgi):
    """The relay on a PostgreSQL store (``--store``), on a server of its own started here."""

    name = QUICKSLOT_PG

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.data = workdir / "quickslot-pg-data"
        self.log_name = "quickslot-pg.log"
        self.server: Any = None
        self._pg_version = ""

    def start(self) -> None:
        try:  # the tests' helper: a real server in a temporary directory, as root or not
            from tests.support.servers.postgres import PostgresServer, unavailable_reason
        except ImportError as exc:
            raise Unavailable(f"tests/support/servers/postgres.py not importable: {exc}") from exc
        reason = unavailable_reason()
        if reason is not None:
            raise Unavailable(reason)
        self.server = PostgresServer.start()
        try:
            dsn = self.server.create_database("relay")
            self.extra_args = ["--store", dsn]
            super().start()
        except BaseException:
            self.server.stop()
            self.server = None
            raise

    def stop(self) -> int | None:
        code = super().stop()
        if self.server is not None:
            self.server.stop()
            self.server = None
        return code

    def store_cpu_s(self) -> float:
        """CPU seconds the PostgreSQL server's processes used so far (all of them, from /proc)."""
        if self.server is None:
            return 0.0
        return _tree_cpu_s(self.server.proc.pid)

    def version(self) -> str:
        bin_dir = None
        try:
            from tests.support.servers.postgres import find_bin_dir

            bin_dir = find_bin_dir()
        except ImportError:
            pass
        pg = f"PostgreSQL {bin_dir.parent.name}" if bin_dir else "PostgreSQL"
        return f"{super().version()} on {pg}"


def _tree_cpu_s(root: int) -> float:
    """User + system CPU of ``root`` and its live children (PostgreSQL's backends), in seconds."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, ppid = int(entry), int(fields[1])
        if pid == root or ppid == root:
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


class QuickSlotDirect(Subject):
    """Needs a running :class:`QuickSlotAsgi` for its accounts, keys and identities."""

    name = DIRECT
    dialect: Dialect = "quickslot"

    def __init__(
        self, workdir: Path, relay: QuickSlotAsgi, *, name: str = DIRECT, extra_args: list[str] | None = None
    ) -> None:
        super().__init__(workdir)
        self.name = name
        self.relay = relay
        self.extra_args = extra_args or []
        self.tag = "".join(c for c in name if c.isalnum())

    def start(self) -> None:
        self.port = free_port()
        limits = [a for a in SYNC_LIMIT_ARGS]
        argv = [
            sys.executable, "-m", "benchmarks.relay_bench.direct_server", "--host", "127.0.0.1",
            "--port", str(self.port), "--data", str(self.relay.data),
            "--docs", str(self.workdir / f"{self.tag}-docs"), *limits, *self.extra_args,
        ]  # fmt: skip
        self.process = ServerProcess(
            self.name, argv, port=self.port, cwd=REPO, env=_env(), log_path=self.workdir / f"{self.tag}.log"
        ).start()

    def url(self, doc: str) -> str:
        return f"ws://127.0.0.1:{self.port}/api/v1/sync"

    def version(self) -> str:
        return self.relay.version()

    def token(self, client: int) -> str | None:
        return self.relay.token(client)

    def device_key(self, client: int) -> bytes | None:
        return self.relay.device_key(client)


# --- baselines ------------------------------------------------------------------------------------


class YWebsocket(Subject):
    name = Y_WEBSOCKET
    dialect: Dialect = "yjs"

    def start(self) -> None:
        try:
            modules = ensure_y_websocket(NODE_CACHE)
        except NodeUnavailable as exc:
            raise Unavailable(str(exc)) from exc
        self.process = _start_node(self, "y_websocket_server.mjs", modules, [], "y-websocket.log")

    def url(self, doc: str) -> str:
        return f"ws://127.0.0.1:{self.port}/{doc}"

    def version(self) -> str:
        v = installed_versions(NODE_CACHE)
        server = v.get("@y/websocket-server", "?")
        return f"@y/websocket-server {server}, yjs {v.get('yjs', '?')}, ws {v.get('ws', '?')}"


def _start_node(subject: Subject, script: str, modules: Path, extra: list[str], log: str) -> ServerProcess:
    """Start ``node benchmarks/baselines/SCRIPT --modules M --port P EXTRA...`` on a free port."""
    subject.port = free_port()
    argv = ["node", str(BASELINES / script), "--modules", str(modules), "--port", str(subject.port), *extra]
    return ServerProcess(
        subject.name, argv, port=subject.port, cwd=REPO, env=_env(), log_path=subject.workdir / log
    ).start()


class Hocuspocus(Subject):
    name = HOCUSPOCUS
    dialect: Dialect = "hocuspocus"

    def start(self) -> None:
        try:
            modules = ensure_hocuspocus(NODE_CACHE)
        except NodeUnavailable as exc:
            raise Unavailable(str(exc)) from exc
        self.process = _start_node(self, "hocuspocus_server.mjs", modules, [], "hocuspocus.log")

    def url(self, doc: str) -> str:
        return f"ws://127.0.0.1:{self.port}/{doc}"

    def version(self) -> str:
        v = installed_versions(NODE_CACHE / "hocuspocus", HOCUSPOCUS_PACKAGES)
        return f"@hocuspocus/server {v.get('@hocuspocus/server', '?')}, yjs {v.get('yjs', '?')}"


class HocuspocusSameWork(Subject):
    """Hocuspocus doing QuickSlot's work per booking; accounts, tokens and keys are the relay's."""

    name = HOCUSPOCUS_SAME
    dialect: Dialect = "hocuspocus"

    def __init__(self, workdir: Path, relay: QuickSlotAsgi) -> None:
        super().__init__(workdir)
        self.relay = relay

    @property
    def signed_records(self) -> bool:
        return True

    def start(self) -> None:
        if not (REPO / "web" / "sdk" / "node_modules" / "yjs").is_dir():
            raise Unavailable("web/sdk's npm packages are not installed (cd web/sdk && npm ci)")
        try:
            modules = ensure_hocuspocus_locked(NODE_CACHE)
        except NodeUnavailable as exc:
            raise Unavailable(str(exc)) from exc
        extra = [
            "--database", str(self.workdir / "hocuspocus-samework.sqlite"),
            "--jwks", f"{self.relay.base}/.well-known/jwks.json",
        ]  # fmt: skip
        script = "hocuspocus_samework_server.mjs"
        self.process = _start_node(self, script, modules, extra, "hocuspocus-samework.log")

    def url(self, doc: str) -> str:
        return f"ws://127.0.0.1:{self.port}/{doc}"

    def token(self, client: int) -> str | None:
        return self.relay.identities[client].access

    def version(self) -> str:
        packages = {"@hocuspocus/server": "", "@hocuspocus/extension-sqlite": "", "sqlite3": "", "yjs": ""}
        v = installed_versions(NODE_CACHE / "hocuspocus-locked", packages)
        return ", ".join(f"{name} {v.get(name, '?')}" for name in packages) + ", JWT + Ed25519 per record"


class PycrdtWebsocket(Subject):
    name = PYCRDT_WEBSOCKET
    dialect: Dialect = "yjs"

    def start(self) -> None:
        self._version = ensure_pycrdt_websocket()
        self.port = free_port()
        argv = [sys.executable, str(BASELINES / "pycrdt_websocket_server.py"), "--port", str(self.port)]
        self.process = ServerProcess(
            self.name,
            argv,
            port=self.port,
            cwd=REPO,
            env=_env(),
            log_path=self.workdir / "pycrdt-websocket.log",
        ).start()

    def url(self, doc: str) -> str:
        return f"ws://127.0.0.1:{self.port}/{doc}"

    def version(self) -> str:
        return f"pycrdt-websocket {getattr(self, '_version', '?')}"


# --- a run's servers --------------------------------------------------------------------------------


class Lane:
    """A named subject of a workload: a server plus how clients talk to it (``compression``:
    whether they offer permessage-deflate; they do, as websockets and browsers do by default,
    and each server's own configuration decides)."""

    def __init__(self, name: str, subject: Subject, compression: bool = True) -> None:
        self.name = name
        self.subject = subject
        self.compression = compression


class Fleet:
    """Start the servers a workload compares (QuickSlot first: the direct server needs its data
    directory), remember which are unavailable and why, and stop them all by PID at the end."""

    def __init__(self, workdir: Path, lanes: tuple[str, ...]) -> None:
        self.workdir = workdir
        self.wanted = lanes
        self.lanes: dict[str, Lane] = {}
        self.unavailable: dict[str, str] = {}
        self.relay: QuickSlotAsgi | None = None
        self._started: list[Subject] = []
        self.exit_codes: dict[str, int | None] = {}

    def start(self) -> Fleet:
        relay = QuickSlotAsgi(self.workdir)
        relay.start()  # QuickSlot must run: a failure here is the workload's error
        self._started.append(relay)
        self.relay = relay
        for name in self.wanted:
            if name == QUICKSLOT:
                self.lanes[name] = Lane(name, relay)
            else:
                subject: Subject
                if name == DIRECT:
                    subject = QuickSlotDirect(self.workdir, relay, extra_args=["--no-deflate"])
                elif name == BATCHED:
                    subject = QuickSlotDirect(
                        self.workdir, relay, name=BATCHED, extra_args=["--no-deflate", "--batch-writes"]
                    )
                elif name == Y_WEBSOCKET:
                    subject = YWebsocket(self.workdir)
                elif name == PYCRDT_WEBSOCKET:
                    subject = PycrdtWebsocket(self.workdir)
                elif name == HOCUSPOCUS:
                    subject = Hocuspocus(self.workdir)
                elif name == HOCUSPOCUS_SAME:
                    subject = HocuspocusSameWork(self.workdir, relay)
                elif name == QUICKSLOT_PG:
                    subject = QuickSlotPostgres(self.workdir)
                elif name == QUICKSLOT_CLUSTER:
                    subject = QuickSlotCluster(self.workdir)
                else:
                    raise ValueError(f"unknown subject {name}")
                try:
                    subject.start()
                except Unavailable as exc:
                    self.unavailable[name] = str(exc)
                    continue
                except Exception as exc:  # a baseline that will not start is reported, not fatal
                    if name in (DIRECT, BATCHED):
                        raise
                    self.unavailable[name] = f"failed to start: {exc}"[:500]
                    continue
                self._started.append(subject)
                self.lanes[name] = Lane(name, subject)
        return self

    def versions(self) -> dict[str, str]:
        return {name: lane.subject.version() for name, lane in self.lanes.items()}

    def stop(self) -> None:
        for subject in reversed(self._started):
            self.exit_codes[subject.name] = subject.stop()
        self._started.clear()

    def __enter__(self) -> Fleet:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------
# ``quickslot 3 nodes``: three relay processes on one PostgreSQL and one Redis, behind HAProxy.
#
# The scale-out deployment of docs/operations.md, as a subject of the relay suite next to one node
# on SQLite (``quickslot``) and one node on PostgreSQL (``quickslot postgresql``): clients connect
# to HAProxy, which spreads them round robin, so the fan-out workload's subscribers sit on all three
# nodes and every update crosses Redis to reach two thirds of them. The servers are the tests'
# launchers (tests/support/servers: temporary directories, free loopback ports, ``fsync`` on).
#
# Measured like the others from the client side (throughput, latency). CPU: ``process`` is node 1
# (what the suite samples for every subject); ``store_cpu_s`` adds PostgreSQL's and the other two
# nodes' CPU, so the CPU column counts the whole deployment except Redis and HAProxy.

NODES = 3


class QuickSlotCluster(QuickSlotPostgres):
    name = QUICKSLOT_CLUSTER

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.data = workdir / "quickslot-cluster-data"
        self.log_name = "quickslot-cluster-node1.log"
        self.redis: Any = None
        self.proxy: Any = None
        self.others: list[ServerProcess] = []

    def start(self) -> None:
        try:
            from tests.support.servers import haproxy, postgres, redis
        except ImportError as exc:
            raise Unavailable(f"tests/support/servers not importable: {exc}") from exc
        for reason in (
            postgres.unavailable_reason(),
            redis.unavailable_reason(),
            haproxy.unavailable_reason(),
        ):
            if reason is not None:
                raise Unavailable(reason)
        try:
            self.server = postgres.PostgresServer.start()
            dsn = self.server.create_database("relay")
            self.redis = redis.RedisServer.start()
            shared = ["--store", dsn, "--redis", self.redis.url]
            nodes = [self._node(i, shared) for i in range(1, NODES + 1)]
            self.process, self.others = nodes[0], nodes[1:]  # so stop() finds them on a failure
            nodes[0].start()  # creates the schema; the others start after it
            for node in nodes[1:]:
                node.start()
            self.proxy = haproxy.HAProxy.start([("127.0.0.1", n.port) for n in nodes])
            self.port = self.proxy.port
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise

    def _node(self, index: int, shared: list[str]) -> ServerProcess:
        port = free_port()
        argv = [
            sys.executable, "-m", "relay.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
            "--data", str(self.data / f"node{index}"), "--log-level", "WARNING",
            *FAST_HASH_ARGS, *AUTH_LIMIT_ARGS, *SYNC_LIMIT_ARGS, *shared,
        ]  # fmt: skip
        return ServerProcess(
            f"{self.name} node{index}",
            argv,
            port=port,
            cwd=REPO,
            env=_env(),
            log_path=self.workdir / f"quickslot-cluster-node{index}.log",
        )

    def stop(self) -> int | None:
        if self.proxy is not None:
            self.proxy.stop()
            self.proxy = None
        for node in self.others:
            node.stop()
        self.others = []
        code = super().stop()  # node 1, then PostgreSQL
        if self.redis is not None:
            self.redis.stop()
            self.redis = None
        return code

    def store_cpu_s(self) -> float:
        others = sum(_tree_cpu_s(node.pid) for node in self.others if node.alive())
        return super().store_cpu_s() + others

    def version(self) -> str:
        return f"{super().version()}, {NODES} nodes, Redis, HAProxy"
