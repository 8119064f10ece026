"""PHP-FPM is not running: the runbook's most frequent 502."""

from __future__ import annotations

from collections.abc import Sequence

from exporter.causes import commands
from exporter.causes.model import AlertText, Cause, CauseSpec, Finding, Inhibition, failing_findings


def _unless_config_invalid(cause: Cause, findings: Sequence[Finding]) -> tuple[Finding, ...]:
    """Down because its configuration does not load: that is the cause (php_fpm_config_invalid)."""
    if any(f.failing_cause is Cause.PHP_FPM_CONFIG_INVALID for f in findings):
        return ()
    return failing_findings(cause, findings)


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
    decide=_unless_config_invalid,
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


def start_after_fix(file: str | None, line: int | None, unit: str, binary: str) -> tuple[str, ...]:
    """PHP-FPM down and its configuration fails ``php-fpm -t``: starting it fails until the file is fixed."""
    where = f"{file}:{line}" if file and line else (file or "the file php-fpm -t names")
    return f"fix {where}, then: {commands.php_fpm_test(binary)}", commands.start(unit), commands.journal(unit)
