"""Recording rules for the dashboards; the alerts read the raw series, so they never lag a group."""

from __future__ import annotations

from exporter.mixin.settings import Settings

CAUSES_ACTIVE = "instance:badgateway_causes_active:count"
MEMORY_AVAILABLE_RATIO = "instance:badgateway_memory_available:ratio"
FILESYSTEM_AVAIL_RATIO = "instance_mountpoint:badgateway_filesystem_avail:ratio"
PHPFPM_BUSY_RATIO = "instance_pool:badgateway_phpfpm_busy_workers:ratio"


def upstream_errors_rate(settings: Settings) -> str:
    """Upstream errors per second of each instance (the name carries ``error_rate_window``)."""
    return f"instance:badgateway_nginx_upstream_errors:rate{settings.error_rate_window}"


def upstream_errors_rate_by_kind(settings: Settings) -> str:
    """Upstream errors per second by instance, kind and upstream."""
    return f"instance_kind_upstream:badgateway_nginx_upstream_errors:rate{settings.error_rate_window}"


def recording_rules(settings: Settings) -> list[dict[str, str]]:
    """The recording rules, each ``by (instance…)`` keeping every identity label (``identity_labels``)."""
    scope = settings.scope
    return [{"record": rule["record"], "expr": scope.expr(rule["expr"])} for rule in _rules(settings)]


def _rules(settings: Settings) -> list[dict[str, str]]:
    w = settings.error_rate_window
    return [
        {
            "record": upstream_errors_rate(settings),
            "expr": f"sum by (instance) (rate(badgateway_nginx_upstream_errors_total[{w}]))",
        },
        {
            "record": upstream_errors_rate_by_kind(settings),
            "expr": f"sum by (instance, kind, upstream) (rate(badgateway_nginx_upstream_errors_total[{w}]))",
        },
        {"record": CAUSES_ACTIVE, "expr": "sum by (instance) (badgateway_cause)"},
        {
            "record": MEMORY_AVAILABLE_RATIO,
            "expr": (
                "max by (instance) (badgateway_memory_available_bytes)"
                " / max by (instance) (badgateway_memory_total_bytes)"
            ),
        },
        {
            "record": FILESYSTEM_AVAIL_RATIO,
            "expr": (
                "max by (instance, mountpoint) (badgateway_filesystem_avail_bytes)"
                " / max by (instance, mountpoint) (badgateway_filesystem_size_bytes)"
            ),
        },
        {
            "record": PHPFPM_BUSY_RATIO,
            "expr": (
                "max by (instance, socket, pool) (badgateway_phpfpm_active_processes)"
                " / max by (instance, socket, pool) (badgateway_phpfpm_total_processes)"
            ),
        },
    ]
