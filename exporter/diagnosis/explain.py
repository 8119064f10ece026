"""Which cause explains which log lines: the tables behind "every 502/504 nginx logs has a cause".

A line whose kind names a cause by itself (``upstream sent too big header``) is that cause's evidence.
A generic line (a refused connect, a reset) is explained by a cause that is active and can produce it
on that upstream: PHP-FPM's causes explain lines to PHP-FPM, the backend's to the backend, the host's
(memory, disk, nginx's own limits) any. A generic line to an upstream that answers again, and that
stopped a while ago, belongs to an incident that is over. What is left is ``unexplained``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, Literal

from exporter.causes import Cause
from exporter.config import Config
from exporter.logs import classify as kinds
from exporter.logs.episodes import Episode
from exporter.logs.lines import cause_named

Role = Literal["php_fpm", "backend"]

_PHP_FPM_CONFIG_INVALID = cause_named("php_fpm_config_invalid")
_DATABASE_DOWN = cause_named("database_down")

PHP_FPM_CAUSES: Final = frozenset(
    c
    for c in (
        Cause.PHP_FPM_DOWN,
        Cause.SOCKET_PATH_MISMATCH,
        Cause.SOCKET_PERMISSION_DENIED,
        Cause.PHP_FPM_POOL_EXHAUSTED,
        Cause.PHP_FPM_WORKERS_CRASHING,
        _PHP_FPM_CONFIG_INVALID,
    )
    if c is not None
)
BACKEND_CAUSES: Final = frozenset(
    c for c in (Cause.BACKEND_DOWN, Cause.BACKEND_UNHEALTHY, _DATABASE_DOWN) if c is not None
)
HOST_CAUSES: Final = frozenset({Cause.MEMORY_EXHAUSTED, Cause.DISK_FULL, Cause.NGINX_CONNECTIONS_EXHAUSTED})

_DOWN: Final = frozenset(
    c
    for c in (Cause.PHP_FPM_DOWN, Cause.BACKEND_DOWN, Cause.SOCKET_PATH_MISMATCH, _PHP_FPM_CONFIG_INVALID)
    if c
)
_KILLED: Final = frozenset(
    {Cause.PHP_FPM_WORKERS_CRASHING, Cause.UPSTREAM_REQUEST_KILLED, Cause.PHP_FPM_DOWN, Cause.BACKEND_DOWN}
)
_SLOW: Final = frozenset(
    {Cause.UPSTREAM_TIMEOUT, Cause.PHP_FPM_POOL_EXHAUSTED, Cause.LISTEN_BACKLOG_FULL, Cause.BACKEND_UNHEALTHY}
)

KIND_EXPLAINERS: Final[dict[str, frozenset[Cause]]] = {
    kinds.CONNECTION_REFUSED: _DOWN,
    kinds.SOCKET_MISSING: _DOWN,
    kinds.PERMISSION_DENIED: frozenset({Cause.SOCKET_PERMISSION_DENIED, Cause.SELINUX_DENIED}),
    kinds.CONNECTION_RESET: _KILLED,
    kinds.PREMATURE_CLOSE: _KILLED,
    kinds.OTHER_UPSTREAM: _KILLED,
    kinds.READ_TIMEOUT: _SLOW,
    kinds.CONNECT_TIMEOUT: _SLOW,
    kinds.BACKLOG_FULL: frozenset({Cause.LISTEN_BACKLOG_FULL}),
}
"""Besides the host's causes and the line's own cause: the causes that produce each generic kind."""

RECOVERED_AFTER_SECONDS: Final = 15.0
"""A refused or reset upstream that answers again and logged nothing for this long: the incident is over."""

_RECOVERABLE: Final = frozenset(
    {kinds.CONNECTION_REFUSED, kinds.SOCKET_MISSING, kinds.PERMISSION_DENIED, kinds.CONNECTION_RESET,
     kinds.PREMATURE_CLOSE, kinds.NO_LIVE_UPSTREAMS, kinds.OTHER_UPSTREAM}
)  # fmt: skip


def upstream_role(config: Config, upstream: str) -> Role | None:
    """Whether ``upstream`` (``unix:PATH`` or ``host:port``, as nginx logs it) is PHP-FPM or the backend."""
    address = upstream.removeprefix("unix:")
    if any(pool.socket.removeprefix("unix:") == address for pool in config.php_fpm):
        return "php_fpm"
    if any(_host_port(target.url) == address for target in config.http if target.role == "backend"):
        return "backend"
    discovered = config.discovered
    if discovered is not None:
        for item in discovered.passes_to(upstream):
            return "php_fpm" if item.directive == "fastcgi_pass" else "backend"
    return None


def _host_port(url: str) -> str:
    rest = url.split("://", 1)[-1]
    host_port = rest.split("/", 1)[0]
    if ":" in host_port.rsplit("]", 1)[-1]:
        return host_port
    return f"{host_port}:{443 if url.startswith('https') else 80}"


def explainers(kind: str, role: Role | None) -> frozenset[Cause]:
    """The causes that, when active, explain a generic line of ``kind`` to an upstream of ``role``."""
    found = KIND_EXPLAINERS.get(kind, frozenset()) | HOST_CAUSES
    if kind == kinds.NO_LIVE_UPSTREAMS:
        found = frozenset(Cause)  # nginx marked every server down after failures: whatever failed them
    if role == "php_fpm":
        found -= BACKEND_CAUSES
    elif role == "backend":
        found -= PHP_FPM_CAUSES
    return found


def explained(
    episode: Episode, active: frozenset[Cause], role: Role | None, answering: bool, now: float
) -> bool:
    """Whether an active cause explains the nginx lines of ``episode``, or their incident is over."""
    if episode.key.cause is not None and episode.key.cause in active:
        return True
    if explainers(episode.key.kind, role) & active:
        return True
    over = now - episode.last >= RECOVERED_AFTER_SECONDS
    return episode.key.kind in _RECOVERABLE and answering and over


def gateway_episodes(episodes: Iterable[Episode], now: float, window: float) -> list[Episode]:
    """The current episodes of nginx lines: each line one 502 or 504 nginx answered."""
    return [e for e in episodes if e.key.source == "nginx" and e.current(now, window)]
