"""nginx speaks one protocol to an upstream that speaks another (FastCGI to HTTP, HTTP to FastCGI)."""

from __future__ import annotations

from exporter.causes import commands
from exporter.causes.model import AlertText, Cause, CauseSpec

SPEC = CauseSpec(
    cause=Cause.UPSTREAM_PROTOCOL_MISMATCH,
    alert="UpstreamProtocolMismatch",
    title="nginx speaks the wrong protocol to an upstream",
    status_code=502,
    evidence=("logs",),
    page=AlertText(
        summary="nginx speaks the wrong protocol to an upstream on {instance} (nginx answers 502)",
        meaning="A *_pass on {instance} points at a server of another protocol (fastcgi_pass at an HTTP"
        " port: 'unsupported FastCGI protocol version: 72'; proxy_pass at PHP-FPM: 'no valid HTTP/1.0"
        " header'): nginx answers 502 for every request of that location.",
        for_seconds=60,
    ),
    faults=("fastcgi_pass_to_http",),
)


def fastcgi_to_http(where: str, address: str, sockets: str) -> tuple[str, ...]:
    """``fastcgi_pass address`` (at ``where``) reaches an HTTP server."""
    return (
        f"in {where}: fastcgi_pass {address} reaches an HTTP server: point it at PHP-FPM ({sockets})"
        f" or use proxy_pass http://{address} for an HTTP backend",
        commands.NGINX_TEST_AND_RELOAD,
    )


def http_to_fastcgi(where: str, address: str) -> tuple[str, ...]:
    """``proxy_pass`` (at ``where``) reaches a FastCGI server such as PHP-FPM."""
    return (
        f"in {where}: proxy_pass to {address} reaches a FastCGI server (PHP-FPM): use fastcgi_pass {address}"
        " with the fastcgi_params, or point proxy_pass at the HTTP backend",
        commands.NGINX_TEST_AND_RELOAD,
    )
