"""An upstream answers slower than nginx waits: nginx answers 504."""

from __future__ import annotations

from exporter.causes import commands
from exporter.causes.model import AlertText, Cause, CauseSpec

SPEC = CauseSpec(
    cause=Cause.UPSTREAM_TIMEOUT,
    alert="UpstreamTimeout",
    title="An upstream answers too slowly",
    status_code=504,
    evidence=("http", "fastcgi"),
    page=AlertText(
        summary="An upstream answers too slowly on {instance} (nginx answers 504)",
        meaning="An upstream (PHP-FPM or the backend) on {instance} answers slower than nginx's"
        " *_read_timeout: nginx answers 504.",
        for_seconds=300,
        severity="warning",
    ),
    faults=("backend_slow",),
)

RAISE_TIMEOUT = "if slowness is expected: raise fastcgi_read_timeout / proxy_read_timeout"


def backend_slow(unit: str) -> tuple[str, ...]:
    return (
        f"{commands.journal(unit)}   # why is it slow?",
        "if slowness is expected: raise proxy_read_timeout / fastcgi_read_timeout in the site config",
    )


def front_slow(error_log: str) -> tuple[str, ...]:
    return f"sudo tail -50 {error_log} | grep 'timed out'", RAISE_TIMEOUT
