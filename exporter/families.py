"""Metric families as prometheus_client's custom collectors build them, without importing it.

``GaugeMetricFamily``, ``CounterMetricFamily``, ``Metric`` and ``Sample`` have prometheus_client's
names, arguments and attributes, so its encoders and parser take these families as they are (the
tests hold our exposition byte for byte to its encoders through exactly that). They live here
because importing ``prometheus_client`` at all imports its HTTP server, WSGI app, push gateway
client and ``ssl`` with it: 7 MiB of a 33 MiB exporter (``docs/performance.md``). Names and label
names are checked here once per family (letters, digits and ``_``, as every metric of ours is), so
the encoders need not escape them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, NamedTuple

_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
"""Metric and label names: no colons (Prometheus keeps those for recording rules)."""
TYPES = frozenset({"gauge", "counter", "unknown"})
"""The family types written here; the encoders hand any other to prometheus_client."""


class Sample(NamedTuple):
    """prometheus_client's ``Sample``: the fields its encoders read."""

    name: str
    labels: dict[str, str]
    value: float
    timestamp: float | None = None
    exemplar: Any = None
    native_histogram: Any = None


class Metric:
    """One family and its samples (prometheus_client's ``Metric``)."""

    __slots__ = ("documentation", "name", "samples", "type", "unit")

    def __init__(self, name: str, documentation: str, typ: str, unit: str = "") -> None:
        if not _NAME.fullmatch(name):
            raise ValueError(f"invalid metric name: {name!r}")
        if typ not in TYPES:
            raise ValueError(f"invalid metric type: {typ!r}")
        if unit:
            raise ValueError(f"{name}: units are not written here (the name carries the base unit)")
        self.name = name
        self.documentation = documentation
        self.type = typ
        self.unit = ""
        self.samples: list[Sample] = []

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


class _LabelledFamily(Metric):
    __slots__ = ("_labelnames", "_sample_name")

    def __init__(
        self,
        name: str,
        documentation: str,
        typ: str,
        sample_name: str,
        value: float | None,
        labels: Sequence[str] | None,
    ) -> None:
        super().__init__(name, documentation, typ)
        if labels is not None and value is not None:
            raise ValueError("Can only specify at most one of value and labels.")
        self._labelnames = tuple(labels or ())
        for label in self._labelnames:
            if not _NAME.fullmatch(label) or label.startswith("__"):
                raise ValueError(f"{name}: invalid label name: {label!r}")
        self._sample_name = sample_name
        if value is not None:
            self.add_metric([], value)

    def add_metric(self, labels: Sequence[str], value: float) -> None:
        """One sample: the label values in the order of the family's label names."""
        self.samples.append(
            Sample(self._sample_name, dict(zip(self._labelnames, labels, strict=True)), value)
        )


class GaugeMetricFamily(_LabelledFamily):
    """A gauge family (prometheus_client's ``GaugeMetricFamily``)."""

    __slots__ = ()

    def __init__(
        self, name: str, documentation: str, value: float | None = None, labels: Sequence[str] | None = None
    ) -> None:
        super().__init__(name, documentation, "gauge", name, value, labels)


class CounterMetricFamily(_LabelledFamily):
    """A counter family: ``name`` without ``_total``, its samples with it (as prometheus_client's)."""

    __slots__ = ()

    def __init__(
        self, name: str, documentation: str, value: float | None = None, labels: Sequence[str] | None = None
    ) -> None:
        name = name.removesuffix("_total")
        super().__init__(name, documentation, "counter", name + "_total", value, labels)
