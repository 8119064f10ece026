"""nginx runs out of connections or file descriptors or local ports while connecting to upstreams."""

from __future__ import annotations

from exporter.causes import commands
from exporter.causes.model import AlertText, Cause, CauseSpec

SPEC = CauseSpec(
    cause=Cause.NGINX_CONNECTIONS_EXHAUSTED,
    alert="NginxConnectionsExhausted",
    title="nginx has no connection, file descriptor or port left for upstreams",
    status_code=502,
    evidence=("logs",),
    page=AlertText(
        summary="nginx runs out of connections to upstreams on {instance} (nginx answers 502)",
        meaning="nginx on {instance} cannot open a connection to an upstream: 'worker_connections are not"
        " enough', '(24: Too many open files)' or '(99: Cannot assign requested address)'. nginx answers 502.",
        for_seconds=60,
    ),
    faults=("worker_connections_tiny",),
)


def raise_limits(where: str, current: str) -> tuple[str, ...]:
    """``worker_connections`` is ``current`` at ``where``."""
    return (
        f"in {where}: worker_connections 4096;   # now {current}; and worker_rlimit_nofile 8192; (main context)",
        commands.NGINX_TEST_AND_RELOAD,
    )


def ports(where: str) -> tuple[str, ...]:
    """No local port left (errno 99): reuse connections instead of opening one per request."""
    return (
        f"in {where}: an upstream {{}} block with keepalive 32; plus proxy_http_version 1.1;"
        ' proxy_set_header Connection "";',
        "sysctl net.ipv4.ip_local_port_range   # widen it if it is narrow",
        commands.NGINX_TEST_AND_RELOAD,
    )
