"""Metric families as prometheus_client's custom collectors build them, without importing it.

``GaugeMetricFamily`` and ``CounterMetricFamily`` take prometheus_client's arguments, and every
family has its attributes (``name``, ``documentation``, ``type``, ``unit``, ``samples`` of
``Sample``), so its encoders take these families as they are (the tests hold our exposition byte
for byte to its encoders through exactly that). They live here
because importing ``prometheus_client`` at all imports its HTTP server, WSGI app, push gateway
client and ``ssl`` with it: 7 MiB of a 33 MiB exporter (``docs/performance.md``). Names and label
names are checked here once per family (letters, digits and ``_``, as every metric of ours is), so
the encoders need not escape them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
"""Metric and label names: no colons (Prometheus keeps those for recording rules)."""
TYPES = frozenset({"gauge", "counter"})
"""The family types there are here (every metric of ours is one of them)."""


class Sample(NamedTuple):
    """prometheus_client's ``Sample``: the fields its encoders read."""

    name: str
    labels: dict[str, str]
    value: float
    timestamp: float | None = None
    exemplar: Any = None
    native_histogram: Any = None


class Metric:
    """One family and its samples (prometheus_client's ``Metric``).

    A sample is kept as its label values and value (:attr:`rows`, in the order of
    :attr:`label_names`): with 100 pools a scrape makes 2,500 of them, and a ``Sample`` with a
    label dict each was a tenth of its CPU. :attr:`samples` makes prometheus_client's ``Sample``
    objects when something asks for them (its encoders, the tests).
    """

    __slots__ = ("documentation", "label_names", "name", "rows", "sample_name", "type", "unit")

    def __init__(
        self, name: str, documentation: str, typ: str, sample_name: str, label_names: Sequence[str] = ()
    ) -> None:
        if not _NAME.fullmatch(name):
            raise ValueError(f"invalid metric name: {name!r}")
        if typ not in TYPES:
            raise ValueError(f"invalid metric type: {typ!r}")
        self.label_names = tuple(label_names)
        if len(set(self.label_names)) != len(self.label_names):
            raise ValueError(f"{name}: a label name twice: {self.label_names}")
        for label in self.label_names:
            if not _NAME.fullmatch(label) or label.startswith("__"):
                raise ValueError(f"{name}: invalid label name: {label!r}")
        self.name = name
        self.documentation = documentation
        self.type = typ
        self.unit = ""
        self.sample_name = sample_name
        self.rows: list[tuple[tuple[str, ...], float]] = []

    @property
    def samples(self) -> list[Sample]:
        names, sample_name = self.label_names, self.sample_name
        return [
            Sample(sample_name, dict(zip(names, values, strict=True)), value) for values, value in self.rows
        ]

    def add_metric(self, labels: Sequence[str], value: float) -> None:
        """One sample: the label values in the order of the family's label names."""
        values = tuple(labels)
        if len(values) != len(self.label_names):
            raise ValueError(
                f"{self.name}: {len(values)} label values for {len(self.label_names)} label names"
            )
        self.rows.append((values, value))

    def add_rows(self, rows: Iterable[tuple[tuple[str, ...], float]]) -> None:
        """Many samples at once, each ``(label values, value)``: what a check with 100 pools builds
        (one call a family, not one a sample)."""
        added = list(rows)
        width = len(self.label_names)
        if any(len(values) != width for values, _ in added):
            raise ValueError(f"{self.name}: label values not {width} in every row")
        self.rows += added

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Metric) and (self.name, self.documentation, self.type, self.samples) == (
            other.name,
            other.documentation,
            other.type,
            other.samples,
        )

    __hash__ = None  # type: ignore[assignment]  # mutable, as prometheus_client's

    def __repr__(self) -> str:
        return f"Metric({self.name}, {self.documentation}, {self.type}, {self.unit}, {self.samples})"


def _add_unlabelled_value(metric: Metric, value: float | None, labels: Sequence[str] | None) -> None:
    if labels is not None and value is not None:
        raise ValueError("Can only specify at most one of value and labels.")
    if value is not None:
        metric.add_metric([], value)


class GaugeMetricFamily(Metric):
    """A gauge family (prometheus_client's ``GaugeMetricFamily``)."""

    __slots__ = ()

    def __init__(
        self, name: str, documentation: str, value: float | None = None, labels: Sequence[str] | None = None
    ) -> None:
        super().__init__(name, documentation, "gauge", name, labels or ())
        _add_unlabelled_value(self, value, labels)


class CounterMetricFamily(Metric):
    """A counter family: ``name`` without ``_total``, its samples with it (as prometheus_client's)."""

    __slots__ = ()

    def __init__(
        self, name: str, documentation: str, value: float | None = None, labels: Sequence[str] | None = None
    ) -> None:
        name = name.removesuffix("_total")
        super().__init__(name, documentation, "counter", name + "_total", labels or ())
        _add_unlabelled_value(self, value, labels)
