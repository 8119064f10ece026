"""Metric families that come from discovery: socket alternatives and unreadable configuration files."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import GaugeMetricFamily, Metric

from exporter.config import Config
from exporter.discovery.analysis import socket_alternatives
from exporter.rounds import RoundResults

SOURCES = ("nginx", "php_fpm")


def metric_families(results: RoundResults, config: Config) -> Iterable[Metric]:
    """``fastcgi_socket_alternative`` and ``discovery_config_errors``."""
    alternative = GaugeMetricFamily(
        "badgateway_fastcgi_socket_alternative",
        "1 when the socket is missing but a PHP-FPM pool found in the configuration listens on `alternative`.",
        labels=["socket", "alternative"],
    )
    for path, alternatives in sorted(socket_alternatives(config.discovered, results.sockets).items()):
        for other in sorted(alternatives):
            alternative.add_metric([path, other], 1.0)
    families: list[Metric] = [alternative]
    discovered = config.discovered
    if discovered is not None and config.discovery.enabled:
        errors = GaugeMetricFamily(
            "badgateway_discovery_config_errors",
            "Problems (unreadable file, syntax error) found reading nginx's or PHP-FPM's configuration.",
            labels=["source"],
        )
        for source in SOURCES:
            errors.add_metric([source], float(sum(1 for p in discovered.problems if p.source == source)))
        families.append(errors)
    return families
