"""``ls -la`` of the backend's own unix socket (``proxy_pass http://unix:/run/gunicorn.sock``, ``uwsgi_pass
unix:``): whether it exists, something listens on it, and nginx's user may connect."""

from __future__ import annotations

import errno
from collections.abc import Sequence

from exporter.causes import Cause, Facts, Finding, Verdict, backend_down, commands, socket_permission_denied
from exporter.checks.sockets import SocketResult
from exporter.config import backend_sockets as backend_socket_paths
from exporter.diagnosis.context import StepContext


def backend_sockets(ctx: StepContext, earlier: Sequence[Finding]) -> list[Finding]:
    del earlier
    paths = set(backend_socket_paths(ctx.config))
    return [_finding(ctx, sock) for sock in ctx.results.sockets if sock.path in paths]


def _finding(ctx: StepContext, sock: SocketResult) -> Finding:
    unit = ctx.units["backend"]
    step, facts = f"backend_socket:{sock.path}", Facts(unit=unit, socket=sock.path)
    title = f"The backend's socket {sock.path} exists and nginx's user may use it"
    if not sock.exists:
        return Finding(step, f"The backend's socket {sock.path} does not exist", Verdict.FAIL,
                       (f"ls -la {sock.path}: {sock.connect_error or 'No such file or directory'}",
                        "the backend is not running, or listens elsewhere (its --bind / --uds)"),
                       Cause.BACKEND_DOWN, backend_down.start(unit), facts)  # fmt: skip
    evidence = [f"{sock.mode} {sock.owner}:{sock.group} {sock.path}"]
    if sock.connect_errno == errno.ECONNREFUSED:
        return Finding(step, f"The backend's socket {sock.path} is stale: nothing listens on it", Verdict.FAIL,
                       (*evidence, "connect() refused: the process that made it is gone"),
                       Cause.BACKEND_DOWN, (commands.restart(unit), commands.journal(unit)), facts)  # fmt: skip
    if sock.accessible is None:
        return Finding(step, title, Verdict.WARN, (*evidence, f"user {sock.user} does not exist here"))
    if not sock.accessible:
        blocked = sock.blocked_by
        if blocked is not None and blocked.needs == "search":
            evidence.append(
                f"{sock.user} may not enter {blocked.path} ({blocked.mode} {blocked.owner}:{blocked.group})"
            )
            fix = socket_permission_denied.open_folder(blocked.path)
        else:
            evidence.append(f"{sock.user} may not write to the socket")
            fix = socket_permission_denied.backend_socket(sock.path, ctx.config.nginx_user, unit)
        return Finding(step, f"nginx's user {sock.user} may not use the backend's socket {sock.path}", Verdict.FAIL,
                       tuple(evidence), Cause.SOCKET_PERMISSION_DENIED, fix, facts)  # fmt: skip
    return Finding(step, title, Verdict.OK, tuple(evidence))
