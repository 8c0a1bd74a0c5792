"""A tiny Prometheus registry: counters, gauges and a fixed-bucket histogram, as text 0.0.4."""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping, Sequence

__all__ = ["CONTENT_TYPE", "Counter", "Gauge", "Histogram", "Registry"]

# What Prometheus expects for the text exposition format, version 0.0.4.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Seconds, from a fast local hop (a sidecar adds well under a millisecond) to a timeout.
DEFAULT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

LabelValues = tuple[str, ...]
# A callback returns the current value of each label combination, read at scrape time.
Source = Callable[[], Mapping[LabelValues, float]]


def _format_value(value: float) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _check_name(name: str) -> None:
    # The metric-name grammar of the exposition format: [a-zA-Z_:][a-zA-Z0-9_:]*
    if not name or not (name[0].isalpha() or name[0] in "_:") or not all(
        char.isascii() and (char.isalnum() or char in "_:") for char in name
    ):
        raise ValueError(f"invalid metric or label name {name!r}")


class _Metric:
    kind = ""

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str]) -> None:
        _check_name(name)
        for label in labelnames:
            _check_name(label)
            if label.startswith("__") or (label == "le" and self.kind == "histogram"):
                raise ValueError(f"label name {label!r} is reserved")
        self.name = name
        self.help = help_text
        self.labelnames = tuple(labelnames)
        self._sources: list[Source] = []

    def _labels(self, values: LabelValues, extra: str = "") -> str:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values}")
        pairs = [
            f'{name}="{_escape_label(str(value))}"' for name, value in zip(self.labelnames, values)
        ]
        if extra:
            pairs.append(extra)
        return "{" + ",".join(pairs) + "}" if pairs else ""

    def track(self, source: Source) -> Callable[[], None]:
        """Read `source()` at every scrape (values the owner keeps anyway); return an undo."""
        # A callback costs nothing per request: the proxy bumps plain ints and the registry
        # reads them only when Prometheus scrapes.
        self._sources.append(source)

        def untrack() -> None:
            if source in self._sources:
                self._sources.remove(source)

        return untrack

    def _header(self) -> list[str]:
        return [f"# HELP {self.name} {_escape_help(self.help)}", f"# TYPE {self.name} {self.kind}"]

    def _samples(self) -> dict[LabelValues, float]:
        merged: dict[LabelValues, float] = {}
        for source in list(self._sources):
            for values, value in source().items():
                merged[values] = merged.get(values, 0) + value
        return merged

    def render(self) -> list[str]:
        """This metric's lines of the text format."""
        lines = self._header()
        for values, value in sorted(self._samples().items()):
            lines.append(f"{self.name}{self._labels(values)} {_format_value(value)}")
        return lines


class _CounterChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: float = 0

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        self.value += amount


class _GaugeChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: float = 0

    def set(self, value: float) -> None:
        self.value = value

    def inc(self, amount: float = 1) -> None:
        self.value += amount

    def dec(self, amount: float = 1) -> None:
        self.value -= amount


class _ValueMetric(_Metric):
    """A metric whose label combinations each hold one number."""

    child_class: type[_CounterChild] | type[_GaugeChild]

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, labelnames)
        self._children: dict[LabelValues, _CounterChild | _GaugeChild] = {}
        self._sources.append(lambda: {key: child.value for key, child in self._children.items()})

    def labels(self, *values: str):  # type: ignore[no-untyped-def]
        """The child for one label combination; keep it to skip the lookup per event."""
        child = self._children.get(values)
        if child is None:
            self._labels(values)  # checks the arity once, not on every update
            child = self._children[values] = self.child_class()
        return child

    def remove(self, *values: str) -> None:
        """Forget one label combination (an upstream that left the config)."""
        self._children.pop(values, None)


