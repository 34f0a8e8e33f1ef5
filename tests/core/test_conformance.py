"""The conformance corpus (``conformance/``): it is what a fresh build gives, crdt_core passes every
case read back from the files, and the worked examples in the docs are corpus cases."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from crdt_core import conformance
from crdt_core.clientids import client_id_for
from crdt_core.errors import SchemaError
from crdt_core.hlc import Timestamp

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "conformance"
DOCS = ("docs/records.md", "docs/protocol.md")


def load(name: str) -> Any:
    return json.loads((CORPUS / name).read_text(encoding="utf-8"))


def cases(name: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = load(name)["cases"]
    return found


@pytest.fixture(scope="module")
def fresh() -> dict[str, str]:
    return conformance.build_corpus()


def test_checked_in_corpus_is_a_fresh_build(fresh: dict[str, str]) -> None:
    on_disk = {p.name for p in CORPUS.glob("*.json")}
    assert on_disk == set(fresh), "run: python -m tools.conformance write conformance/"
    for name, text in fresh.items():
        assert (CORPUS / name).read_text(encoding="utf-8") == text, (
            f"{name} is stale: python -m tools.conformance write conformance/"
        )


def test_manifest_counts_the_cases() -> None:
    manifest = load("manifest.json")
    for name in ("records.json", "updates.json", "messages.json", "verdicts.json"):
        assert manifest["files"][name] == len(cases(name))


@pytest.mark.parametrize("case", cases("records.json"), ids=lambda c: c["name"])
def test_record_case(case: dict[str, Any]) -> None:
    want = {k: v for k, v in case["expect"].items() if k != "parsed"}
    assert conformance.judge_record(case, load("keys.json")) == want


@pytest.mark.parametrize("case", cases("updates.json"), ids=lambda c: c["name"])
def test_update_case(case: dict[str, Any]) -> None:
    assert conformance.judge_update(case, load("keys.json")) == case["expect"]


@pytest.mark.parametrize("case", cases("messages.json"), ids=lambda c: c["name"])
def test_message_case(case: dict[str, Any]) -> None:
    assert conformance.judge_message(case) == case["expect"]


@pytest.mark.parametrize("case", cases("verdicts.json"), ids=lambda c: c["name"])
def test_verdict_case(case: dict[str, Any]) -> None:
    assert conformance.judge_verdict(case) == case["expect"]


def test_hlc_vectors() -> None:
    vectors = load("hlc.json")
    for text in vectors["valid"]:
        assert Timestamp.parse(text).encode() == text
    for text in vectors["invalid"]:
        with pytest.raises(SchemaError):
            Timestamp.parse(text)
    for pair in vectors["ordered_pairs"]:
        assert Timestamp.parse(pair["lower"]) < Timestamp.parse(pair["higher"])
        assert pair["lower"].encode() < pair["higher"].encode()  # byte order is the same order


def test_client_id_vectors() -> None:
    for entry in load("keys.json")["client_ids"]:
        assert client_id_for(entry["signer"], entry["generation"]) == entry["client_id"]


_EXAMPLE = re.compile(r"<!-- corpus: ([a-z_]+\.json)#([A-Za-z0-9_]+) -->\s*```json\n(.*?)```", re.S)


def doc_examples() -> list[tuple[str, str, str, str]]:
    found = []
    for doc in DOCS:
        text = (ROOT / doc).read_text(encoding="utf-8")
        found += [(doc, m.group(1), m.group(2), m.group(3)) for m in _EXAMPLE.finditer(text)]
    return found


def test_the_docs_have_worked_examples() -> None:
    assert len([e for e in doc_examples() if e[1] == "verdicts.json"]) >= 5


@pytest.mark.parametrize("example", doc_examples(), ids=lambda e: f"{e[0]}:{e[2]}")
def test_doc_example_is_a_corpus_case(example: tuple[str, str, str, str]) -> None:
    _, file, name, block = example
    shown = json.loads(block)
    (case,) = [c for c in cases(file) if c["name"] == name]
    assert shown == {k: v for k, v in case.items() if k in shown}, f"{name}: the doc differs from the corpus"
    assert set(shown) >= {"name", "expect"}


_CLIENT_ID = re.compile(r'client_id\("([^"]+)", (\d+)\) = (\d+)')


def test_client_ids_quoted_in_the_docs() -> None:
    quoted = [m for doc in DOCS for m in _CLIENT_ID.finditer((ROOT / doc).read_text(encoding="utf-8"))]
    assert quoted
    for m in quoted:
        assert client_id_for(m.group(1), int(m.group(2))) == int(m.group(3))
