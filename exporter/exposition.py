"""The bytes of a scrape: the text format and OpenMetrics 1.0.0, written here as prometheus_client writes them.

Every family of ours is a plain gauge or counter (:mod:`exporter.families`) whose names and label
names are legacy-valid, so writing one is its ``# HELP``/``# TYPE`` head and a line per sample;
each distinct label set is escaped once and kept (the sets are the same from one scrape to the
next; prometheus_client escapes every label of every sample again on each scrape, and its
OpenMetrics encoder a name one character at a time: 11 and 25 ms a scrape with 100 pools). The
``Accept`` header is read as ``prometheus_client.exposition.choose_encoder`` reads it; a scraper
that asks for what is not written here (``dots`` or ``values`` escaping, OpenMetrics 2) gets
prometheus_client's own encoders, imported then. ``tests/test_exposition.py`` holds both formats byte for byte to the
library's output, on a real 100-pool round and on hostile label values.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from exporter.families import Metric


class Families(Protocol):
    """What is encoded: a collector's ``collect()``."""

    def collect(self) -> Iterable[Metric]: ...


Encoder = Callable[[Families], bytes]

TEXT_0_0_4 = "text/plain; version=0.0.4; charset=utf-8"
TEXT_1_0_0 = "text/plain; version=1.0.0; charset=utf-8"
OPENMETRICS_1_0_0 = "application/openmetrics-text; version=1.0.0; charset=utf-8"
UNDERSCORES = "underscores"
ALLOW_UTF8 = "allow-utf-8"
_ESCAPINGS = frozenset({ALLOW_UTF8, UNDERSCORES, "dots", "values"})
_WRITTEN_ESCAPINGS = frozenset({UNDERSCORES, ALLOW_UTF8})
"""Escapings that leave legacy-valid names as they are: for our families both are the same bytes."""
_MEMO_LIMIT = 50_000
"""Prefixes kept at most per family; past this its memo starts again (label values from hostile files)."""


