"""``--web.config.file``: TLS, mutual TLS, basic auth and response headers, in exporter-toolkit format.

The file has the layout of the Prometheus exporter-toolkit's web configuration, so operators can
reuse the file their other exporters already read::

    tls_server_config:
      cert_file: /etc/badgateway-exporter/tls.crt
      key_file: /etc/badgateway-exporter/tls.key
      min_version: TLS12                        # TLS10 | TLS11 | TLS12 (default) | TLS13
      max_version: TLS13
      client_auth_type: RequireAndVerifyClientCert
      client_ca_file: /etc/badgateway-exporter/clients-ca.crt
      client_allowed_sans: [prometheus.example.org]
      cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]   # TLS 1.2 only, as in Go
      prefer_server_cipher_suites: true
    http_server_config:
      headers: {Strict-Transport-Security: max-age=31536000}
    basic_auth_users:
      prometheus: $2b$12$...                    # bcrypt hash
    rate_limit: {interval: 100ms, burst: 20}

Validation is strict: an unknown key, a wrong type, an unreadable or invalid file or a bad bcrypt
hash raises :class:`WebConfigError` whose message is one line naming the file and the key.
Differences from the toolkit (Go's crypto/tls versus Python's ssl module) are refused, not ignored:
``RequestClientCert`` and ``RequireAnyClientCert`` (accepting client certificates without verifying
them needs a verification callback Python's ssl module does not offer), inline ``cert``/``key``
(OpenSSL loads server keys from files only here) and ``curve_preferences``.
The file is read once at start; certificate and key files are re-read when they change on disk.
"""

from __future__ import annotations

import base64
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

from exporter.config import ConfigError, load_yaml_file

if TYPE_CHECKING:
    import ssl  # imported only when the file has TLS: OpenSSL costs 4 MiB of memory (docs/performance.md)

TLS_VERSIONS: Final = {"TLS10": "TLSv1", "TLS11": "TLSv1_1", "TLS12": "TLSv1_2", "TLS13": "TLSv1_3"}
"""exporter-toolkit's version names, lowest first, and ``ssl.TLSVersion``'s."""
CLIENT_AUTH_TYPES: Final = (
    "NoClientCert",
    "RequestClientCert",
    "RequireAnyClientCert",
    "VerifyClientCertIfGiven",
    "RequireAndVerifyClientCert",
)
_UNSUPPORTED_CLIENT_AUTH: Final = ("RequestClientCert", "RequireAnyClientCert", "RequireClientCert")

# Go's TLS 1.2 cipher suite names (crypto/tls) and their OpenSSL names.
GO_CIPHER_SUITES: Final = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
}
# TLS 1.3 suites are not configurable in Go either; the toolkit accepts and ignores them.
TLS13_CIPHER_SUITES: Final = frozenset(
    {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}
)
# The only headers the exporter-toolkit lets an operator set, with the values it allows.
ALLOWED_HEADERS: Final[Mapping[str, tuple[str, ...] | None]] = {
    "Strict-Transport-Security": None,
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-Content-Type-Options": ("nosniff",),
    "X-XSS-Protection": None,
    "Content-Security-Policy": None,
}

_TOP_KEYS: Final = frozenset({"tls_server_config", "http_server_config", "basic_auth_users", "rate_limit"})
_TLS_KEYS: Final = frozenset(
    {
        "cert_file",
        "key_file",
        "cert",
        "key",
        "client_auth_type",
        "client_ca_file",
        "client_ca",
        "client_allowed_sans",
        "min_version",
        "max_version",
        "cipher_suites",
        "prefer_server_cipher_suites",
        "curve_preferences",
    }
)
_HTTP_KEYS: Final = frozenset({"http2", "headers"})
_RATE_KEYS: Final = frozenset({"interval", "burst"})
_BCRYPT: Final = re.compile(rb"^\$(?P<prefix>2[a-z]?)\$(?P<cost>\d{2})\$[./A-Za-z0-9]{53}$")
BCRYPT_PREFIXES: Final = ("2a", "2b", "2y")
"""The bcrypt variants accepted (what htpasswd, Go's bcrypt and the toolkit write); ``$2$`` and
``$2x$`` hashes are refused at load (they would never match)."""
MIN_BCRYPT_COST: Final = 4
MAX_BCRYPT_COST: Final = 14
"""The highest bcrypt cost accepted: about a second per uncached check on one core (each step
doubles it), paid once at start for the dummy hash and then for every wrong password."""
_DURATION: Final = re.compile(r"^(?:(\d+(?:\.\d+)?)(ms|us|µs|ns|s|m|h))+$")
_DURATION_PART: Final = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|s|m|h)")
_UNITS: Final = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
AUTH_CACHE_SIZE: Final = 1024
"""Wrong credentials remembered (so the same wrong password does not cost bcrypt again)."""
AUTH_GOOD_CACHE_SIZE: Final = 64
"""Credentials that verified, kept apart: a flood of wrong passwords cannot evict them."""
TLS_RELOAD_CHECK_SECONDS: Final = 5.0


