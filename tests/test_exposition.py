"""Our encoders write exactly prometheus_client's bytes: on a real 100-pool round and on hostile families."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import Any

import pytest
from harness.pools import PoolFarm, running_farm
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import exposition as text_format
from prometheus_client.openmetrics import exposition as openmetrics

from exporter.app import Exporter, printable_labels
from exporter.config import config_from_dict
from exporter.exposition import choose_encoder, generate_openmetrics, generate_text
from exporter.families import CounterMetricFamily, GaugeMetricFamily, Metric
from exporter.metrics import ScrapeFamilies, round_metric_families

# Our families have prometheus_client's shape: its encoders take them as they are (untyped there).
_library_text: Callable[[Any], bytes] = text_format.generate_latest
_library_openmetrics: Callable[[Any], bytes] = openmetrics.generate_latest

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
    assert generate_text(registry) == _library_text(registry)
    assert generate_openmetrics(registry) == _library_openmetrics(registry)
    for escaping in (openmetrics.UNDERSCORES, openmetrics.ALLOWUTF8):  # the same bytes for legacy names
        assert generate_text(registry) == _library_text_escaped(registry, escaping)
        assert generate_openmetrics(registry) == _library_openmetrics_escaped(registry, escaping)


def _library_text_escaped(registry: Frozen, escaping: str) -> bytes:
    encode: Callable[..., bytes] = text_format.generate_latest
    return encode(registry, escaping=escaping)


def _library_openmetrics_escaped(registry: Frozen, escaping: str) -> bytes:
    encode: Callable[..., bytes] = openmetrics.generate_latest
    return encode(registry, escaping=escaping, version="1.0.0")


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
        frozen = Frozen(ScrapeFamilies(lambda: families).collect())
    finally:
        exporter.close()
    ups = [s for f in frozen.families if f.name == "badgateway_fastcgi_up" for s in f.samples]
    assert len(ups) == 100 and all(s.value == 1 for s in ups)
    assert sum(len(f.samples) for f in frozen.families) > 2000
    assert_same_bytes(frozen)


ACCEPT_HEADERS = [
    "",
    "*/*",
    "text/plain",
    "text/plain;version=0.0.4",
    "text/plain;version=1.0.0",
    "text/plain;version=1.0",
    "text/plain;version=1.0.0;escaping=allow-utf-8",
    "text/plain;version=1.0.0;escaping=bogus",
    "text/plain;version=1.0.0;escaping=dots",
    "application/openmetrics-text",
    "application/openmetrics-text;version=0.0.1",
    "application/openmetrics-text;version=1.0.0",
    "application/openmetrics-text; version=1.0.0; escaping=underscores",
    "application/openmetrics-text;version=1.0.0;escaping=values",
    "application/openmetrics-text;version=2.0.0",
    PROMETHEUS_ACCEPT,
    # Prometheus 3:
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,application/openmetrics-text;"
    "version=0.0.1;q=0.4,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,text/plain;version=0.0.4;q=0.2,"
    "*/*;q=0.1",
]
OURS = (generate_text, generate_openmetrics)


@pytest.mark.parametrize("accept", ACCEPT_HEADERS)
def test_the_content_type_is_the_librarys_choice(accept: str) -> None:
    encoder, content_type = choose_encoder(accept)
    library_encoder, library_type = text_format.choose_encoder(accept)
    assert content_type == library_type
    if encoder in OURS:  # ours only where the library writes the same format in an escaping of the same bytes
        library_format = getattr(library_encoder, "func", library_encoder)
        assert (library_format is openmetrics.generate_latest) == (encoder is generate_openmetrics)
    else:
        assert isinstance(encoder, partial) and isinstance(library_encoder, partial)
        assert (encoder.func, encoder.keywords) == (library_encoder.func, library_encoder.keywords)


def test_prometheus_gets_ours_and_an_exotic_escaping_the_librarys() -> None:
    assert choose_encoder(PROMETHEUS_ACCEPT)[0] is generate_openmetrics
    assert choose_encoder("*/*") == (generate_text, text_format.CONTENT_TYPE_PLAIN_0_0_4)
    assert choose_encoder(ACCEPT_HEADERS[-1])[0] is generate_openmetrics  # Prometheus 3: allow-utf-8
    library, _ = choose_encoder("application/openmetrics-text;version=1.0.0;escaping=dots")
    assert isinstance(library, partial) and library.func is openmetrics.generate_latest
    family = GaugeMetricFamily("badgateway_up_total_x", "x", labels=["a"])
    family.add_metric(["v"], 1.0)
    assert b"badgateway__up__total__x" in library(Frozen([family]))  # dots: "_" doubled


def test_a_version_that_is_not_numbers_is_passed_over() -> None:
    """prometheus_client's comparison raises on ``version=1.x``; here the next entry decides."""
    assert choose_encoder("application/openmetrics-text;version=1.x,text/plain") == (
        generate_text,
        text_format.CONTENT_TYPE_PLAIN_0_0_4,
    )


