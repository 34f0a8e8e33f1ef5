"""A client's malformed text frames cannot fill the relay's error log (found by the fuzzing).

uvicorn reports every text frame with invalid UTF-8 as an error with a traceback; the relay folds
those reports into one short warning per interval. In process for the filter's rule, and through a
real relay process for the whole path (uvicorn's logger, the JSON handler, the log file).
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

from relay.ops.logging import ClientFaultFilter
from tests.fuzz.cases import FrameSpec
from tests.fuzz.conn import FuzzConn
from tests.support.relay_process import GENEROUS_LIMITS, RelayProcess
from tests.support.sync_helpers import new_account

UVICORN_MESSAGE = "Invalid UTF-8 sequence received from client."


def _record(msg: str) -> logging.LogRecord:
    try:
        b"\xff".decode()
    except UnicodeDecodeError:
        import sys

        exc_info = sys.exc_info()
    return logging.LogRecord("uvicorn.error", logging.ERROR, __file__, 1, msg, (), exc_info)


def test_the_filter_folds_reports_into_one_short_warning_per_interval() -> None:
    now = [100.0]
    f = ClientFaultFilter(interval_s=10.0, clock=lambda: now[0])
    first = _record(UVICORN_MESSAGE)
    assert f.filter(first)
    assert first.levelno == logging.WARNING and first.exc_info is None
    assert first.__dict__["frames"] == 1
    assert [f.filter(_record(UVICORN_MESSAGE)) for _ in range(50)] == [False] * 50
    now[0] += 10.0
    later = _record(UVICORN_MESSAGE)
    assert f.filter(later) and later.__dict__["frames"] == 51  # the 50 folded ones, and this one
    other = _record("Exception in ASGI application\n")
    assert f.filter(other) and other.levelno == logging.ERROR and other.exc_info is not None


async def test_invalid_utf8_text_frames_leave_one_line_in_the_relays_log(tmp_path: Path) -> None:
    with RelayProcess(tmp_path / "data", *GENEROUS_LIMITS) as relay:
        with relay.client() as http:
            account = new_account(relay, http)
        url = relay.base_url.replace("http", "ws", 1) + "/api/v1/sync"
        for i in range(40):
            conn = await FuzzConn.open(url, account.access, f"utf8-{i}", key=account.author.device.private)
            assert conn.write_raw((FrameSpec(0x1, b"\xff\xfe not text"),))
            code, _ = await asyncio.wait_for(conn.closed, 10)
            assert code == 1007
            await conn.close()
        lines = [json.loads(x) for x in relay.log_text().splitlines() if x.startswith("{")]
    reports = [x for x in lines if "UTF-8" in str(x.get("event", ""))]
    assert 1 <= len(reports) <= 2, reports
    assert all(x["level"] == "warning" and "exc" not in x for x in reports), reports
    assert sum(x.get("frames", 0) for x in reports) >= 1
