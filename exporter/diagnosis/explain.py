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
from exporter.logs.lines import BACKEND_CAUSES, PHP_FPM_CAUSES, generic_explainers

Role = Literal["php_fpm", "backend"]

RECOVERED_AFTER_SECONDS: Final = 15.0
"""A reset upstream that answers the probe and logged nothing for this long: the incident is over."""

_UNREACHABLE: Final = frozenset(
    {kinds.CONNECTION_REFUSED, kinds.SOCKET_MISSING, kinds.PERMISSION_DENIED, kinds.NO_LIVE_UPSTREAMS}
)
"""Kinds the probe would see too: an upstream that answers it now is reachable again."""
_MID_REQUEST: Final = frozenset({kinds.CONNECTION_RESET, kinds.PREMATURE_CLOSE, kinds.OTHER_UPSTREAM})
"""Kinds a probe does not see (they happen mid-request): over once the upstream answers and is quiet."""


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
    found = generic_explainers(kind)
    if role == "php_fpm":
        found -= BACKEND_CAUSES
    elif role == "backend":
        found -= PHP_FPM_CAUSES
    return found


def explained(
    episode: Episode,
    active: frozenset[Cause],
    role: Role | None,
    answering: bool,
    now: float,
    started_at: float | None = None,
) -> bool:
    """Whether an active cause explains the nginx lines of ``episode``, or their incident is over.

    ``started_at``: when the upstream's service (its main process) started; refused connects logged
    before it were the previous process's (a restart), whatever the probe sees now.
    """
    if episode.key.cause is not None and episode.key.cause in active:
        return True
    if explainers(episode.key.kind, role) & active:
        return True
    kind = episode.key.kind
    if kind in _UNREACHABLE and started_at is not None and episode.last <= started_at:
        return True
    if not answering:
        return False
    return kind in _UNREACHABLE or (kind in _MID_REQUEST and now - episode.last >= RECOVERED_AFTER_SECONDS)


def gateway_episodes(episodes: Iterable[Episode], now: float, window: float) -> list[Episode]:
    """The current episodes of nginx lines: each line one 502 or 504 nginx answered."""
    return [e for e in episodes if e.key.source == "nginx" and e.current(now, window)]