def test_the_exporter_imports_no_prometheus_client_until_asked() -> None:
    """The families, encoders and process metrics of a scrape are ours: no prometheus_client (nor its ssl)."""
    probe = (
        "import sys\n"
        "from exporter.exposition import choose_encoder\n"
        "from exporter.metrics import ScrapeFamilies\n"
        "encoder, _ = choose_encoder('application/openmetrics-text;version=1.0.0')\n"
        "assert b'process_cpu_seconds_total' in encoder(ScrapeFamilies())\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('prometheus_client', 'ssl')))\n"
        "choose_encoder('text/plain;version=1.0.0;escaping=dots')\n"
        "print('prometheus_client' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split("\n")[:2] == ["[]", "True"]


LABEL_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)
LABEL_NAMES = st.sampled_from(["socket", "reason", "fix", "le", "a_b", "x9"])
VALUES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1.0, 1e-9, 123456789.0, 1.5e300]),
)


@st.composite
def families(draw: st.DrawFn) -> Metric:
    kind = draw(st.sampled_from(["gauge", "counter"]))
    name = draw(st.sampled_from(["badgateway_x", "badgateway_y_z9", "python_gc", "n", "badgateway_x_total"]))
    doc = draw(LABEL_TEXT)
    labels = draw(st.lists(LABEL_NAMES, unique=True, max_size=3))
    rows = draw(
        st.lists(
            st.tuples(st.lists(LABEL_TEXT, min_size=len(labels), max_size=len(labels)), VALUES), max_size=4
        )
    )
    family: CounterMetricFamily | GaugeMetricFamily
    if kind == "counter":
        family = CounterMetricFamily(name, doc, labels=labels)
    else:
        family = GaugeMetricFamily(name, doc, labels=labels)
    for values, value in rows:
        family.add_metric(values, 0.0 if kind == "counter" and (math.isnan(value) or value < 0) else value)
    return family


@settings(max_examples=300, deadline=None)
@given(st.lists(families(), max_size=4))
def test_any_families_encode_to_the_librarys_bytes(made: list[Metric]) -> None:
    assert_same_bytes(Frozen(made))


@pytest.mark.parametrize(
    "make",
    [
        lambda: GaugeMetricFamily("badgateway:x", "colons are for recording rules"),
        lambda: GaugeMetricFamily("9x", "a digit first"),
        lambda: GaugeMetricFamily("badgateway_x", "a bad label", labels=["a-b"]),
        lambda: GaugeMetricFamily("badgateway_x", "a reserved label", labels=["__name"]),
        lambda: GaugeMetricFamily("badgateway_x", "value and labels", value=1.0, labels=["a"]),
        lambda: GaugeMetricFamily("badgateway_x", "a label twice", labels=["a", "a"]),
    ],
)
def test_a_family_the_encoders_could_not_write_as_it_is_is_refused(make: Callable[[], Metric]) -> None:
    with pytest.raises(ValueError):
        make()


def test_a_sample_with_the_wrong_number_of_label_values_is_refused() -> None:
    family = GaugeMetricFamily("badgateway_x", "x", labels=["a", "b"])
    with pytest.raises(ValueError):
        family.add_metric(["only one"], 1.0)


def test_rows_added_at_once_are_the_samples_added_one_by_one_and_checked_alike() -> None:
    one_by_one = GaugeMetricFamily("badgateway_x", "x", labels=["a", "b"])
    at_once = GaugeMetricFamily("badgateway_x", "x", labels=["a", "b"])
    rows = [(("p", "q"), 1.0), (("r", "s"), 0.5)]
    for values, value in rows:
        one_by_one.add_metric(list(values), value)
    at_once.add_rows(iter(rows))
    assert at_once == one_by_one
    assert at_once.samples[1].labels == {"a": "r", "b": "s"}
    with pytest.raises(ValueError):
        at_once.add_rows([(("p", "q"), 1.0), (("only one",), 2.0)])
    assert len(at_once.rows) == 2  # a refused batch adds nothing
