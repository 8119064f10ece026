"""The causes of a 502/504 that the diagnosis names: the one source of truth.

Alert names, runbook paths, the ``badgateway_cause`` metric and ``diagnose`` all read this table.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Cause(StrEnum):
    """Stable cause names shared by metrics, alerts, dashboards and ``diagnose``."""

    PHP_FPM_DOWN = "php_fpm_down"
    BACKEND_DOWN = "backend_down"
    BACKEND_UNHEALTHY = "backend_unhealthy"
    SOCKET_PATH_MISMATCH = "socket_path_mismatch"
    SOCKET_PERMISSION_DENIED = "socket_permission_denied"
    PHP_FPM_POOL_EXHAUSTED = "php_fpm_pool_exhausted"
    UPSTREAM_TIMEOUT = "upstream_timeout"
    MEMORY_EXHAUSTED = "memory_exhausted"
    DISK_FULL = "disk_full"
    NGINX_CONFIG_INVALID = "nginx_config_invalid"
    NGINX_DOWN = "nginx_down"


@dataclass(frozen=True)
class CauseInfo:
    """What a cause means to the person paged."""

    cause: Cause
    alert: str
    title: str
    status_code: int

    @property
    def runbook_path(self) -> str:
        return f"docs/runbooks/{self.alert}.md"


CAUSES: dict[Cause, CauseInfo] = {
    info.cause: info
    for info in (
        CauseInfo(Cause.PHP_FPM_DOWN, "PhpFpmDown", "PHP-FPM is not running", 502),
        CauseInfo(Cause.BACKEND_DOWN, "BackendDown", "The Python backend is not running", 502),
        CauseInfo(Cause.BACKEND_UNHEALTHY, "BackendUnhealthy", "The Python backend answers with errors", 502),
        CauseInfo(
            Cause.SOCKET_PATH_MISMATCH,
            "PhpFpmSocketPathMismatch",
            "nginx points at a PHP-FPM socket that does not exist, another one does",
            502,
        ),
        CauseInfo(
            Cause.SOCKET_PERMISSION_DENIED,
            "PhpFpmSocketPermissionDenied",
            "nginx workers may not connect to the PHP-FPM socket",
            502,
        ),
        CauseInfo(
            Cause.PHP_FPM_POOL_EXHAUSTED,
            "PhpFpmPoolExhausted",
            "Every PHP-FPM worker is busy or hung",
            504,
        ),
        CauseInfo(Cause.UPSTREAM_TIMEOUT, "UpstreamTimeout", "An upstream answers too slowly", 504),
        CauseInfo(Cause.MEMORY_EXHAUSTED, "MemoryExhausted", "The server is out of memory", 502),
        CauseInfo(Cause.DISK_FULL, "DiskFull", "A filesystem the stack writes to is full", 502),
        CauseInfo(
            Cause.NGINX_CONFIG_INVALID,
            "NginxConfigInvalid",
            "The nginx configuration on disk fails nginx -t",
            502,
        ),
        CauseInfo(Cause.NGINX_DOWN, "NginxDown", "nginx is not running", 502),
    )
}
