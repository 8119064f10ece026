"""The HTTP probe's ``host``: sent as the Host header and, over https, as the TLS server name (SNI),
to a real loopback server that records both."""

from __future__ import annotations

import datetime
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from exporter.checks.http import HttpProbesCheck
from exporter.config import HttpTarget
from exporter.deadline import Deadline


class _Seen:
    def __init__(self) -> None:
        self.hosts: list[str | None] = []
        self.server_names: list[str | None] = []


def _server(seen: _Seen, context: ssl.SSLContext | None) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.hosts.append(self.headers.get("Host"))
            # nginx answers 502 for the site whose upstream is down, 200 (welcome page) for the rest.
            self.send_response(502 if self.headers.get("Host") == "shop.test" else 200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            del format, args

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if context is not None:

        def sni(sock: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> None:
            del sock, ctx
            seen.server_names.append(name)

        context.sni_callback = sni
        httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    return httpd


def _self_signed(folder: Path) -> ssl.SSLContext:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "shop.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("shop.test")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    return context


def _serve(httpd: ThreadingHTTPServer) -> Iterator[int]:
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(httpd.server_address[1])
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture
def plain() -> Iterator[tuple[int, _Seen]]:
    seen = _Seen()
    for port in _serve(_server(seen, None)):
        yield port, seen


@pytest.fixture
def tls(tmp_path: Path) -> Iterator[tuple[int, _Seen]]:
    seen = _Seen()
    for port in _serve(_server(seen, _self_signed(tmp_path))):
        yield port, seen


def _probe(target: HttpTarget) -> tuple[int | None, str | None]:
    (result,) = HttpProbesCheck([target]).run(Deadline.after(5.0))
    return result.status_code, result.error


@pytest.mark.parametrize(
    ("host", "sent", "status"),
    [
        ("shop.test", "shop.test", 502),  # routed to the site: its 502 is seen
        (None, None, 200),  # no host: the address (nginx's default server for the listen)
    ],
)
def test_host_header(plain: tuple[int, _Seen], host: str | None, sent: str | None, status: int) -> None:
    port, seen = plain
    target = HttpTarget(name="front:x", url=f"http://127.0.0.1:{port}/", role="front", host=host)
    assert _probe(target) == (status, None)
    assert seen.hosts == [sent or f"127.0.0.1:{port}"]


def test_https_sends_the_host_as_sni(tls: tuple[int, _Seen]) -> None:
    port, seen = tls
    target = HttpTarget(
        name="front:shop.test",
        url=f"https://127.0.0.1:{port}/",
        role="front",
        verify_tls=False,
        host="shop.test",
    )
    assert _probe(target) == (502, None)
    assert seen.server_names == ["shop.test"]
    assert seen.hosts == ["shop.test"]


def test_https_without_host_sends_no_sni_for_an_address(tls: tuple[int, _Seen]) -> None:
    port, seen = tls
    target = HttpTarget(name="front", url=f"https://127.0.0.1:{port}/", role="front", verify_tls=False)
    assert _probe(target) == (200, None)
    assert seen.server_names == [None]  # TLS carries no SNI for an IP address


def test_https_verified_against_the_host(tls: tuple[int, _Seen]) -> None:
    """verify_tls: a self-signed certificate for the name is still refused (no CA knows it)."""
    port, _ = tls
    target = HttpTarget(
        name="front", url=f"https://127.0.0.1:{port}/", role="front", verify_tls=True, host="shop.test"
    )
    (result,) = HttpProbesCheck([target]).run(Deadline.after(5.0))
    assert (result.status_code, result.error) == (None, "connect_error")
    assert result.detail is not None and "CERTIFICATE_VERIFY_FAILED" in result.detail
