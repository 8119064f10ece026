"""The causes the logs prove by themselves: each current episode of such lines, with a fix that fits.

Run after every probe step: a timeout on a pool the probes found exhausted is the exhaustion's, not a
cause of its own. The fix is filled from discovery (the location's ``*_buffer_size``, the pool's
``listen.backlog``, nginx's ``worker_connections``) and from the host (``net.core.somaxconn``, SELinux).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from exporter.causes import (
    CAUSES,
    Cause,
    Facts,
    Finding,
    Verdict,
    listen_backlog_full,
    nginx_connections_exhausted,
    php_fpm_workers_crashing,
    selinux_denied,
    upstream_header_too_big,
    upstream_host_not_found,
    upstream_protocol_mismatch,
    upstream_request_killed,
    upstream_timeout,
    upstream_tls_failed,
)
from exporter.causes.commands import NGINX_TEST_AND_RELOAD
from exporter.checks.logs import LogsResult
from exporter.diagnosis.context import StepContext
from exporter.diagnosis.explain import explainers, upstream_role
from exporter.discovery.model import Pass
from exporter.discovery.nginx import parse_time
from exporter.logs.episodes import Episode, clock, index_of, line_epoch

LOG_DECIDED = frozenset(
    {
        Cause.UPSTREAM_HEADER_TOO_BIG,
        Cause.PHP_FPM_WORKERS_CRASHING,
        Cause.UPSTREAM_REQUEST_KILLED,
        Cause.LISTEN_BACKLOG_FULL,
        Cause.UPSTREAM_PROTOCOL_MISMATCH,
        Cause.UPSTREAM_TLS_FAILED,
        Cause.NGINX_CONNECTIONS_EXHAUSTED,
        Cause.SELINUX_DENIED,
        Cause.UPSTREAM_HOST_NOT_FOUND,
        Cause.UPSTREAM_TIMEOUT,
    }
)
"""Causes whose lines, while they keep arriving, are the cause whatever the probes saw."""

SOMAXCONN = Path("/proc/sys/net/core/somaxconn")

Fix = tuple[tuple[str, ...], Facts]
FixBuilder = Callable[[StepContext, str, Sequence[Episode]], Fix]


def episodes_of(result: LogsResult, window: float, now: float) -> tuple[Episode, ...]:
    """The round's episodes (built from its recent lines when the round has none, as run once)."""
    if result.episodes or not result.recent:
        return result.episodes
    return index_of(((e.key(), line_epoch(e.time, now), e.line) for e in result.recent), window).episodes()


def log_causes(ctx: StepContext, earlier: Sequence[Finding]) -> list[Finding]:
    result = ctx.results.logs
    if result is None:
        return []
    now, window = time.time(), ctx.config.logs.evidence_window_seconds
    probed = frozenset(f.failing_cause for f in earlier if f.failing_cause is not None)
    groups: dict[tuple[Cause, str], list[Episode]] = {}
    for episode in episodes_of(result, window, now):
        cause = episode.key.cause
        if cause not in LOG_DECIDED or not episode.current(now, window):
            continue
        if cause is Cause.UPSTREAM_TIMEOUT and _timeout_explained(ctx, episode, probed):
            continue
        groups.setdefault((cause, episode.key.where), []).append(episode)
    findings = [_finding(ctx, cause, where, found) for (cause, where), found in sorted(groups.items())]
    return findings + _terminate_before_nginx(ctx)


def _timeout_explained(ctx: StepContext, episode: Episode, probed: frozenset[Cause]) -> bool:
    """A timeout on an upstream whose pool the probes found exhausted (or its queue full) is theirs."""
    role = upstream_role(ctx.config, episode.key.where) if episode.key.where else None
    return bool((explainers(episode.key.kind, role) - {Cause.UPSTREAM_TIMEOUT}) & probed)


def _finding(ctx: StepContext, cause: Cause, where: str, episodes: Sequence[Episode]) -> Finding:
    fix, facts = FIXES[cause](ctx, where, episodes)
    spec = CAUSES[cause]
    count = sum(e.count for e in episodes)
    first, last = min(e.first for e in episodes), max(e.last for e in episodes)
    newest = max(episodes, key=lambda e: e.last)
    place = (
        f"upstream {where}" if newest.key.source == "nginx" and where else f"pool [{where}]" if where else ""
    )
    evidence = (
        f"{count} line(s) of {', '.join(sorted({e.key.kind for e in episodes}))}"
        + (f" ({place})" if place else "")
        + f" from {clock(first)} to {clock(last)} in {', '.join(sorted({e.key.path for e in episodes}))}",
        f"the most recent: {newest.line}",
    )
    return Finding(f"log_cause:{cause.value}:{where}", f"{spec.title} (the logs show it)", Verdict.FAIL,
                   evidence, cause, fix, facts)  # fmt: skip


