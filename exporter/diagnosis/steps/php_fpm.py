"""Step 5 of the runbook: the PHP-FPM socket (``ls -la``), its pool files, and a FastCGI ping (``cgi-fcgi``)."""

from __future__ import annotations

import errno
from collections.abc import Sequence

from exporter.causes import (
    Cause,
    Facts,
    Finding,
    Verdict,
    php_fpm_down,
    php_fpm_pool_exhausted,
    socket_path_mismatch,
    socket_permission_denied,
)
from exporter.checks.fastcgi import FailureReason, FastCGIResult
from exporter.checks.processes import listening_addresses
from exporter.checks.sockets import SocketResult
from exporter.config import backend_sockets
from exporter.diagnosis.context import StepContext
from exporter.diagnosis.steps.php_fpm_config import invalid_config, php_fpm_start_fix
from exporter.discovery.model import Discovered


def pool_file_of(ctx: StepContext, address: str, unit: str) -> str:
    """The pool file that declares ``address``, else where Debian keeps the default pool."""
    discovered = ctx.config.discovered
    pool = discovered.pool_for(address) if discovered is not None else None
    if pool is not None:
        return pool.file
    version = unit.removeprefix("php").removesuffix("-fpm")
    return f"/etc/php/{version if version[:1].isdigit() else '*'}/fpm/pool.d/www.conf"


def sockets(ctx: StepContext, earlier: Sequence[Finding]) -> list[Finding]:
    """``ls -la`` of each PHP-FPM socket nginx uses, and whether nginx's user may connect."""
    del earlier
    results = ctx.results
    listeners: list[str] = []
    procs = results.processes
    if procs is not None and any(not s.exists for s in results.sockets):
        php_procs = procs.of("php_fpm")
        listeners = listening_addresses(php_procs.main_pids if php_procs else ())
    findings = []
    backend = set(backend_sockets(ctx.config))  # the backend's own: see steps.backend_sockets
    for sock in results.sockets:
        if sock.path in backend:
            continue
        # The likeliest first: discovery's alternatives (a socket no site uses before one that is busy),
        # then whatever else the master listens on.
        alternatives = list(results.alternatives_of(sock.path))
        findings.append(
            _socket_finding(ctx, sock, [*alternatives, *(a for a in listeners if a not in alternatives)])
        )
    return findings


def _socket_title(sock: SocketResult) -> tuple[str, str]:
    return f"socket:{sock.path}", f"PHP-FPM socket {sock.path} exists and nginx's user may use it"


def _socket_finding(ctx: StepContext, sock: SocketResult, listeners: list[str]) -> Finding:
    if not sock.exists:
        return _missing_socket(ctx, sock, listeners)
    step, title = _socket_title(sock)
    unit = ctx.units["php_fpm"]
    evidence = [
        f"{sock.mode} {sock.owner}:{sock.group} {sock.path}" + ("" if sock.is_socket else " (not a socket)")
    ]
    if sock.connect_errno == errno.ECONNREFUSED:
        return Finding(
            step, f"PHP-FPM socket {sock.path} is stale: nothing listens on it", Verdict.FAIL,
            (*evidence, "connect() refused: a stale socket file, the PHP-FPM master that made it is gone"),
            Cause.PHP_FPM_DOWN, (php_fpm_down.restart_stale(unit) if invalid_config(ctx) is None else php_fpm_start_fix(ctx, unit)), Facts(unit=unit, socket=sock.path),
        )  # fmt: skip
    if sock.accessible is None:
        evidence.append(f"user {sock.user} does not exist here: cannot check nginx's access")
        return Finding(step, title, Verdict.WARN, tuple(evidence))
    if not sock.accessible:
        return _denied_socket(ctx, sock, evidence)
    if not sock.connectable and sock.connect_error:
        evidence.append(f"connect(): {sock.connect_error}")
        return Finding(step, title, Verdict.WARN, tuple(evidence))
    evidence.append(f"{sock.user} may connect; connect() succeeds")
    return Finding(step, title, Verdict.OK, tuple(evidence))


