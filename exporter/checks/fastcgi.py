"""A real FastCGI request to the PHP-FPM pool's ping and status pages (``cgi-fcgi -bind -connect``).

flup's record code encodes and decodes the protocol; the socket and its deadline are ours, because
flup 1.0.3's client is broken on Python 3 and never times out.
"""

from __future__ import annotations

import errno
import json
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from flup.client import fcgi_app as flup_fcgi
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from exporter.config import PhpFpmPool
from exporter.deadline import Deadline

_REQUEST_ID = 1
_MAX_RESPONSE_BYTES = 1 << 20

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


class _DeadlineSocket:
    """Gives flup's record code a socket whose every call honours our deadline."""

    def __init__(self, sock: socket.socket, deadline: Deadline) -> None:
        self._sock = sock
        self._deadline = deadline
        self.timed_out = False

    def _arm(self) -> None:
        if self._deadline.expired():
            self.timed_out = True
            raise TimeoutError("FastCGI deadline passed")
        self._sock.settimeout(self._deadline.remaining())

    def recv(self, size: int) -> bytes:
        self._arm()
        try:
            return self._sock.recv(size)
        except TimeoutError:
            self.timed_out = True
            raise

    def send(self, data: bytes) -> int:
        self._arm()
        try:
            return self._sock.send(data)
        except TimeoutError:
            self.timed_out = True
            raise

    def fileno(self) -> int:
        return self._sock.fileno()


_CONNECT_ERRORS = {
    errno.ENOENT: FailureReason.SOCKET_MISSING,
    errno.ENOTDIR: FailureReason.SOCKET_MISSING,
    errno.EACCES: FailureReason.PERMISSION_DENIED,
    errno.EPERM: FailureReason.PERMISSION_DENIED,
    errno.ECONNREFUSED: FailureReason.CONNECTION_REFUSED,
    errno.ENOTSOCK: FailureReason.CONNECTION_REFUSED,
    errno.EAGAIN: FailureReason.TIMEOUT,  # unix socket backlog full
}


def _connect(address: Address, deadline: Deadline) -> socket.socket:
    sock = socket.socket(address.family, socket.SOCK_STREAM)
    try:
        sock.settimeout(deadline.remaining())
        sock.connect(address.target)
    except TimeoutError:
        sock.close()
        raise ProbeFailed(FailureReason.TIMEOUT, "connect() timed out") from None
    except OSError as exc:
        sock.close()
        reason = _CONNECT_ERRORS.get(exc.errno or 0, FailureReason.CONNECTION_REFUSED)
        raise ProbeFailed(reason, f"connect() failed ({exc.errno}: {exc.strerror})") from None
    return sock


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


def _write_record(sock: _DeadlineSocket, kind: int, content: bytes) -> None:
    record = flup_fcgi.Record(kind, _REQUEST_ID)
    record.contentData = content
    record.contentLength = len(content)
    record.write(sock)


def fastcgi_request(address: Address, path: str, query: str, deadline: Deadline) -> FastCGIResponse:
    """One FastCGI RESPONDER request for ``path?query``; raises :class:`ProbeFailed`."""
    raw = _connect(address, deadline)
    sock = _DeadlineSocket(raw, deadline)
    try:
        begin = flup_fcgi.struct.pack(flup_fcgi.FCGI_BeginRequestBody, flup_fcgi.FCGI_RESPONDER, 0)
        params = b"".join(
            flup_fcgi.encode_pair(k.encode(), v.encode()) for k, v in _request_params(path, query).items()
        )
        try:
            _write_record(sock, flup_fcgi.FCGI_BEGIN_REQUEST, begin)
            _write_record(sock, flup_fcgi.FCGI_PARAMS, params)
            _write_record(sock, flup_fcgi.FCGI_PARAMS, b"")
            _write_record(sock, flup_fcgi.FCGI_STDIN, b"")
        except OSError as exc:
            if sock.timed_out:
                raise ProbeFailed(FailureReason.TIMEOUT, "sending the request timed out") from None
            raise ProbeFailed(FailureReason.BAD_RESPONSE, f"send failed: {exc}") from None
        return _read_response(sock)
    finally:
        raw.close()


