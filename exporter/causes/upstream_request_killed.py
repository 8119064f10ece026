"""The upstream kills a request on its own timeout before nginx's: nginx answers 502, not 504."""

from __future__ import annotations

from exporter.causes import commands
from exporter.causes.model import AlertText, Cause, CauseSpec

SPEC = CauseSpec(
    cause=Cause.UPSTREAM_REQUEST_KILLED,
    alert="UpstreamRequestKilled",
    title="The upstream kills slow requests on its own timeout",
    status_code=502,
    evidence=("logs",),
    page=AlertText(
        summary="The upstream kills slow requests on {instance} (nginx answers 502)",
        meaning="An upstream on {instance} terminates requests on its own timeout (PHP-FPM's"
        " request_terminate_timeout or max_execution_time, gunicorn's --timeout) before nginx's"
        " *_read_timeout: nginx sees the connection reset and answers 502 instead of 504.",
        for_seconds=60,
        severity="warning",
    ),
    faults=("php_request_terminated",),
)


def php_terminated(
    php_fpm_log: str, setting: str, where: str, nginx_timeout: str, unit: str
) -> tuple[str, ...]:
    """PHP-FPM's ``setting`` (at ``where``) is shorter than nginx's ``nginx_timeout``."""
    return (
        f"sudo grep 'execution timed out' {php_fpm_log} | tail   # which scripts are this slow",
        f"make them faster, or raise {setting} in {where} (nginx waits {nginx_timeout});"
        f" then {commands.restart(unit)}",
        "keep the upstream's limit just above nginx's *_read_timeout so slow requests get a 504 nginx logs",
    )


def gunicorn_timeout(unit: str) -> tuple[str, ...]:
    """gunicorn killed a worker on its --timeout."""
    return (
        f"{commands.journal(unit)} | grep -B2 'WORKER TIMEOUT'   # which requests",
        "raise gunicorn's --timeout above nginx's proxy_read_timeout, or make the handler faster",
        commands.restart(unit),
    )
