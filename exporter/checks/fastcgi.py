"""Real FastCGI requests to each PHP-FPM pool's ping and status pages (``cgi-fcgi -bind -connect``).

Every pool of a round is probed at once by one selector loop over non-blocking sockets, each request
on its own connection and under its pool's deadline: no thread per pool (see docs/performance.md,
"Many pools"). flup encodes the requests and names the protocol's constants; the sockets, their
deadlines and the decoding of the records are ours, because flup 1.0.3's client is broken on
Python 3, never times out and reads only blocking sockets.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import selectors
import socket
import struct
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

from flup.client import fcgi_app as flup_fcgi

from exporter.checks.nonblocking import Single, drive
from exporter.config import PhpFpmPool
from exporter.deadline import Deadline
from exporter.families import CounterMetricFamily, GaugeMetricFamily, Metric

log = logging.getLogger(__name__)

_REQUEST_ID = 1
_MAX_RESPONSE_BYTES = 1 << 20
_RECV_BYTES = 65536

Probe = Literal["ping", "status", "connect"]


class FailureReason(StrEnum):
    """Why a FastCGI probe failed."""

    SOCKET_MISSING = "socket_missing"
    PERMISSION_DENIED = "permission_denied"
    CONNECTION_REFUSED = "connection_refused"
    TIMEOUT = "timeout"
    ACCESS_DENIED = "access_denied"
    NOT_FOUND = "not_found"
    BAD_RESPONSE = "bad_response"


class ProbeFailed(Exception):
    """A FastCGI request that did not produce the expected answer."""

    def __init__(self, reason: FailureReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class FastCGIResponse:
    """A decoded CGI response: status code, headers, body and what the worker wrote to stderr."""

    status: int
    headers: dict[str, str]
    body: bytes
    stderr: str


@dataclass(frozen=True)
class PoolStatus:
    """The figures of ``pm.status_path?json``."""

    pool: str
    process_manager: str
    start_time_seconds: float
    accepted_connections: int
    listen_queue: int
    max_listen_queue: int
    listen_queue_length: int
    idle_processes: int
    active_processes: int
    total_processes: int
    max_active_processes: int
    max_children_reached: int
    slow_requests: int


@dataclass(frozen=True)
class FastCGIResult:
    """The outcome of probing one PHP-FPM listener."""

    socket: str
    up: bool
    failure: FailureReason | None
    detail: str | None
    duration_seconds: float
    pool_status: PoolStatus | None
    status_failure: FailureReason | None
    status_detail: str | None
    probe: Probe = "ping"
    """What was asked: ``ping`` (ping.path, answer compared), ``status`` (only the status page), or
    ``connect`` (neither is configured: only that the socket accepts)."""
    connect_errno: int | None = None
    """How the probe's first ``connect()`` ended: 0 connected, else its errno; None: not tried."""


@dataclass(frozen=True)
class Address:
    """Where a FastCGI server listens."""

    family: socket.AddressFamily
    target: str | tuple[str, int]

    @classmethod
    def parse(cls, text: str) -> Address:
        """``/run/php/x.sock``, ``unix:/run/php/x.sock``, ``127.0.0.1:9000`` or ``[::1]:9000``."""
        if text.startswith("unix:"):
            return cls(socket.AF_UNIX, text.removeprefix("unix:"))
        if text.startswith("/"):
            return cls(socket.AF_UNIX, text)
        host, _, port = text.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"not a unix path nor host:port: {text!r}")
        if host.startswith("[") and host.endswith("]"):
            return cls(socket.AF_INET6, (host[1:-1], int(port)))
        return cls(socket.AF_INET, (host, int(port)))


_CONNECT_ERRORS = {
    errno.ENOENT: FailureReason.SOCKET_MISSING,
    errno.ENOTDIR: FailureReason.SOCKET_MISSING,
    errno.EACCES: FailureReason.PERMISSION_DENIED,
    errno.EPERM: FailureReason.PERMISSION_DENIED,
    errno.ECONNREFUSED: FailureReason.CONNECTION_REFUSED,
    errno.ENOTSOCK: FailureReason.CONNECTION_REFUSED,
    errno.EAGAIN: FailureReason.TIMEOUT,  # unix socket backlog full
}


def _request_params(path: str, query: str) -> dict[str, str]:
    return {
        "GATEWAY_INTERFACE": "CGI/1.1",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": path,
        "SCRIPT_FILENAME": path,
        "REQUEST_URI": f"{path}?{query}" if query else path,
        "QUERY_STRING": query,
        "SERVER_NAME": "badgateway-exporter",
        "SERVER_SOFTWARE": "badgateway-exporter",
        "REMOTE_ADDR": "127.0.0.1",
    }


