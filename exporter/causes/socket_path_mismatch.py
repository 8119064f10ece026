"""nginx passes PHP to a socket that does not exist while PHP-FPM listens elsewhere."""

from __future__ import annotations

from collections.abc import Sequence

from exporter.causes.commands import NGINX_TEST_AND_RELOAD
from exporter.causes.model import AlertText, Cause, CauseSpec

SPEC = CauseSpec(
    cause=Cause.SOCKET_PATH_MISMATCH,
    alert="PhpFpmSocketPathMismatch",
    title="nginx points at a PHP-FPM socket that does not exist, another one does",
    status_code=502,
    evidence=("sockets", "processes"),
    page=AlertText(
        summary="nginx points at a PHP-FPM socket that does not exist on {instance}",
        meaning="nginx on {instance} passes PHP to a socket that does not exist while PHP-FPM listens"
        " on another one (a PHP version changed): every PHP page answers 502.",
        for_seconds=60,
    ),
    faults=("fastcgi_pass_other_version",),
)


def repoint(
    path: str,
    target: str | None,
    passes: Sequence[tuple[str, int, str]] = (),
    pool_listen: tuple[str, int, str] | None = None,
) -> tuple[str, ...]:
    """The exact lines to change when discovery knows them, else where to look.

    ``passes``: ``(file, line, value)`` of each ``fastcgi_pass`` naming ``path``; ``pool_listen``:
    ``(file, line, pool)`` of the ``listen`` line of the pool that listens on ``target``.
    """
    if target is None:
        return (
            "find where PHP-FPM listens: sudo grep -rn '^listen' /etc/php/*/fpm/pool.d/; sudo ss -xlp | grep php",
            NGINX_TEST_AND_RELOAD,
        )
    fixes = [f"nginx expects {path} but PHP-FPM listens on {target}"]
    fixes += [
        f"in {file} line {line}: change `fastcgi_pass {raw};` to `fastcgi_pass unix:{target};`"
        for file, line, raw in passes
    ] or [
        f"either set `fastcgi_pass unix:{target};` where nginx has it: sudo grep -rn fastcgi_pass /etc/nginx/"
    ]
    if pool_listen is not None:
        file, line, pool = pool_listen
        fixes.append(f"or in {file} line {line}: `listen = {path}` (pool [{pool}])")
    else:
        fixes.append(f"or set `listen = {path}` in the pool: sudo grep -rn '^listen' /etc/php/*/fpm/pool.d/")
    return (*fixes, NGINX_TEST_AND_RELOAD)
