"""A whole scale-out deployment for one test: three relay processes on one PostgreSQL database and
one Redis, behind a real HAProxy, and client profiles that reach it only through the proxy.

Every part is real and the test's own (fresh database, own Redis, free ports, temporary
directories), so tests run in parallel under xdist and may kill what they like.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import re
import signal
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

from client.local.client import LocalClient
from client.storage.secrets import SecretStore
from client.sync.auth import AuthClient
from client.sync.service import SyncService
from tests.support.clients import OPENED
from tests.support.relay_process import GENEROUS_LIMITS, PASSWORD, RelayProcess, unique_email
from tests.support.servers.haproxy import HAProxy
from tests.support.servers.redis import RedisServer

DAY = (_dt.date.today() + _dt.timedelta(days=30)).isoformat()
SLOT = "cut-10"


class Cluster:
    """``nodes`` relay processes (``--store`` + ``--redis``) and an HAProxy in front of them."""

    def __init__(self, tmp: Path, dsn: str, redis: RedisServer, nodes: int = 3) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        self.dsn = dsn
        self.redis = redis
        self.nodes = [
            RelayProcess(
                tmp / f"node{i}",
                "--store",
                dsn,
                "--redis",
                redis.url,
                "--events-poll",
                "0.2",
                *GENEROUS_LIMITS,
            )  # fmt: skip
            for i in range(1, nodes + 1)
        ]
        self.proxy: HAProxy | None = None

    def start(self) -> Cluster:
        # The first node creates the schema (migrations); the others start together after it.
        self.nodes[0].start()
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(lambda node: node.start(), self.nodes[1:]))
        self.proxy = HAProxy.start([(n.host, n.port) for n in self.nodes])
        self.proxy.wait_healthy()
        return self

    @property
    def url(self) -> str:
        assert self.proxy is not None
        return self.proxy.http_url

    def kill(self, index: int) -> None:
        proc = self.nodes[index].proc
        assert proc is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def metric(self, index: int, name: str, labels: str = "") -> float:
        """One metric of one node (``labels`` as rendered, e.g. ``reason="x"``), read from that
        node directly, not through the proxy; 0 when absent."""
        text = httpx.get(f"{self.nodes[index].base_url}/metrics", timeout=5).text
        series = re.escape(f"{name}{{{labels}}}" if labels else name)
        match = re.search(rf"^{series} ([0-9.e+-]+)$", text, re.M)
        return float(match.group(1)) if match else 0.0

    def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(lambda node: node.stop(), self.nodes))

    def logs(self) -> str:
        return "\n".join(f"--- node{i}\n{n.log_text()[-3000:]}" for i, n in enumerate(self.nodes, 1))


@dataclass
class Person:
    name: str
    email: str
    local: LocalClient
    auth: AuthClient

    def service(self, url: str) -> SyncService:
        return SyncService(
            self.local,
            url,
            auth=self.auth,
            backoff_initial_s=0.05,
            backoff_max_s=0.3,
            retry_initial_s=0.05,
            poll_interval_s=0.05,
        )


async def people(
    cluster: Cluster, tmp: Path, names: list[str], owner_of: dict[str, str]
) -> dict[str, Person]:
    """Register and log in one profile per name through the proxy; grants through the CLI."""
    out: dict[str, Person] = {}

    async def one(name: str) -> None:
        path = tmp / name
        local = await LocalClient.open(path, secret_store=SecretStore(path, backend="file"))
        OPENED.append(local)
        auth = AuthClient(local, cluster.url)
        email = unique_email(name)
        await auth.register(email, PASSWORD, name.title())
        out[name] = Person(name, email, local, auth)

    await asyncio.gather(*(one(name) for name in names))
    for name, shop in owner_of.items():
        await asyncio.to_thread(cluster.nodes[0].cli_json, "user", "grant", out[name].email, "--owner", shop)
        # admin too: a shop names a category the catalogue defines, and only admins add one
        await asyncio.to_thread(cluster.nodes[0].cli_json, "user", "grant", out[name].email, "--admin")
    if owner_of:
        await asyncio.sleep(0.8)  # every node polls account events every 0.2 s
    await asyncio.gather(*(p.auth.login(p.email, PASSWORD) for p in out.values()))
    return out


async def open_shop(owner: Person, url: str, shop: str, capacity: int) -> None:
    await owner.local.add_category("hair", "Hair")
    await owner.local.create_shop(
        shop, name=f"Shop {shop}", category="hair", location="Main St", lat=1.0, lon=2.0
    )
    await owner.local.add_slot(  # the bookers book it several times each
        shop, SLOT, service="haircut", start="10:00", duration=30, capacity=capacity, per_customer=100
    )
    summary = await owner.service(url).sync_once()
    assert summary.pending == 0 and not summary.rejected, summary


def bookings_doc(shop: str) -> str:
    return f"bookings:{shop}:{DAY}"