# -- what discovery knows of the upstream ------------------------------------------------------------


def _passes(ctx: StepContext, where: str) -> tuple[Pass, ...]:
    discovered = ctx.config.discovered
    return discovered.passes_to(where) if discovered is not None and where else ()


def _at(item: Pass | None) -> tuple[str, Facts]:
    """``FILE:LINE`` of a pass directive, and those facts; a description when discovery found none."""
    if item is None or not item.origin.file:
        return "the location that passes to this upstream", Facts()
    return f"{item.origin.file}:{item.origin.line}", Facts(file=item.origin.file, line=item.origin.line)


def _last_line(episodes: Sequence[Episode]) -> str:
    return max(episodes, key=lambda e: e.last).line


# -- one fix per cause ---------------------------------------------------------------------------------

_SIZE = re.compile(r"^(\d+)([kKmM]?)$")


def _proposed_buffer(current: str) -> str:
    """Twice the current size, at least 32k (a 16 KiB header with room to spare)."""
    m = _SIZE.match(current)
    if m is None:
        return "32k"
    size = int(m.group(1)) * {"": 1, "k": 1024, "m": 1 << 20}[m.group(2).lower()]
    return f"{max(2 * size, 32 * 1024) // 1024}k"


def _header_fix(ctx: StepContext, where: str, episodes: Sequence[Episode]) -> Fix:
    item = next((p for p in _passes(ctx, where) if p.buffer_size is not None), None)
    location, facts = _at(item)
    if item is None or item.buffer_size is None:
        role = upstream_role(ctx.config, where) if where else None
        directive = "proxy_buffer_size" if role == "backend" else "fastcgi_buffer_size"
        return upstream_header_too_big.raise_buffer(directive, "4k|8k (the default)", location, "32k"), facts
    size = item.buffer_size
    place = size.where if size.origin.file else location
    return upstream_header_too_big.raise_buffer(
        size.name, size.value, place, _proposed_buffer(size.value)
    ), facts


def _php_binary(unit: str) -> str:
    """``php8.2-fpm`` -> ``php-fpm8.2``, the binary coredumpctl knows it by."""
    m = re.match(r"^php(\d+\.\d+)-fpm$", unit)
    return f"php-fpm{m.group(1)}" if m else "php-fpm"


def _crash_fix(ctx: StepContext, where: str, episodes: Sequence[Episode]) -> Fix:
    del where
    unit = ctx.units["php_fpm"]
    log = episodes[0].key.path
    return php_fpm_workers_crashing.find_the_crash(log, unit, _php_binary(unit)), Facts(unit=unit, file=log)


def _killed_fix(ctx: StepContext, where: str, episodes: Sequence[Episode]) -> Fix:
    if episodes[0].key.source == "app":
        unit = ctx.units["backend"]
        return upstream_request_killed.gunicorn_timeout(unit), Facts(unit=unit)
    unit = ctx.units["php_fpm"]
    discovered = ctx.config.discovered
    pool = (
        next((p for p in discovered.php_fpm.pools if p.name == where), None)
        if discovered and discovered.php_fpm
        else None
    )
    setting, place, nginx_timeout = "request_terminate_timeout", "the pool file", "fastcgi_read_timeout"
    if pool is not None:
        found = pool.settings.get("request_terminate_timeout")
        setting = (
            f"request_terminate_timeout (now {found.value})" if found else "max_execution_time (php.ini)"
        )
        place = pool.file
        nginx_timeout = _nginx_read_timeout(ctx, pool.listen or "")
    fix = upstream_request_killed.php_terminated(episodes[0].key.path, setting, place, nginx_timeout, unit)
    return fix, Facts(unit=unit, file=pool.file if pool else "")


