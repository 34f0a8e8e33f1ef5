"""The metrics registry's Prometheus text output, and the log scrubber."""

from __future__ import annotations

import io
import json
import logging

import pytest

from relay.ops.logging import JsonFormatter, configure_logging, log_event, scrub
from relay.ops.metrics import MetricsRegistry


def test_counter_gauge_histogram_render() -> None:
    reg = MetricsRegistry()
    c = reg.counter("relay_things_total", "Things\nthat happened", ["kind"])
    c.labels(kind="a").inc()
    c.labels("a").inc(2)
    c.labels(kind='we"ird\\').inc()
    g = reg.gauge("relay_open", "Open things")
    g.inc(3)
    g.dec()
    fn = reg.gauge("relay_loaded", "Computed at scrape")
    fn.set_function(lambda: 7)
    h = reg.histogram("relay_latency_seconds", "Latency", buckets=(0.1, 1.0))
    h.observe(0.05)
    h.observe(0.5)
    h.observe(5)
    text = reg.render()
    assert "# HELP relay_things_total Things\\nthat happened\n# TYPE relay_things_total counter\n" in text
    assert 'relay_things_total{kind="a"} 3\n' in text
    assert 'relay_things_total{kind="we\\"ird\\\\"} 1\n' in text
    assert "relay_open 2\n" in text
    assert "relay_loaded 7\n" in text
    assert 'relay_latency_seconds_bucket{le="0.1"} 1\n' in text
    assert 'relay_latency_seconds_bucket{le="1"} 2\n' in text
    assert 'relay_latency_seconds_bucket{le="+Inf"} 3\n' in text
    assert "relay_latency_seconds_sum 5.55\n" in text
    assert "relay_latency_seconds_count 3\n" in text


def test_registry_is_idempotent_and_strict() -> None:
    reg = MetricsRegistry()
    a = reg.counter("relay_x_total", "x", ["r"])
    assert reg.counter("relay_x_total", "x", ["r"]) is a
    assert reg.get("relay_x_total") is a
    with pytest.raises(ValueError):
        reg.gauge("relay_x_total", "x", ["r"])
    with pytest.raises(ValueError):
        reg.counter("relay_x_total", "x", ["other"])
    with pytest.raises(ValueError):
        reg.counter("bad name", "x")
    with pytest.raises(ValueError):
        a.inc()  # labelled metric needs labels
    with pytest.raises(ValueError):
        a.labels(r="1").inc(-1)
    with pytest.raises(ValueError):
        a.labels(nope="1")


def test_histogram_timer() -> None:
    reg = MetricsRegistry()
    h = reg.histogram("relay_t_seconds", "t", ["op"])
    with h.labels(op="x").time():
        pass
    assert 'relay_t_seconds_count{op="x"} 1' in reg.render()


def test_scrub_masks_secrets() -> None:
    token = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ1In0.c2lnbmF0dXJl"
    assert scrub({"password": "p", "refresh_token": "t", "user_id": "u"}) == {
        "password": "[redacted]",
        "refresh_token": "[redacted]",
        "user_id": "u",
    }
    assert token not in scrub(f"GET /api/v1/sync?token={token}")


def test_json_log_lines() -> None:
    stream = io.StringIO()
    configure_logging("INFO", stream)
    try:
        log = logging.getLogger("relay.test")
        log_event(log, "login", user_id="u1", password="hunter2", message="m")
        logging.getLogger("uvicorn.access").info('%s "%s"', "1.2.3.4", "GET /x?t=eyJabcdefg.eyJhijklmn.sig")
    finally:
        logging.getLogger().handlers.clear()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines[0]["event"] == "login" and lines[0]["user_id"] == "u1"
    assert lines[0]["password"] == "[redacted]" and lines[0]["message_"] == "m"
    assert "eyJ" not in lines[1]["event"]
    assert JsonFormatter().format(logging.makeLogRecord({"msg": "x"})).startswith("{")
