"""A small, dependency-free metrics registry rendered in the Prometheus text format (0.0.4).

Every relay component adds its metrics to the registry held by the app
(``app.state.relay.metrics``); ``GET /metrics`` renders it. Why not prometheus_client: one less
dependency, and the hot paths (fan-out) need an increment that costs a dict lookup and a float
add, nothing more.

Usage::

    updates = registry.counter("relay_updates_total", "Updates accepted", ["result"])
    updates.labels(result="ok").inc()
    conns = registry.gauge("relay_connections", "Open websocket connections")
    conns.inc(); conns.dec()
    registry.gauge("relay_loaded_documents", "Documents in memory").set_function(lambda: len(docs))
    commit = registry.histogram("relay_commit_seconds", "Commit latency", buckets=(0.001, 0.01, 0.1))
    with commit.time():
        ...

Asking again for a metric with the same name returns the existing one (so a component can be
restarted), provided type and label names match; otherwise it is an error. Label children are
cached, so hot code should keep the child: ``ok = updates.labels(result="ok")`` then ``ok.inc()``.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Generic, TypeVar

_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

DEFAULT_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _fmt(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")


def _label_text(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape_label(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class _CounterChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        """Add ``amount`` (must not be negative: counters only go up)."""
        if amount < 0:
            raise ValueError("counters only increase")
        self.value += amount


class _GaugeChild:
    __slots__ = ("value", "_fn")

    def __init__(self) -> None:
        self.value = 0.0
        self._fn: Callable[[], float] | None = None

    def set(self, value: float) -> None:
        self.value = float(value)

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount

    def set_function(self, fn: Callable[[], float]) -> None:
        """Compute the value at scrape time (e.g. ``len(loaded_docs)``)."""
        self._fn = fn

    def get(self) -> float:
        if self._fn is not None:
            try:
                return float(self._fn())
            except Exception:
                return math.nan
        return self.value


class _HistogramChild:
    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        # Buckets are stored non-cumulatively; rendering accumulates. A linear scan over ~14
        # bounds beats bisect's call overhead for these sizes.
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1
                break
        self.sum += value
        self.count += 1

    @contextmanager
    def time(self) -> Iterator[None]:
        """Observe the wall-clock duration of the ``with`` block, in seconds."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.observe(time.perf_counter() - start)


C = TypeVar("C", _CounterChild, _GaugeChild, _HistogramChild)


class _Metric(Generic[C]):
    kind = ""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]) -> None:
        if not _NAME.match(name):
            raise ValueError(f"invalid metric name {name!r}")
        for label in labelnames:
            if not _LABEL.match(label) or label.startswith("__") or label == "le":
                raise ValueError(f"invalid label name {label!r}")
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], C] = {}
        self._lock = threading.Lock()
        if not self.labelnames:
            self._default: C | None = self._new_child()
            self._children[()] = self._default
        else:
            self._default = None

    def _new_child(self) -> C:
        raise NotImplementedError

    def labels(self, *values: str, **kw: str) -> C:
        """Return the child for these label values (positional, or by name), creating it once."""
        if kw:
            if values:
                raise ValueError("pass label values positionally or by name, not both")
            try:
                values = tuple(str(kw[n]) for n in self.labelnames)
            except KeyError as e:
                raise ValueError(f"{self.name}: missing label {e}") from None
            if len(kw) != len(self.labelnames):
                raise ValueError(f"{self.name}: unexpected labels {sorted(set(kw) - set(self.labelnames))}")
        else:
            values = tuple(str(v) for v in values)
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}")
            with self._lock:
                child = self._children.setdefault(values, self._new_child())
        return child

    def _unlabelled(self) -> C:
        if self._default is None:
            raise ValueError(f"{self.name} has labels {self.labelnames}; call .labels(...) first")
        return self._default

    def _samples(self) -> Iterator[str]:
        raise NotImplementedError

    def render(self) -> str:
        lines = [f"# HELP {self.name} {_escape_help(self.documentation)}", f"# TYPE {self.name} {self.kind}"]
        lines.extend(self._samples())
        return "\n".join(lines) + "\n"