def _nginx_read_timeout(ctx: StepContext, listen: str) -> str:
    for item in _passes(ctx, listen):
        for timeout in item.timeouts:
            if timeout.name.endswith("_read_timeout"):
                return f"{timeout.name} {timeout.seconds:g}s"
    return "fastcgi_read_timeout"


def read_somaxconn(path: Path = SOMAXCONN) -> int | None:
    """The kernel's cap on every listen backlog (one small read of /proc: no deadline needed)."""
    try:
        return int(path.read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        return None


def _backlog_fix(ctx: StepContext, where: str, episodes: Sequence[Episode]) -> Fix:
    del episodes
    discovered = ctx.config.discovered
    pool = discovered.pool_for(where.removeprefix("unix:")) if discovered is not None and where else None
    unit = f"php{pool.version}-fpm" if pool is not None and pool.version else ctx.units["php_fpm"]
    current = (pool.get("listen.backlog") if pool else None) or "the default (511)"
    fix = listen_backlog_full.raise_backlog(
        pool.file if pool else "the pool file", current, read_somaxconn(), unit
    )
    return fix, Facts(unit=unit, socket=where, file=pool.file if pool else "")


def _protocol_fix(ctx: StepContext, where: str, episodes: Sequence[Episode]) -> Fix:
    item = next(iter(_passes(ctx, where)), None)
    location, facts = _at(item)
    address = where.removeprefix("unix:") if where.startswith("unix:") else where
    fastcgi = item.directive == "fastcgi_pass" if item is not None else "FastCGI" in _last_line(episodes)
    if fastcgi:
        discovered = ctx.config.discovered
        pools = discovered.php_fpm.pools if discovered is not None and discovered.php_fpm is not None else ()
        listens = {p.listen for p in pools if p.listen} or {p.socket for p in ctx.config.php_fpm}
        sockets = ", ".join(sorted(listens - {address, where})) or "its socket"
        return upstream_protocol_mismatch.fastcgi_to_http(location, address, sockets), facts
    return upstream_protocol_mismatch.http_to_fastcgi(location, address), facts


def _tls_fix(ctx: StepContext, where: str, episodes: Sequence[Episode]) -> Fix:
    item = next(iter(_passes(ctx, where)), None)
    location, facts = _at(item)
    if "wrong version number" in _last_line(episodes) or "packet length too long" in _last_line(episodes):
        return upstream_tls_failed.plain_port(location, where), facts
    return upstream_tls_failed.certificate(location, where), facts


def _connections_fix(ctx: StepContext, where: str, episodes: Sequence[Episode]) -> Fix:
    if "(99:" in _last_line(episodes):
        location, facts = _at(next(iter(_passes(ctx, where)), None))
        return nginx_connections_exhausted.ports(location), facts
    nginx = ctx.config.discovered.nginx if ctx.config.discovered is not None else None
    limit = nginx.limit("worker_connections") if nginx is not None else None
    if limit is None or not limit.origin.file:
        return nginx_connections_exhausted.raise_limits(
            "the events {} block of nginx.conf", "512 (the default)"
        ), Facts()
    facts = Facts(file=limit.origin.file, line=limit.origin.line)
    return nginx_connections_exhausted.raise_limits(limit.where, limit.value), facts


def selinux_state(root: str) -> tuple[str | None, str | None]:
    """``(enforce, httpd_can_network_connect)`` as the files under ``root`` (``/sys/fs/selinux``) say."""
    values: list[str | None] = []
    for name in ("enforce", "booleans/httpd_can_network_connect"):
        try:
            values.append(Path(root, name).read_text(encoding="ascii").split()[0])
        except (OSError, IndexError):
            values.append(None)
    return values[0], values[1]


def _selinux_fix(ctx: StepContext, where: str, episodes: Sequence[Episode]) -> Fix:
    del episodes
    enforce, boolean = selinux_state(ctx.config.selinux_root)
    if enforce == "1" and boolean != "1":
        return selinux_denied.FIX_BOOLEAN, Facts(socket=where)
    return selinux_denied.FIX_UNKNOWN_MODULE, Facts(socket=where)


_UNRESOLVED = re.compile(
    r"\*\d+ (\S{1,253}) could not be resolved|host not found in upstream \"([^\"]{1,253})\""
)


def _host_fix(ctx: StepContext, where: str, episodes: Sequence[Episode]) -> Fix:
    del where
    m = _UNRESOLVED.search(_last_line(episodes))
    logged = (m.group(1) or m.group(2)).rsplit(":", 1)[0] if m else ""
    nginx = ctx.config.discovered.nginx if ctx.config.discovered is not None else None
    item = next((p for p in nginx.passes if logged and logged in p.raw), None) if nginx else None
    # The name comes from a log line: shown only when nginx's own configuration holds it.
    known = item is not None or (nginx is not None and _in_files(logged, nginx.files))
    name = logged if known else "<the upstream's name>"
    resolver = nginx.resolvers[0] if nginx is not None and nginx.resolvers else None
    location, facts = _at(item)
    if item is None and resolver is not None:
        location, facts = resolver.where, Facts(file=resolver.origin.file or "", line=resolver.origin.line)
    server = resolver.value.split()[0] if resolver is not None else "127.0.0.53"
    return upstream_host_not_found.resolve(name, location, server), facts


def _in_files(name: str, files: Sequence[str]) -> bool:
    """Whether ``name`` is written in one of nginx's configuration files (each read once, at most 1 MiB)."""
    if not name:
        return False
    for path in files:
        try:
            with open(path, "rb") as handle:
                if name.encode() in handle.read(1 << 20):
                    return True
        except OSError:
            continue
    return False


def _timeout_fix(ctx: StepContext, where: str, episodes: Sequence[Episode]) -> Fix:
    log = episodes[0].key.path
    for item in _passes(ctx, where):
        for timeout in item.timeouts:
            if timeout.name.endswith("_read_timeout"):
                target = timeout.origin if timeout.origin.file else item.origin
                fix = (
                    f"sudo tail -50 {log} | grep 'timed out'   # which requests, since when",
                    f"in {target.file} near line {target.line}: {timeout.name} (now {timeout.seconds:g}s)"
                    " above the upstream's slowest answer, or make the upstream faster",
                    NGINX_TEST_AND_RELOAD,
                )
                return fix, Facts(file=target.file or "", line=target.line)
    return upstream_timeout.front_slow(log), Facts(file=log)


FIXES: dict[Cause, FixBuilder] = {
    Cause.UPSTREAM_HEADER_TOO_BIG: _header_fix,
    Cause.PHP_FPM_WORKERS_CRASHING: _crash_fix,
    Cause.UPSTREAM_REQUEST_KILLED: _killed_fix,
    Cause.LISTEN_BACKLOG_FULL: _backlog_fix,
    Cause.UPSTREAM_PROTOCOL_MISMATCH: _protocol_fix,
    Cause.UPSTREAM_TLS_FAILED: _tls_fix,
    Cause.NGINX_CONNECTIONS_EXHAUSTED: _connections_fix,
    Cause.SELINUX_DENIED: _selinux_fix,
    Cause.UPSTREAM_HOST_NOT_FOUND: _host_fix,
    Cause.UPSTREAM_TIMEOUT: _timeout_fix,
}


# -- the configuration finding: an upstream that gives up before nginx does -------------------------


def _terminate_before_nginx(ctx: StepContext) -> list[Finding]:
    """A pool whose request_terminate_timeout is shorter than nginx's fastcgi_read_timeout to it."""
    discovered = ctx.config.discovered
    if discovered is None or discovered.php_fpm is None:
        return []
    findings = []
    for pool in discovered.php_fpm.pools:
        found = pool.settings.get("request_terminate_timeout")
        seconds = parse_time(found.value) if found else None
        if not seconds or found is None:
            continue
        for item in discovered.passes_to(pool.listen or ""):
            read = next((t for t in item.timeouts if t.name == "fastcgi_read_timeout"), None)
            if read is not None and seconds < read.seconds:
                findings.append(Finding(
                    f"terminate_timeout:{pool.file}:{pool.name}",
                    f"Pool [{pool.name}] lets a request run as long as nginx waits for it",
                    Verdict.WARN,
                    (f"{pool.file}: request_terminate_timeout {found.value}, shorter than nginx's"
                     f" fastcgi_read_timeout {read.seconds:g}s ({item.origin.file}:{item.origin.line})",
                     "a slower request is killed by PHP-FPM and nginx answers 502, not 504"),
                    fix=(f"in {pool.file}: request_terminate_timeout = {int(read.seconds) + 5}s (above nginx's)"
                         " or lower fastcgi_read_timeout",),
                ))  # fmt: skip
                break
    return findings
