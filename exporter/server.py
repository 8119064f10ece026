"""The HTTP(S) server: ``/metrics``, a landing page and a health endpoint, hardened against abuse.

One asyncio event loop (one thread) owns every connection, so a client that connects and sends
nothing, or half a request, costs a file descriptor and a few kilobytes, never a thread:

- the whole request head must arrive within ``header_timeout`` of its first byte (a slow-drip
  client does not reset the clock), a fresh connection must start within ``header_timeout`` and a
  kept-alive one within ``idle_timeout``; TLS handshakes within ``handshake_timeout``;
- at most ``max_connections`` connections are open; at the limit, the one that has waited longest
  for a request head is closed to make room, so new clients (Prometheus) always get in;
- request heads are capped at ``max_head_bytes``; request bodies are refused;
- blocking work (the round of checks, rendering, bcrypt) runs on bounded thread pools: one
  thread runs rounds, ``max_workers`` threads render and check passwords;
- concurrent scrapes share one in-flight round (and :class:`~exporter.rounds.Prober` shares it
  again below), so a flood of scrapes does not become a flood of probes of PHP-FPM or the backend.

TLS, mutual TLS, basic auth, extra headers and a rate limit come from ``--web.config.file``
(:mod:`exporter.webconfig`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any, Protocol

from exporter import __version__
from exporter.webconfig import BasicAuth, CertificateReloader, TokenBucket, WebConfig

log = logging.getLogger(__name__)


class RoundSource(Protocol):
    """What the server serves: rounds of checks (shared by concurrent scrapes) and their exposition."""

    def timeout_for(self, header: str | None) -> float:
        """The round's deadline for a scrape's ``X-Prometheus-Scrape-Timeout-Seconds``."""
        ...

    def check(self, timeout_seconds: float) -> Any:
        """One round (opaque to the server), run on the server's round thread."""
        ...

    def encode(self, checked: Any, accept: str | None, gzipped: bool = False) -> tuple[bytes, str]:
        """The exposition of a round for an ``Accept`` header, gzipped or not."""
        ...

    def landing_page(self) -> bytes | str:
        """The HTML of ``/``: the last round's verdict. Must not start a round (it never probes)."""
        ...


SERVER_NAME = f"badgateway-exporter/{__version__}"
REALM = "badgateway-exporter"


@dataclass(frozen=True)
class Limits:
    """How much any client may take from the server."""

    max_connections: int = 256
    max_workers: int = 4
    header_timeout: float = 10.0
    idle_timeout: float = 60.0
    handshake_timeout: float = 5.0
    write_timeout: float = 30.0
    max_head_bytes: int = 16384


_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Content Too Large",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    505: "HTTP Version Not Supported",
}
_TEXT = "text/plain; charset=utf-8"


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class _Request:
    method: str
    target: str
    version: str
    headers: dict[str, str]

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    def keep_alive(self) -> bool:
        connection = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.0":
            return "keep-alive" in connection
        return "close" not in connection


@dataclass
class _Response:
    status: int
    body: bytes
    content_type: str = _TEXT
    extra: tuple[tuple[str, str], ...] = ()
    gzipped: bool = False  # the body is gzip-compressed already


