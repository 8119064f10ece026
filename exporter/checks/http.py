"""HTTP probes of the backend's health endpoint and of the site through nginx (``curl``)."""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import selectors
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

import h11

from exporter.checks.nonblocking import Single, drive
from exporter.config import HttpTarget
from exporter.deadline import Deadline
from exporter.families import GaugeMetricFamily, Metric

if TYPE_CHECKING:
    import ssl  # imported by the first https probe: OpenSSL costs 4 MiB of memory (docs/performance.md)


@dataclass(frozen=True)
class HttpResult:
    """The outcome of one HTTP probe."""

    target: str
    url: str
    role: str
    up: bool
    status_code: int | None
    duration_seconds: float
    error: str | None  # "connection_refused", "timeout", "connect_error", "protocol_error", "tls_error"
    detail: str | None
    host: str | None = None
    """The Host header (and SNI) sent, when the target names one."""

    @property
    def curl(self) -> str:
        """The same request as a person types it."""
        return f"curl -H 'Host: {self.host}' {self.url}" if self.host else f"curl {self.url}"

    @property
    def gateway_error(self) -> bool:
        """nginx answered 502 Bad Gateway or 504 Gateway Timeout."""
        return self.status_code in (502, 504)


log = logging.getLogger(__name__)

_RECV_BYTES = 65536
_HEADERS_LIMIT = 64 * 1024
"""Most bytes of status line and headers read (h11 refuses a larger head): a hostile peer is bounded."""


class _TlsPending(Exception):
    """The TLS layer needs the socket ready for ``events`` before it can go on."""

    def __init__(self, events: int) -> None:
        super().__init__(events)
        self.events = events


@dataclass(frozen=True)
class _Request:
    """Where and what one target's probe sends, worked out once."""

    family: socket.AddressFamily
    address: str | tuple[str, int] | None
    """A unix socket's path, an IP address and port, or None: the host name is resolved at each probe."""
    host: str
    port: int
    request: h11.Request
    tls: ssl.SSLContext | None
    server_name: str | None

    @classmethod
    def of(cls, target: HttpTarget) -> _Request:
        parts = urlsplit(target.url)
        https = parts.scheme.lower() == "https"
        host = parts.hostname or "localhost"
        port = parts.port or (443 if https else 80)
        netloc = parts.netloc.rpartition("@")[2]
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        headers = [("Host", target.host or netloc), ("User-Agent", "badgateway-exporter"),
                   ("Accept", "*/*"), ("Connection", "close")]  # fmt: skip
        request = h11.Request(method="GET", target=path, headers=headers)
        family, address = (
            (socket.AF_UNIX, target.unix_socket) if target.unix_socket else _literal_address(host, port)
        )
        tls = _tls_context(target.verify_tls) if https else None
        return cls(family, address, host, port, request, tls, target.host or host)


def _literal_address(host: str, port: int) -> tuple[socket.AddressFamily, str | tuple[str, int] | None]:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return socket.AF_INET, None
    return (socket.AF_INET6 if ip.version == 6 else socket.AF_INET), (host, port)


def _tls_context(verify: bool) -> ssl.SSLContext:
    """The system's trust store (what curl uses on Debian), or no verification at all (and then no
    certificates loaded: a loopback https front needs none)."""
    import ssl

    if verify:
        context = ssl.create_default_context()
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["http/1.1"])
    return context


def _tls_would_block(tls: bool) -> tuple[tuple[type[OSError], ...], tuple[type[OSError], ...]]:
    """What a non-blocking TLS socket raises for "wait until readable" and "until writable" (a plain
    socket raises BlockingIOError for both); nothing to catch, and no ssl imported, without TLS."""
    if not tls:
        return (), ()
    import ssl

    return (ssl.SSLWantReadError,), (ssl.SSLWantWriteError,)


