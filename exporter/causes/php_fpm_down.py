"""PHP-FPM is not running: the runbook's most frequent 502."""

from __future__ import annotations

from exporter.causes import commands
from exporter.causes.model import AlertText, Cause, CauseSpec, Inhibition

SPEC = CauseSpec(
    cause=Cause.PHP_FPM_DOWN,
    alert="PhpFpmDown",
    title="PHP-FPM is not running",
    status_code=502,
    evidence=("processes", "units", "sockets", "fastcgi"),
    page=AlertText(
        summary="PHP-FPM is down on {instance}",
        meaning="PHP-FPM is not running on {instance}: nginx answers 502 for every PHP page.",
        for_seconds=60,
    ),
    faults=("php_fpm_stopped", "php_fpm_killed"),
    explains=(
        Inhibition(
            ("PhpFpmSocketPathMismatch", "PhpFpmSocketPermissionDenied", "PhpFpmPoolExhausted"),
            why="with no PHP-FPM the socket is missing or stale, its owner cannot be checked and the pool"
            " has no worker",
        ),
    ),
)


def start(unit: str) -> tuple[str, ...]:
    """PHP-FPM stopped: start it, keep it enabled, read why it stopped."""
    return commands.start_enable_journal(unit)


def restart_stale(unit: str) -> tuple[str, ...]:
    """A stale socket left by a killed master: restart replaces it."""
    return commands.restart(unit), commands.journal(unit)
