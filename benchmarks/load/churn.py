"""Connection churn: open N authenticated, subscribed connections, close them all, repeat.

Why: the load run holds its connections for the whole run, so it cannot show per-connection
state that outlives a connection. Here the relay's RSS is read after every round with all
connections open and again after all are closed. State kept per closed connection would make the
closed-round RSS climb by about that much per connection and round. The last round ends with
SIGTERM while all N are held, which shows how long a graceful shutdown with N clients takes and
which close code they get.

``python -m benchmarks.load.churn --connections 1000 --rounds 12 --out DIR`` (writes
``DIR/churn.json``; the relay is started as in :mod:`benchmarks.load.run`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import msgpack
import websockets
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from websockets.asyncio.client import ClientConnection

from benchmarks.load.accounts import Device, create_devices
from benchmarks.load.driver import raise_open_files
from benchmarks.load.run import REPO, _env, _wait_healthy
from benchmarks.relay_bench.payloads import bookings_doc, quickslot_subscribe_message
from benchmarks.relay_bench.procs import ServerProcess, free_port
from benchmarks.relay_bench.servers import AUTH_LIMIT_ARGS, FAST_HASH_ARGS
from crdt_core.pop import SYNC, proof_headers

SUBSCRIPTIONS = 3
DOCS = 200


async def _open(url: str, device: Device, docs: list[str], gate: asyncio.Semaphore) -> ClientConnection:
    async with gate:
        ws = await websockets.connect(
            url,
            # The token is bound to the device key: a proof of possession goes with it.
            additional_headers=proof_headers(
                device.identity.access, Ed25519PrivateKey.from_private_bytes(device.identity.device_key), SYNC
            ),
            open_timeout=60,
            ping_interval=None,
            compression=None,
        )
        welcome = msgpack.unpackb(await asyncio.wait_for(ws.recv(), 30))
        if welcome.get("t") != "welcome":
            raise RuntimeError(f"expected welcome, got {welcome}")
        for doc in docs:
            await ws.send(quickslot_subscribe_message(doc))
        synced = 0
        while synced < len(docs):
            if msgpack.unpackb(await asyncio.wait_for(ws.recv(), 30)).get("t") == "sync":
                synced += 1
        return ws


async def _rounds(relay: ServerProcess, url: str, devices: list[Device], rounds: int) -> dict[str, Any]:
    docs = [bookings_doc(f"churn{k:04d}") for k in range(DOCS)]
    plan = [[docs[(i * SUBSCRIPTIONS + k) % DOCS] for k in range(SUBSCRIPTIONS)] for i in range(len(devices))]
    out: dict[str, Any] = {"rss_idle_mib": relay.memory()["rss"] / 2**20, "rounds": []}
    for r in range(rounds):
        started = time.monotonic()
        gate = asyncio.Semaphore(64)
        conns = await asyncio.gather(*(_open(url, d, plan[i], gate) for i, d in enumerate(devices)))
        await asyncio.sleep(1.0)
        rss_open = relay.memory()["rss"] / 2**20
        if r == rounds - 1:
            out["shutdown"] = await _sigterm(relay, conns)
            out["rounds"].append({"round": r, "rss_open_mib": rss_open})
            break
        await asyncio.gather(*(ws.close() for ws in conns))
        await asyncio.sleep(2.0)
        rss_closed = relay.memory()["rss"] / 2**20
        out["rounds"].append({"round": r, "rss_open_mib": rss_open, "rss_closed_mib": rss_closed})
        print(
            f"round {r}: {len(conns)} open {rss_open:.1f} MiB, all closed {rss_closed:.1f} MiB "
            f"({time.monotonic() - started:.1f} s)",
            flush=True,
        )
    return out


async def _sigterm(relay: ServerProcess, conns: list[ClientConnection]) -> dict[str, Any]:
    codes: dict[str, int] = {}

    async def closed(ws: ClientConnection) -> None:
        try:
            async for _ in ws:
                pass
        except websockets.ConnectionClosed:
            pass
        rcvd = ws.protocol.close_rcvd
        key = str(rcvd.code if rcvd else None)
        codes[key] = codes.get(key, 0) + 1

    waiters = [asyncio.create_task(closed(ws)) for ws in conns]
    assert relay.proc is not None
    started = time.monotonic()
    relay.proc.send_signal(signal.SIGTERM)
    await asyncio.wait_for(asyncio.gather(*waiters), 60)
    all_closed = time.monotonic() - started
    code = await asyncio.get_running_loop().run_in_executor(None, relay.proc.wait, 60)
    result = {
        "held": len(conns),
        "all_closed_s": round(all_closed, 2),
        "exit_code": code,
        "exit_s": round(time.monotonic() - started, 2),
        "close_codes": codes,
    }
    print(f"SIGTERM with {len(conns)} held: {result}", flush=True)
    return result


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.load.churn", description=__doc__)
    p.add_argument("--connections", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    raise_open_files(args.connections * 2 + 512)
    args.out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    relay_argv = [
        sys.executable, "-m", "relay.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
        "--data", str(args.out / "relay-data"), "--log-level", "WARNING", *FAST_HASH_ARGS, *AUTH_LIMIT_ARGS,
    ]  # fmt: skip
    relay = ServerProcess(
        "relay", relay_argv, port=port, cwd=REPO, env=_env(), log_path=args.out / "relay.log"
    )
    try:
        relay.start()
        _wait_healthy(relay)
        devices = create_devices(f"http://127.0.0.1:{port}", args.connections)
        result = asyncio.run(_rounds(relay, f"ws://127.0.0.1:{port}/api/v1/sync", devices, args.rounds))
    finally:
        relay.stop()
        shutil.rmtree(args.out / "relay-data", ignore_errors=True)
    result["command"] = " ".join(["python -m benchmarks.load.churn", *argv])
    closed = [r["rss_closed_mib"] for r in result["rounds"] if "rss_closed_mib" in r]
    if len(closed) >= 2:
        per_round = (closed[-1] - closed[0]) / (len(closed) - 1)
        result["closed_rss_growth_kib_per_connection_round"] = round(per_round * 1024 / args.connections, 2)
    (args.out / "churn.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "rounds"}, indent=1))
    shutdown = result.get("shutdown", {})
    return (
        0
        if shutdown.get("exit_code") == 0 and shutdown.get("close_codes") == {"1001": args.connections}
        else 1
    )


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
