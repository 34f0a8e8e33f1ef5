"""The editing traces the benchmarks replay are in the repository, with their attribution, so
`make bench-quick` works in any clone (``benchmarks/data/``)."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from benchmarks import traces


def test_the_traces_are_vendored_with_their_license(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QUICKSLOT_BENCH_DATA", raising=False)
    directory = traces.data_dir()
    assert directory == Path(traces.__file__).resolve().parent / "data"
    for name in (*traces.SEQUENTIAL, *traces.CONCURRENT):
        with gzip.open(directory / f"{name}.json.gz", "rb") as f:
            assert f.read(1) == b"{"
    readme = (directory / "README.md").read_text(encoding="utf-8")
    assert "CC BY 4.0" in readme and "josephg/editing-traces" in readme and "Kleppmann" in readme
