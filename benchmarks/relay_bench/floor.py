"""The cost floor of a validated booking, measured in the run itself: one Ed25519 verification and
one signature, with each library that can do them here.

Why in the run: a relay that verifies every record and stamps every claim cannot spend less CPU
per booking than a relay that does neither plus one verification and a share of one signature.
Those costs move with the machine (its CPU, its load from other processes), so the relay suite
measures them beside the servers, in the same run, and states its targets as ratios to them.

``cryptography`` (OpenSSL) is what crdt_core uses; PyNaCl (libsodium) is measured when it is
importable, to say what switching would buy. Figures are CPU seconds of this process
(``time.process_time``) per operation over a record-sized message (the bytes a device signs).

    python -m benchmarks.relay_bench.floor
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

#: A signed booking's message is about this long (domain prefix + msgpack of the record).
MESSAGE_BYTES = 300


def _per_op(fn: Callable[[], object], n: int) -> float:
    t0 = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - t0) / n


def measure(n: int = 2_000) -> dict[str, dict[str, float]]:
    """``{library: {"verify_s": ..., "sign_s": ...}}`` (CPU seconds per operation)."""
    msg = bytes(range(256)) + b"q" * (MESSAGE_BYTES - 256)
    key = Ed25519PrivateKey.generate()
    pub = key.public_key()
    sig = key.sign(msg)
    out = {
        "cryptography": {
            "verify_s": _per_op(lambda: pub.verify(sig, msg), n),
            "sign_s": _per_op(lambda: key.sign(msg), n),
        }
    }
    try:
        import nacl.signing  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return out
    sk = nacl.signing.SigningKey.generate()
    vk = sk.verify_key
    nsig = sk.sign(msg).signature
    out["pynacl"] = {
        "verify_s": _per_op(lambda: vk.verify(msg, nsig), n),
        "sign_s": _per_op(lambda: sk.sign(msg), n),
    }
    return out


def median_floor(
    samples: list[dict[str, dict[str, float]]], library: str = "cryptography"
) -> dict[str, float]:
    """The median verify and sign cost of ``library`` over several in-run measurements."""
    out: dict[str, float] = {}
    for what in ("verify_s", "sign_s"):
        values = sorted(s[library][what] for s in samples if library in s)
        if values:
            out[what] = values[len(values) // 2]
    return out


def main() -> None:
    res: dict[str, Any] = measure()
    print(json.dumps({lib: {k: round(v * 1e6, 1) for k, v in d.items()} for lib, d in res.items()}, indent=2))


if __name__ == "__main__":
    main()
