"""The metrics view: one round's results and its diagnosis as Prometheus metric families."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

from exporter import __version__
from exporter.causes import FACT_LABELS, UNEXPLAINED, Cause, Finding
from exporter.checks import (
    database,
    fastcgi,
    http,
    nginx_config,
    php_fpm_config,
    processes,
    resources,
    sockets,
    units,
)
from exporter.config import Config
from exporter.diagnosis import Diagnosis
from exporter.families import GaugeMetricFamily, Metric
from exporter.logs import metrics as log_metrics
from exporter.process_metrics import own_families
from exporter.rounds import RoundResults

DISCOVERY_SOURCES = ("nginx", "php_fpm")
MAX_FIX_CHARS = 1024


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
    if results.php_fpm_config is not None:
        yield from php_fpm_config.metric_families(results.php_fpm_config)
    if results.database is not None:
        yield from database.metric_families(results.database)
    if results.units is not None:
        yield from units.metric_families(results.units)
    if results.logs is not None and results.logs.snapshot is not None:
        yield from log_metrics.metric_families(results.logs.snapshot)
    yield from discovery_families(results, config)
    yield from cause_families(diagnosis)
    yield from exporter_families(results)


def cause_families(diagnosis: Diagnosis) -> Iterator[Metric]:
    """The verdict: ``badgateway_cause`` for every cause, ``badgateway_cause_info`` for the active ones."""
    cause = GaugeMetricFamily(
        "badgateway_cause",
        "1 for each cause of 502/504 the diagnosis currently finds, 0 for the others; cause"
        ' "unexplained": 502/504s now that no cause explains.',
        labels=["cause"],
    )
    for name in Cause:
        cause.add_metric([name.value], float(name in diagnosis.causes))
    cause.add_metric([UNEXPLAINED], float(diagnosis.is_unexplained))
    yield cause
    info = GaugeMetricFamily(
        "badgateway_cause_info",
        "What the diagnosis found for each active cause: the unit, socket, file and line, and the fix"
        " (its lines joined by newlines), as diagnose prints them.",
        labels=["cause", *FACT_LABELS, "fix"],
    )
    for active in sorted(diagnosis.causes):
        for fix, facts in _distinct_fixes(diagnosis.evidence.get(active, ())):
            info.add_metric([active.value, *facts, fix], 1.0)
    if diagnosis.is_unexplained:
        unexplained = [f for f in diagnosis.findings if f.step == "gateway_errors"]
        for fix, facts in _distinct_fixes(unexplained):
            info.add_metric([UNEXPLAINED, *facts, fix], 1.0)
    yield info


def _distinct_fixes(findings: Sequence[Finding]) -> list[tuple[str, tuple[str, ...]]]:
    """One ``(fix, facts)`` per distinct fix, in the findings' order; each fact from the first finding that has it."""
    merged: dict[str, list[str]] = {}
    for finding in findings:
        fix = "\n".join(finding.fix)[:MAX_FIX_CHARS]
        facts = merged.setdefault(fix, ["" for _ in FACT_LABELS])
        for i, value in enumerate(finding.facts.labels()):
            facts[i] = facts[i] or value
    return [(fix, tuple(facts)) for fix, facts in merged.items()]


MAX_EXPORTED_ALTERNATIVES = 3
"""Alternatives exported per missing socket: with 100 pools one mistyped path would make 99 series."""


def discovery_families(results: RoundResults, config: Config) -> Iterator[Metric]:
    """``fastcgi_socket_alternative`` and ``discovery_config_errors``."""
    alternative = GaugeMetricFamily(
        "badgateway_fastcgi_socket_alternative",
        "1 when the socket is missing but a PHP-FPM pool found in the configuration listens on `alternative`"
        " (the three likeliest).",
        labels=["socket", "alternative"],
    )
    for path, alternatives in results.socket_alternatives:
        for other in alternatives[:MAX_EXPORTED_ALTERNATIVES]:  # the likeliest first
            alternative.add_metric([path, other], 1.0)
    yield alternative
    discovered = config.discovered
    if discovered is not None and config.discovery.enabled:
        errors = GaugeMetricFamily(
            "badgateway_discovery_config_errors",
            "Problems (unreadable file, syntax error) found reading nginx's or PHP-FPM's configuration.",
            labels=["source"],
        )
        for source in DISCOVERY_SOURCES:
            errors.add_metric([source], float(sum(1 for p in discovered.problems if p.source == source)))
        yield errors


def exporter_families(results: RoundResults) -> Iterator[Metric]:
    """The exporter's own health: per-collector success and duration, the deadline, the version."""
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


class ScrapeFamilies:
    """The families of one scrape, in a collector's shape (``collect()``): the given sources, then the
    exporter's own process, platform and GC families."""

    def __init__(self, *sources: Callable[[], Iterable[Metric]]) -> None:
        self._sources = sources

    def collect(self) -> Iterator[Metric]:
        for source in self._sources:
            yield from source()
        yield from own_families()