class WebConfigError(ConfigError):
    """Invalid ``--web.config.file``; the message is one line naming the file and the key."""


@dataclass(frozen=True)
class TLSSettings:
    """``tls_server_config`` after validation."""

    cert_file: str
    key_file: str
    client_auth_type: str = "NoClientCert"
    client_ca_file: str | None = None
    client_ca: str | None = None
    client_allowed_sans: tuple[str, ...] = ()
    min_version: str = "TLS12"
    max_version: str = "TLS13"
    cipher_suites: tuple[str, ...] = ()
    prefer_server_cipher_suites: bool = True


@dataclass(frozen=True)
class RateLimit:
    """A token bucket over all requests: ``burst`` requests, refilled one per ``interval_seconds``."""

    interval_seconds: float
    burst: int


@dataclass(frozen=True)
class WebConfig:
    """The validated web configuration; :attr:`ssl_context` is built (and so checked) at load time."""

    source: str
    tls: TLSSettings | None = None
    basic_auth_users: Mapping[str, bytes] = field(default_factory=dict)
    headers: tuple[tuple[str, str], ...] = ()
    rate_limit: RateLimit | None = None
    ssl_context: ssl.SSLContext | None = field(default=None, compare=False, repr=False)


def load_web_config(path: str) -> WebConfig:
    """Read and validate ``path``; raise :class:`WebConfigError` naming the file and the key."""
    try:
        data, _ = load_yaml_file(path)
    except ConfigError as exc:
        raise WebConfigError(str(exc)) from None
    return web_config_from_dict({} if data is None else data, path, base=Path(path).parent)


def web_config_from_dict(data: object, source: str, base: Path | None = None) -> WebConfig:
    """Validate a parsed document; relative file names are resolved against ``base`` (the file's folder)."""
    top = _mapping(data, source, "", _TOP_KEYS)
    tls = _tls(top.get("tls_server_config"), source, base or Path.cwd())
    users = _users(top.get("basic_auth_users"), source)
    headers = _headers(top.get("http_server_config"), source)
    rate = _rate_limit(top.get("rate_limit"), source)
    context = build_ssl_context(tls, source) if tls is not None else None
    return WebConfig(
        source=source,
        tls=tls,
        basic_auth_users=users,
        headers=headers,
        rate_limit=rate,
        ssl_context=context,
    )


def _err(source: str, key: str, problem: str) -> WebConfigError:
    return WebConfigError(f"{source}: {key or '<top level>'}: {problem}")


def _mapping(value: object, source: str, key: str, known: frozenset[str] | None) -> dict[str, object]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _err(source, key, f"expected a mapping, got {value!r}")
    for name in value:
        if not isinstance(name, str):
            raise _err(source, key, f"keys must be strings, got {name!r}")
        if known is not None and name not in known:
            raise _err(source, f"{key}.{name}" if key else name, "unknown key")
    return dict(value)


