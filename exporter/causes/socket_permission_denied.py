"""nginx's worker user may not connect to the PHP-FPM socket."""

from __future__ import annotations

from collections.abc import Sequence

from exporter.causes import commands
from exporter.causes.model import AlertText, Cause, CauseSpec

SPEC = CauseSpec(
    cause=Cause.SOCKET_PERMISSION_DENIED,
    alert="PhpFpmSocketPermissionDenied",
    title="nginx workers may not connect to the PHP-FPM socket",
    status_code=502,
    evidence=("sockets", "fastcgi"),
    page=AlertText(
        summary="nginx workers may not connect to the PHP-FPM socket on {instance}",
        meaning="nginx's worker user on {instance} gets Permission denied on the PHP-FPM socket (or the"
        " backend's own unix socket): its owner, group or mode, or a parent folder without search"
        " permission. nginx answers 502.",
        for_seconds=60,
    ),
    faults=("socket_chowned_root", "socket_dir_no_search"),
)


def open_folder(folder: str) -> tuple[str, ...]:
    """A parent folder of the socket the worker user may not enter."""
    return (f"sudo chmod o+x {folder}",)


def pool_owner(pool_file: str, nginx_user: str, unit: str) -> tuple[str, ...]:
    """The socket's owner and mode, set in the pool file PHP-FPM creates it from."""
    return (
        f"in {pool_file}: listen.owner = {nginx_user}, listen.group = {nginx_user}, listen.mode = 0660",
        commands.restart(unit),
    )


def pool_lines(pool_file: str, lines: Sequence[str], unit: str) -> tuple[str, ...]:
    """The pool's own lines to change, when discovery knows where they are."""
    return f"in {pool_file}, " + "; ".join(lines), commands.restart(unit)


def backend_socket(path: str, nginx_user: str, unit: str) -> tuple[str, ...]:
    """The backend's own socket (gunicorn ``--bind unix:``, uvicorn ``--uds``): group and mode for nginx."""
    return (
        f"sudo chgrp {nginx_user} {path} && sudo chmod 660 {path}   # now; lost when the backend restarts",
        f"to keep it: run {commands.unit_name(unit)} with Group={nginx_user} (or a group {nginx_user} is in) and"
        " gunicorn --umask 007, or a systemd .socket with SocketGroup= and SocketMode=0660",
        commands.restart(unit),
    )


def check_pool() -> tuple[str, ...]:
    """Only the FastCGI probe saw it: where to look."""
    return ("check listen.owner / listen.group / listen.mode in the pool",)