class _HttpExchange:
    """One GET on its own non-blocking connection: connect, TLS, send, read the head and the first
    bytes of the body. Driven by :class:`~exporter.checks.nonblocking.Loop`."""

    __slots__ = ("_conn", "_events", "_head", "_request", "_sent", "_want_read", "_want_write", "deadline",
                 "detail", "error", "finished", "phase", "sock", "started", "status", "target")  # fmt: skip

    def __init__(self, target: HttpTarget, request: _Request, deadline: Deadline) -> None:
        self.target = target
        self._request = request
        self.deadline = deadline
        self.sock: socket.socket | None = None
        self.phase: Literal["new", "connect", "tls", "send", "read", "done"] = "new"
        self._events = selectors.EVENT_WRITE
        self._conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=_HEADERS_LIMIT)
        self._head = (self._conn.send(request.request) or b"") + (self._conn.send(h11.EndOfMessage()) or b"")
        self._sent = 0
        self._want_read, self._want_write = _tls_would_block(request.tls is not None)
        self.status: int | None = None
        self.error: str | None = None
        self.detail: str | None = None
        self.started = time.monotonic()
        self.finished: float | None = None

    def __repr__(self) -> str:
        return f"HTTP {self.target.url}"

    @property
    def done(self) -> bool:
        return self.phase == "done"

    @property
    def events(self) -> int:
        return self._events

    def start(self) -> None:
        request = self._request
        try:
            family, address = request.family, request.address
            if address is None:  # a name: resolved now, as curl does (blocking: /etc/hosts or the resolver)
                family, _, _, _, resolved = socket.getaddrinfo(
                    request.host, request.port, type=socket.SOCK_STREAM
                )[0]
                address = (str(resolved[0]), int(resolved[1]))
            self.sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
            self.sock.connect(address)
        except BlockingIOError as exc:
            if exc.errno == errno.EINPROGRESS:  # TCP: writable once connected
                self.phase = "connect"
                return
            self._connect_failed(exc.errno or 0)  # a unix socket's full backlog: EAGAIN
            return
        except socket.gaierror as exc:
            self._finish("connect_error", f"{request.host}: {exc.strerror or exc}")
            return
        except OSError as exc:
            self._connect_failed(exc.errno or 0)
            return
        self._connected()

    def handle(self, mask: int) -> None:
        """The socket is ready: go as far as it allows."""
        del mask
        if self.phase == "connect":
            assert self.sock is not None
            number = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if number:
                self._connect_failed(number)
            else:
                self._connected()
        else:
            self._go_on()

    def expire(self) -> None:
        """The deadline passed before the answer."""
        what = {"connect": "connect", "tls": "TLS handshake", "send": "send"}.get(self.phase, "read")
        budget = self.deadline.at - self.started
        self._finish("timeout", f"no answer within {budget:.3g} s ({what} timed out)")

    def crash(self, exc: Exception) -> None:
        self._finish("protocol_error", f"probe error: {exc!r}")

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def result(self) -> HttpResult:
        target, status = self.target, self.status
        up = status is not None and 200 <= status < 400
        return HttpResult(
            target=target.name,
            url=target.url,
            role=target.role,
            up=up,
            status_code=status,
            duration_seconds=(self.finished or time.monotonic()) - self.started,
            error=self.error,
            detail=f"HTTP {status}" if status is not None and not up else self.detail,
            host=target.host,
        )

    def _finish(self, error: str | None = None, detail: str | None = None) -> None:
        """Done: the loop unregisters and closes the socket."""
        self.error, self.detail = error, detail
        self.finished = time.monotonic()
        self.phase = "done"

    def _connect_failed(self, number: int) -> None:
        error = "connection_refused" if number == errno.ECONNREFUSED else "connect_error"
        self._finish(error, f"[Errno {number}] {os.strerror(number)}")

    def _connected(self) -> None:
        tls = self._request.tls
        if tls is not None:
            assert self.sock is not None
            self.sock = tls.wrap_socket(
                self.sock, server_hostname=self._request.server_name, do_handshake_on_connect=False
            )
            self.phase = "tls"
        else:
            self.phase = "send"
        self._go_on()

    def _go_on(self) -> None:
        """As far as the socket allows: the TLS handshake, the request, then the answer."""
        try:
            if self.phase == "tls":
                self._handshake()
            if self.phase == "send":
                self._send()
            if self.phase == "read":
                self._receive()
        except _TlsPending as pending:
            self._events = pending.events
        except h11.RemoteProtocolError as exc:
            self._finish("protocol_error", str(exc) or "not an HTTP answer")
        except OSError as exc:
            self._failed(exc)

    def _failed(self, exc: OSError) -> None:
        if self._request.tls is not None:
            import ssl  # loaded already: this probe made a TLS context

            if isinstance(exc, ssl.SSLError):
                self._finish("connect_error", f"TLS: {exc.reason or exc}")
                return
        self._finish("protocol_error" if self.phase == "read" else "connect_error", str(exc))

    def _handshake(self) -> None:
        import ssl

        assert isinstance(self.sock, ssl.SSLSocket)
        try:
            self.sock.do_handshake()
        except ssl.SSLWantReadError:
            raise _TlsPending(selectors.EVENT_READ) from None
        except ssl.SSLWantWriteError:
            raise _TlsPending(selectors.EVENT_WRITE) from None
        self.phase = "send"

    def _send(self) -> None:
        assert self.sock is not None
        head = self._head
        try:
            self._sent += self.sock.send(head[self._sent :])
        except BlockingIOError:
            raise _TlsPending(selectors.EVENT_WRITE) from None
        except self._want_write:
            raise _TlsPending(selectors.EVENT_WRITE) from None
        except self._want_read:
            raise _TlsPending(selectors.EVENT_READ) from None
        if self._sent < len(head):
            raise _TlsPending(selectors.EVENT_WRITE)
        self.phase = "read"

    def _receive(self) -> None:
        assert self.sock is not None
        while True:
            try:
                data = self.sock.recv(_RECV_BYTES)
            except BlockingIOError:
                raise _TlsPending(selectors.EVENT_READ) from None
            except self._want_read:
                raise _TlsPending(selectors.EVENT_READ) from None
            except self._want_write:
                raise _TlsPending(selectors.EVENT_WRITE) from None
            if not data:  # closed: an answer is what came of it
                if self.status is None:
                    raise h11.RemoteProtocolError("Server disconnected without sending a response.")
                self._finish()
                return
            self._conn.receive_data(data)
            if self._events_say_done():
                return

    def _events_say_done(self) -> bool:
        """Read h11's events; True once the status and the first bytes of the body (or its end) came."""
        while True:
            event = self._conn.next_event()
            if event is h11.NEED_DATA:
                return False
            if isinstance(event, h11.Response):
                self.status = event.status_code
            elif isinstance(event, h11.Data | h11.EndOfMessage | h11.ConnectionClosed):
                if self.status is None:
                    raise h11.RemoteProtocolError("Server disconnected without sending a response.")
                self._finish()
                return True


