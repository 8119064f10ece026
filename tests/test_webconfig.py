"""``--web.config.file``: TLS, mTLS and basic auth with certificates made at test time.

A real Prometheus scrapes the real exporter CLI over HTTPS with basic auth; the other cases talk
to the real server in-process over real TLS sockets on loopback.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import httpx
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from harness import free_port, wait_until
from harness.alerting import running_prometheus
from harness.exporters import write_config
from harness.process import exporter_process, serving

from exporter.demo.stack import Stack
from exporter.webconfig import WebConfigError, load_web_config, parse_duration

PASSWORD = "correct horse battery staple"
# cost 4 keeps the tests fast; the cache makes the cost irrelevant after the first request anyway
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()


# -- certificates made at test time ----------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    """A server CA, a client CA and a rogue CA, with leaf certificates written as PEM files."""

    folder: Path
    ca: Path
    server_cert: Path
    server_key: Path
    client_ca: Path
    client_cert: Path
    client_key: Path
    intruder_cert: Path  # signed by the client CA, SAN not in client_allowed_sans
    intruder_key: Path
    rogue_cert: Path  # signed by a CA the server does not know
    rogue_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(subject: str, issuer: str, key: ec.EllipticCurvePrivateKey) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )


def _ca(common_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder(common_name, common_name, key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    return cert, key


def _leaf(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    common_name: str,
    sans: list[x509.GeneralName],
    usage: x509.ObjectIdentifier,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder(common_name, ca_cert.subject.rfc4514_string().removeprefix("CN="), key)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _write(folder: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None) -> Path:
    path = folder / f"{name}.crt"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        key_path = folder / f"{name}.key"
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        key_path.chmod(0o600)
    return path


def make_pki(folder: Path) -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    server_ca, client_ca, rogue_ca = _ca("test server CA"), _ca("test client CA"), _ca("rogue CA")
    loopback = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    server = _leaf(server_ca, "badgateway-exporter", loopback, ExtendedKeyUsageOID.SERVER_AUTH)
    client = _leaf(client_ca, "prometheus", [x509.DNSName("prometheus")], ExtendedKeyUsageOID.CLIENT_AUTH)
    intruder = _leaf(client_ca, "intruder", [x509.DNSName("intruder")], ExtendedKeyUsageOID.CLIENT_AUTH)
    rogue = _leaf(rogue_ca, "prometheus", [x509.DNSName("prometheus")], ExtendedKeyUsageOID.CLIENT_AUTH)
    return Pki(
        folder=folder,
        ca=_write(folder, "ca", server_ca[0], None),
        server_cert=_write(folder, "server", *server),
        server_key=folder / "server.key",
        client_ca=_write(folder, "client-ca", client_ca[0], None),
        client_cert=_write(folder, "client", *client),
        client_key=folder / "client.key",
        intruder_cert=_write(folder, "intruder", *intruder),
        intruder_key=folder / "intruder.key",
        rogue_cert=_write(folder, "rogue", *rogue),
        rogue_key=folder / "rogue.key",
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def client_context(pki: Pki, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca))
    if cert is not None and key is not None:
        context.load_cert_chain(str(cert), str(key))
    return context


def write_web_config(folder: Path, document: dict[str, object], name: str = "web.yml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


# -- the in-process server -------------------------------------------------------------------


def tls_section(pki: Pki, **extra: object) -> dict[str, object]:
    return {"cert_file": str(pki.server_cert), "key_file": str(pki.server_key), **extra}


# -- a real Prometheus scrapes the real CLI over TLS with basic auth ---------------------------


@contextmanager
def prometheus(folder: Path, target_port: int, pki: Pki, password: str) -> Iterator[str]:
    """A real Prometheus scraping the exporter on ``target_port`` over HTTPS with basic auth; its URL."""
    scrape = {
        "scheme": "https",
        "tls_config": {"ca_file": str(pki.ca)},
        "basic_auth": {"username": "prometheus", "password": password},
    }
    with running_prometheus(folder, [f"127.0.0.1:{target_port}"], scrape=scrape) as running:
        yield running.url


def query(url: str, promql: str) -> list[dict[str, object]]:
    answer = httpx.get(f"{url}/api/v1/query", params={"query": promql}, timeout=5).json()
    assert answer["status"] == "success", answer
    result = answer["data"]["result"]
    assert isinstance(result, list)
    return result


def test_prometheus_scrapes_over_tls_with_basic_auth(stack: Stack, pki: Pki, tmp_path: Path) -> None:
    web = write_web_config(
        tmp_path,
        {
            "tls_server_config": tls_section(pki),
            "basic_auth_users": {"prometheus": HASH},
            "http_server_config": {"headers": {"X-Content-Type-Options": "nosniff"}},
        },
    )
    config = write_config(stack)
    args = ["--config", str(config), "--web.config.file", str(web)]
    with exporter_process(args, tmp_path / "exporter.log") as running:
        base = running.url("https")
        trusted = client_context(pki)
        # the right password
        good = httpx.get(f"{base}/metrics", auth=("prometheus", PASSWORD), verify=trusted, timeout=10)
        assert good.status_code == 200
        assert good.headers["X-Content-Type-Options"] == "nosniff"
        assert "badgateway_fastcgi_up" in good.text
        # a wrong password, an unknown user, no credentials: 401 with a Basic challenge
        for auth in (("prometheus", "wrong"), ("mallory", PASSWORD), None):
            bad = httpx.get(f"{base}/metrics", auth=auth, verify=trusted, timeout=10)
            assert bad.status_code == 401, auth
            assert bad.headers["WWW-Authenticate"].startswith("Basic realm=")
            assert "badgateway_" not in bad.text
        # plain HTTP to the TLS port gets no HTTP answer at all
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{running.url('http')}/metrics", auth=("prometheus", PASSWORD), timeout=5)
        # a client that does not trust the server's CA refuses it
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{base}/metrics", auth=("prometheus", PASSWORD), timeout=5)

        with prometheus(tmp_path / "prometheus", running.port, pki, PASSWORD) as prom:

            def scraped() -> bool:
                return any(r["value"][1] == "1" for r in query(prom, 'up{job="badgateway"}'))  # type: ignore[index]

            wait_until(scraped, 30, "Prometheus to record up == 1", interval=0.25)
            fastcgi = query(prom, "badgateway_fastcgi_up")
            assert [r["value"][1] for r in fastcgi] == ["1"]  # type: ignore[index]
            targets = httpx.get(f"{prom}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
            assert [t["health"] for t in targets] == ["up"]
            assert targets[0]["scrapeUrl"].startswith("https://")
        assert running.proc.poll() is None, running.log_text()

    with (
        exporter_process(args, tmp_path / "exporter-wrong.log") as running,
        prometheus(tmp_path / "prometheus-wrong", running.port, pki, "wrong password") as prom,
    ):

        def failed() -> bool:
            return any(r["value"][1] == "0" for r in query(prom, 'up{job="badgateway"}'))  # type: ignore[index]

        wait_until(failed, 30, "Prometheus to record up == 0 with a wrong password", interval=0.25)
        targets = httpx.get(f"{prom}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
        assert "401" in targets[0]["lastError"], targets


# -- mutual TLS ------------------------------------------------------------------------------


def test_require_and_verify_client_cert(pki: Pki, tmp_path: Path) -> None:
    web = load_web_config(
        str(
            write_web_config(
                tmp_path,
                {
                    "tls_server_config": tls_section(
                        pki, client_auth_type="RequireAndVerifyClientCert", client_ca_file=str(pki.client_ca)
                    )
                },
            )
        )
    )
    with serving(tmp_path, web) as url:
        known = httpx.get(
            f"{url}/-/healthy", verify=client_context(pki, pki.client_cert, pki.client_key), timeout=5
        )
        assert known.status_code == 200
        assert known.text == "OK\n"
        scrape = httpx.get(
            f"{url}/metrics", verify=client_context(pki, pki.client_cert, pki.client_key), timeout=10
        )
        assert scrape.status_code == 200
        assert "badgateway_socket_exists" in scrape.text
        for cert, key in ((pki.rogue_cert, pki.rogue_key), (None, None)):
            with pytest.raises(httpx.TransportError):
                httpx.get(f"{url}/-/healthy", verify=client_context(pki, cert, key), timeout=5)


def test_verify_client_cert_if_given(pki: Pki, tmp_path: Path) -> None:
    tls = tls_section(pki, client_auth_type="VerifyClientCertIfGiven", client_ca_file=str(pki.client_ca))
    web = load_web_config(str(write_web_config(tmp_path, {"tls_server_config": tls})))
    with serving(tmp_path, web) as url:
        assert httpx.get(f"{url}/-/healthy", verify=client_context(pki), timeout=5).status_code == 200
        with_cert = client_context(pki, pki.client_cert, pki.client_key)
        assert httpx.get(f"{url}/-/healthy", verify=with_cert, timeout=5).status_code == 200
        with pytest.raises(httpx.TransportError):
            httpx.get(
                f"{url}/-/healthy", verify=client_context(pki, pki.rogue_cert, pki.rogue_key), timeout=5
            )


def test_client_allowed_sans(pki: Pki, tmp_path: Path) -> None:
    tls = tls_section(
        pki,
        client_auth_type="RequireAndVerifyClientCert",
        client_ca_file=str(pki.client_ca),
        client_allowed_sans=["prometheus"],
    )
    web = load_web_config(str(write_web_config(tmp_path, {"tls_server_config": tls})))
    with serving(tmp_path, web) as url:
        allowed = client_context(pki, pki.client_cert, pki.client_key)
        assert httpx.get(f"{url}/-/healthy", verify=allowed, timeout=5).status_code == 200
        with pytest.raises(httpx.TransportError):
            httpx.get(
                f"{url}/-/healthy", verify=client_context(pki, pki.intruder_cert, pki.intruder_key), timeout=5
            )


def test_min_version_refuses_older_clients(pki: Pki, tmp_path: Path) -> None:
    web = load_web_config(
        str(write_web_config(tmp_path, {"tls_server_config": tls_section(pki, min_version="TLS13")}))
    )
    with serving(tmp_path, web) as url:
        modern = client_context(pki)
        response = httpx.get(f"{url}/-/healthy", verify=modern, timeout=5)
        assert response.status_code == 200
        old = client_context(pki)
        old.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/-/healthy", verify=old, timeout=5)


def test_cipher_suites_are_applied(pki: Pki, tmp_path: Path) -> None:
    tls = tls_section(pki, max_version="TLS12", cipher_suites=["TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"])
    web = load_web_config(str(write_web_config(tmp_path, {"tls_server_config": tls})))
    with serving(tmp_path, web) as url:
        port = int(url.rsplit(":", 1)[1])
        context = client_context(pki)
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as tls_sock,
        ):
            assert tls_sock.version() == "TLSv1.2"
            cipher = tls_sock.cipher()
            assert cipher is not None
            assert cipher[0] == "ECDHE-ECDSA-AES256-GCM-SHA384"


def test_basic_auth_without_tls_and_rate_limit(tmp_path: Path) -> None:
    web = load_web_config(
        str(
            write_web_config(
                tmp_path, {"basic_auth_users": {"alice": HASH}, "rate_limit": {"interval": "1m", "burst": 3}}
            )
        )
    )
    with serving(tmp_path, web) as url:
        assert url.startswith("http://")
        codes = [
            httpx.get(f"{url}/-/healthy", auth=("alice", PASSWORD), timeout=5).status_code for _ in range(3)
        ]
        assert codes == [200, 200, 200]
        assert httpx.get(f"{url}/-/healthy", auth=("alice", PASSWORD), timeout=5).status_code == 429


# -- strict validation -------------------------------------------------------------------------


def _bad_documents(pki: Pki, folder: Path) -> list[tuple[str, object, str]]:
    unreadable = folder / "missing.crt"
    not_a_cert = folder / "garbage.crt"
    not_a_cert.write_text("not a certificate\n", encoding="utf-8")
    good = tls_section(pki)
    return [
        ("unknown top key", {"tls_server_config": good, "basic_auth": {}}, "basic_auth: unknown key"),
        ("unknown tls key", {"tls_server_config": {**good, "certfile": "x"}}, "tls_server_config.certfile: unknown key"),
        ("unreadable cert", {"tls_server_config": {**good, "cert_file": str(unreadable)}}, "tls_server_config.cert_file: cannot read"),
        ("garbage cert", {"tls_server_config": {**good, "cert_file": str(not_a_cert)}}, "tls_server_config.cert_file: " + f"{not_a_cert}: no PEM block containing 'BEGIN CERTIFICATE'"),
        ("key of another cert", {"tls_server_config": {**good, "key_file": str(pki.client_key)}}, "tls_server_config.key_file: cannot load"),
        ("key without cert", {"tls_server_config": {"key_file": str(pki.server_key)}}, "tls_server_config.cert_file: required"),
        ("bad hash", {"basic_auth_users": {"alice": "plaintext"}}, "basic_auth_users.alice: not a bcrypt hash"),
        ("bad auth type", {"tls_server_config": {**good, "client_auth_type": "Sometimes"}}, "tls_server_config.client_auth_type"),
        ("unsupported auth type", {"tls_server_config": {**good, "client_auth_type": "RequireAnyClientCert", "client_ca_file": str(pki.client_ca)}}, "RequireAnyClientCert"),
        ("CA without policy", {"tls_server_config": {**good, "client_ca_file": str(pki.client_ca)}}, "without a client auth policy"),
        ("policy without CA", {"tls_server_config": {**good, "client_auth_type": "RequireAndVerifyClientCert"}}, "client_ca_file: required"),
        ("CA file not a CA", {"tls_server_config": {**good, "client_auth_type": "RequireAndVerifyClientCert", "client_ca_file": str(not_a_cert)}}, "client_ca_file: " + f"{not_a_cert}: no PEM block"),
        ("bad version", {"tls_server_config": {**good, "min_version": "SSL3"}}, "tls_server_config.min_version"),
        ("min above max", {"tls_server_config": {**good, "min_version": "TLS13", "max_version": "TLS12"}}, "min_version: is above max_version"),
        ("bad cipher", {"tls_server_config": {**good, "cipher_suites": ["TLS_NULL"]}}, "cipher_suites[0]: unknown cipher suite"),
        ("header not allowed", {"http_server_config": {"headers": {"Set-Cookie": "a=b"}}}, "http_server_config.headers.Set-Cookie"),
        ("bad header value", {"http_server_config": {"headers": {"X-Frame-Options": "allow"}}}, "headers.X-Frame-Options"),
        ("bad rate limit", {"rate_limit": {"interval": "soon", "burst": 1}}, "rate_limit.interval"),
        ("not a mapping", ["tls_server_config"], "<top level>: expected a mapping"),
    ]  # fmt: skip


def test_validation_names_file_and_key(pki: Pki, tmp_path: Path) -> None:
    for label, document, expected in _bad_documents(pki, tmp_path):
        path = tmp_path / "bad.yml"
        path.write_text(yaml.safe_dump(document), encoding="utf-8")
        with pytest.raises(WebConfigError) as caught:
            load_web_config(str(path))
        message = str(caught.value)
        assert message.startswith(f"{path}: "), (label, message)
        assert expected in message, (label, message)
        assert "\n" not in message, (label, message)


def test_relative_paths_resolve_against_the_config_folder(pki: Pki) -> None:
    path = write_web_config(
        pki.folder,
        {"tls_server_config": {"cert_file": "server.crt", "key_file": "server.key"}},
        "relative.yml",
    )
    web = load_web_config(str(path))
    assert web.tls is not None
    assert web.tls.cert_file == str(pki.server_cert)
    assert web.ssl_context is not None


def test_durations() -> None:
    assert parse_duration("100ms") == pytest.approx(0.1)
    assert parse_duration("1m30s") == 90
    assert parse_duration("0") == 0
    with pytest.raises(ValueError):
        parse_duration("10")


def test_bad_web_config_exits_2_with_one_line(pki: Pki, tmp_path: Path) -> None:
    cases: list[tuple[dict[str, object], str]] = [
        ({"tls_server_config": {**tls_section(pki), "bogus": 1}}, "tls_server_config.bogus: unknown key"),
        ({"tls_server_config": {**tls_section(pki), "key_file": str(tmp_path / "nope.key")}}, "tls_server_config.key_file: cannot read"),
        ({"basic_auth_users": {"prometheus": "$2y$10$tooshort"}}, "basic_auth_users.prometheus: not a bcrypt hash"),
    ]  # fmt: skip
    for document, expected in cases:
        path = write_web_config(tmp_path, document, "bad-web.yml")
        port = free_port()
        done = subprocess.run(
            [sys.executable, "-m", "exporter", "--web.config.file", str(path), "--web.listen-address", f"127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert lines[0] == f"badgateway-exporter: {path}: {expected}" or (
            lines[0].startswith(f"badgateway-exporter: {path}: ") and expected in lines[0]
        ), lines[0]
        assert "Traceback" not in done.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "exporter", "--web.config.file", str(tmp_path / "absent.yml")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert missing.returncode == 2
    assert (
        missing.stderr.strip()
        == f"badgateway-exporter: {tmp_path / 'absent.yml'}: cannot read: No such file or directory"
    )
