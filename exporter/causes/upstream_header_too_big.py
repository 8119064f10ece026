"""An upstream sends response headers larger than nginx's buffer for them: nginx answers 502."""

from __future__ import annotations

from exporter.causes import commands
from exporter.causes.model import AlertText, Cause, CauseSpec

SPEC = CauseSpec(
    cause=Cause.UPSTREAM_HEADER_TOO_BIG,
    alert="UpstreamHeaderTooBig",
    title="An upstream sends headers larger than nginx's buffer",
    status_code=502,
    evidence=("logs",),
    page=AlertText(
        summary="An upstream sends too big response headers on {instance} (nginx answers 502)",
        meaning="nginx on {instance} logs 'upstream sent too big header': the response headers (cookies,"
        " redirects, debug headers) do not fit its *_buffer_size, and nginx answers 502 for those pages.",
        for_seconds=60,
        severity="warning",
    ),
    faults=("php_header_too_big",),
)


def raise_buffer(directive: str, current: str, where: str, proposed: str) -> tuple[str, ...]:
    """``directive`` (``fastcgi_buffer_size``) is ``current`` at ``where``: set it to ``proposed``."""
    prefix = directive.split("_", 1)[0]
    return (
        f"in {where}: {directive} {proposed}; {prefix}_buffers 8 {proposed};   # now {current}",
        commands.NGINX_TEST_AND_RELOAD,
        "or make the upstream send fewer/smaller headers (Set-Cookie, Link, debug headers)",
    )