def _str(value: object, source: str, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise _err(source, key, f"expected a non-empty string, got {value!r}")
    return value


def _str_list(value: object, source: str, key: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _err(source, key, f"expected a list of strings, got {value!r}")
    return tuple(_str(item, source, f"{key}[{i}]") for i, item in enumerate(value))


def _readable_file(value: object, source: str, key: str, base: Path, pem: bytes | None = None) -> str:
    """The path (relative ones resolved against ``base``) after checking it reads and holds ``pem``."""
    name = _str(value, source, key)
    path = Path(name) if Path(name).is_absolute() else base / name
    try:
        with path.open("rb") as handle:
            head = handle.read(1 << 20)
    except OSError as exc:
        raise _err(source, key, f"cannot read {path}: {exc.strerror or exc}") from None
    if pem is not None and pem not in head:
        raise _err(source, key, f"{path}: no PEM block containing {pem.decode().strip('-')!r}")
    return str(path)


_TLS_KEY: Final = "tls_server_config"
_CERTIFICATE_PEM: Final = b"-----BEGIN CERTIFICATE-----"

_INLINE_PEM_KEYS: Final = (("cert", "cert_file"), ("key", "key_file"))
"""Inline PEM keys of the toolkit, each with the ``*_file`` key to use instead."""

_VERSION_DEFAULTS: Final = (("min_version", "TLS12"), ("max_version", "TLS13"))


def _tls(value: object, source: str, base: Path) -> TLSSettings | None:
    if value is None:
        return None
    tls = _mapping(value, source, _TLS_KEY, _TLS_KEYS)
    _refuse_unsupported_tls_keys(tls, source)
    auth = _client_auth_type(tls, source)
    cert_file, key_file = _key_pair(tls, source, base)
    ca_file, ca_inline = _client_ca(tls, source, base, auth)
    sans = _str_list(tls.get("client_allowed_sans"), source, f"{_TLS_KEY}.client_allowed_sans")
    if sans and auth != "RequireAndVerifyClientCert":
        raise _err(
            source, f"{_TLS_KEY}.client_allowed_sans", "needs client_auth_type RequireAndVerifyClientCert"
        )
    min_version, max_version = _tls_versions(tls, source)
    return TLSSettings(
        cert_file=cert_file,
        key_file=key_file,
        client_auth_type=auth,
        client_ca_file=ca_file,
        client_ca=ca_inline,
        client_allowed_sans=sans,
        min_version=min_version,
        max_version=max_version,
        cipher_suites=_cipher_suites(tls, source),
        prefer_server_cipher_suites=_prefer_server_cipher_suites(tls, source),
    )


def _refuse_unsupported_tls_keys(tls: dict[str, object], source: str) -> None:
    """Refuse the toolkit keys Python's ssl module cannot honour (inline PEM, curve preferences)."""
    for inline, instead in _INLINE_PEM_KEYS:
        if inline in tls:
            raise _err(
                source,
                f"{_TLS_KEY}.{inline}",
                f"inline PEM is not supported by badgateway-exporter: use {instead}",
            )
    if "curve_preferences" in tls:
        raise _err(
            source,
            f"{_TLS_KEY}.curve_preferences",
            "not supported by badgateway-exporter (OpenSSL defaults apply)",
        )


def _client_auth_type(tls: dict[str, object], source: str) -> str:
    """``client_auth_type`` (``NoClientCert`` when absent or empty), refusing unsupported ones."""
    auth = tls.get("client_auth_type", "NoClientCert")
    if auth == "":
        auth = "NoClientCert"
    if auth not in CLIENT_AUTH_TYPES and auth != "RequireClientCert":
        raise _err(
            source,
            f"{_TLS_KEY}.client_auth_type",
            f"expected one of {', '.join(CLIENT_AUTH_TYPES)}, got {auth!r}",
        )
    if auth in _UNSUPPORTED_CLIENT_AUTH:
        raise _err(
            source,
            f"{_TLS_KEY}.client_auth_type",
            f"{auth} (accept client certificates without verifying them) is not supported: "
            "use RequireAndVerifyClientCert or VerifyClientCertIfGiven with client_ca_file",
        )
    return str(auth)


def _key_pair(tls: dict[str, object], source: str, base: Path) -> tuple[str, str]:
    """The readable ``(cert_file, key_file)``; both are required."""
    if not tls.get("cert_file") and not tls.get("key_file"):
        raise _err(source, f"{_TLS_KEY}.cert_file", "required key missing (with key_file)")
    if not tls.get("cert_file"):
        raise _err(source, f"{_TLS_KEY}.cert_file", "required key missing: key_file is set without cert_file")
    if not tls.get("key_file"):
        raise _err(source, f"{_TLS_KEY}.key_file", "required key missing: cert_file is set without key_file")
    cert_file = _readable_file(tls["cert_file"], source, f"{_TLS_KEY}.cert_file", base, _CERTIFICATE_PEM)
    key_file = _readable_file(tls["key_file"], source, f"{_TLS_KEY}.key_file", base, b"PRIVATE KEY-----")
    return cert_file, key_file


def _client_ca(tls: dict[str, object], source: str, base: Path, auth: str) -> tuple[str | None, str | None]:
    """``(client_ca_file, client_ca)``: at most one of them, and one exactly when ``auth`` asks."""
    ca_file = (
        _readable_file(tls["client_ca_file"], source, f"{_TLS_KEY}.client_ca_file", base, _CERTIFICATE_PEM)
        if tls.get("client_ca_file") is not None
        else None
    )
    ca_inline = (
        _str(tls["client_ca"], source, f"{_TLS_KEY}.client_ca") if tls.get("client_ca") is not None else None
    )
    if ca_file and ca_inline:
        raise _err(source, f"{_TLS_KEY}.client_ca", "set client_ca_file or client_ca, not both")
    has_ca = bool(ca_file or ca_inline)
    if auth == "NoClientCert" and has_ca:
        raise _err(
            source, f"{_TLS_KEY}.client_auth_type", "client CAs are configured without a client auth policy"
        )
    if auth != "NoClientCert" and not has_ca:
        raise _err(source, f"{_TLS_KEY}.client_ca_file", f"required with client_auth_type {auth}")
    return ca_file, ca_inline


def _tls_versions(tls: dict[str, object], source: str) -> tuple[str, str]:
    """``(min_version, max_version)``, each a key of :data:`TLS_VERSIONS`, min not above max."""
    versions = {}
    for name, default in _VERSION_DEFAULTS:
        version = tls.get(name, default)
        if version not in TLS_VERSIONS:
            raise _err(
                source, f"{_TLS_KEY}.{name}", f"expected one of {', '.join(TLS_VERSIONS)}, got {version!r}"
            )
        versions[name] = str(version)
    order = list(TLS_VERSIONS)
    if order.index(versions["min_version"]) > order.index(versions["max_version"]):
        raise _err(source, f"{_TLS_KEY}.min_version", "is above max_version")
    return versions["min_version"], versions["max_version"]


def _cipher_suites(tls: dict[str, object], source: str) -> tuple[str, ...]:
    """``cipher_suites``: each a Go (TLS 1.2) or TLS 1.3 suite name."""
    suites = _str_list(tls.get("cipher_suites"), source, f"{_TLS_KEY}.cipher_suites")
    for index, suite in enumerate(suites):
        if suite not in GO_CIPHER_SUITES and suite not in TLS13_CIPHER_SUITES:
            raise _err(source, f"{_TLS_KEY}.cipher_suites[{index}]", f"unknown cipher suite {suite!r}")
    return suites


def _prefer_server_cipher_suites(tls: dict[str, object], source: str) -> bool:
    prefer = tls.get("prefer_server_cipher_suites", True)
    if not isinstance(prefer, bool):
        raise _err(
            source, f"{_TLS_KEY}.prefer_server_cipher_suites", f"expected true or false, got {prefer!r}"
        )
    return prefer


def build_ssl_context(tls: TLSSettings, source: str) -> ssl.SSLContext:
    """The server-side context for ``tls``; every file problem names its key."""
    import ssl

    key = "tls_server_config"
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.minimum_version = ssl.TLSVersion[TLS_VERSIONS[tls.min_version]]
        context.maximum_version = ssl.TLSVersion[TLS_VERSIONS[tls.max_version]]
    except (ValueError, ssl.SSLError) as exc:
        raise _err(source, f"{key}.min_version", f"not available with this OpenSSL: {exc}") from None
    _load_chain(context, tls, source)
    if tls.client_auth_type != "NoClientCert":
        ca_key = f"{key}.client_ca_file" if tls.client_ca_file else f"{key}.client_ca"
        try:
            if tls.client_ca_file:
                context.load_verify_locations(cafile=tls.client_ca_file)
            else:
                context.load_verify_locations(cadata=tls.client_ca)
        except (ssl.SSLError, ValueError) as exc:
            raise _err(source, ca_key, f"no valid PEM certificate: {_ssl_reason(exc)}") from None
        except OSError as exc:
            raise _err(source, ca_key, f"cannot read: {exc.strerror or exc}") from None
        context.verify_mode = (
            ssl.CERT_REQUIRED if tls.client_auth_type == "RequireAndVerifyClientCert" else ssl.CERT_OPTIONAL
        )
    suites = [GO_CIPHER_SUITES[s] for s in tls.cipher_suites if s in GO_CIPHER_SUITES]
    if suites:
        try:
            context.set_ciphers(":".join(suites))
        except ssl.SSLError as exc:
            raise _err(source, f"{key}.cipher_suites", f"none usable: {_ssl_reason(exc)}") from None
    if tls.prefer_server_cipher_suites:
        context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    context.options |= ssl.OP_NO_COMPRESSION
    return context


def _load_chain(context: ssl.SSLContext, tls: TLSSettings, source: str) -> None:
    import ssl

    key = "tls_server_config"
    try:
        context.load_cert_chain(certfile=tls.cert_file, keyfile=tls.key_file)
    except ssl.SSLError as exc:
        reason = _ssl_reason(exc)
        which = "key_file" if "KEY" in reason.upper() and "CERT" not in reason.upper() else "cert_file"
        raise _err(
            source, f"{key}.{which}", f"cannot load {tls.cert_file} with {tls.key_file}: {reason}"
        ) from None
    except OSError as exc:
        raise _err(source, f"{key}.cert_file", f"cannot read: {exc.strerror or exc}") from None


def _ssl_reason(exc: Exception) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason or exc).replace("_", " ").lower() if reason else str(exc)


class CertificateReloader:
    """Re-reads the certificate and key into the live context when either file changes on disk.

    New connections get the new certificate; a broken new pair keeps the old one (the error is
    returned for logging). Checks happen at most every ``TLS_RELOAD_CHECK_SECONDS``.
    """

    def __init__(self, tls: TLSSettings, context: ssl.SSLContext, source: str) -> None:
        self.tls, self.context, self.source = tls, context, source
        self._stamp = self._mtimes()
        self._checked = time.monotonic()

    def _mtimes(self) -> tuple[float, float]:
        try:
            return (Path(self.tls.cert_file).stat().st_mtime, Path(self.tls.key_file).stat().st_mtime)
        except OSError:
            return (0.0, 0.0)

    def check(self) -> str | None:
        """Reload if the files changed; the error message when the new pair does not load."""
        now = time.monotonic()
        if now - self._checked < TLS_RELOAD_CHECK_SECONDS:
            return None
        self._checked = now
        stamp = self._mtimes()
        if stamp == self._stamp:
            return None
        self._stamp = stamp
        try:
            _load_chain(self.context, self.tls, self.source)
        except WebConfigError as exc:
            return str(exc)
        return None


def _users(value: object, source: str) -> dict[str, bytes]:
    users = _mapping(value, source, "basic_auth_users", None)
    result: dict[str, bytes] = {}
    for name, hashed in users.items():
        key = f"basic_auth_users.{name}"
        if ":" in name:
            raise _err(source, key, "a user name must not contain ':'")
        match = _BCRYPT.match(hashed.encode("ascii", "replace")) if isinstance(hashed, str) else None
        if not isinstance(hashed, str) or match is None:
            raise _err(
                source, key, "not a bcrypt hash ($2y$10$... ; make one with htpasswd -nBC 10 '' | tr -d ':')"
            )
        prefix = match.group("prefix").decode()
        if prefix not in BCRYPT_PREFIXES:
            raise _err(
                source,
                key,
                f"bcrypt variant ${prefix}$ is not supported (use $2y$, $2b$ or $2a$: htpasswd -nBC 10)",
            )
        cost = int(match.group("cost"))
        if not MIN_BCRYPT_COST <= cost <= MAX_BCRYPT_COST:
            raise _err(
                source,
                key,
                f"bcrypt cost {cost} outside {MIN_BCRYPT_COST}..{MAX_BCRYPT_COST} (make it with -C 10)",
            )
        result[name] = hashed.encode("ascii")
    return result


def _headers(value: object, source: str) -> tuple[tuple[str, str], ...]:
    http = _mapping(value, source, "http_server_config", _HTTP_KEYS)
    if "http2" in http and not isinstance(http["http2"], bool):
        raise _err(source, "http_server_config.http2", f"expected true or false, got {http['http2']!r}")
    headers = _mapping(http.get("headers"), source, "http_server_config.headers", None)
    result = []
    for name, header_value in headers.items():
        key = f"http_server_config.headers.{name}"
        if name not in ALLOWED_HEADERS:
            raise _err(source, key, f"cannot be configured (allowed: {', '.join(ALLOWED_HEADERS)})")
        text = _str(header_value, source, key)
        if "\r" in text or "\n" in text:
            raise _err(source, key, "must be one line")
        allowed = ALLOWED_HEADERS[name]
        if allowed is not None and text.lower() not in allowed:
            raise _err(source, key, f"expected one of {', '.join(allowed)}, got {text!r}")
        result.append((name, text))
    return tuple(result)


def parse_duration(text: str) -> float:
    """A Go/Prometheus duration (``100ms``, ``1m30s``) in seconds; ``ValueError`` when malformed."""
    if text == "0":
        return 0.0
    if not _DURATION.match(text):
        raise ValueError(text)
    return sum(float(number) * _UNITS[unit] for number, unit in _DURATION_PART.findall(text))


def _rate_limit(value: object, source: str) -> RateLimit | None:
    if value is None:
        return None
    rate = _mapping(value, source, "rate_limit", _RATE_KEYS)
    interval = rate.get("interval", "0")
    try:
        seconds = parse_duration(interval) if isinstance(interval, str) else float("nan")
    except ValueError:
        seconds = float("nan")
    if not seconds >= 0:
        raise _err(source, "rate_limit.interval", f"expected a duration like 100ms, got {interval!r}")
    burst = rate.get("burst", 0)
    if type(burst) is not int or burst < 0:
        raise _err(source, "rate_limit.burst", f"expected a non-negative integer, got {burst!r}")
    if seconds == 0:
        return None
    if burst == 0:
        raise _err(source, "rate_limit.burst", "must be at least 1 when an interval is set")
    return RateLimit(interval_seconds=seconds, burst=burst)


class BasicAuth:
    """Checks ``Authorization: Basic`` against bcrypt hashes, caching outcomes as the toolkit does.

    bcrypt is slow on purpose (tens of milliseconds at cost 10); caching the outcome of each
    (user, password, hash) triple, under a SHA-256 key, keeps a scrape every second cheap.
    Credentials that verified are cached apart from wrong ones, so a flood of ever-new wrong
    passwords evicts only wrong ones. An unknown user is checked against a dummy hash of the same
    cost, so timing does not reveal which users exist.
    """

    def __init__(self, users: Mapping[str, bytes]) -> None:
        import bcrypt  # only with basic auth configured: ~0.5 MB of memory every other exporter saves

        self._checkpw = bcrypt.checkpw
        self.users = dict(users)
        cost = max((int(h.split(b"$")[2]) for h in self.users.values()), default=10)
        self._dummy = bcrypt.hashpw(b"badgateway-exporter dummy password", bcrypt.gensalt(rounds=cost))
        self._good: OrderedDict[bytes, bool] = OrderedDict()
        self._bad: OrderedDict[bytes, bool] = OrderedDict()
        self._lock = threading.Lock()

    def cached(self, header: str | None) -> bool | None:
        """The cached outcome for ``header`` (False without credentials), or None when bcrypt
        must run (:meth:`check`)."""
        credentials = _credentials(header)
        if credentials is None:
            return False
        return self._known(self._key(*credentials))

    def _known(self, key: bytes) -> bool | None:
        with self._lock:
            if key in self._good:
                self._good.move_to_end(key)
                return True
            return False if key in self._bad else None

    def check(self, header: str | None) -> bool:
        """True when ``header`` carries a configured user and the matching password."""
        credentials = _credentials(header)
        if credentials is None:
            return False
        user, password = credentials
        key = self._key(user, password)
        known = self._known(key)
        if known is not None:
            return known
        hashed = self.users.get(user)
        try:
            ok = self._checkpw(password.encode("utf-8"), hashed or self._dummy) and hashed is not None
        except ValueError:
            ok = False
        cache, size = (self._good, AUTH_GOOD_CACHE_SIZE) if ok else (self._bad, AUTH_CACHE_SIZE)
        with self._lock:
            cache[key] = ok
            while len(cache) > size:
                cache.popitem(last=False)
        return ok

    def _key(self, user: str, password: str) -> bytes:
        import hashlib  # only with basic auth: OpenSSL's libcrypto comes with it

        hashed = self.users.get(user, b"")
        return hashlib.sha256(b"\0".join([user.encode(), password.encode(), hashed])).digest()


def _credentials(header: str | None) -> tuple[str, str] | None:
    if not header:
        return None
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


class TokenBucket:
    """``rate_limit``: at most ``burst`` requests at once, refilled one per interval."""

    def __init__(self, limit: RateLimit) -> None:
        self.limit = limit
        self._tokens = float(limit.burst)
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            now = time.monotonic()
            self._tokens = min(
                float(self.limit.burst), self._tokens + (now - self._last) / self.limit.interval_seconds
            )
            self._last = now
            if self._tokens >= 1:
                self._tokens -= 1
                return True
            return False