class _Sink:
    """Collects what flup's record writer sends."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def send(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def fileno(self) -> int:
        return -1


def encode_request(path: str, query: str) -> bytes:
    """The bytes of one FastCGI RESPONDER request for ``path?query``; the server closes the connection
    after it. (Not FCGI_KEEP_CONN with a second request on the same connection: PHP-FPM 8.2 then never
    takes the first one off its scoreboard, and ``active processes`` grows by one every round.)
    """
    sink = _Sink()
    begin = struct.pack(flup_fcgi.FCGI_BeginRequestBody, flup_fcgi.FCGI_RESPONDER, 0)
    params = b"".join(
        flup_fcgi.encode_pair(k.encode(), v.encode()) for k, v in _request_params(path, query).items()
    )
    for kind, content in (
        (flup_fcgi.FCGI_BEGIN_REQUEST, begin),
        (flup_fcgi.FCGI_PARAMS, params),
        (flup_fcgi.FCGI_PARAMS, b""),
        (flup_fcgi.FCGI_STDIN, b""),
    ):
        record = flup_fcgi.Record(kind, _REQUEST_ID)
        record.contentData = content
        record.contentLength = len(content)
        record.write(sink)
    return b"".join(sink.parts)


_HEADER = struct.Struct(flup_fcgi.FCGI_Header)


class _Exchange:
    """One request on its own non-blocking connection: connect, send, read up to FCGI_END_REQUEST.

    Driven by :class:`~exporter.checks.nonblocking.Loop`: :meth:`start`, then :meth:`handle` whenever
    the socket is ready for :attr:`events`, or :meth:`expire` once :attr:`deadline` passes.
    ``request`` None: connect only.
    """

    __slots__ = ("_buffer", "_request", "_sent", "_size", "_stderr", "_stdout", "address", "connect_errno",
                 "deadline", "failure", "phase", "response", "sock")  # fmt: skip

    def __init__(self, address: Address, request: bytes | None, deadline: Deadline) -> None:
        self.address = address
        self._request = request
        self.deadline = deadline
        self.sock: socket.socket | None = None
        self.phase: Literal["new", "connect", "send", "read", "done"] = "new"
        self.failure: ProbeFailed | None = None
        self.response: FastCGIResponse | None = None
        self.connect_errno: int | None = None  # 0 once connected
        self._buffer = bytearray()
        self._sent = 0
        self._size = 0
        self._stdout: list[bytes] = []
        self._stderr: list[bytes] = []

    @property
    def done(self) -> bool:
        return self.phase == "done"

    @property
    def events(self) -> int:
        return selectors.EVENT_READ if self.phase == "read" else selectors.EVENT_WRITE

    def outcome(self) -> FastCGIResponse:
        """The response; raises the :class:`ProbeFailed` that ended the exchange without one."""
        if self.failure is not None:
            raise self.failure
        assert self.response is not None
        return self.response

    def start(self) -> None:
        try:
            self.sock = socket.socket(self.address.family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
            self.sock.connect(self.address.target)
        except BlockingIOError as exc:
            if exc.errno == errno.EINPROGRESS:  # TCP: writable once connected
                self.phase = "connect"
                return
            self._connect_failed(exc.errno, exc.strerror)  # a unix socket's full backlog: EAGAIN
            return
        except OSError as exc:
            self._connect_failed(exc.errno, exc.strerror)
            return
        self._connected()

    def handle(self, mask: int) -> None:
        """The socket is ready: go as far as it allows."""
        if self.phase == "connect":
            assert self.sock is not None
            error = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                self._connect_failed(error, os.strerror(error))
            else:
                self._connected()
        elif self.phase == "send":
            self._send()
        elif self.phase == "read" and mask & selectors.EVENT_READ:
            self._receive()

    def expire(self) -> None:
        """The deadline passed before the end of the response."""
        detail = {
            "connect": "connect() timed out",
            "send": "sending the request timed out",
        }.get(self.phase, "no answer before the deadline")
        if self.phase == "connect":
            self.connect_errno = errno.ETIMEDOUT
        self._finish(ProbeFailed(FailureReason.TIMEOUT, detail))

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def crash(self, exc: Exception) -> None:
        self._finish(ProbeFailed(FailureReason.BAD_RESPONSE, f"probe error: {exc!r}"))

    def __repr__(self) -> str:
        return f"FastCGI {self.address.target}"

    def _finish(self, failure: ProbeFailed | None = None) -> None:
        """Done: the loop unregisters and closes the socket (a closed descriptor would stay in epoll)."""
        self.failure = failure
        self.phase = "done"

    def _connect_failed(self, number: int | None, text: str | None) -> None:
        self.connect_errno = number or errno.EIO
        reason = _CONNECT_ERRORS.get(number or 0, FailureReason.CONNECTION_REFUSED)
        self._finish(ProbeFailed(reason, f"connect() failed ({number}: {text})"))

    def _connected(self) -> None:
        self.connect_errno = 0
        if self._request is None:
            self._finish()
        elif self.deadline.expired():
            self._finish(ProbeFailed(FailureReason.TIMEOUT, "sending the request timed out"))
        else:
            self.phase = "send"
            self._send()

    def _send(self) -> None:
        assert self.sock is not None and self._request is not None
        try:
            self._sent += self.sock.send(self._request[self._sent :])
        except BlockingIOError:
            return
        except OSError as exc:
            self._finish(ProbeFailed(FailureReason.BAD_RESPONSE, f"send failed: {exc}"))
            return
        if self._sent == len(self._request):
            self.phase = "read"

    def _receive(self) -> None:
        assert self.sock is not None
        try:
            data = self.sock.recv(_RECV_BYTES)
        except BlockingIOError:
            return
        except OSError:
            data = b""  # a reset: the response ends here
        if not data:
            self._finish(
                ProbeFailed(FailureReason.BAD_RESPONSE, "connection closed before the end of the response")
            )
            return
        self._buffer += data
        self._records()

    def _records(self) -> None:
        """Decode every complete record received; finish at FCGI_END_REQUEST."""
        buffer, start = self._buffer, 0
        while len(buffer) - start >= flup_fcgi.FCGI_HEADER_LEN:
            _, kind, request_id, length, padding = _HEADER.unpack_from(buffer, start)
            content = start + flup_fcgi.FCGI_HEADER_LEN
            end = content + length + padding
            if len(buffer) < end:
                break
            if request_id == _REQUEST_ID:
                self._size += length
                if self._size > _MAX_RESPONSE_BYTES:
                    self._finish(ProbeFailed(FailureReason.BAD_RESPONSE, "response larger than 1 MiB"))
                    return
                if kind == flup_fcgi.FCGI_STDOUT:
                    self._stdout.append(bytes(buffer[content : content + length]))
                elif kind == flup_fcgi.FCGI_STDERR:
                    self._stderr.append(bytes(buffer[content : content + length]))
                elif kind == flup_fcgi.FCGI_END_REQUEST:
                    self._end()
                    return
            start = end
        del buffer[:start]

    def _end(self) -> None:
        stderr = b"".join(self._stderr).decode("utf-8", "replace").strip()
        try:
            self.response = _parse_cgi(b"".join(self._stdout), stderr)
        except ProbeFailed as exc:
            self._finish(exc)
            return
        self._finish()


def fastcgi_request(address: Address, path: str, query: str, deadline: Deadline) -> FastCGIResponse:
    """One FastCGI RESPONDER request for ``path?query``; raises :class:`ProbeFailed`."""
    exchange = _Exchange(address, encode_request(path, query), deadline)
    drive([Single(exchange)])
    return exchange.outcome()


def _parse_cgi(output: bytes, stderr: str) -> FastCGIResponse:
    head, sep, body = output.partition(b"\r\n\r\n")
    if not sep:
        head, sep, body = output.partition(b"\n\n")
    if not sep:
        raise ProbeFailed(FailureReason.BAD_RESPONSE, "no CGI header block in the response")
    headers: dict[str, str] = {}
    for line in head.decode("latin-1").splitlines():
        name, colon, value = line.partition(":")
        if colon:
            headers[name.strip().lower()] = value.strip()
    status_text = headers.get("status", "200")
    try:
        status = int(status_text.split()[0])
    except (ValueError, IndexError):
        raise ProbeFailed(FailureReason.BAD_RESPONSE, f"bad Status header {status_text!r}") from None
    return FastCGIResponse(status=status, headers=headers, body=body, stderr=stderr)


def _classify_status(response: FastCGIResponse, path: str) -> None:
    evidence = response.stderr or response.body[:200].decode("utf-8", "replace").strip()
    if response.status == 404:
        raise ProbeFailed(FailureReason.NOT_FOUND, f"{path} answered 404: {evidence}")
    if response.status == 403:
        raise ProbeFailed(FailureReason.ACCESS_DENIED, f"{path} answered 403: {evidence}")
    if response.status != 200:
        raise ProbeFailed(FailureReason.BAD_RESPONSE, f"{path} answered {response.status}: {evidence}")


def _int(data: dict[str, object], key: str) -> int:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProbeFailed(FailureReason.BAD_RESPONSE, f"status JSON has no integer {key!r}")
    return value


def parse_pool_status(body: bytes) -> PoolStatus:
    """Decode PHP-FPM's ``?json`` status page."""
    try:
        data = json.loads(body)
    except ValueError:
        raise ProbeFailed(FailureReason.BAD_RESPONSE, "status page is not JSON") from None
    if not isinstance(data, dict):
        raise ProbeFailed(FailureReason.BAD_RESPONSE, "status JSON is not an object")
    return PoolStatus(
        pool=str(data.get("pool", "")),
        process_manager=str(data.get("process manager", "")),
        start_time_seconds=float(_int(data, "start time")),
        accepted_connections=_int(data, "accepted conn"),
        listen_queue=_int(data, "listen queue"),
        max_listen_queue=_int(data, "max listen queue"),
        listen_queue_length=_int(data, "listen queue len"),
        idle_processes=_int(data, "idle processes"),
        active_processes=_int(data, "active processes"),
        total_processes=_int(data, "total processes"),
        max_active_processes=_int(data, "max active processes"),
        max_children_reached=_int(data, "max children reached"),
        slow_requests=_int(data, "slow requests"),
    )


