"""The HTTP(S) server: ``/metrics``, a landing page and a health endpoint, hardened against abuse.

One asyncio event loop (one thread) owns every connection, so a client that connects and sends
nothing, or half a request, costs a file descriptor and a few kilobytes, never a thread:

- the whole request head must arrive within ``header_timeout`` of its first byte (a slow-drip
  client does not reset the clock), a fresh connection must start within ``header_timeout`` and a
  kept-alive one within ``idle_timeout``; TLS handshakes within ``handshake_timeout``;
- the server accepts connections itself (listen backlog ``backlog``) and at most
  ``max_connections`` are open, TLS handshakes in progress included; at the limit, new clients
  wait in the kernel's backlog until a connection ends or the one that has waited longest for a
  request head (or a handshake) has waited ``evict_after`` and is closed to make room: a burst of
  short connections queues, stalled clients are evicted, Prometheus always gets in;
- request heads are capped at ``max_head_bytes``; request bodies are refused;
- blocking work runs on bounded thread pools: one thread runs rounds, ``max_workers`` threads
  render, ``auth_workers`` threads check passwords (bcrypt, at the lowest CPU priority: nice 19),
  so password guessing never holds up a scrape. At most ``auth_queue`` password checks wait or
  run (beyond: 429 at once); a client address gets ``auth_failures_burst`` failed logins, then
  one per ``auth_failures_interval`` (beyond: 429 after ``auth_penalty_seconds``, without
  bcrypt); a check whose client has gone is dropped before bcrypt runs; credentials that
  verified are cached apart from wrong ones;
- concurrent scrapes share one in-flight round (and :class:`~exporter.rounds.Prober` shares it
  again below), so a flood of scrapes does not become a flood of probes of PHP-FPM or the backend;
  a round is shared only with scrapes that asked for no longer a deadline than it got.

TLS, mutual TLS, basic auth, extra headers and a rate limit come from ``--web.config.file``
(:mod:`exporter.webconfig`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import os
import socket
import sys
import threading
import time
from collections import OrderedDict
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
TLS_READ_BUFFER_BYTES = 16 * 1024
ACCEPT_BATCH = 16  # connections accepted per turn of the event loop, at most
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
    backlog: int = 4096  # the kernel caps it at net.core.somaxconn
    evict_after: float = 0.5
    auth_workers: int = 1
    auth_queue: int = 8
    auth_failures_burst: int = 10
    auth_failures_interval: float = 1.0
    auth_penalty_seconds: float = 1.0
    max_auth_clients: int = 4096


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


class _Gone(Exception):
    """The client closed its connection (or it was evicted): nothing is left to answer."""


class _Connection:
    """One client connection and whether it is waiting for a request head (evictable)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.task: asyncio.Task[None] | None = None
        self.waiting_since: float | None = time.monotonic()

    def gone(self, half_closed: bool = False) -> bool:
        """Whether the connection is lost (reset, or closed here); with ``half_closed``, also when
        the client has ended its side (sent its FIN: closed, most likely, as it cannot be told apart
        from a ``shutdown(SHUT_WR)`` without writing)."""
        writer, reader = self.writer, self.reader
        if (
            writer is None
            or reader is None
            or writer.transport.is_closing()
            or reader.exception() is not None
        ):
            return True
        return half_closed and reader.at_eof()

    def close(self) -> None:
        """Drop the connection now (a handshake in progress included)."""
        if self.writer is not None:
            self.writer.transport.abort()
        if self.task is not None:
            self.task.cancel()


