"""Every PHP-FPM worker is busy or hung: requests queue until nginx gives up (504)."""

from __future__ import annotations

from exporter.causes import commands
from exporter.causes.model import AlertText, Cause, CauseSpec

SPEC = CauseSpec(
    cause=Cause.PHP_FPM_POOL_EXHAUSTED,
    alert="PhpFpmPoolExhausted",
    title="Every PHP-FPM worker is busy or hung",
    status_code=504,
    evidence=("fastcgi",),
    page=AlertText(
        summary="Every PHP-FPM worker is busy on {instance}",
        meaning="The PHP-FPM pool on {instance} is exhausted: requests wait for a free worker and nginx"
        " answers 504.",
        for_seconds=120,
    ),
    faults=("pool_exhausted",),
)


def free_workers(unit: str, pool_file: str) -> tuple[str, ...]:
    return (
        f"{commands.restart(unit)}   # frees hung workers now",
        f"raise pm.max_children in {pool_file} if memory allows",
        "find the slow scripts: request_slowlog_timeout = 5s and slowlog = /var/log/php-fpm-slow.log",
    )
