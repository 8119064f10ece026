"""nginx's TLS handshake with an upstream fails (https:// to a plain port, SNI, an expired certificate)."""

from __future__ import annotations

from exporter.causes import commands
from exporter.causes.model import AlertText, Cause, CauseSpec

SPEC = CauseSpec(
    cause=Cause.UPSTREAM_TLS_FAILED,
    alert="UpstreamTlsFailed",
    title="nginx's TLS handshake with an upstream fails",
    status_code=502,
    evidence=("logs",),
    page=AlertText(
        summary="TLS to an upstream fails on {instance} (nginx answers 502)",
        meaning="nginx on {instance} cannot complete TLS with an upstream ('SSL_do_handshake() failed',"
        " 'upstream SSL certificate verify error'): an https:// proxy_pass to a plain-HTTP port, a missing"
        " SNI name, or an expired or untrusted certificate. nginx answers 502.",
        for_seconds=60,
    ),
    faults=("proxy_pass_https_to_plain",),
)


def plain_port(where: str, address: str) -> tuple[str, ...]:
    """The upstream answered the handshake with plain HTTP (``wrong version number``)."""
    return (
        f"in {where}: the upstream {address} speaks plain HTTP: proxy_pass http://{address} (not https://)",
        commands.NGINX_TEST_AND_RELOAD,
    )


def certificate(where: str, address: str) -> tuple[str, ...]:
    """The handshake failed on the certificate or the name."""
    return (
        f"openssl s_client -connect {address} -servername NAME </dev/null | openssl x509 -noout -dates -subject",
        f"in {where}: proxy_ssl_server_name on; proxy_ssl_name NAME; (and proxy_ssl_trusted_certificate"
        " for a private CA); renew an expired certificate on the upstream",
        commands.NGINX_TEST_AND_RELOAD,
    )