class _FailedLogins:
    """Failed logins per client address: a token bucket each (``burst``, refilled one per
    ``interval`` seconds), the ``max_clients`` most recent addresses kept. Event-loop thread only."""

    def __init__(self, burst: int, interval: float, max_clients: int) -> None:
        self.burst, self.interval, self.max_clients = float(burst), interval, max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def _tokens(self, address: str, now: float) -> float:
        tokens, last = self._buckets.get(address, (self.burst, now))
        return min(self.burst, tokens + (now - last) / self.interval)

    def exhausted(self, address: str) -> bool:
        return self._tokens(address, time.monotonic()) < 1.0

    def failed(self, address: str) -> None:
        now = time.monotonic()
        self._buckets[address] = (max(0.0, self._tokens(address, now) - 1.0), now)
        self._buckets.move_to_end(address)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)


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
            self.socket.listen(self.limits.backlog)
            self.socket.setblocking(False)
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
        self._auth_pool = ThreadPoolExecutor(
            max_workers=self.limits.auth_workers, thread_name_prefix="http-auth", initializer=_lowest_priority
        )
        self._auth_slots: asyncio.Semaphore | None = None
        self._freed: asyncio.Event | None = None  # set whenever a connection ends
        self._auth_pending = 0
        limits = self.limits
        self._failures = _FailedLogins(
            limits.auth_failures_burst, limits.auth_failures_interval, limits.max_auth_clients
        )
        self._connections: set[_Connection] = set()
        self._accept_warned_at = -1e9  # monotonic time of the last "cannot accept" warning
        self._round: asyncio.Future[Any] | None = None
        self._round_asked = 0.0  # the deadline asked for by the scrape that started the round in flight
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
        self._auth_pool.shutdown(wait=False, cancel_futures=True)
        self._round_pool.shutdown(wait=False, cancel_futures=True)

    # -- event loop -------------------------------------------------------------------------

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(_quiet_exception_handler)
        self._stopping = asyncio.Event()
        self._loop = loop
        if self._stop_requested.is_set():
            return
        self._auth_slots = asyncio.Semaphore(self.limits.auth_workers)
        self._freed = asyncio.Event()
        if self.ssl_context is not None:
            from asyncio import sslproto

            # asyncio gives every TLS connection a 256 KiB read buffer, zero-filled (so resident):
            # 200 idle connections would cost 50 MB. A TLS record is at most 16 KiB.
            sslproto.SSLProtocol.max_size = TLS_READ_BUFFER_BYTES
        accepting = asyncio.ensure_future(self._accept())
        try:
            await self._stopping.wait()
        finally:
            accepting.cancel()
            tasks = [c.task for c in self._connections if c.task is not None]
            for connection in list(self._connections):
                connection.close()
            if tasks:
                await asyncio.wait(tasks, timeout=2.0)

    async def _accept(self) -> None:
        """Accept connections, at most ``ACCEPT_BATCH`` per loop turn (our own loop: the backlog
        stays ours, and TLS handshakes count against the limit). At the limit, clients wait in the kernel's backlog
        until a connection ends or one has waited ``evict_after`` for a request head (then it is
        closed to make room): a burst of short connections queues, a stalled client gets evicted."""
        loop = asyncio.get_running_loop()
        while True:
            await self._readable(loop)
            for _ in range(ACCEPT_BATCH):
                await self._make_room()
                try:
                    sock, peer = self.socket.accept()
                except BlockingIOError:
                    break
                except OSError as exc:  # EMFILE and the like: the kernel keeps the client in the backlog
                    self._accept_failed(exc)
                    await asyncio.sleep(0.1)
                    break
                sock.setblocking(False)
                connection = _Connection(str(peer[0]) if isinstance(peer, tuple) else "local")
                self._connections.add(connection)
                connection.task = asyncio.ensure_future(self._serve_connection(sock, connection))
            await asyncio.sleep(0)  # let the connections just accepted read their requests

    def _accept_failed(self, exc: OSError) -> None:
        """Out of descriptors (or the like): one warning a minute, not ten a second, and never a traceback."""
        now = time.monotonic()
        if now - self._accept_warned_at >= 60.0:
            self._accept_warned_at = now
            log.warning("cannot accept a connection: %s (clients wait in the backlog)", exc.strerror or exc)

    async def _readable(self, loop: asyncio.AbstractEventLoop) -> None:
        """Until a client waits in the listening socket's backlog."""
        ready: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(self.socket.fileno(), wake)
        try:
            await ready
        finally:
            loop.remove_reader(self.socket.fileno())

    async def _make_room(self) -> None:
        """Until fewer than ``max_connections`` are open: one ends, or the one waiting longest for a
        request head (or in a TLS handshake, or a login penalty) has waited ``evict_after`` and is closed."""
        limits, freed = self.limits, self._freed
        assert freed is not None
        while len(self._connections) >= limits.max_connections:
            waiting = [c for c in self._connections if c.waiting_since is not None]
            oldest = min(waiting, key=lambda c: c.waiting_since or 0.0) if waiting else None
            wait = limits.evict_after
            if oldest is not None and oldest.waiting_since is not None:
                wait = oldest.waiting_since + limits.evict_after - time.monotonic()
                if wait <= 0:
                    self._connections.discard(oldest)
                    oldest.close()
                    return
            freed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(freed.wait(), wait)

    async def _open(self, sock: socket.socket, connection: _Connection) -> asyncio.StreamWriter:
        """The streams of an accepted socket, after the TLS handshake when TLS is configured."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=self.limits.max_head_bytes, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        try:
            transport, _ = await loop.connect_accepted_socket(
                lambda: protocol,
                sock,
                ssl=self.ssl_context,
                ssl_handshake_timeout=self.limits.handshake_timeout if self.ssl_context else None,
            )
        except BaseException:
            sock.close()
            raise
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        connection.reader, connection.writer = reader, writer
        return writer

    async def _serve_connection(self, sock: socket.socket, connection: _Connection) -> None:
        writer: asyncio.StreamWriter | None = None
        try:
            writer = await self._open(sock, connection)
            reader = connection.reader
            assert reader is not None
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
                response = await self._respond(request, connection)
                if not await self._write(writer, request, response, keep):
                    return
                if not keep:
                    return
        except (asyncio.IncompleteReadError, _Gone, OSError):  # OSError: resets, timeouts, TLS errors
            return
        finally:
            self._connections.discard(connection)
            if self._freed is not None:
                self._freed.set()
            if writer is not None:
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
            # asyncio.timeout, not wait_for: no task made per read (a scrape is a few hundred µs)
            async with asyncio.timeout(limits.header_timeout if first else limits.idle_timeout):
                start = await reader.read(1)
            if not start:
                return None
            async with asyncio.timeout(limits.header_timeout):
                rest = await reader.readuntil(b"\r\n\r\n")
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

    async def _respond(self, request: _Request, connection: _Connection) -> _Response:
        try:
            return await self._route(request, connection)
        except _Gone:
            raise
        except Exception as exc:
            log.error("error answering %s %s: %r", request.method, request.path, exc, exc_info=exc)
            return _Response(500, b"internal error\n")

    async def _route(self, request: _Request, connection: _Connection) -> _Response:
        if request.method not in ("GET", "HEAD"):
            return _Response(405, b"method not allowed\n", extra=(("Allow", "GET, HEAD"),))
        if self._bucket is not None and not self._bucket.take():
            return _Response(429, b"too many requests\n")
        if self._auth is not None:
            refused = await self._authorize(request, connection)
            if refused is not None:
                return refused
        path = request.path
        if path == "/metrics":
            timeout = self.exporter.timeout_for(request.headers.get("x-prometheus-scrape-timeout-seconds"))
            accept, gzipped = request.headers.get("accept"), _wants_gzip(request)
            checked, encoded = await self._shared_round(timeout, accept, gzipped)
            if connection.gone():
                raise _Gone
            if encoded is None:  # another scrape's round: its bytes may be for another Accept
                encoded = await self._run(self.exporter.encode, checked, accept, gzipped)
            body, content_type = encoded
            return _Response(200, body, content_type, gzipped=gzipped)
        if path == "/":
            # rendered on a worker thread from the last round: never waits for, nor starts, a round
            page = await self._run(self.exporter.landing_page)
            body = page.encode("utf-8") if isinstance(page, str) else page
            return _Response(200, body, "text/html; charset=utf-8", extra=(("Cache-Control", "no-store"),))
        if path == "/-/healthy":
            return _Response(200, b"OK\n")
        return _Response(404, b"not found\n")

    async def _authorize(self, request: _Request, connection: _Connection) -> _Response | None:
        """None when the request carries good credentials, else the 401 or 429 to answer.

        Verified credentials are answered from the cache. Otherwise a client address past its
        failed-login budget, or a full password-check queue, gets a 429 after a pause, without
        bcrypt; the rest wait for the bcrypt thread, and are dropped if their client has gone.
        """
        assert self._auth is not None
        header = request.headers.get("authorization")
        ok = self._auth.cached(header)
        if ok is True:
            return None
        address = connection.address
        if self._failures.exhausted(address) or (ok is None and self._auth_pending >= self.limits.auth_queue):
            return await self._penalty(connection)
        if ok is None:
            ok = await self._bcrypt(header, connection)
        if ok:
            return None
        self._failures.failed(address)
        return _Response(401, b"Unauthorized\n", extra=(("WWW-Authenticate", f'Basic realm="{REALM}"'),))

    async def _penalty(self, connection: _Connection) -> _Response:
        """A 429 after ``auth_penalty_seconds``; meanwhile the connection may be evicted."""
        connection.waiting_since = time.monotonic()
        try:
            await asyncio.sleep(self.limits.auth_penalty_seconds)
        finally:
            connection.waiting_since = None
        if connection.gone():
            raise _Gone
        return _Response(429, b"too many failed logins, try again later\n", extra=(("Retry-After", "1"),))

    async def _bcrypt(self, header: str | None, connection: _Connection) -> bool:
        """``check(header)`` on the password thread, queued; dropped when the client has gone meanwhile."""
        assert self._auth is not None and self._auth_slots is not None
        self._auth_pending += 1
        connection.waiting_since = time.monotonic()  # queued: evictable, like a client that sends nothing
        try:
            async with self._auth_slots:
                connection.waiting_since = None
                if connection.gone(half_closed=True):
                    log.debug("dropped a password check: the client %s has gone", connection.address)
                    raise _Gone
                loop = asyncio.get_running_loop()
                return bool(await loop.run_in_executor(self._auth_pool, self._auth.check, header))
        finally:
            connection.waiting_since = None
            self._auth_pending -= 1

    async def _shared_round(
        self, timeout: float, accept: str | None, gzipped: bool
    ) -> tuple[Any, tuple[bytes, str] | None]:
        """The round in flight, or a new one: concurrent scrapes wait for the same probes.

        A round is shared only with scrapes asking for no longer a deadline than the one that
        started it: a scrape asking for more waits for it to end, then starts its own round with
        what is left of its deadline (so a client asking for a tiny deadline spoils no one's round).
        The scrape that starts a round has its bytes encoded on the round's thread, right after it
        (one hand-off less); the others get None and encode for their own ``Accept``.
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            current = self._round
            if current is None or current.done():
                left = max(timeout - (loop.time() - started), timeout / 2)
                current = asyncio.ensure_future(
                    loop.run_in_executor(self._round_pool, self._round_and_encode, left, accept, gzipped)
                )
                self._round, self._round_asked = current, timeout
                return await asyncio.shield(current)
            if self._round_asked >= timeout:
                checked, _ = await asyncio.shield(current)
                return checked, None
            await asyncio.wait([current])

    def _round_and_encode(
        self, timeout: float, accept: str | None, gzipped: bool
    ) -> tuple[Any, tuple[bytes, str]]:
        checked = self.exporter.check(timeout)
        return checked, self.exporter.encode(checked, accept, gzipped)

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
        if writer.transport.get_write_buffer_size() == 0 and not writer.transport.is_closing():
            return True  # all of it went out at once (the usual case): nothing to wait for
        try:
            async with asyncio.timeout(self.limits.write_timeout):
                await writer.drain()
        except OSError:  # the client's end: timeout, reset, TLS error
            return False
        return True


def _lowest_priority() -> None:
    """Run the calling thread at the lowest CPU priority (nice 19, Linux): password checks use the
    CPU the scrapes leave, never the reverse."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


def _wants_gzip(request: _Request) -> bool:
    return "gzip" in request.headers.get("accept-encoding", "")


def _quiet_exception_handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """Failed handshakes and resets are the client's business: debug, not error, logs."""
    exc = context.get("exception")
    if isinstance(exc, ConnectionError | TimeoutError) or _is_tls_error(exc):
        log.debug("connection error: %s", context.get("message"), exc_info=exc)
        return
    loop.default_exception_handler(context)


def _is_tls_error(exc: object) -> bool:
    ssl = sys.modules.get("ssl")  # not imported: there is no TLS, nor TLS errors
    return ssl is not None and isinstance(exc, ssl.SSLError)


def make_server(
    exporter: RoundSource, address: str, web_config: WebConfig | None = None, limits: Limits | None = None
) -> MetricsServer:
    """Bind the server (not yet serving); ``serve_forever()`` it in a thread."""
    return MetricsServer(exporter, address, web_config, limits)