@dataclass(frozen=True)
class _Target:
    """A pool and its requests, encoded once."""

    pool: PhpFpmPool
    address: Address
    ping: bytes | None
    status: bytes | None

    @classmethod
    def of(cls, pool: PhpFpmPool) -> _Target:
        return cls(
            pool,
            Address.parse(pool.socket),
            encode_request(pool.ping_path, "") if pool.ping_path else None,
            encode_request(pool.status_path, "json") if pool.status_path else None,
        )


@dataclass
class _PoolProbe:
    """The ping, then the status page, of one pool, each on a connection of its own (as the blocking
    probe did, in this order: the status only when the ping passed)."""

    target: _Target
    deadline: Deadline
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    stage: Probe = "ping"
    failure: ProbeFailed | None = None
    status_failure: ProbeFailed | None = None
    pool_status: PoolStatus | None = None
    connect_errno: int | None = None  # of the first exchange

    def first(self) -> _Exchange:
        target = self.target
        if target.ping is not None:
            return _Exchange(target.address, target.ping, self.deadline)
        if target.status is None:
            self.stage = "connect"
            return _Exchange(target.address, None, self.deadline)
        return self._status_exchange()

    def advance(self, finished: _Exchange) -> _Exchange | None:
        if self.connect_errno is None:
            self.connect_errno = finished.connect_errno
        if self.stage == "connect":
            self.failure = finished.failure
        elif self.stage == "ping":
            self._ping(finished)
            if self.failure is None and self.target.status is not None:
                return self._status_exchange()
        else:
            self._status(finished)
        self.finished = time.monotonic()
        return None

    def _status_exchange(self) -> _Exchange:
        self.stage = "status"
        return _Exchange(self.target.address, self.target.status, self.deadline)

    def _ping(self, finished: _Exchange) -> None:
        pool = self.target.pool
        assert pool.ping_path is not None
        try:
            response = finished.outcome()
            _classify_status(response, pool.ping_path)
            if response.body.strip() != pool.ping_response.encode():
                raise ProbeFailed(
                    FailureReason.BAD_RESPONSE,
                    f"{pool.ping_path} answered {response.body[:80]!r}, expected {pool.ping_response!r}",
                )
        except ProbeFailed as exc:
            self.failure = exc

    def _status(self, finished: _Exchange) -> None:
        pool = self.target.pool
        assert pool.status_path is not None
        try:
            response = finished.outcome()
            _classify_status(response, pool.status_path)
            self.pool_status = parse_pool_status(response.body)
        except ProbeFailed as exc:
            self.status_failure = exc
            if pool.ping_path is None:
                self.failure = exc

    def result(self) -> FastCGIResult:
        pool = self.target.pool
        failure, status_failure = self.failure, self.status_failure
        return FastCGIResult(
            socket=pool.socket,
            up=failure is None,
            failure=failure.reason if failure else (status_failure.reason if status_failure else None),
            detail=failure.detail if failure else None,
            duration_seconds=(self.finished or time.monotonic()) - self.started,
            pool_status=self.pool_status,
            status_failure=status_failure.reason if status_failure else None,
            status_detail=status_failure.detail if status_failure else None,
            probe="ping" if pool.ping_path else ("status" if pool.status_path else "connect"),
            connect_errno=self.connect_errno,
        )


