"""The bytes of a scrape: prometheus_client's text and OpenMetrics formats, with its escaping memoised.

prometheus_client escapes every label of every sample again on each scrape, and its OpenMetrics
encoder escapes each sample's name one character at a time: ~4 µs a sample in the text format and
~10 µs in OpenMetrics, and 100 pools make ~2,500 samples (11 and 25 ms a scrape). Here the same
library functions escape each distinct name and label set once (the sets are the same from one
scrape to the next), and plain gauge, counter and unknown families are written directly; any other
family (info, histogram, exemplars, timestamps, ``_created`` samples) is encoded by
prometheus_client itself. ``tests/test_exposition.py`` holds both byte for byte to the library's
output, on a real 100-pool round and on hostile label values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial

from prometheus_client import exposition as text_format
from prometheus_client.core import Metric
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

Encoder = Callable[[Collector], bytes]
_go_float: Callable[[float], str] = floatToGoString  # untyped in prometheus_client
_openmetrics_latest: Encoder = openmetrics.generate_latest
_MEMO_LIMIT = 50_000
"""Memoised strings kept at most; past this the memo starts again (label values from hostile files)."""
_OM_SUFFIXES = ("_created", "_gsum", "_gcount")  # samples the text format moves into families of their own
_TEXT_TYPES = {"gauge": "gauge", "counter": "counter", "unknown": "untyped"}


class _One:
    """A collector of one family, to hand a family to prometheus_client's encoders."""

    def __init__(self, metric: Metric) -> None:
        self._metric = metric

    def collect(self) -> Iterable[Metric]:
        return [self._metric]


class _Memo:
    """Escaped names and label sets (``{a="x",b="y"}``), as prometheus_client escapes them."""

    def __init__(self) -> None:
        self.labels: dict[tuple[tuple[str, str], ...], str] = {}
        self.names: dict[str, str] = {}
        self.om_sample_names: dict[str, str] = {}
        self.heads: dict[tuple[str, str, str], str] = {}
        self.om_heads: dict[tuple[str, str, str], str] = {}

    def label_set(self, labels: dict[str, str]) -> str:
        key = tuple(labels.items())  # in the family's order: the same set each scrape, no sort needed
        found = self.labels.get(key)
        if found is None:
            if len(self.labels) >= _MEMO_LIMIT:
                self.labels.clear()
            pairs = ",".join(f'{_label_name(k)}="{_label_value(v)}"' for k, v in sorted(key))
            found = self.labels[key] = "{" + pairs + "}" if pairs else ""
        return found

    def text_head(self, metric: Metric, kind: str) -> str:
        """``# HELP`` and ``# TYPE`` of a family in the text format."""
        key = (metric.name, kind, metric.documentation)
        found = self.heads.get(key)
        if found is None:
            if len(self.heads) >= _MEMO_LIMIT:
                self.heads.clear()
            name = self.name(metric.name + "_total" if kind == "counter" else metric.name)
            doc = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
            found = self.heads[key] = f"# HELP {name} {doc}\n# TYPE {name} {kind}\n"
        return found

    def openmetrics_head(self, metric: Metric) -> str:
        """``# HELP`` and ``# TYPE`` of a family in OpenMetrics."""
        key = (metric.name, metric.type, metric.documentation)
        found = self.om_heads.get(key)
        if found is None:
            if len(self.om_heads) >= _MEMO_LIMIT:
                self.om_heads.clear()
            name = self.name(metric.name)
            doc = openmetrics._escape(
                metric.documentation, openmetrics.ALLOWUTF8, openmetrics._is_legacy_labelname_rune
            )
            found = self.om_heads[key] = f"# HELP {name} {doc}\n# TYPE {name} {metric.type}\n"
        return found

    def name(self, name: str) -> str:
        found = self.names.get(name)
        if found is None:
            if len(self.names) >= _MEMO_LIMIT:
                self.names.clear()
            found = self.names[name] = openmetrics.escape_metric_name(name, openmetrics.UNDERSCORES)
        return found

    def om_sample_name(self, name: str) -> str:
        found = self.om_sample_names.get(name)
        if found is None:
            if len(self.om_sample_names) >= _MEMO_LIMIT:
                self.om_sample_names.clear()
            found = self.om_sample_names[name] = openmetrics._escape(
                name, openmetrics.UNDERSCORES, openmetrics._is_legacy_labelname_rune
            )
        return found


