"""PHP-FPM workers die on a fatal signal (SIGSEGV, SIGBUS, SIGABRT) mid-request: nginx answers 502."""

from __future__ import annotations

from exporter.causes import commands
from exporter.causes.model import AlertText, Cause, CauseSpec

SPEC = CauseSpec(
    cause=Cause.PHP_FPM_WORKERS_CRASHING,
    alert="PhpFpmWorkersCrashing",
    title="PHP-FPM workers crash (SIGSEGV, SIGBUS or SIGABRT)",
    status_code=502,
    evidence=("logs",),
    page=AlertText(
        summary="PHP-FPM workers crash on {instance} (nginx answers 502)",
        meaning="PHP-FPM workers on {instance} exit on a fatal signal (SIGSEGV, SIGBUS or SIGABRT) while"
        " serving: nginx sees the connection reset or closed early and answers 502 for those requests.",
        for_seconds=60,
        severity="warning",
    ),
    faults=("php_worker_segfault",),
)


def find_the_crash(php_fpm_log: str, unit: str, binary: str) -> tuple[str, ...]:
    """Which script and which extension: the log, the core dumps, then the usual suspects."""
    return (
        f"sudo grep -E 'exited on signal (11|7|6)' {php_fpm_log} | tail   # when, which pool",
        f"sudo coredumpctl list {binary}; sudo coredumpctl info {binary}   # the crashing frame",
        "disable the suspect extension or JIT (opcache.jit=off), update PHP and its extensions",
        f"{commands.restart(unit)}   # after the change",
    )