class _Connection:
    """One client connection and whether it is waiting for a request head (evictable)."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.waiting_since: float | None = time.monotonic()


def parse_listen_address(address: str) -> tuple[str, int]:
    """``:9502``, ``127.0.0.1:9502`` or ``[::1]:9502`` to (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--web.listen-address: expected [host]:port, got {address!r}")
    return host.strip("[]"), int(port)


def _parse_head(head: bytes) -> _Request:
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        raise _BadRequest(400, "undecodable request") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[0].isalpha() or not parts[1].startswith(("/", "*")):
        raise _BadRequest(400, "malformed request line")
    method, target, version = parts
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise _BadRequest(505 if version.startswith("HTTP/") else 400, "unsupported HTTP version")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or " " in name:
            raise _BadRequest(400, "malformed header line")
        headers[name.lower()] = value.strip()
    if "transfer-encoding" in headers or headers.get("content-length", "0").strip() not in ("0", ""):
        raise _BadRequest(413, "request bodies are not accepted")
    return _Request(method, target, version, headers)


class MetricsServer:
    """The exporter's HTTP(S) server; same surface as :class:`socketserver.TCPServer` for callers.

    ``serve_forever()`` runs the event loop in the calling thread until ``shutdown()`` (from
    another thread); ``server_close()`` releases the listening socket.
    """

    def __init__(
        self,
        exporter: RoundSource,
        address: str,
        web_config: WebConfig | None = None,
        limits: Limits | None = None,
    ) -> None:
        host, port = parse_listen_address(address)
        self.exporter = exporter
        self.web_config = web_config or WebConfig(source="<none>")
        self.limits = limits or Limits()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.socket.bind((host, port))
            self.socket.listen(min(socket.SOMAXCONN, 4096))
        except OSError:
            self.socket.close()
            raise
        self.server_address: tuple[Any, ...] = self.socket.getsockname()
        self.ssl_context = self.web_config.ssl_context
        self._auth = BasicAuth(self.web_config.basic_auth_users) if self.web_config.basic_auth_users else None
        self._bucket = TokenBucket(self.web_config.rate_limit) if self.web_config.rate_limit else None
        tls = self.web_config.tls
        self._reloader = (
            CertificateReloader(tls, self.ssl_context, self.web_config.source)
            if tls is not None and self.ssl_context is not None
            else None
        )
        self._round_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="round")
        self._pool = ThreadPoolExecutor(max_workers=self.limits.max_workers, thread_name_prefix="http")
        self._connections: set[_Connection] = set()
        self._round: asyncio.Future[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._stop_requested = threading.Event()
        self._running = threading.Event()
        self._done = threading.Event()

    @property
    def scheme(self) -> str:
        return "https" if self.ssl_context is not None else "http"

    # -- lifecycle (thread-safe) ------------------------------------------------------------

    def serve_forever(self) -> None:
        """Serve until :meth:`shutdown` (called from another thread)."""
        self._running.set()
        self._done.clear()
        try:
            asyncio.run(self._main())
        finally:
            self._done.set()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop :meth:`serve_forever` and wait (up to ``timeout``) until it has returned."""
        self._stop_requested.set()
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(stopping.set)
        if self._running.is_set():
            self._done.wait(timeout)

    def server_close(self) -> None:
        """Close the listening socket and the thread pools."""
        self.socket.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._round_pool.shutdown(wait=False, cancel_futures=True)

    # -- event loop -------------------------------------------------------------------------

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(_quiet_exception_handler)
        self._stopping = asyncio.Event()
        self._loop = loop
        if self._stop_requested.is_set():
            return
        server = await asyncio.start_server(
            self._serve_connection,
            sock=self.socket,
            ssl=self.ssl_context,
            ssl_handshake_timeout=self.limits.handshake_timeout if self.ssl_context else None,
            limit=self.limits.max_head_bytes,
        )
        try:
            await self._stopping.wait()
        finally:
            server.close()
            for connection in list(self._connections):
                connection.writer.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 2.0)

    def _admit(self, connection: _Connection) -> None:
        """Add ``connection``; at the limit, close the one waiting longest for a request head."""
        if len(self._connections) >= self.limits.max_connections:
            waiting = [c for c in self._connections if c.waiting_since is not None]
            if waiting:
                oldest = min(waiting, key=lambda c: c.waiting_since or 0.0)
                self._connections.discard(oldest)
                oldest.writer.transport.abort()
        self._connections.add(connection)

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = _Connection(writer)
        self._admit(connection)
        try:
            if self._reloader is not None:
                problem = self._reloader.check()
                if problem:
                    log.error("keeping the previous TLS certificate: %s", problem)
            if not self._client_allowed(writer):
                return
            first = True
            while True:
                connection.waiting_since = time.monotonic()
                request = await self._read_request(reader, writer, first)
                if request is None:
                    return
                connection.waiting_since = None
                first = False
                keep = request.keep_alive()
                response = await self._respond(request)
                if not await self._write(writer, request, response, keep):
                    return
                if not keep:
                    return
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError, TimeoutError):
            return
        finally:
            self._connections.discard(connection)
            writer.close()

    def _client_allowed(self, writer: asyncio.StreamWriter) -> bool:
        tls = self.web_config.tls
        if tls is None or not tls.client_allowed_sans:
            return True
        peer = writer.get_extra_info("peercert") or {}
        names = {value for _kind, value in peer.get("subjectAltName", ())}
        if names & set(tls.client_allowed_sans):
            return True
        log.info("refused a client certificate with SANs %s", sorted(names))
        return False

    async def _read_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, first: bool
    ) -> _Request | None:
        """The next request head, or None when the client went away, stalled or sent garbage."""
        limits = self.limits
        try:
            start = await asyncio.wait_for(
                reader.read(1), limits.header_timeout if first else limits.idle_timeout
            )
            if not start:
                return None
            rest = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), limits.header_timeout)
        except (TimeoutError, asyncio.IncompleteReadError):
            return None
        except (asyncio.LimitOverrunError, ValueError):
            await self._write_error(writer, _BadRequest(431, "request head too large"))
            return None
        try:
            return _parse_head(start + rest)
        except _BadRequest as exc:
            await self._write_error(writer, exc)
            return None

    async def _write_error(self, writer: asyncio.StreamWriter, error: _BadRequest) -> None:
        response = _Response(error.status, f"{error}\n".encode())
        request = _Request("GET", "/", "HTTP/1.1", {})
        await self._write(writer, request, response, keep=False)

    async def _run(self, func: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, func, *args)

    async def _respond(self, request: _Request) -> _Response:
        try:
            return await self._route(request)
        except Exception as exc:
            log.error("error answering %s %s: %r", request.method, request.path, exc, exc_info=exc)
            return _Response(500, b"internal error\n")

    async def _route(self, request: _Request) -> _Response:
        if request.method not in ("GET", "HEAD"):
            return _Response(405, b"method not allowed\n", extra=(("Allow", "GET, HEAD"),))
        if self._bucket is not None and not self._bucket.take():
            return _Response(429, b"too many requests\n")
        if self._auth is not None:
            header = request.headers.get("authorization")
            ok = self._auth.cached(header)
            if ok is None:
                ok = bool(await self._run(self._auth.check, header))
            if not ok:
                return _Response(
                    401, b"Unauthorized\n", extra=(("WWW-Authenticate", f'Basic realm="{REALM}"'),)
                )
        path = request.path
        if path == "/metrics":
            timeout = self.exporter.timeout_for(request.headers.get("x-prometheus-scrape-timeout-seconds"))
            checked = await self._shared_round(timeout)
            gzipped = _wants_gzip(request)
            body, content_type = await self._run(
                self.exporter.encode, checked, request.headers.get("accept"), gzipped
            )
            return _Response(200, body, content_type, gzipped=gzipped)
        if path == "/":
            # rendered on a worker thread from the last round: never waits for, nor starts, a round
            page = await self._run(self.exporter.landing_page)
            body = page.encode("utf-8") if isinstance(page, str) else page
            return _Response(200, body, "text/html; charset=utf-8", extra=(("Cache-Control", "no-store"),))
        if path == "/-/healthy":
            return _Response(200, b"OK\n")
        return _Response(404, b"not found\n")

    async def _shared_round(self, timeout: float) -> Any:
        """The round in flight, or a new one: concurrent scrapes wait for the same probes."""
        current = self._round
        if current is None or current.done():
            loop = asyncio.get_running_loop()
            current = asyncio.ensure_future(
                loop.run_in_executor(self._round_pool, self.exporter.check, timeout)
            )
            self._round = current
        return await asyncio.shield(current)

    async def _write(
        self, writer: asyncio.StreamWriter, request: _Request, response: _Response, keep: bool
    ) -> bool:
        body = response.body
        encoding = "gzip" if response.gzipped else None
        if not response.gzipped and _wants_gzip(request) and len(body) > 1024:
            body = await self._run(gzip.compress, body, 1)
            encoding = "gzip"
        lines = [
            f"HTTP/1.1 {response.status} {_REASONS.get(response.status, 'Unknown')}",
            f"Server: {SERVER_NAME}",
            f"Date: {formatdate(usegmt=True)}",
            f"Content-Type: {response.content_type}",
            f"Content-Length: {len(body)}",
        ]
        if encoding:
            lines.append(f"Content-Encoding: {encoding}")
        lines += [f"{name}: {value}" for name, value in (*response.extra, *self.web_config.headers)]
        if not keep:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        writer.write(head if request.method == "HEAD" else head + body)
        try:
            await asyncio.wait_for(writer.drain(), self.limits.write_timeout)
        except (TimeoutError, ConnectionError, ssl.SSLError):
            return False
        return True


def _wants_gzip(request: _Request) -> bool:
    return "gzip" in request.headers.get("accept-encoding", "")


def _quiet_exception_handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """Failed handshakes and resets are the client's business: debug, not error, logs."""
    exc = context.get("exception")
    if isinstance(exc, ssl.SSLError | ConnectionError | TimeoutError):
        log.debug("connection error: %s", context.get("message"), exc_info=exc)
        return
    loop.default_exception_handler(context)


def make_server(
    exporter: RoundSource, address: str, web_config: WebConfig | None = None, limits: Limits | None = None
) -> MetricsServer:
    """Bind the server (not yet serving); ``serve_forever()`` it in a thread."""
    return MetricsServer(exporter, address, web_config, limits)