class Counter(_Metric[_CounterChild]):
    """A monotonically increasing count (requests, failures, bytes)."""

    kind = "counter"

    def _new_child(self) -> _CounterChild:
        return _CounterChild()

    def inc(self, amount: float = 1.0) -> None:
        self._unlabelled().inc(amount)

    def _samples(self) -> Iterator[str]:
        for values, child in list(self._children.items()):
            yield f"{self.name}{_label_text(self.labelnames, values)} {_fmt(child.value)}"


class Gauge(_Metric[_GaugeChild]):
    """A value that goes up and down (connections, loaded documents)."""

    kind = "gauge"

    def _new_child(self) -> _GaugeChild:
        return _GaugeChild()

    def set(self, value: float) -> None:
        self._unlabelled().set(value)

    def inc(self, amount: float = 1.0) -> None:
        self._unlabelled().inc(amount)

    def dec(self, amount: float = 1.0) -> None:
        self._unlabelled().dec(amount)

    def set_function(self, fn: Callable[[], float]) -> None:
        self._unlabelled().set_function(fn)

    def _samples(self) -> Iterator[str]:
        for values, child in list(self._children.items()):
            yield f"{self.name}{_label_text(self.labelnames, values)} {_fmt(child.get())}"


class Histogram(_Metric[_HistogramChild]):
    """Observations counted into cumulative buckets (latencies, sizes)."""

    kind = "histogram"

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float]
    ) -> None:
        bounds = tuple(sorted(float(b) for b in buckets if not math.isinf(b)))
        if not bounds:
            raise ValueError("a histogram needs at least one finite bucket")
        self.bounds = bounds
        super().__init__(name, documentation, labelnames)

    def _new_child(self) -> _HistogramChild:
        return _HistogramChild(self.bounds)

    def observe(self, value: float) -> None:
        self._unlabelled().observe(value)

    def time(self) -> AbstractContextManager[None]:
        """Observe the duration of the ``with`` block, in seconds."""
        return self._unlabelled().time()

    def _samples(self) -> Iterator[str]:
        for values, child in list(self._children.items()):
            cumulative = 0
            for bound, count in zip(child.bounds, child.counts, strict=True):
                cumulative += count
                labels = _label_text(self.labelnames, values, f'le="{_fmt(bound)}"')
                yield f"{self.name}_bucket{labels} {cumulative}"
            labels = _label_text(self.labelnames, values, 'le="+Inf"')
            yield f"{self.name}_bucket{labels} {child.count}"
            plain = _label_text(self.labelnames, values)
            yield f"{self.name}_sum{plain} {_fmt(child.sum)}"
            yield f"{self.name}_count{plain} {child.count}"


class MetricsRegistry:
    """Holds named metrics and renders them all for ``/metrics``."""

    def __init__(self) -> None:
        self._metrics: dict[str, Counter | Gauge | Histogram] = {}
        self._lock = threading.Lock()

    def _get_or_add(
        self,
        cls: type,
        name: str,
        factory: Callable[[], Counter | Gauge | Histogram],
        labelnames: Sequence[str],
    ) -> Counter | Gauge | Histogram:
        with self._lock:
            existing = self._metrics.get(name)
            if existing is not None:
                if type(existing) is not cls or existing.labelnames != tuple(labelnames):
                    raise ValueError(f"metric {name!r} already registered with another type or labels")
                return existing
            metric = factory()
            self._metrics[name] = metric
            return metric

    def counter(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> Counter:
        """Return the counter ``name``, creating it on first use."""
        m = self._get_or_add(Counter, name, lambda: Counter(name, documentation, labelnames), labelnames)
        assert isinstance(m, Counter)
        return m

    def gauge(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> Gauge:
        """Return the gauge ``name``, creating it on first use."""
        m = self._get_or_add(Gauge, name, lambda: Gauge(name, documentation, labelnames), labelnames)
        assert isinstance(m, Gauge)
        return m

    def histogram(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> Histogram:
        """Return the histogram ``name``, creating it on first use."""
        m = self._get_or_add(
            Histogram, name, lambda: Histogram(name, documentation, labelnames, buckets), labelnames
        )
        assert isinstance(m, Histogram)
        return m

    def get(self, name: str) -> Counter | Gauge | Histogram | None:
        """Look a metric up by name (tests and the ``stats`` command read values this way)."""
        return self._metrics.get(name)

    def render(self) -> str:
        """The whole registry in Prometheus text exposition format 0.0.4."""
        with self._lock:
            metrics = list(self._metrics.values())
        return "".join(m.render() for m in metrics)