def _read_response(sock: _DeadlineSocket) -> FastCGIResponse:
    stdout: list[bytes] = []
    stderr: list[bytes] = []
    size = 0
    while True:
        record = flup_fcgi.Record()
        try:
            record.read(sock)
        except EOFError:
            if sock.timed_out:
                raise ProbeFailed(FailureReason.TIMEOUT, "no answer before the deadline") from None
            raise ProbeFailed(
                FailureReason.BAD_RESPONSE, "connection closed before the end of the response"
            ) from None
        if record.requestId != _REQUEST_ID:
            continue
        size += record.contentLength
        if size > _MAX_RESPONSE_BYTES:
            raise ProbeFailed(FailureReason.BAD_RESPONSE, "response larger than 1 MiB")
        if record.type == flup_fcgi.FCGI_STDOUT:
            stdout.append(record.contentData)
        elif record.type == flup_fcgi.FCGI_STDERR:
            stderr.append(record.contentData)
        elif record.type == flup_fcgi.FCGI_END_REQUEST:
            break
    return _parse_cgi(b"".join(stdout), b"".join(stderr).decode("utf-8", "replace").strip())


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


class FastCGICheck:
    """Ping and status of one PHP-FPM pool over FastCGI. Never runs the application's own scripts."""

    collector = "fastcgi"

    def __init__(self, pool: PhpFpmPool) -> None:
        self.pool = pool
        self._address = Address.parse(pool.socket)

    def run(self, deadline: Deadline) -> FastCGIResult:
        deadline = deadline.capped(self.pool.timeout_seconds)
        started = time.monotonic()
        failure: ProbeFailed | None = None
        status_failure: ProbeFailed | None = None
        pool_status: PoolStatus | None = None
        try:
            if self.pool.ping_path:
                response = fastcgi_request(self._address, self.pool.ping_path, "", deadline)
                _classify_status(response, self.pool.ping_path)
                if response.body.strip() != self.pool.ping_response.encode():
                    raise ProbeFailed(
                        FailureReason.BAD_RESPONSE,
                        f"{self.pool.ping_path} answered {response.body[:80]!r}, "
                        f"expected {self.pool.ping_response!r}",
                    )
            elif not self.pool.status_path:
                _connect(self._address, deadline).close()
        except ProbeFailed as exc:
            failure = exc
        if failure is None and self.pool.status_path:
            try:
                response = fastcgi_request(self._address, self.pool.status_path, "json", deadline)
                _classify_status(response, self.pool.status_path)
                pool_status = parse_pool_status(response.body)
            except ProbeFailed as exc:
                status_failure = exc
                if not self.pool.ping_path:
                    failure = exc
        return FastCGIResult(
            socket=self.pool.socket,
            up=failure is None,
            failure=failure.reason if failure else (status_failure.reason if status_failure else None),
            detail=failure.detail if failure else None,
            duration_seconds=time.monotonic() - started,
            pool_status=pool_status,
            status_failure=status_failure.reason if status_failure else None,
            status_detail=status_failure.detail if status_failure else None,
            probe="ping" if self.pool.ping_path else ("status" if self.pool.status_path else "connect"),
        )


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
    for result in results:
        up.add_metric([result.socket], float(result.up))
        duration.add_metric([result.socket], result.duration_seconds)
        for reason in FailureReason:
            failure.add_metric([result.socket, reason.value], float(result.failure == reason))
    families: list[Metric] = [up, duration, failure]
    for name, doc, attr in _POOL_GAUGES:
        family = GaugeMetricFamily(f"badgateway_phpfpm_{name}", doc, labels=["socket", "pool"])
        for result in results:
            if result.pool_status is not None:
                status = result.pool_status
                family.add_metric([result.socket, status.pool], float(getattr(status, attr)))
        families.append(family)
    for name, doc, attr in _POOL_COUNTERS:
        counter = CounterMetricFamily(f"badgateway_phpfpm_{name}", doc, labels=["socket", "pool"])
        for result in results:
            if result.pool_status is not None:
                status = result.pool_status
                counter.add_metric([result.socket, status.pool], float(getattr(status, attr)))
        families.append(counter)
    return families
