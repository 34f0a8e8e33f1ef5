"""Checks the benchmark harness tests share: every subject of a tiny run measured, and sane."""

from __future__ import annotations

from typing import Any


def assert_every_subject_measured(data: dict[str, Any], subjects: dict[str, set[str]]) -> None:
    """Each workload of ``subjects`` reported exactly those subjects, each ``ok`` with positive samples."""
    for workload, names in subjects.items():
        rows = [r for r in data["results"] if r["workload"] == workload]
        assert {r["subject"] for r in rows} == names
        for r in rows:
            assert r["status"] == "ok", (workload, r["subject"], r["note"])
            assert r["samples"] and all(s > 0 for s in r["samples"])
