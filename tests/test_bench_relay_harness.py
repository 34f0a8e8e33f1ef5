"""The relay benchmark suite itself: a tiny run must start real servers and produce sane output.

Why a test: the relay suite starts processes, installs a Node baseline and drives websocket
clients from worker processes; any refactor of the relay (flags, protocol, the hub's pieces the
direct server reuses) could silently break it ("so the harness itself cannot silently
break"). This asserts structure and sanity, never a time. QuickSlot's own lanes always run; the
baseline checks skip, with the reason, where Node/npm or pycrdt-websocket cannot be had.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import websockets
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from benchmarks.harness import Progress, RunConfig
from benchmarks.relay_bench import experiments as ex, servers
from benchmarks.relay_bench.node import NodeUnavailable
from benchmarks.relay_bench.payloads import (
    YJS_UPDATE,
    YjsWriter,
    marker,
    marker_of,
    parse_marker,
    read_varuint,
    varuint,
    yjs_message,
    yjs_payload,
)
from benchmarks.relay_bench.table import headline
from benchmarks.report import load_run
from benchmarks.runner import run
from benchmarks.suites import SUITES, relay as relay_suite
from crdt_core.authoring import Author
from crdt_core.messages import decode
from crdt_core.pop import SYNC, proof_headers

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
QUICKSLOT_LANES = (servers.QUICKSLOT, servers.DIRECT)
FANOUT_ONLY = (servers.BATCHED,)


#: The tiny run is split in two modules, this one (the floor and fan-out, whose fleet has every
#: lane) and ``test_bench_relay_harness_docs.py`` (the rest), so ``make test`` runs the halves on
#: two workers at once; together they run every workload of the suite (checked there).
WORKLOADS = ("cost_floor", "fanout_cpu", "fanout_throughput", "fanout_p50", "fanout_p99")


def run_tiny(
    tmp_path_factory: pytest.TempPathFactory, workloads: tuple[str, ...]
) -> tuple[Path, dict[str, Any], str]:
    assert "relay" in SUITES
    out = tmp_path_factory.mktemp("relay-bench")
    stream = io.StringIO()
    config = RunConfig(
        suites=("relay",), scale="tiny", repeat=1, workloads=workloads, command="test relay tiny"
    )
    data = run(config, out, Progress(stream=stream))
    return out, data, stream.getvalue()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], str]:
    return run_tiny(tmp_path_factory, WORKLOADS)


def _rows(data: dict[str, Any], subject: str) -> list[dict[str, Any]]:
    return [r for r in data["results"] if r["subject"] == subject]


def test_every_workload_ran_quickslot_and_its_lanes(tiny_run: tuple[Path, dict[str, Any], str]) -> None:
    _, data, _ = tiny_run
    selected = data["config"]["workloads"]
    names = [w.name for w in relay_suite.workloads({}) if w.name in selected]
    assert list(data["workloads"]) == names == list(selected)
    for r in data["results"]:
        assert r["status"] != "error", (r["workload"], r["subject"], r["note"])
    for name in names:
        lanes: tuple[str, ...] = (servers.QUICKSLOT,)
        if name == "cost_floor":  # the in-run floor: a library per row, not a server
            lanes = ("cryptography verify", "cryptography sign")
        elif name.startswith("docs"):
            lanes = QUICKSLOT_LANES
        elif name.startswith("fanout"):
            lanes = QUICKSLOT_LANES + FANOUT_ONLY
        for lane in lanes:
            (row,) = [r for r in data["results"] if r["workload"] == name and r["subject"] == lane]
            assert row["status"] == "ok", (name, lane, row["note"])
            assert row["samples"] and all(s > 0 and math.isfinite(s) for s in row["samples"])
            assert row["stats"]["p99"] >= row["stats"]["p50"] > 0


def test_fanout_rounds_delivered_everything_and_measured_the_server(
    tiny_run: tuple[Path, dict[str, Any], str],
) -> None:
    _, data, _ = tiny_run
    for r in data["results"]:
        if r["workload"] != "fanout_cpu" or r["status"] != "ok":
            continue
        shape = r["extra"]["shape"]
        assert shape["deliveries"] == shape["clients"] * shape["updates_per_client"] * (shape["clients"] - 1)
        for rnd in r["extra"]["rounds"]:
            assert rnd["complete"] and rnd["deliveries"] == rnd["expected_deliveries"] == shape["deliveries"]
            assert rnd["server_cpu_s"] > 0 and rnd["peak_rss"] > 10 * 2**20
            assert rnd["bytes_sent"] > 0 and rnd["bytes_recv"] > rnd["bytes_sent"]
            assert 0 < rnd["latency"]["p50"] <= rnd["latency"]["p99"] < 30
            assert "kept" not in rnd["latency"]
            assert rnd["notes"] == []
    (p50,) = [
        r for r in data["results"] if r["workload"] == "fanout_p50" and r["subject"] == servers.QUICKSLOT
    ]
    assert 0 < len(p50["extra"]["latency_samples"]) <= ex.LATENCY_SAMPLES_KEPT


def test_json_markdown_plots_and_headline_table(tiny_run: tuple[Path, dict[str, Any], str]) -> None:
    out, data, progress = tiny_run
    saved = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert saved["config"]["suites"] == ["relay"] and saved["config"]["scale"] == "tiny"
    assert saved["machine"]["cpu_count"] and "load_average" in saved["machine"]
    assert len(saved["targets"]) == len(relay_suite.TARGETS)
    assert all(t["met"] is None for t in saved["targets"])  # tiny sizes never judge a target
    summary = (out / "summary.md").read_text(encoding="utf-8")
    for name, meta in data["workloads"].items():
        assert meta["title"] in summary
        assert (out / f"{name}.png").read_bytes()[:8] == PNG_MAGIC
        assert f"relay/{name} n=" in progress
    assert "round 1/1" in progress
    if "fanout_cpu" in data["workloads"]:
        assert "fan-out n=" in progress
    table = headline(load_run(out))
    if "fanout_cpu" in data["workloads"]:
        assert "### Fan-out" in table
    if "idle_memory" in data["workloads"]:
        assert "### Memory per idle loaded document" in table
    assert servers.QUICKSLOT in table and servers.DIRECT in table


def _baseline_or_skip(data: dict[str, Any], subject: str) -> list[dict[str, Any]]:
    rows = _rows(data, subject)
    assert rows, subject
    unavailable = [r for r in rows if r["status"] == "unsupported"]
    if unavailable:
        assert all(r["note"].startswith("unavailable: ") for r in unavailable)
        pytest.skip(f"{subject} {unavailable[0]['note']}")
    return rows


def test_y_websocket_baseline_ran_and_ratios_use_it(tiny_run: tuple[Path, dict[str, Any], str]) -> None:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("y-websocket baseline needs node and npm on PATH")
    _, data, _ = tiny_run
    rows = _baseline_or_skip(data, servers.Y_WEBSOCKET)
    assert "@y/websocket-server" in rows[0]["extra"]["version"]
    ratios = {(r["workload"], r["subject"]): r for r in data["ratios"]}
    for row in rows:
        name = row["workload"]
        assert data["workloads"][name]["baseline"] == servers.Y_WEBSOCKET
        if row["status"] != "ok":
            # At tiny N Node's heap can shrink while the documents or connections load: no
            # growth is no measurement, said so, and no ratio is taken against it.
            assert row["metric"] == "bytes" and row["note"].startswith("no RSS growth measured"), row
            assert (name, servers.QUICKSLOT) not in ratios
            continue
        if not any(row["samples"]):
            # Node may spend no CPU at all over a short idle period (no timers due, nothing on the
            # sockets): a true zero, and no ratio can be taken against it, so none is reported.
            assert row["metric"] == "time", row
            assert ratios[(name, servers.Y_WEBSOCKET)]["ratio"] is None
            assert ratios[(name, servers.QUICKSLOT)]["ratio"] is None
            continue
        assert ratios[(name, servers.Y_WEBSOCKET)]["ratio"] == 1.0
        quick = ratios[(name, servers.QUICKSLOT)]["ratio"]
        assert quick is not None and quick > 0 and math.isfinite(quick)
    # The run measured most of it: a baseline that never yields a ratio is not a baseline.
    assert sum(r["status"] == "ok" and any(r["samples"]) for r in rows) >= len(rows) - 2


def test_pycrdt_websocket_baseline_ran(tiny_run: tuple[Path, dict[str, Any], str]) -> None:
    _, data, _ = tiny_run
    rows = _baseline_or_skip(data, servers.PYCRDT_WEBSOCKET)
    assert all(r["status"] == "ok" for r in rows), [(r["workload"], r["note"]) for r in rows]
    assert rows[0]["extra"]["version"].startswith("pycrdt-websocket ")


async def _negotiated_extensions(url: str, token: str, key: Ed25519PrivateKey) -> tuple[list[str], str]:
    """The extensions the relay accepted, and the type of its first message (``welcome``: the
    suite's bound token and its proof of possession are accepted)."""
    headers = proof_headers(token, key, SYNC)
    async with websockets.connect(url, additional_headers=headers, compression="deflate") as ws:
        first = await asyncio.wait_for(ws.recv(), 10)
        assert isinstance(first, bytes)
        return [ext.name for ext in ws.protocol.extensions], decode(first).TYPE


def test_a_missing_baseline_is_reported_unavailable_and_quickslot_still_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_node(cache: Path, timeout: float = 0) -> Path:
        raise NodeUnavailable("node and npm are not both on PATH")

    monkeypatch.setattr(servers, "ensure_y_websocket", no_node)
    with servers.Fleet(tmp_path, (servers.QUICKSLOT, servers.Y_WEBSOCKET)) as fleet:
        assert fleet.unavailable == {servers.Y_WEBSOCKET: "node and npm are not both on PATH"}
        assert list(fleet.lanes) == [servers.QUICKSLOT]
        assert fleet.relay is not None and fleet.relay.process.alive()
        (identity,) = fleet.relay.ensure_identities(1)
        assert identity.access
        # The relay refuses permessage-deflate although the client offers it (relay/cli/commands.py), so
        # the suite's clients, which offer it like browsers do, measure what deployed clients get.
        assert isinstance(identity.author, Author)
        key = identity.author.device.private
        assert asyncio.run(_negotiated_extensions(fleet.relay.url(""), identity.access, key)) == (
            [],
            "welcome",
        )
    assert fleet.exit_codes[servers.QUICKSLOT] == 0  # stopped by PID with SIGTERM, cleanly


def test_an_incomplete_fanout_is_reported_as_diverged_not_timed() -> None:
    config = RunConfig(suites=("relay",), scale="tiny", repeat=1)
    shape = ex.FanoutShape(4, 5, 10.0)
    done = {
        "complete": True, "deliveries": 60, "expected_deliveries": 60, "throughput_per_s": 100.0,
        "offered_per_s": 120.0, "server_cpu_s": 0.1, "cpu_per_delivery_s": 0.1 / 60, "peak_rss": 1,
        "bytes_sent": 1, "bytes_recv": 2, "update_bytes_median": 300, "notes": [],
        "latency": {"n": 60, "p50": 0.001, "p99": 0.002},
    }  # fmt: skip
    lost = {**done, "complete": False, "deliveries": 41, "notes": ["2 connections closed by the server"]}
    fake = relay_suite.FanoutRun(shape, rounds={servers.QUICKSLOT: [lost], servers.Y_WEBSOCKET: [done]})
    fake.unavailable = {n: "not in this test" for n in relay_suite.FANOUT_LANES if n not in fake.rounds}
    config.__dict__["_relay_experiments"] = {("fanout", 4): fake}
    (cpu,) = [w for w in relay_suite.workloads({}) if w.name == "fanout_cpu"]
    rows = {r.subject: r for r in cpu.run(4, config, Progress(enabled=False))}
    assert rows[servers.QUICKSLOT].status == "diverged" and rows[servers.QUICKSLOT].samples == []
    assert "41 of 60" in rows[servers.QUICKSLOT].note
    assert rows[servers.Y_WEBSOCKET].status == "ok" and rows[servers.Y_WEBSOCKET].samples == [0.1 / 60]
    assert rows[servers.PYCRDT_WEBSOCKET].status == "unsupported"


def test_markers_and_yjs_framing_round_trip() -> None:
    mark = marker(123, 45_678).encode()
    assert parse_marker(b"xx" + mark + b"yy", 2) == (123, 45_678)
    for n in (0, 1, 127, 128, 300, 2**21 + 5):
        assert read_varuint(varuint(n) + b"\xff", 0) == (n, len(varuint(n)))
    update = b"\x01\x02" + mark + b"\x00" * 300
    message = yjs_message(YJS_UPDATE, update)
    assert message[:2] == b"\x00\x02" and yjs_payload(message) == update
    writer = YjsWriter(client_id=7, value_size=300)
    assert marker_of(writer.update(9, 3)) == (9, 3)


def test_postgresql_lane_ran_beside_sqlite_with_a_ratio(tiny_run: tuple[Path, dict[str, Any], str]) -> None:
    """One node on PostgreSQL against one node on SQLite, in the same run (docs/operations.md)."""
    from tests.support.servers.postgres import unavailable_reason

    _, data, _ = tiny_run
    rows = {r["workload"]: r for r in _rows(data, servers.QUICKSLOT_PG)}
    lanes_workloads = {"fanout_cpu", "fanout_throughput", "docs_throughput", "docs_cpu"}
    assert lanes_workloads & set(data["workloads"]) <= set(rows)
    reason = unavailable_reason()
    for name, row in rows.items():
        if reason is not None:
            assert row["status"] == "unsupported" and reason in row["note"], (name, row["note"])
            continue
        assert row["status"] == "ok", (name, row["note"])
        assert "x quickslot on SQLite" in row["note"] and "PostgreSQL server CPU" in row["note"], row["note"]
        assert row["samples"] and all(s > 0 and math.isfinite(s) for s in row["samples"])


def test_three_node_lane_ran_in_fan_out(tiny_run: tuple[Path, dict[str, Any], str]) -> None:
    """Three nodes behind HAProxy take part in fan-out (docs/operations.md); at the tiny scale the
    many-documents workload leaves the lane out, to keep the harness test short."""
    _, data, _ = tiny_run
    rows = {r["workload"]: r for r in _rows(data, servers.QUICKSLOT_CLUSTER)}
    assert {"fanout_cpu", "fanout_throughput"} <= set(rows)
    assert not any(name.startswith("docs") for name in rows)
    for name, row in rows.items():
        assert row["status"] in ("ok", "unsupported"), (name, row["note"])
        if row["status"] == "ok":
            assert "one node on PostgreSQL" in row["note"], row["note"]
            assert row["samples"] and all(s > 0 and math.isfinite(s) for s in row["samples"])


def test_samework_hocuspocus_ran_and_quickslot_rows_carry_the_ratio(
    tiny_run: tuple[Path, dict[str, Any], str],
) -> None:
    """Target 3: the same-work Hocuspocus runs in fan-out and many documents, and QuickSlot's row
    of each of those tables states its ratio to it (tests/test_hocuspocus_samework.py checks that
    the server really verifies)."""
    _, data, _ = tiny_run
    rows = _baseline_or_skip(data, servers.HOCUSPOCUS_SAME)
    assert {r["workload"] for r in rows} == {
        name for name in data["workloads"] if name.startswith(("fanout", "docs"))
    }
    assert all(r["status"] == "ok" for r in rows), [(r["workload"], r["note"]) for r in rows]
    assert "@hocuspocus/extension-sqlite 3.4.4" in rows[0]["extra"]["version"]
    for row in rows:
        (ours,) = [
            r
            for r in _rows(data, servers.QUICKSLOT)
            if r["workload"] == row["workload"] and r["size"] == row["size"]
        ]
        assert "x hocuspocus same-work" in ours["note"], ours["note"]