class HttpProbesCheck:
    """Every HTTP target at once, one GET each without redirects or keep-alive, like ``curl -I``: up
    means a 2xx or 3xx answer. One selector loop over non-blocking sockets, h11 reading the answer.

    With ``host`` set a probe is ``curl --resolve HOST:PORT:ADDRESS https://HOST/``: that ``Host``
    header and TLS server name, sent to the URL's address.
    """

    collector = "http"

    def __init__(self, targets: Iterable[HttpTarget]) -> None:
        self._targets = tuple((target, _Request.of(target)) for target in targets)

    def run(self, deadline: Deadline) -> tuple[HttpResult, ...]:
        exchanges = [
            _HttpExchange(target, request, deadline.capped(target.timeout_seconds))
            for target, request in self._targets
        ]
        drive([Single(exchange) for exchange in exchanges])
        results = tuple(exchange.result() for exchange in exchanges)
        for result in results:
            log.debug("HTTP probe %s: %s in %.1f ms", result.curl, result.status_code or result.error,
                      result.duration_seconds * 1000)  # fmt: skip
        return results


def metric_families(results: Iterable[HttpResult]) -> Iterable[Metric]:
    """``http_up``, ``http_status_code``, ``http_probe_duration_seconds``."""
    up = GaugeMetricFamily(
        "badgateway_http_up", "1 if the target answered with a 2xx or 3xx.", labels=["target"]
    )
    code = GaugeMetricFamily(
        "badgateway_http_status_code",
        "HTTP status code of the last probe; 0 when no answer came.",
        labels=["target"],
    )
    duration = GaugeMetricFamily(
        "badgateway_http_probe_duration_seconds", "Wall time of the HTTP probe.", labels=["target"]
    )
    for result in results:
        up.add_metric([result.target], float(result.up))
        code.add_metric([result.target], float(result.status_code or 0))
        duration.add_metric([result.target], result.duration_seconds)
    return (up, code, duration)
