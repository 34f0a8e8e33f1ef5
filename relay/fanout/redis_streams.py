"""Cross-node fan-out through Redis Streams: every node publishes its commits and reads everyone's.

Why Streams (not Pub/Sub): a Pub/Sub message sent while a node is disconnected is gone, and the
node cannot even tell. A stream keeps entries (bounded by ``MAXLEN ~``), each with an id, so a
node that lagged or reconnected reads on from the last id it saw, and can tell when it fell
further behind than the stream keeps (``max-deleted-entry-id`` past its id) or when Redis lost
the stream altogether (a new ``run_id``): then it reports a reset and the relay reloads its
documents from the store, which holds every committed update anyway.

Theory of operation
-------------------
* **Shards.** Documents hash (CRC-32) onto ``shards`` stream keys ``<prefix>:<n>``; a document
  always lands on the same key, so its entries keep publish order. One ``XREAD`` covers every
  key, with this node's last id per key.
* **Publishing** never blocks the commit path: :meth:`RedisStreamFanout.publish` appends to a
  bounded in-memory backlog and one task sends it in order (pipelined ``XADD ... MAXLEN ~``).
  While Redis is down the backlog waits and is sent once Redis is back; if it overflows, the
  oldest entries are dropped (counted, logged): the other nodes then see a seq gap and reload.
  A pipeline that failed half-way is sent again whole; receivers drop the duplicates by seq.
* **Consuming**: one task, ``XREAD BLOCK``, starting at Redis's own clock when the node starts
  (earlier entries are in the store the node loads documents from). Entries this node published
  come back too and are skipped by origin id.
* **Order per document across nodes** is not the stream's job: two nodes committing seqs 8 and 9
  of one document may publish them in either order. The receiving document manager orders by seq
  and waits briefly for a missing one (:mod:`relay.documents.manager`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
import zlib
from collections import deque
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from relay.fanout.base import Committed, DecodeError, OnMessage, OnReset, decode, encode
from relay.ops.logging import get_logger, log_event

__all__ = ["FanoutStats", "RedisStreamFanout"]

log = get_logger(__name__)

_FIELD = b"m"


def _parse_id(value: bytes | str) -> tuple[int, int]:
    text = value.decode() if isinstance(value, bytes) else value
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


@dataclass(frozen=True, slots=True)
class FanoutStats:
    published: int
    received: int
    dropped_backlog: int
    backlog: int
    resets: int
    connected: bool
    undecodable: int


class RedisStreamFanout:
    """A :class:`relay.fanout.base.Fanout` on Redis Streams.

    Args:
        url: ``redis://[user:password@]host:port/db`` (``rediss://`` for TLS).
        prefix: stream key prefix; relays sharing a Redis but not a store need different ones.
        shards: number of stream keys documents are spread over.
        maxlen: approximate entries kept per stream (``XADD MAXLEN ~``); a node that lags by more
            than this reloads its documents instead of replaying.
        max_backlog: entries held for publishing while Redis is unreachable.
        block_ms: how long one ``XREAD`` waits for entries.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "quickslot:fanout",
        shards: int = 4,
        maxlen: int = 20_000,
        max_backlog: int = 100_000,
        block_ms: int = 1000,
        node_id: str | None = None,
    ) -> None:
        if shards < 1 or maxlen < 1 or max_backlog < 1 or block_ms < 1:
            raise ValueError("shards, maxlen, max_backlog and block_ms must be >= 1")
        self.url = url
        self.prefix = prefix
        self.shards = shards
        self.maxlen = maxlen
        self.max_backlog = max_backlog
        self.block_ms = block_ms
        self.node_id = node_id or secrets.token_hex(8)
        self.keys = [f"{prefix}:{n}" for n in range(shards)]
        timeout = block_ms / 1000 + 5.0
        self._redis: aioredis.Redis = aioredis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=2.0, decode_responses=False
        )
        self._backlog: deque[Committed] = deque()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._ids: dict[str, str] = {}
        self._run_id: str | None = None
        self._closing = False
        self.connected = False
        self._published = 0
        self._received = 0
        self._dropped = 0
        self._resets = 0
        self._undecodable = 0

    def key_for(self, doc: str) -> str:
        return self.keys[zlib.crc32(doc.encode()) % self.shards]

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self, on_message: OnMessage, on_reset: OnReset) -> None:
        """Fix the starting position at Redis's clock (or ours, if Redis is down), then run."""
        start_ms = int(time.time() * 1000) - 5000  # Redis unreachable: replay a little, harmlessly
        try:
            seconds, micros = await self._redis.time()
            start_ms = int(seconds) * 1000 + int(micros) // 1000
            self._run_id = await self._server_run_id()
            self.connected = True
        except (RedisError, OSError) as exc:
            log_event(
                log, "fanout_unreachable_at_start", logging.WARNING, error=repr(exc), hint="will keep trying"
            )
        self._ids = {key: f"{start_ms}-0" for key in self.keys}
        self._tasks = [
            asyncio.create_task(self._publish_forever(), name="fanout-publish"),
            asyncio.create_task(self._consume_forever(on_message, on_reset), name="fanout-consume"),
        ]
        log_event(log, "fanout_started", node=self.node_id, streams=self.keys)

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        with contextlib.suppress(Exception):
            await self._redis.aclose()

    def stats(self) -> FanoutStats:
        return FanoutStats(
            published=self._published,
            received=self._received,
            dropped_backlog=self._dropped,
            backlog=len(self._backlog),
            resets=self._resets,
            connected=self.connected,
            undecodable=self._undecodable,
        )

    # --- publishing ------------------------------------------------------------------------

    def publish(self, message: Committed) -> None:
        if self._closing:
            return
        self._backlog.append(message)
        if len(self._backlog) > self.max_backlog:
            self._backlog.popleft()
            self._dropped += 1
            if self._dropped % 1000 == 1:
                log_event(
                    log, "fanout_backlog_full", logging.ERROR, dropped=self._dropped, hint="Redis down?"
                )
        self._wake.set()

    async def _publish_forever(self) -> None:
        backoff = 0.05
        while not self._closing:
            await self._wake.wait()
            self._wake.clear()
            while self._backlog and not self._closing:
                batch = [self._backlog[i] for i in range(min(256, len(self._backlog)))]
                try:
                    pipe = self._redis.pipeline(transaction=False)
                    for message in batch:
                        pipe.xadd(
                            self.key_for(message.doc),
                            {_FIELD: encode(message)},
                            maxlen=self.maxlen,
                            approximate=True,
                        )
                    await pipe.execute()
                except (RedisError, OSError) as exc:
                    if self.connected:
                        log_event(
                            log, "fanout_publish_failed", logging.WARNING, error=repr(exc), hint="retrying"
                        )
                    self.connected = False
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 1.0)
                    continue
                backoff = 0.05
                self.connected = True
                # Only what was sent: publish() may have dropped the oldest meanwhile.
                for message in batch:
                    if self._backlog and self._backlog[0] is message:
                        self._backlog.popleft()
                self._published += len(batch)

    # --- consuming -------------------------------------------------------------------------

    async def _server_run_id(self) -> str | None:
        info: dict[str, Any] = await self._redis.info("server")
        run_id = info.get("run_id")
        return str(run_id) if run_id is not None else None

    async def _lost_entries(self) -> bool:
        """Whether entries this node has not read are gone: Redis restarted empty-handed, or the
        stream was trimmed past this node's position."""
        run_id = await self._server_run_id()
        restarted = self._run_id is not None and run_id != self._run_id
        self._run_id = run_id
        if restarted:
            return True
        for key in self.keys:
            try:
                info: dict[Any, Any] = await self._redis.xinfo_stream(key)
            except ResponseError:
                continue  # no such stream yet
            deleted = info.get(b"max-deleted-entry-id", info.get("max-deleted-entry-id"))
            if deleted is not None and _parse_id(deleted) > _parse_id(self._ids[key]):
                return True
        return False

    async def _consume_forever(self, on_message: OnMessage, on_reset: OnReset) -> None:
        backoff = 0.05
        must_check = False
        last_check = time.monotonic()
        while not self._closing:
            try:
                if must_check or time.monotonic() - last_check > 5.0:
                    lost = await self._lost_entries()
                    must_check, last_check = False, time.monotonic()
                    if lost:
                        self._resets += 1
                        log_event(
                            log,
                            "fanout_entries_may_be_lost",
                            logging.WARNING,
                            hint="Redis restarted or stream trimmed",
                        )
                        try:
                            on_reset()
                        except Exception:
                            log_event(log, "fanout_reset_handler_failed", logging.ERROR, exc_info=True)
                    if not self.connected:
                        self.connected = True
                        self._wake.set()  # the publisher may be sleeping on its backoff
                        log_event(log, "fanout_reconnected")
                streams: Any = self._ids
                reply: Any = await self._redis.xread(streams, count=512, block=self.block_ms)
            except (RedisError, OSError) as exc:
                if self.connected:
                    log_event(
                        log, "fanout_read_failed", logging.WARNING, error=repr(exc), hint="reconnecting"
                    )
                self.connected = False
                must_check = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
                continue
            backoff = 0.05
            self.connected = True
            for raw_key, entries in reply or []:
                key = raw_key.decode() if isinstance(raw_key, bytes) else str(raw_key)
                for entry_id, fields in entries:
                    self._ids[key] = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
                    data = fields.get(_FIELD)
                    if data is None:
                        continue
                    try:
                        message = decode(data)
                    except DecodeError as exc:
                        self._undecodable += 1
                        log_event(log, "fanout_entry_skipped", logging.ERROR, entry=entry_id, error=repr(exc))
                        continue
                    if message.origin == self.node_id:
                        continue
                    self._received += 1
                    try:
                        on_message(message)
                    except Exception:
                        log_event(
                            log,
                            "fanout_delivery_failed",
                            logging.ERROR,
                            exc_info=True,
                            doc=message.doc,
                            seq=message.seq,
                        )
