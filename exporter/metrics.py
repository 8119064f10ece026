"""The metrics view: one round's results and its diagnosis as Prometheus metric families."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR, CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from exporter import __version__
from exporter.causes import Cause
from exporter.checks import fastcgi, http, nginx_config, processes, resources, sockets, units
from exporter.config import Config
from exporter.diagnosis import Diagnosis
from exporter.discovery import metrics as discovery_metrics
from exporter.rounds import RoundResults


def round_metric_families(results: RoundResults, diagnosis: Diagnosis, config: Config) -> Iterator[Metric]:
    """Every ``badgateway_*`` family that one round of checks (and discovery) produces."""
    yield from sockets.metric_families(results.sockets)
    yield from fastcgi.metric_families(results.fastcgi)
    yield from http.metric_families(results.http)
    if results.processes is not None:
        yield from processes.metric_families(results.processes)
    if results.resources is not None:
        yield from resources.metric_families(results.resources)
    if results.nginx_config is not None:
        yield from nginx_config.metric_families(results.nginx_config)
    if results.units is not None:
        yield from units.metric_families(results.units)
    yield from discovery_metrics.metric_families(results, config)
    cause = GaugeMetricFamily(
        "badgateway_cause",
        "1 for each cause of 502/504 the diagnosis currently finds, 0 for the others.",
        labels=["cause"],
    )
    for name in Cause:
        cause.add_metric([name.value], float(name in diagnosis.causes))
    yield cause
    success = GaugeMetricFamily(
        "badgateway_collector_success",
        "1 if the collector finished in time without error.",
        labels=["collector"],
    )
    duration = GaugeMetricFamily(
        "badgateway_collector_duration_seconds", "Wall time the collector took.", labels=["collector"]
    )
    for outcome in results.collectors:
        success.add_metric([outcome.collector], float(outcome.success))
        duration.add_metric([outcome.collector], outcome.duration_seconds)
    yield success
    yield duration
    yield GaugeMetricFamily(
        "badgateway_scrape_timeout_seconds",
        "The deadline this round of checks ran under.",
        value=results.timeout_seconds,
    )
    build = GaugeMetricFamily(
        "badgateway_build_info", "The exporter's version (always 1).", labels=["version"]
    )
    build.add_metric([__version__], 1.0)
    yield build


class _FamiliesCollector(Collector):
    def __init__(self, produce: Callable[[], Iterable[Metric]]) -> None:
        self._produce = produce

    def collect(self) -> Iterable[Metric]:
        return self._produce()


def scrape_registry(*sources: Callable[[], Iterable[Metric]]) -> CollectorRegistry:
    """A registry for one scrape: the given families plus the exporter's own process metrics."""
    registry = CollectorRegistry(auto_describe=False)
    for source in sources:
        registry.register(_FamiliesCollector(source))
    for own in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(own)
    return registry