def _label_value(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


class _Memo:
    """Each family's sample-line prefixes (``name{a="x",b="y"} ``) by label values, and family
    heads, as prometheus_client writes them."""

    def __init__(self) -> None:
        self.prefixes: dict[tuple[str, tuple[str, ...]], dict[tuple[str, ...], str]] = {}
        self.heads: dict[tuple[str, str, str], str] = {}
        self.om_heads: dict[tuple[str, str, str], str] = {}

    def prefixes_of(self, metric: Metric) -> dict[tuple[str, ...], str]:
        """The prefixes made so far for ``metric``'s sample name and label names."""
        key = (metric.sample_name, metric.label_names)
        found = self.prefixes.get(key)
        if found is None or len(found) >= _MEMO_LIMIT:
            found = self.prefixes[key] = {}
        return found

    def prefix(self, metric: Metric, values: tuple[str, ...], known: dict[tuple[str, ...], str]) -> str:
        pairs = ",".join(
            f'{k}="{_label_value(v)}"' for k, v in sorted(zip(metric.label_names, values, strict=True))
        )
        found = known[values] = f"{metric.sample_name}{{{pairs}}} " if pairs else f"{metric.sample_name} "
        return found

    def text_head(self, metric: Metric) -> str:
        """``# HELP`` and ``# TYPE`` of a family in the text format (a counter's named with ``_total``)."""
        key = (metric.name, metric.type, metric.documentation)
        found = self.heads.get(key)
        if found is None:
            if len(self.heads) >= _MEMO_LIMIT:
                self.heads.clear()
            name = metric.name + "_total" if metric.type == "counter" else metric.name
            doc = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
            found = self.heads[key] = f"# HELP {name} {doc}\n# TYPE {name} {metric.type}\n"
        return found

    def openmetrics_head(self, metric: Metric) -> str:
        """``# HELP`` and ``# TYPE`` of a family in OpenMetrics."""
        key = (metric.name, metric.type, metric.documentation)
        found = self.om_heads.get(key)
        if found is None:
            if len(self.om_heads) >= _MEMO_LIMIT:
                self.om_heads.clear()
            doc = _label_value(metric.documentation)
            found = self.om_heads[key] = f"# HELP {metric.name} {doc}\n# TYPE {metric.name} {metric.type}\n"
        return found


_MEMO = _Memo()


def go_float(value: float) -> str:
    """A sample value as Go (and prometheus_client's ``floatToGoString``) spells it."""
    if value.__class__ is float and -1e6 < value < 1e6:
        return repr(value)  # what the branches below give for these, without them
    value = float(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    text = repr(value)
    dot = text.find(".")
    if value > 0 and dot > 6:  # Go switches to an exponent sooner than Python
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return text


def _encode(families: Families, head: Callable[[Metric], str], end: str = "") -> bytes:
    """Each family's head, then a line per sample: ``name{labels} value``."""
    memo = _MEMO
    parts: list[str] = []
    for metric in families.collect():
        parts.append(head(metric))
        known = memo.prefixes_of(metric)
        parts += [
            f"{known.get(values) or memo.prefix(metric, values, known)}"
            f"{repr(value) if value.__class__ is float and -1e6 < value < 1e6 else go_float(value)}\n"
            for values, value in metric.rows
        ]  # go_float's first branch written in: a call a sample less
    parts.append(end)
    return "".join(parts).encode("utf-8")


def generate_text(families: Families) -> bytes:
    """What ``prometheus_client.exposition.generate_latest`` returns for these families."""
    return _encode(families, _MEMO.text_head)


def generate_openmetrics(families: Families) -> bytes:
    """What ``prometheus_client.openmetrics.exposition.generate_latest`` returns (OpenMetrics 1.0.0)."""
    return _encode(families, _MEMO.openmetrics_head, "# EOF\n")


def _parameter(parts: list[str], key: str) -> str:
    for part in parts:
        name, sign, value = part.strip().partition("=")
        if sign and name == key:
            return value
    return ""


def _version(text: str) -> tuple[int, ...] | None:
    """``1.0.0`` as ``(1, 0, 0)``; None for what is not all numbers (prometheus_client's comparison
    raises on those: here the entry is passed over)."""
    try:
        return tuple(int(part) for part in text.split("."))
    except ValueError:
        return None


def _choice(accepted: str) -> tuple[Encoder | None, str] | None:
    """The encoder for one entry of ``Accept``; ``(None, "")`` for prometheus_client's; None: the next entry."""
    parts = accepted.split(";")
    mime = parts[0].strip()
    if mime not in ("application/openmetrics-text", "text/plain"):
        return None
    version_text = _parameter(parts, "version")
    escaping = _parameter(parts, "escaping")
    escaping = escaping if escaping in _ESCAPINGS else UNDERSCORES
    if mime == "application/openmetrics-text" and not version_text:
        return generate_openmetrics, OPENMETRICS_1_0_0
    version = _version(version_text) if version_text else (0,)
    if version is None or version < (1, 0, 0):
        return None
    if escaping not in _WRITTEN_ESCAPINGS:
        return None, ""
    if mime == "text/plain":
        return generate_text, f"{TEXT_1_0_0}; escaping={escaping}"
    if version == (1, 0, 0) and version_text == "1.0.0":
        return generate_openmetrics, f"{OPENMETRICS_1_0_0}; escaping={escaping}"
    return None, ""


def choose_encoder(accept: str) -> tuple[Encoder, str]:
    """The encoder and ``Content-Type`` for an ``Accept`` header, as prometheus_client chooses them."""
    for accepted in (accept or "").split(","):
        chosen = _choice(accepted)
        if chosen is None:
            continue
        encoder, content_type = chosen
        if encoder is None:
            return _library_choice(accept)
        return encoder, content_type
    return generate_text, TEXT_0_0_4


def _library_choice(accept: str) -> tuple[Encoder, str]:
    """prometheus_client's encoder: for what a scraper asks that is not written here."""
    from prometheus_client import exposition  # imported the first time a scraper asks for it

    chosen: tuple[Any, str] = exposition.choose_encoder(accept)
    return chosen
