"""crdt_core.b64: the one base64url codec (keys, certificates, proofs, cursors)."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from crdt_core.b64 import b64url, b64url_decode


@given(st.binary(max_size=64))
def test_round_trip_unpadded(data: bytes) -> None:
    text = b64url(data)
    assert "=" not in text
    assert b64url_decode(text) == data


def test_padding_is_optional() -> None:
    assert b64url_decode("YQ") == b64url_decode("YQ==") == b"a"
    assert b64url(b"\xfb\xff") == "-_8"


@pytest.mark.parametrize(
    "junk",
    [
        "a$bc",  # a decoder that skips junk would read this as "abc"
        "ab+/",  # the standard alphabet is another encoding
        "ab=c",  # padding only at the end
        "abcde",  # an impossible length
        "é",
    ],
)
def test_junk_is_refused(junk: str) -> None:
    with pytest.raises(ValueError, match="not base64url"):
        b64url_decode(junk)


def test_non_text_is_refused() -> None:
    with pytest.raises(ValueError):
        b64url_decode(b"YQ")  # type: ignore[arg-type]