def _probe_all(targets: Sequence[_Target], deadline: Deadline) -> tuple[FastCGIResult, ...]:
    """Ping and status of every pool at once, each within ``deadline`` and its own ``timeout_seconds``."""
    probes = [_PoolProbe(t, deadline.capped(t.pool.timeout_seconds)) for t in targets]
    drive(probes)
    return tuple(probe.result() for probe in probes)


class FastCGIPoolsCheck:
    """Ping and status of every PHP-FPM pool over FastCGI, all at once. Never runs the application's scripts."""

    collector = "fastcgi"

    def __init__(self, pools: Iterable[PhpFpmPool]) -> None:
        self._targets = tuple(_Target.of(pool) for pool in pools)

    def run(self, deadline: Deadline) -> tuple[FastCGIResult, ...]:
        return _probe_all(self._targets, deadline)


class FastCGICheck:
    """Ping and status of one PHP-FPM pool over FastCGI. Never runs the application's own scripts."""

    collector = "fastcgi"

    def __init__(self, pool: PhpFpmPool) -> None:
        self.pool = pool
        self._target = _Target.of(pool)

    def run(self, deadline: Deadline) -> FastCGIResult:
        return _probe_all((self._target,), deadline)[0]


_POOL_GAUGES = (
    ("listen_queue", "Requests waiting in the pool's listen queue.", "listen_queue"),
    ("max_listen_queue", "Most requests ever waiting in the listen queue.", "max_listen_queue"),
    ("listen_queue_length", "Size of the socket's listen queue (backlog).", "listen_queue_length"),
    ("idle_processes", "Idle pool workers.", "idle_processes"),
    ("active_processes", "Busy pool workers (the status request itself counts as one).", "active_processes"),
    ("total_processes", "Pool workers, idle and busy.", "total_processes"),
    (
        "max_active_processes",
        "Most workers ever busy at once since the pool started.",
        "max_active_processes",
    ),
    ("start_time_seconds", "Unix time the pool started.", "start_time_seconds"),
)
_POOL_COUNTERS = (
    ("accepted_connections", "Requests the pool has accepted.", "accepted_connections"),
    ("max_children_reached", "Times the pool hit pm.max_children.", "max_children_reached"),
    ("slow_requests", "Requests slower than request_slowlog_timeout.", "slow_requests"),
)


