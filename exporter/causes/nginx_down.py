"""nginx itself is not running."""

from __future__ import annotations

from exporter.causes import commands
from exporter.causes.model import AlertText, Cause, CauseSpec, Inhibition

SPEC = CauseSpec(
    cause=Cause.NGINX_DOWN,
    alert="NginxDown",
    title="nginx is not running",
    status_code=502,
    evidence=("processes", "units", "http"),
    page=AlertText(
        summary="nginx is down on {instance}",
        meaning="nginx is not running on {instance}: the site does not answer at all.",
        for_seconds=60,
    ),
    faults=("nginx_stopped",),
    explains=(
        Inhibition(
            ("NginxGatewayErrors", "UpstreamTimeout"),
            why="nginx's error-log counters and the timeouts derived from them mean nothing while nothing proxies",
        ),
    ),
)


def start(unit: str) -> tuple[str, ...]:
    """Test the configuration first: an nginx that stopped may not start again."""
    name = commands.unit_name(unit)
    return f"sudo nginx -t && sudo systemctl start {name}", commands.enable(unit), commands.journal(unit)
