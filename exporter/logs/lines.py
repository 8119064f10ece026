"""One log line of any source: which source wrote it, what it says, and the cause it is evidence of.

The sources are nginx's error.log, PHP-FPM's log, the backend's own output (gunicorn, uvicorn), the
kernel's OOM killer and SELinux's audit (AVC) records, with or without a Docker, compose, journald or
syslog prefix. A line's ``cause`` is the cause that the line alone proves (``upstream sent too big
header`` is always :attr:`~Cause.UPSTREAM_HEADER_TOO_BIG`); a line that only its context decides (a
refused connect: is PHP-FPM down, or was it restarted?) has none. Pure functions over ``bytes``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

from exporter.causes import Cause
from exporter.logs import classify as nginx_kinds
from exporter.logs.classify import (
    BIND_ERROR,
    CHILD_KILLED,
    CONFIG_ERROR,
    EXECUTION_TIMEOUT,
    MAX_CHILDREN_REACHED,
    NONE,
    classify_nginx,
    classify_phpfpm,
)

LineSource = Literal["nginx", "php-fpm", "app", "kernel", "selinux"]
LINE_SOURCES: Final[tuple[LineSource, ...]] = ("nginx", "php-fpm", "app", "kernel", "selinux")

CRASH_SIGNALS: Final = frozenset({"SIGSEGV", "SIGBUS", "SIGABRT", "11", "7", "6"})
"""Signals a PHP-FPM child dies of when it crashes (not SIGTERM, SIGKILL: those are sent to it)."""


# -- nginx ---------------------------------------------------------------------------------------

NGINX_KIND_CAUSES: Final[dict[str, Cause]] = {
    nginx_kinds.HEADER_TOO_BIG: Cause.UPSTREAM_HEADER_TOO_BIG,
    nginx_kinds.READ_TIMEOUT: Cause.UPSTREAM_TIMEOUT,
    nginx_kinds.CONNECT_TIMEOUT: Cause.UPSTREAM_TIMEOUT,
    nginx_kinds.BACKLOG_FULL: Cause.LISTEN_BACKLOG_FULL,
    nginx_kinds.PROTOCOL_MISMATCH: Cause.UPSTREAM_PROTOCOL_MISMATCH,
    nginx_kinds.SSL_HANDSHAKE_FAILED: Cause.UPSTREAM_TLS_FAILED,
    nginx_kinds.CONNECTIONS_EXHAUSTED: Cause.NGINX_CONNECTIONS_EXHAUSTED,
    nginx_kinds.HOST_NOT_FOUND: Cause.UPSTREAM_HOST_NOT_FOUND,
}
"""nginx kinds that name one cause whatever the context."""


def nginx_cause(kind: str, upstream: str | None) -> Cause | None:
    """The cause one nginx line of ``kind`` to ``upstream`` proves, if the line alone does.

    ``(13: Permission denied)`` connecting to a unix socket is the socket's owner or mode; to a TCP
    port no file permission applies: a security module (SELinux) refused it.
    """
    if kind == nginx_kinds.PERMISSION_DENIED:
        if upstream is None:
            return None
        return Cause.SOCKET_PERMISSION_DENIED if upstream.startswith("unix:") else Cause.SELINUX_DENIED
    return NGINX_KIND_CAUSES.get(kind)


# -- which causes explain a generic nginx line --------------------------------------------------------

PHP_FPM_CAUSES: Final = frozenset(
    {Cause.PHP_FPM_DOWN, Cause.SOCKET_PATH_MISMATCH, Cause.SOCKET_PERMISSION_DENIED, Cause.PHP_FPM_POOL_EXHAUSTED,
     Cause.PHP_FPM_WORKERS_CRASHING, Cause.PHP_FPM_CONFIG_INVALID}
)  # fmt: skip
BACKEND_CAUSES: Final = frozenset({Cause.BACKEND_DOWN, Cause.BACKEND_UNHEALTHY, Cause.DATABASE_DOWN})
HOST_CAUSES: Final = frozenset({Cause.MEMORY_EXHAUSTED, Cause.DISK_FULL, Cause.NGINX_CONNECTIONS_EXHAUSTED})

_DOWN: Final = frozenset(
    {Cause.PHP_FPM_DOWN, Cause.BACKEND_DOWN, Cause.SOCKET_PATH_MISMATCH, Cause.PHP_FPM_CONFIG_INVALID}
)
_KILLED: Final = frozenset(
    {Cause.PHP_FPM_WORKERS_CRASHING, Cause.UPSTREAM_REQUEST_KILLED, Cause.PHP_FPM_DOWN, Cause.BACKEND_DOWN}
)
_SLOW: Final = frozenset(
    {Cause.UPSTREAM_TIMEOUT, Cause.PHP_FPM_POOL_EXHAUSTED, Cause.LISTEN_BACKLOG_FULL, Cause.BACKEND_UNHEALTHY}
)

KIND_EXPLAINERS: Final[dict[str, frozenset[Cause]]] = {
    nginx_kinds.CONNECTION_REFUSED: _DOWN,
    nginx_kinds.SOCKET_MISSING: _DOWN,
    nginx_kinds.PERMISSION_DENIED: frozenset({Cause.SOCKET_PERMISSION_DENIED, Cause.SELINUX_DENIED}),
    nginx_kinds.CONNECTION_RESET: _KILLED,
    nginx_kinds.PREMATURE_CLOSE: _KILLED,
    nginx_kinds.OTHER_UPSTREAM: _KILLED,
    nginx_kinds.READ_TIMEOUT: _SLOW,
    nginx_kinds.CONNECT_TIMEOUT: _SLOW,
    nginx_kinds.BACKLOG_FULL: frozenset({Cause.LISTEN_BACKLOG_FULL}),
}
"""Besides the host's causes and the line's own cause: the causes that produce each generic kind."""


def generic_explainers(kind: str) -> frozenset[Cause]:
    """The causes that can produce a generic nginx line of ``kind`` (with the host's own causes)."""
    if kind == nginx_kinds.NO_LIVE_UPSTREAMS:
        return frozenset(Cause)  # nginx marked every server down after failures: whatever failed them
    return KIND_EXPLAINERS.get(kind, frozenset()) | HOST_CAUSES


# -- PHP-FPM -------------------------------------------------------------------------------------


def phpfpm_cause(event: str, signal: str | None) -> Cause | None:
    """The cause one PHP-FPM log line proves, if the line alone does."""
    if event == CHILD_KILLED:
        return Cause.PHP_FPM_WORKERS_CRASHING if signal in CRASH_SIGNALS else None
    return _PHPFPM_EVENT_CAUSES.get(event)


_PHPFPM_EVENT_CAUSES: Final[dict[str, Cause]] = {
    EXECUTION_TIMEOUT: Cause.UPSTREAM_REQUEST_KILLED,
    MAX_CHILDREN_REACHED: Cause.PHP_FPM_POOL_EXHAUSTED,
    BIND_ERROR: Cause.PHP_FPM_DOWN,
    CONFIG_ERROR: Cause.PHP_FPM_CONFIG_INVALID,
}

# -- the backend: gunicorn and uvicorn ---------------------------------------------------------------

WORKER_TIMEOUT: Final = "worker_timeout"
WORKER_KILLED: Final = "worker_killed"
BOOT_FAILED: Final = "boot_failed"
BIND_FAILED: Final = "bind_failed"
DATABASE_REFUSED: Final = "database_refused"
EXCEPTION: Final = "exception"

APP_EVENTS: Final[tuple[str, ...]] = (
    WORKER_TIMEOUT,
    WORKER_KILLED,
    BOOT_FAILED,
    BIND_FAILED,
    DATABASE_REFUSED,
    EXCEPTION,
    NONE,
)
"""Every ``event`` of a backend line."""

_APP_PHRASES: Final[tuple[tuple[bytes, str], ...]] = (
    (b"WORKER TIMEOUT", WORKER_TIMEOUT),
    (b"Perhaps out of memory", WORKER_KILLED),
    (b"Worker failed to boot", BOOT_FAILED),
    (b"Application startup failed", BOOT_FAILED),
    (b"Error loading ASGI app", BOOT_FAILED),
    (b"App failed to load", BOOT_FAILED),
    (b"[Errno 98]", BIND_FAILED),
    (b"ddress already in use", BIND_FAILED),
    (b"Connection in use:", BIND_FAILED),
    (b"Is the server running on", DATABASE_REFUSED),
    (b"could not connect to server", DATABASE_REFUSED),
    (b"port 5432 failed: Connection refused", DATABASE_REFUSED),
    (b"Connect call failed", DATABASE_REFUSED),
    (b"Traceback (most recent call last)", EXCEPTION),
)
_EXCEPTION_LINE: Final = re.compile(
    rb"^\s*(?:[A-Za-z_][\w.]*\.)?[A-Z]\w*(?:Error|Exception|Exit|Interrupt)\b(?::|$)"
)

_APP_EVENT_CAUSES: Final[dict[str, Cause]] = {
    WORKER_TIMEOUT: Cause.UPSTREAM_REQUEST_KILLED,
    WORKER_KILLED: Cause.MEMORY_EXHAUSTED,
    BOOT_FAILED: Cause.BACKEND_DOWN,
    BIND_FAILED: Cause.BACKEND_DOWN,
    DATABASE_REFUSED: Cause.DATABASE_DOWN,
}


def classify_app(line: bytes) -> tuple[str, Cause | None]:
    """``(event, cause)`` of one gunicorn or uvicorn line (a traceback's last line is ``exception``)."""
    for phrase, event in _APP_PHRASES:
        if phrase in line:
            return event, _APP_EVENT_CAUSES.get(event)
    if _EXCEPTION_LINE.search(_after_prefix(line)):
        return EXCEPTION, None
    return NONE, None


# -- the kernel and SELinux ------------------------------------------------------------------------

OOM_KILL: Final = "oom_kill"
AVC_DENIED: Final = "avc_denied"
_OOM_PHRASES: Final = (
    b"Out of memory: Kill",
    b"oom-kill:",
    b"Memory cgroup out of memory",
    b"invoked oom-killer",
)


def classify_kernel(line: bytes) -> tuple[str, Cause | None]:
    """``(event, cause)`` of one kernel line: an OOM kill or nothing."""
    if any(phrase in line for phrase in _OOM_PHRASES):
        return OOM_KILL, Cause.MEMORY_EXHAUSTED
    return NONE, None


def classify_selinux(line: bytes) -> tuple[str, Cause | None]:
    """``(event, cause)`` of one audit line: an AVC denial; a denied connect is :attr:`Cause.SELINUX_DENIED`."""
    if b"avc:" not in line or b"denied" not in line:
        return NONE, None
    connect = b"name_connect" in line or b"connectto" in line
    return AVC_DENIED, Cause.SELINUX_DENIED if connect else None


# -- one line of any source ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassifiedLine:
    """What ``logs classify`` prints for one line."""

    source: LineSource
    kind: str
    """nginx's ``kind``, or the ``event`` of the other sources; ``none`` when the line is no evidence."""
    cause: Cause | None = None
    upstream: str | None = None
    pool: str | None = None
    signal: str | None = None

    def as_dict(self) -> dict[str, str | None]:
        record: dict[str, str | None] = {
            "source": self.source,
            "cause": self.cause.value if self.cause else None,
        }
        if self.source == "nginx":
            record |= {"kind": self.kind, "upstream": self.upstream}
        elif self.source == "php-fpm":
            record |= {"event": self.kind, "pool": self.pool}
            if self.kind == CHILD_KILLED:
                record["signal"] = self.signal
        else:
            record["event"] = self.kind
        return record


def classify_line(line: bytes, source: LineSource | Literal["auto"] = "auto") -> ClassifiedLine:
    """Classify ``line`` as a line of ``source``, or of the source it looks like (``auto``)."""
    chosen = detect_line_source(line) if source == "auto" else source
    if chosen == "nginx":
        kind, upstream = classify_nginx(line)
        return ClassifiedLine("nginx", kind, nginx_cause(kind, upstream), upstream)
    if chosen == "php-fpm":
        event, pool, signal = classify_phpfpm(line)
        return ClassifiedLine("php-fpm", event, phpfpm_cause(event, signal), pool=pool, signal=signal)
    classifier = {"app": classify_app, "kernel": classify_kernel, "selinux": classify_selinux}[chosen]
    event, cause = classifier(line)
    return ClassifiedLine(chosen, event, cause)


_NGINX_SHAPE: Final = re.compile(rb"\[(?:debug|info|notice|warn|error|crit|alert|emerg)\] \d+#\d+: ")
_PHPFPM_SHAPE: Final = re.compile(
    rb"(?:^|[\s\]])(?:DEBUG|NOTICE|WARNING|ERROR|ALERT|CRITICAL|SYSTEM): (?:\[pool |\[/|fpm|FPM|pid |child |\[)"
    rb"|^\[\d\d-[A-Z][a-z]{2}-\d{4} \d\d:\d\d:\d\d"
)
_APP_SHAPE: Final = re.compile(
    rb"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4}\] \[\d+\] \[(?:DEBUG|INFO|WARNING|ERROR|CRITICAL)\]"  # gunicorn
    rb"|(?:^|[\s\]:])(?:INFO|WARNING|ERROR|CRITICAL|DEBUG):\s{2,}"  # uvicorn pads the level to 9 columns
)
_KERNEL_WORDS: Final = (*_OOM_PHRASES, b"Killed process ")
_PREFIX: Final = re.compile(rb"^(?:[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \S+ [^:\s]+: |\S+\s+\|\s)")
"""A syslog/journald (``Dec  1 10:00:00 host unit[1]: ``) or compose (``web-1  | ``) prefix."""


def _after_prefix(line: bytes) -> bytes:
    m = _PREFIX.match(line)
    return line[m.end() :] if m else line


def detect_line_source(line: bytes) -> LineSource:
    """Which source wrote ``line``: by its shape first, then by what it says (nginx when nothing fits)."""
    if b"avc:" in line and b"denied" in line:
        return "selinux"
    if any(word in line for word in _KERNEL_WORDS):
        return "kernel"
    if _NGINX_SHAPE.search(line, 0, 400):
        return "nginx"
    body = _after_prefix(line)
    if _PHPFPM_SHAPE.search(body, 0, 400):
        return "php-fpm"
    if _APP_SHAPE.search(body, 0, 400):
        return "app"
    if classify_nginx(line)[0] != NONE:
        return "nginx"
    if classify_phpfpm(line)[0] != NONE:
        return "php-fpm"
    if classify_app(line)[0] != NONE:
        return "app"
    return "nginx"