_REASONS = tuple((reason, reason.value) for reason in FailureReason)


def metric_families(results: Iterable[FastCGIResult]) -> Iterable[Metric]:
    """``fastcgi_*`` probe metrics and ``phpfpm_*`` pool figures."""
    results = tuple(results)
    up = GaugeMetricFamily(
        "badgateway_fastcgi_up", "1 if the pool answered the FastCGI ping.", labels=["socket"]
    )
    duration = GaugeMetricFamily(
        "badgateway_fastcgi_probe_duration_seconds",
        "Wall time of the FastCGI probe (ping and status).",
        labels=["socket"],
    )
    failure = GaugeMetricFamily(
        "badgateway_fastcgi_probe_failure",
        "1 for the reason the FastCGI probe currently fails, 0 for the others.",
        labels=["socket", "reason"],
    )
    up.add_rows(((r.socket,), float(r.up)) for r in results)
    duration.add_rows(((r.socket,), r.duration_seconds) for r in results)
    failure.add_rows(
        ((r.socket, text), float(r.failure == reason)) for r in results for reason, text in _REASONS
    )
    families: list[Metric] = [up, duration, failure]
    with_status = [(r.socket, r.pool_status) for r in results if r.pool_status is not None]
    for name, doc, attr in _POOL_GAUGES:
        family = GaugeMetricFamily(f"badgateway_phpfpm_{name}", doc, labels=["socket", "pool"])
        family.add_rows(((sock, status.pool), float(getattr(status, attr))) for sock, status in with_status)
        families.append(family)
    for name, doc, attr in _POOL_COUNTERS:
        counter = CounterMetricFamily(f"badgateway_phpfpm_{name}", doc, labels=["socket", "pool"])
        counter.add_rows(((sock, status.pool), float(getattr(status, attr))) for sock, status in with_status)
        families.append(counter)
    return families
