"""Our encoders write exactly prometheus_client's bytes: on a real 100-pool round and on hostile families."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator
from functools import partial

import pytest
from harness.pools import PoolFarm, running_farm
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import exposition as text_format
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
    UnknownMetricFamily,
)
from prometheus_client.openmetrics import exposition as openmetrics

from exporter.app import Exporter, printable_labels
from exporter.config import config_from_dict
from exporter.exposition import choose_encoder, generate_openmetrics, generate_text
from exporter.metrics import round_metric_families, scrape_registry

_library_openmetrics: Callable[[Frozen], bytes] = openmetrics.generate_latest  # untyped in prometheus_client

PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


class Frozen:
    """A collector that returns the same families every time (the process metrics move between calls)."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> list[Metric]:
        return self.families


def assert_same_bytes(registry: Frozen) -> None:
    assert generate_text(registry) == text_format.generate_latest(registry)
    assert generate_openmetrics(registry) == _library_openmetrics(registry)


@pytest.fixture(scope="module")
def farm() -> Iterator[PoolFarm]:
    if os.geteuid() != 0:
        pytest.skip("needs root: the pools' workers run as www-data")
    with running_farm(100, "badgateway-exposition-") as pools:
        yield pools


def test_a_real_100_pool_round_encodes_to_the_librarys_bytes(farm: PoolFarm) -> None:
    settings_ = farm.exporter_settings()
    settings_["discovery"] = {"enabled": False}
    settings_["php_fpm"] = [{"socket": str(farm.socket(name))} for name in farm.names]
    settings_["http"] = []
    exporter = Exporter(config_from_dict(settings_, "test"))
    try:
        checked = exporter.check(5.0)
        families = printable_labels(
            round_metric_families(checked.results, checked.diagnosis, exporter.config)
        )
        frozen = Frozen(scrape_registry(lambda: families).collect())
    finally:
        exporter.close()
    ups = [s for f in frozen.families if f.name == "badgateway_fastcgi_up" for s in f.samples]
    assert len(ups) == 100 and all(s.value == 1 for s in ups)
    assert sum(len(f.samples) for f in frozen.families) > 2000
    assert_same_bytes(frozen)


def test_the_encoder_follows_the_accept_header() -> None:
    encoder, content_type = choose_encoder(PROMETHEUS_ACCEPT)
    assert encoder is generate_openmetrics
    assert content_type == text_format.choose_encoder(PROMETHEUS_ACCEPT)[1]
    assert content_type.startswith("application/openmetrics-text; version=1.0.0")
    assert choose_encoder("*/*") == (generate_text, text_format.CONTENT_TYPE_PLAIN_0_0_4)
    assert choose_encoder("") == (generate_text, text_format.CONTENT_TYPE_PLAIN_0_0_4)
    # Another escaping than the default: prometheus_client's own encoder.
    library, _ = choose_encoder("application/openmetrics-text;version=1.0.0;escaping=allow-utf-8")
    assert isinstance(library, partial) and library.func is openmetrics.generate_latest


LABEL_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)
LABEL_NAMES = st.sampled_from(["socket", "reason", "fix", "le", "a_b", "x9"])
VALUES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1.0, 1e-9, 123456789.0, 1.5e300]),
)


@st.composite
def families(draw: st.DrawFn) -> Metric:
    kind = draw(st.sampled_from(["gauge", "counter", "unknown", "info", "histogram"]))
    name = draw(st.sampled_from(["badgateway_x", "badgateway_y:z", "python_gc", "n"]))
    doc = draw(LABEL_TEXT)
    labels = draw(st.lists(LABEL_NAMES, unique=True, max_size=3))
    rows = draw(
        st.lists(
            st.tuples(st.lists(LABEL_TEXT, min_size=len(labels), max_size=len(labels)), VALUES), max_size=4
        )
    )
    if kind == "info":
        info = InfoMetricFamily(name, doc, labels=labels)
        for values, _ in rows:
            info.add_metric(values, {"version": "1"})
        return info
    if kind == "histogram":
        histogram = HistogramMetricFamily(name, doc, labels=labels)
        for values, value in rows:
            histogram.add_metric(values, [("1.0", 1.0), ("+Inf", 2.0)], 3.0 if math.isnan(value) else value)
        return histogram
    family: Metric
    if kind == "counter":
        family = CounterMetricFamily(name, doc, labels=labels)
    elif kind == "gauge":
        family = GaugeMetricFamily(name, doc, labels=labels)
    else:
        family = UnknownMetricFamily(name, doc, labels=labels)
    created = draw(st.sampled_from([None, 12.5]))
    for values, value in rows:
        if isinstance(family, CounterMetricFamily):
            family.add_metric(values, 0.0 if math.isnan(value) or value < 0 else value, created=created)
        else:
            family.add_metric(values, value)
    return family


@settings(max_examples=300, deadline=None)
@given(st.lists(families(), max_size=4))
def test_any_families_encode_to_the_librarys_bytes(made: list[Metric]) -> None:
    assert_same_bytes(Frozen(made))