def _denied_socket(ctx: StepContext, sock: SocketResult, evidence: list[str]) -> Finding:
    step, title = _socket_title(sock)
    unit = ctx.units["php_fpm"]
    blocked = sock.blocked_by
    pool_file = pool_file_of(ctx, sock.path, unit)
    if blocked is not None and blocked.needs == "search":
        evidence.append(
            f"{sock.user} may not enter {blocked.path} ({blocked.mode} {blocked.owner}:{blocked.group})"
        )
        fix = socket_permission_denied.open_folder(blocked.path)
        facts = Facts(unit=unit, socket=sock.path, file=blocked.path)
    else:
        evidence.append(f"{sock.user} may not write to the socket")
        fix = socket_permission_denied.pool_owner(pool_file, ctx.config.nginx_user, unit)
        facts = Facts(unit=unit, socket=sock.path, file=pool_file)
    title = f"nginx's user {sock.user} may not use PHP-FPM socket {sock.path}"
    return Finding(step, title, Verdict.FAIL, tuple(evidence), Cause.SOCKET_PERMISSION_DENIED, fix, facts)


def _missing_socket(ctx: StepContext, sock: SocketResult, listeners: list[str]) -> Finding:
    step, title = f"socket:{sock.path}", f"PHP-FPM socket {sock.path} does not exist"
    php_unit = ctx.units["php_fpm"]
    php_running = ctx.running["php_fpm"]
    evidence = [f"ls -la {sock.path}: {sock.connect_error or 'No such file or directory'}"]
    discovered = ctx.config.discovered
    declaring = discovered.pool_for(sock.path) if discovered is not None else None
    if php_running and declaring is not None:
        # A pool file declares this very socket: that pool's PHP-FPM is down, the path is right.
        unit = f"php{declaring.version}-fpm" if declaring.version else php_unit
        listen = declaring.settings["listen"].origin
        return Finding(
            step, title, Verdict.FAIL,
            (*evidence, f"pool [{declaring.name}] declares it ({listen.file}:{listen.line}) but its PHP-FPM"
             f" ({declaring.config_file}) is not listening; another PHP-FPM runs"),
            Cause.PHP_FPM_DOWN, php_fpm_start_fix(ctx, unit), Facts(unit=unit, socket=sock.path),
        )  # fmt: skip
    if php_running:
        alternatives = [a for a in listeners if a != sock.path]
        evidence.append(f"PHP-FPM is running and listens on: {', '.join(alternatives) or 'nothing visible'}")
        target = alternatives[0] if alternatives else None
        fix = socket_path_mismatch.repoint(sock.path, target, *_mismatch_lines(discovered, sock.path, target))
        passes = discovered.fastcgi_passes(sock.path) if discovered is not None else ()
        where = passes[0].origin if passes else None
        facts = Facts(
            socket=sock.path, file=(where.file or "") if where else "", line=where.line if where else None
        )
        return Finding(step, title, Verdict.FAIL, tuple(evidence), Cause.SOCKET_PATH_MISMATCH, fix, facts)
    return Finding(
        step, title, Verdict.FAIL, (*evidence, "PHP-FPM is not running, so nothing created the socket"),
        Cause.PHP_FPM_DOWN, php_fpm_start_fix(ctx, php_unit), Facts(unit=php_unit, socket=sock.path),
    )  # fmt: skip


def _mismatch_lines(
    discovered: Discovered | None, path: str, target: str | None
) -> tuple[list[tuple[str, int, str]], tuple[str, int, str] | None]:
    """Where nginx names ``path`` and where the pool listening on ``target`` says so, when discovery knows."""
    if discovered is None or target is None:
        return [], None
    passes = [
        (item.origin.file or "", item.origin.line or 0, item.raw) for item in discovered.fastcgi_passes(path)
    ]
    pool = discovered.pool_for(target)
    if pool is None or "listen" not in pool.settings:
        return passes, None
    listen = pool.settings["listen"].origin
    return passes, (listen.file or pool.file, listen.line or 0, pool.name)


FASTCGI_TITLE = "PHP-FPM answers FastCGI ping"


def fastcgi(ctx: StepContext, earlier: Sequence[Finding]) -> list[Finding]:
    """``cgi-fcgi -bind -connect SOCKET`` with ``/ping``, and the pool's status page."""
    del earlier
    if ctx.config.php_fpm and not ctx.results.fastcgi:
        return [ctx.not_checked("fastcgi", FASTCGI_TITLE)]
    return [_fastcgi_finding(ctx, probe) for probe in ctx.results.fastcgi]