def _label_name(name: str) -> str:
    return str(openmetrics.escape_label_name(name, openmetrics.UNDERSCORES))


def _label_value(value: str) -> str:
    return str(openmetrics._escape(value, openmetrics.ALLOWUTF8, openmetrics._is_legacy_labelname_rune))


_MEMO = _Memo()


def _plain(metric: Metric) -> bool:
    """Whether every sample is a plain one: named as its family (``_total`` for a counter), without a
    timestamp, exemplar or native histogram. Anything else (``_created``, an info's or a histogram's
    samples) is for prometheus_client to write."""
    name = metric.name
    total = name + "_total"
    for s in metric.samples:
        if s.name not in (name, total):
            return False
        if (
            s.timestamp is not None
            or s.exemplar is not None
            or getattr(s, "native_histogram", None) is not None
        ):
            return False
    return True


def _value(value: float) -> str:
    """``floatToGoString``: for a float between -1e6 and 1e6 that is its ``repr`` (Go switches to an
    exponent above 1e6; infinities and NaN are spelled out), so those are written without a call."""
    if value.__class__ is float and -1e6 < value < 1e6:
        return repr(value)
    return _go_float(value)


def _text_family(metric: Metric, memo: _Memo) -> str:
    kind = _TEXT_TYPES.get(metric.type)
    if kind is None or not _plain(metric):
        return text_format.generate_latest(_One(metric)).decode("utf-8")
    lines = [memo.text_head(metric, kind)]
    names, name_of, label_set = memo.names, memo.name, memo.label_set
    lines += [
        f"{names.get(s.name) or name_of(s.name)}{label_set(s.labels)} {_value(s.value)}\n"
        for s in metric.samples
    ]
    return "".join(lines)


def _openmetrics_family(metric: Metric, memo: _Memo) -> str:
    if metric.type not in _TEXT_TYPES or metric.unit or not _plain(metric):
        whole = _openmetrics_latest(_One(metric)).decode("utf-8")
        return whole.removesuffix("# EOF\n")
    lines = [memo.openmetrics_head(metric)]
    names, name_of, label_set = memo.om_sample_names, memo.om_sample_name, memo.label_set
    lines += [
        f"{names.get(s.name) or name_of(s.name)}{label_set(s.labels)} "
        f"{_value(s.value) if s.value is not None else ''}\n"
        for s in metric.samples
    ]
    return "".join(lines)


def generate_text(registry: Collector) -> bytes:
    """What ``prometheus_client.exposition.generate_latest(registry)`` returns (format 0.0.4)."""
    return "".join(_text_family(metric, _MEMO) for metric in registry.collect()).encode("utf-8")


def generate_openmetrics(registry: Collector) -> bytes:
    """What ``prometheus_client.openmetrics.exposition.generate_latest(registry)`` returns (1.0.0)."""
    body = "".join(_openmetrics_family(metric, _MEMO) for metric in registry.collect())
    return (body + "# EOF\n").encode("utf-8")


_SUPPORTED = all(
    hasattr(openmetrics, name)
    for name in ("UNDERSCORES", "ALLOWUTF8", "escape_label_name", "escape_metric_name", "_escape",
                 "_is_legacy_labelname_rune")
)  # fmt: skip
"""The prometheus_client functions used here exist (0.22 and later); else its encoders do it all."""


def choose_encoder(accept: str) -> tuple[Encoder, str]:
    """prometheus_client's choice for ``accept``; its default escaping and OpenMetrics 1.0.0 are ours."""
    encoder, content_type = text_format.choose_encoder(accept)
    if not _SUPPORTED:
        return encoder, content_type
    if encoder is text_format.generate_latest:
        return generate_text, content_type
    if isinstance(encoder, partial) and not encoder.args:
        escaping = encoder.keywords.get("escaping", openmetrics.UNDERSCORES)
        version = encoder.keywords.get("version")
        if escaping == openmetrics.UNDERSCORES and encoder.func is openmetrics.generate_latest:
            if version == "1.0.0":
                return generate_openmetrics, content_type
        elif escaping == openmetrics.UNDERSCORES and encoder.func is text_format.generate_latest:
            return generate_text, content_type
    return encoder, content_type
