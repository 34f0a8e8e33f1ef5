"""``quickslot 3 nodes``: three relay processes on one PostgreSQL and one Redis, behind HAProxy.

The scale-out deployment of docs/operations.md, as a subject of the relay suite next to one node
on SQLite (``quickslot``) and one node on PostgreSQL (``quickslot postgresql``): clients connect
to HAProxy, which spreads them round robin, so the fan-out workload's subscribers sit on all three
nodes and every update crosses Redis to reach two thirds of them. The servers are the tests'
launchers (tests/servers: temporary directories, free loopback ports, ``fsync`` on).

Measured like the others from the client side (throughput, latency). CPU: ``process`` is node 1
(what the suite samples for every subject); ``store_cpu_s`` adds PostgreSQL's and the other two
nodes' CPU, so the CPU column counts the whole deployment except Redis and HAProxy.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from benchmarks.relay_bench.procs import ServerProcess, free_port
from benchmarks.relay_bench.servers import (
    AUTH_LIMIT_ARGS,
    FAST_HASH_ARGS,
    QUICKSLOT_CLUSTER,
    REPO,
    SYNC_LIMIT_ARGS,
    QuickSlotPostgres,
    Unavailable,
    _env,
    _tree_cpu_s,
)

__all__ = ["QUICKSLOT_CLUSTER", "QuickSlotCluster"]

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
            from tests.servers import haproxy, postgres, redis
        except ImportError as exc:
            raise Unavailable(f"tests/servers not importable: {exc}") from exc
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