class Counter(_ValueMetric):
    """A value that only goes up (requests, failures); reset only by a restart."""

    kind = "counter"
    child_class = _CounterChild

    def inc(self, amount: float = 1) -> None:
        """Add `amount` to the unlabelled counter."""
        self.labels().inc(amount)


class Gauge(_ValueMetric):
    """A value that goes up and down (config version, breaker open, in flight)."""

    kind = "gauge"
    child_class = _GaugeChild

    def set(self, value: float) -> None:
        """Set the unlabelled gauge."""
        self.labels().set(value)


class _HistogramChild:
    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last slot is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        # Non-cumulative counts on the hot path (one bisect, one add); rendering sums them up.
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1


class Histogram(_Metric):
    """Observations sorted into fixed buckets, rendered cumulatively with _sum and _count."""

    kind = "histogram"

    def __init__(
        self,
        name: str,
        help_text: str,
        labelnames: Sequence[str] = (),
        buckets: Iterable[float] = DEFAULT_BUCKETS,
    ) -> None:
        super().__init__(name, help_text, labelnames)
        bounds = tuple(sorted(float(bound) for bound in buckets if not math.isinf(bound)))
        if not bounds or len(set(bounds)) != len(bounds):
            raise ValueError("a histogram needs distinct, finite bucket bounds")
        self.bounds = bounds
        self._children: dict[LabelValues, _HistogramChild] = {}

    def labels(self, *values: str) -> _HistogramChild:
        """The histogram for one label combination."""
        child = self._children.get(values)
        if child is None:
            self._labels(values)
            child = self._children[values] = _HistogramChild(self.bounds)
        return child

    def observe(self, value: float) -> None:
        """Record one observation in the unlabelled histogram."""
        self.labels().observe(value)

    def render(self) -> list[str]:
        lines = self._header()
        for values, child in sorted(self._children.items()):
            cumulative = 0
            for bound, count in zip((*self.bounds, math.inf), child.counts):
                cumulative += count
                le = f'le="{_format_value(bound)}"'
                lines.append(f"{self.name}_bucket{self._labels(values, le)} {cumulative}")
            lines.append(f"{self.name}_sum{self._labels(values)} {_format_value(child.sum)}")
            lines.append(f"{self.name}_count{self._labels(values)} {child.count}")
        return lines


class Registry:
    """The metrics of one process; `render()` is what `/metrics` serves."""

    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}

    def _get(self, cls: type[_Metric], name: str, help_text: str, labelnames: Sequence[str],
             **extra: object) -> _Metric:
        # Get-or-create: the node agent builds one proxy per app, and each of them asks for
        # the same metric; they share it and tell themselves apart by a label.
        existing = self._metrics.get(name)
        if existing is not None:
            if type(existing) is not cls or existing.labelnames != tuple(labelnames):
                raise ValueError(f"metric {name} already registered with another type or labels")
            return existing
        metric = cls(name, help_text, labelnames, **extra)  # type: ignore[arg-type]
        self._metrics[name] = metric
        return metric

    def counter(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> Counter:
        """Return the counter called `name`, creating it on first use."""
        return self._get(Counter, name, help_text, labelnames)  # type: ignore[return-value]

    def gauge(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> Gauge:
        """Return the gauge called `name`, creating it on first use."""
        return self._get(Gauge, name, help_text, labelnames)  # type: ignore[return-value]

    def histogram(
        self,
        name: str,
        help_text: str,
        labelnames: Sequence[str] = (),
        buckets: Iterable[float] = DEFAULT_BUCKETS,
    ) -> Histogram:
        """Return the histogram called `name`, creating it on first use."""
        return self._get(  # type: ignore[return-value]
            Histogram, name, help_text, labelnames, buckets=tuple(buckets)
        )

    def render(self) -> str:
        """Every metric in the text exposition format 0.0.4, ending with a newline."""
        lines: list[str] = []
        for name in sorted(self._metrics):
            lines.extend(self._metrics[name].render())
        return "\n".join(lines) + "\n" if lines else ""
