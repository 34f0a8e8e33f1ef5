"""A Prometheus histogram read from a server's ``/metrics`` text, before and after a phase.

Why: target 4 compares QuickSlot's fan-out p99 with y-websocket's plus "the commit latency p99
that the relay's own metric shows in that run". The relay exports its group commits as the
histogram ``quickslot_commit_latency_seconds``; two scrapes around the phase give the commits of
that phase alone (bucket counts subtract), and :func:`quantile` estimates a percentile from them
the way PromQL's ``histogram_quantile`` does (linear inside the bucket that holds it), beside the
bucket's upper bound (:func:`quantile_upper`), which no estimate can exceed.
"""

from __future__ import annotations

import math
import urllib.request
from collections.abc import Collection

COMMIT_LATENCY = "quickslot_commit_latency_seconds"

Buckets = list[tuple[float, float]]
"""(upper bound ``le``, cumulative count), ascending, ending with +Inf."""


def scrape(base_url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(f"{base_url}/metrics", timeout=timeout) as r:  # noqa: S310 (loopback)
        return str(r.read().decode())


def values(text: str, names: Collection[str]) -> dict[str, float]:
    """The unlabelled samples named in ``names`` (those present)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(" ")
        if name in names and rest:
            out[name] = float(rest.split()[0])
    return out


def buckets(text: str, name: str) -> Buckets:
    """The cumulative buckets of the unlabelled histogram ``name`` (empty if absent)."""
    prefix = name + '_bucket{le="'
    out = []
    for line in text.splitlines():
        if line.startswith(prefix):
            le, _, rest = line[len(prefix) :].partition('"}')
            out.append((math.inf if le == "+Inf" else float(le), float(rest.split()[0])))
    return sorted(out)


def delta(after: Buckets, before: Buckets) -> Buckets:
    """The observations made between two scrapes of one histogram."""
    old = dict(before)
    return [(le, count - old.get(le, 0.0)) for le, count in after]


def count(b: Buckets) -> float:
    return b[-1][1] if b else 0.0


def quantile(b: Buckets, q: float) -> float | None:
    """``histogram_quantile(q)``: linear inside the bucket holding rank q x count; a rank in the
    +Inf bucket gives the highest finite bound (as PromQL does). None without observations."""
    total = count(b)
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for le, cum in b:
        if cum >= rank:
            if math.isinf(le):
                return lower
            inside = cum - below
            return lower + (le - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = le, cum
    return lower


def quantile_upper(b: Buckets, q: float) -> float | None:
    """The upper bound of the bucket holding rank q x count (inf if it is the +Inf bucket)."""
    total = count(b)
    if total <= 0:
        return None
    return next(le for le, cum in b if cum >= q * total)
