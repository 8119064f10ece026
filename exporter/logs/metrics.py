"""Prometheus metric families from a :class:`~exporter.logs.tailer.LogSnapshot` (no I/O)."""

from __future__ import annotations

from collections.abc import Iterator

from exporter.families import CounterMetricFamily, GaugeMetricFamily, Metric
from exporter.logs.tailer import LogSnapshot


def metric_families(snapshot: LogSnapshot) -> Iterator[Metric]:
    """Yield the log metrics of issue 3; every family is yielded even when it has no samples."""
    errors = CounterMetricFamily(
        "badgateway_nginx_upstream_errors",
        "Upstream failures logged by nginx, by cause (kind) and normalised upstream address.",
        labels=["log", "kind", "upstream"],
    )
    lines = CounterMetricFamily(
        "badgateway_nginx_error_log_lines",
        "Lines read from an nginx error log.",
        labels=["log"],
    )
    events = CounterMetricFamily(
        "badgateway_phpfpm_log_events",
        "Lines read from a PHP-FPM log, by pool and event (none: any other line).",
        labels=["log", "pool", "event"],
    )
    app_events = CounterMetricFamily(
        "badgateway_backend_log_events",
        "Lines read from the backend's own log (gunicorn, uvicorn), by event (none: any other line).",
        labels=["log", "event"],
    )
    rotations = CounterMetricFamily(
        "badgateway_log_rotations",
        "Times a tailed log was rotated (renamed, truncated, deleted or replaced).",
        labels=["log"],
    )
    read_errors = CounterMetricFamily(
        "badgateway_log_read_errors",
        "Failed attempts to open or read a log (permission denied, not a file, I/O error).",
        labels=["log"],
    )
    lag = GaugeMetricFamily(
        "badgateway_log_lag_bytes",
        "Bytes written to a log but not yet read by the exporter.",
        labels=["log"],
    )
    skipped = GaugeMetricFamily(
        "badgateway_log_files_skipped",
        "Files the log patterns match beyond logs.max_files: not read (raise it, or narrow the globs).",
    )
    skipped.add_metric([], snapshot.skipped_files)
    for path in sorted(snapshot.logs):
        c = snapshot.logs[path]
        if c.source == "nginx":
            lines.add_metric([path], c.lines)
            for (kind, upstream), n in sorted(c.upstream_errors.items()):
                errors.add_metric([path, kind, upstream], n)
        elif c.source == "app":
            for (_pool, event), n in sorted(c.phpfpm_events.items()):
                app_events.add_metric([path, event], n)
        else:
            for (pool, event), n in sorted(c.phpfpm_events.items()):
                events.add_metric([path, pool, event], n)
        rotations.add_metric([path], c.rotations)
        read_errors.add_metric([path], c.read_errors)
        lag.add_metric([path], c.lag_bytes)
    yield errors
    yield lines
    yield events
    yield app_events
    yield rotations
    yield read_errors
    yield lag
    yield skipped