def _fastcgi_finding(ctx: StepContext, probe: FastCGIResult) -> Finding:
    if probe.up:
        return _answered(ctx, probe)
    step, title = f"fastcgi:{probe.socket}", f"PHP-FPM does not answer on {probe.socket}"
    unit = ctx.units["php_fpm"]
    path = probe.socket.removeprefix("unix:")
    facts = Facts(unit=unit, socket=path)
    evidence = (f"{probe.failure}: {probe.detail}",)
    reason = probe.failure
    if reason in (FailureReason.SOCKET_MISSING, FailureReason.CONNECTION_REFUSED):
        if path in ctx.sockets_by_path:
            # The socket finding names php_fpm_down or socket_path_mismatch from the same evidence.
            return Finding(step, title, Verdict.FAIL, evidence)
        return Finding(
            step, title, Verdict.FAIL, evidence, Cause.PHP_FPM_DOWN, php_fpm_start_fix(ctx, unit), facts
        )
    if reason == FailureReason.PERMISSION_DENIED:
        return Finding(step, title, Verdict.FAIL, (*evidence, "this exporter may not connect either"),
                       Cause.SOCKET_PERMISSION_DENIED, socket_permission_denied.check_pool(), facts)  # fmt: skip
    if reason == FailureReason.TIMEOUT:
        return Finding(
            step, f"PHP-FPM takes connections on {probe.socket} but no worker answers", Verdict.FAIL,
            (*evidence, "PHP-FPM took the connection but no worker answered: every worker is busy or hung"),
            Cause.PHP_FPM_POOL_EXHAUSTED,
            php_fpm_pool_exhausted.free_workers(unit, pool_file_of(ctx, path, unit)), facts,
        )  # fmt: skip
    if reason in (FailureReason.NOT_FOUND, FailureReason.ACCESS_DENIED):
        return Finding(step, f"PHP-FPM on {probe.socket} does not serve the ping", Verdict.WARN, evidence,
                       fix=("enable it in the pool file: ping.path = /ping and pm.status_path = /status",
                            f"sudo systemctl reload {unit}"))  # fmt: skip
    return Finding(step, title, Verdict.FAIL, evidence, fix=(f"sudo journalctl -u {unit} -n 50 --no-pager",))


_ANSWERED = {
    "ping": "ping answered pong in {ms} ms",
    "status": "the status page answered in {ms} ms (the pool sets no ping.path: no ping was sent)",
    "connect": "connect() accepted in {ms} ms (the pool sets no ping.path or pm.status_path: nothing was asked)",
}


def _answered(ctx: StepContext, probe: FastCGIResult) -> Finding:
    step, title = f"fastcgi:{probe.socket}", f"PHP-FPM answers a FastCGI ping on {probe.socket}"
    unit = ctx.units["php_fpm"]
    path = probe.socket.removeprefix("unix:")
    evidence = [_ANSWERED[probe.probe].format(ms=f"{probe.duration_seconds * 1000:.1f}")]
    locked_out = ctx.sockets_by_path.get(path)
    if locked_out is not None and locked_out.accessible is False:
        # The exporter (root) got an answer; nginx's workers would not: never an "ok" here.
        return Finding(
            step, f"PHP-FPM answers the exporter on {probe.socket}, but not nginx's user {locked_out.user}",
            Verdict.FAIL,
            (*evidence, f"the exporter may connect; {locked_out.user}, nginx's worker user, may not:"
             " nginx gets (13: Permission denied) and answers 502 (see the socket step)"),
        )  # fmt: skip
    status = probe.pool_status
    if status is not None:
        evidence.append(
            f"pool {status.pool} ({status.process_manager}): {status.active_processes} active,"
            f" {status.idle_processes} idle, {status.total_processes} total, listen queue {status.listen_queue},"
            f" max children reached {status.max_children_reached} times"
        )
        if status.listen_queue > 0:
            return Finding(
                step, f"Requests wait for a free PHP-FPM worker on {probe.socket}", Verdict.FAIL, (*evidence, f"{status.listen_queue} request(s) waiting for a free worker"),
                Cause.PHP_FPM_POOL_EXHAUSTED, php_fpm_pool_exhausted.free_workers(unit, pool_file_of(ctx, path, unit)),
                Facts(unit=unit, socket=path),
            )  # fmt: skip
    if probe.status_failure is not None:
        evidence.append(f"status page: {probe.status_detail}")
        return Finding(step, title, Verdict.WARN, tuple(evidence),
                       fix=("enable it in the pool: pm.status_path = /status",))  # fmt: skip
    return Finding(step, title, Verdict.OK, tuple(evidence))
