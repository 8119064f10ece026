"""The backend's database, found from the backend's own configuration and probed the way pg_isready does.

Where: ``database.url`` when configured; else the environment of the running backend
(``/proc/PID/environ`` of the processes matching ``processes.backend``); else the ``Environment=`` and
``EnvironmentFile=`` of its unit file. The keys: ``DATABASE_URL`` (``postgresql://``, ``postgres://``,
``postgresql+driver://``), else ``PGHOST``/``POSTGRES_HOST`` with ``PGPORT``/``POSTGRES_PORT``.

How: the first message of PostgreSQL's protocol (a StartupMessage) and the first answer, as libpq's
``PQping`` (pg_isready) reads it: an authentication request or any error but "cannot connect now" is
``accepting``; SQLSTATE 57P03 (starting up, shutting down, in recovery) is ``rejecting``; no connection
or no answer before the deadline is ``no_response``; nowhere to connect is ``no_attempt``. No login is
made and no credential is read or sent. Measured against a real PostgreSQL 15: see docs/performance.md.
"""

from __future__ import annotations

import re
import shlex
import socket
import struct
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal
from urllib.parse import parse_qs, unquote, urlsplit

from exporter.checks.proctable import ProcTable, read_proc_file
from exporter.config import DatabaseSettings
from exporter.deadline import Deadline
from exporter.discovery.units import DEFAULT_UNIT_DIRS
from exporter.families import GaugeMetricFamily, Metric

State = Literal["accepting", "rejecting", "no_response", "no_attempt"]
STATES: Final[tuple[State, ...]] = ("accepting", "rejecting", "no_response", "no_attempt")
DEFAULT_PORT = 5432
_PROTOCOL_3 = 196608
_CANNOT_CONNECT_NOW = "57P03"
_URL_SCHEMES = re.compile(r"^postgres(?:ql)?(?:\+\w+)?$")
_MAX_ENVIRON = 256 * 1024
_RESCAN_SECONDS = 30.0
"""How long the backend processes found stand while they all run (a new one is seen within this)."""


@dataclass(frozen=True)
class DatabaseTarget:
    """Where the backend's database is, and where that was read."""

    host: str
    """A host name or address, or the folder of a unix socket (``/run/postgresql``)."""
    port: int
    source: str
    """``database.url``, ``environment of PID 1234 (DATABASE_URL)``, ``/etc/systemd/system/x.service``."""
    user: str = "postgres"
    database: str = "postgres"

    @property
    def address(self) -> str:
        """``127.0.0.1:5432``, or the socket's path."""
        if self.host.startswith("/"):
            return f"{self.host}/.s.PGSQL.{self.port}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class DatabaseResult:
    """The pg_isready-like verdict on the backend's database."""

    target: DatabaseTarget | None
    state: State
    detail: str | None
    duration_seconds: float


def target_from_environment(env: Mapping[str, str], source: str) -> DatabaseTarget | None:
    """The database an environment names (``DATABASE_URL``, else ``PGHOST``/``POSTGRES_HOST``), or None."""
    url = env.get("DATABASE_URL")
    if url:
        return target_from_url(url, f"{source} (DATABASE_URL)")
    for key in ("PGHOST", "POSTGRES_HOST"):
        host = env.get(key)
        if host:
            port = env.get("PGPORT") or env.get("POSTGRES_PORT") or str(DEFAULT_PORT)
            user = env.get("PGUSER") or env.get("POSTGRES_USER") or "postgres"
            name = env.get("PGDATABASE") or env.get("POSTGRES_DB") or user
            return DatabaseTarget(
                host, int(port) if port.isdigit() else DEFAULT_PORT, f"{source} ({key})", user, name
            )
    return None


def target_from_url(url: str, source: str) -> DatabaseTarget | None:
    """``postgresql://user@host:port/db`` (or ``?host=/run/postgresql``); None for another scheme."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if not _URL_SCHEMES.match(parts.scheme):
        return None
    query = parse_qs(parts.query)
    host = unquote(parts.hostname or "") or (query.get("host") or [""])[0] or "localhost"
    user = unquote(parts.username or "") or "postgres"
    database = unquote(parts.path.lstrip("/")) or user
    return DatabaseTarget(host, port or DEFAULT_PORT, source, user, database)


def unit_file_environment(text: str, read: bool = True) -> dict[str, str]:
    """The environment a unit file's ``Environment=`` and ``EnvironmentFile=`` lines give its service."""
    env: dict[str, str] = {}
    for raw in text.splitlines():
        key, sep, value = raw.strip().partition("=")
        if not sep:
            continue
        if key.strip() == "Environment":
            for item in _split(value):
                name, eq, val = item.partition("=")
                if eq:
                    env[name] = val
        elif key.strip() == "EnvironmentFile" and read:
            env.update(environment_file(value.strip().removeprefix("-")))
    return env


def environment_file(path: str) -> dict[str, str]:
    """``KEY=value`` lines of an EnvironmentFile (quotes removed, comments skipped); {} if unreadable."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")[:_MAX_ENVIRON]
    except OSError:
        return {}
    env = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        name, eq, value = line.removeprefix("export ").partition("=")
        if eq:
            items = _split(value)
            env[name.strip()] = items[0] if items else ""
    return env


def _split(value: str) -> list[str]:
    try:
        return shlex.split(value)
    except ValueError:
        return value.split()


class _BackendEnvironments:
    """The environments of the processes whose command line matches, each read once per process: a
    process's environment is fixed when it execs, and a process is its PID and start time.

    While every backend process found last time still runs, and for at most :data:`_RESCAN_SECONDS`,
    those are the backends and ``/proc`` is not scanned again: one ``stat`` read each.
    """

    def __init__(self, pattern: re.Pattern[str], proc_root: str = "/proc") -> None:
        self._pattern = pattern
        self._proc = proc_root
        self._table = ProcTable(proc_root)
        self._read: dict[tuple[int, int], dict[str, str] | None] = {}
        self._scanned_at = -_RESCAN_SECONDS

    def read(self) -> list[tuple[int, dict[str, str]]]:
        """``(pid, environment)`` of every matching process whose environment can be read."""
        now = time.monotonic()
        if not self._read or now - self._scanned_at > _RESCAN_SECONDS or not self._all_alive():
            self._read = self._scan()
            self._scanned_at = now
        return [(pid, env) for (pid, _), env in self._read.items() if env is not None]

    def _scan(self) -> dict[tuple[int, int], dict[str, str] | None]:
        read: dict[tuple[int, int], dict[str, str] | None] = {}
        for pid, entry in self._table.scan().items():
            if self._pattern.search(entry.command):
                key = (pid, entry.start_ticks)
                read[key] = self._read[key] if key in self._read else self._environ(pid)
        return read

    def _all_alive(self) -> bool:
        return all(self._table.start_ticks(pid) == ticks for pid, ticks in self._read)

    def _environ(self, pid: int) -> dict[str, str] | None:
        try:
            raw = read_proc_file(f"{self._proc}/{pid}/environ", _MAX_ENVIRON)
        except OSError:
            return None  # not ours to read (not root), or it has just exited
        items = (item.decode("utf-8", "replace").partition("=") for item in raw.split(b"\0") if item)
        return {name: value for name, eq, value in items if eq}


class DatabaseCheck:
    """Finds the backend's database and probes it once per run."""

    collector = "database"

    def __init__(
        self,
        settings: DatabaseSettings,
        backend_pattern: str,
        backend_unit: str | None,
        unit_dirs: Sequence[str] = DEFAULT_UNIT_DIRS,
    ) -> None:
        self.settings = settings
        self.pattern = re.compile(backend_pattern)
        self.unit = backend_unit
        self.unit_dirs = tuple(unit_dirs)
        self._lock = threading.Lock()
        self._last_target: DatabaseTarget | None = None
        self._backends = _BackendEnvironments(self.pattern)

    def locate(self) -> DatabaseTarget | None:
        """Configured, else the running backend's environment, else its unit file; else, while no backend
        process can be read, the last one found (a backend that is down still had its database). A running
        backend whose environment and unit name none has none: the last one found is forgotten."""
        if self.settings.url:
            return target_from_url(self.settings.url, "database.url")
        read_a_backend = False
        for pid, env in self._backends.read():
            read_a_backend = True
            found = target_from_environment(env, f"environment of PID {pid}")
            if found is not None:
                return found
        for folder in self.unit_dirs if self.unit else ():
            path = Path(folder) / str(self.unit)
            try:
                text = path.read_text(encoding="utf-8", errors="replace")[:_MAX_ENVIRON]
            except OSError:
                continue
            found = target_from_environment(unit_file_environment(text), str(path))
            if found is not None:
                return found
        if read_a_backend:
            self._last_target = None
        return self._last_target

    def run(self, deadline: Deadline) -> DatabaseResult:
        started = time.monotonic()
        if not self._lock.acquire(timeout=deadline.remaining()):
            return DatabaseResult(None, "no_response", "an earlier probe is still running", 0.0)
        try:
            target = self.locate()
            if target is None:
                return DatabaseResult(
                    None, "no_attempt", "no database found in the backend's configuration", 0.0
                )
            self._last_target = target
            state, detail = probe(target, deadline.capped(self.settings.timeout_seconds))
            return DatabaseResult(target, state, detail, time.monotonic() - started)
        finally:
            self._lock.release()


def startup_message(user: str, database: str) -> bytes:
    """PostgreSQL's StartupMessage (protocol 3.0) for ``user`` and ``database``."""
    body = struct.pack("!I", _PROTOCOL_3)
    for key, value in (("user", user), ("database", database), ("application_name", "badgateway-exporter")):
        body += key.encode() + b"\0" + value.encode() + b"\0"
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


def _connect(target: DatabaseTarget, deadline: Deadline) -> socket.socket:
    if target.host.startswith("/"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(deadline.remaining())
        try:
            sock.connect(target.address)
        except BaseException:
            sock.close()
            raise
        return sock
    return socket.create_connection((target.host, target.port), timeout=deadline.remaining())


def probe(target: DatabaseTarget, deadline: Deadline) -> tuple[State, str | None]:
    """``(state, detail)``: one StartupMessage and the server's first answer, all under ``deadline``."""
    try:
        sock = _connect(target, deadline)
    except socket.gaierror as exc:
        return "no_attempt", f"{target.host}: {exc.strerror or exc}"
    except TimeoutError:
        return "no_response", f"connect to {target.address}: timed out"
    except OSError as exc:
        return "no_response", f"connect to {target.address}: {exc.strerror or exc}"
    with sock:
        try:
            sock.settimeout(deadline.remaining())
            sock.sendall(startup_message(target.user, target.database))
            answer = _read_message(sock, deadline)
        except TimeoutError:
            return "no_response", f"{target.address}: no answer before the deadline"
        except (OSError, ValueError) as exc:
            return "no_response", f"{target.address}: {exc}"
        _terminate(sock)
    return _verdict(answer)


def _read_message(sock: socket.socket, deadline: Deadline) -> tuple[bytes, bytes]:
    """The server's first message: its type byte and body (at most 8 KiB of it)."""
    data = b""
    while len(data) < 5:
        data += _recv(sock, deadline)
    kind, length = data[:1], struct.unpack("!I", data[1:5])[0]
    if length < 4 or length > 1 << 20:
        raise ValueError("not a PostgreSQL server")
    wanted = min(length - 4, 8192)
    while len(data) - 5 < wanted:
        data += _recv(sock, deadline)
    return kind, data[5 : 5 + wanted]


def _recv(sock: socket.socket, deadline: Deadline) -> bytes:
    if deadline.expired():
        raise TimeoutError
    sock.settimeout(deadline.remaining())
    chunk = sock.recv(8192)
    if not chunk:
        raise ValueError("the server closed the connection")
    return chunk


def _terminate(sock: socket.socket) -> None:
    try:
        sock.settimeout(0.05)
        sock.sendall(b"X\0\0\0\4")
    except OSError:
        pass


def _verdict(answer: tuple[bytes, bytes]) -> tuple[State, str | None]:
    kind, body = answer
    if kind == b"R":
        return "accepting", None
    if kind == b"E":
        fields = {part[:1]: part[1:].decode("utf-8", "replace") for part in body.split(b"\0") if part}
        code, message = fields.get(b"C", ""), fields.get(b"M", "")
        if code == _CANNOT_CONNECT_NOW:
            return "rejecting", f"{message} (SQLSTATE {code})"
        return "accepting", f"answered: {message} (SQLSTATE {code})" if code else None
    if kind in (b"S", b"N"):  # an SSL answer or a notice: something that speaks the protocol answered
        return "accepting", None
    return "no_response", f"unexpected answer {kind!r}: not a PostgreSQL server"


def metric_families(result: DatabaseResult) -> Iterable[Metric]:
    """``badgateway_database_state`` (one-hot), the probe's duration and where the database is."""
    state = GaugeMetricFamily(
        "badgateway_database_state",
        "The backend's database as pg_isready sees it, one-hot: accepting, rejecting, no_response, no_attempt.",
        labels=["state"],
    )
    for name in STATES:
        state.add_metric([name], 1.0 if result.state == name else 0.0)
    yield state
    yield GaugeMetricFamily(
        "badgateway_database_probe_duration_seconds",
        "How long the database probe took.",
        value=result.duration_seconds,
    )
    if result.target is not None:
        info = GaugeMetricFamily(
            "badgateway_database_info",
            "Where the backend's database is (address) and where the exporter read that (source kind).",
            labels=["address", "source"],
        )
        info.add_metric([result.target.address, _source_kind(result.target.source)], 1.0)
        yield info


def _source_kind(source: str) -> str:
    """A bounded label: ``config``, ``environment`` or ``unit_file``."""
    if source.startswith("database.url"):
        return "config"
    return "environment" if source.startswith("environment") else "unit_file"


__all__ = [
    "STATES",
    "DatabaseCheck",
    "DatabaseResult",
    "DatabaseTarget",
    "metric_families",
    "probe",
    "target_from_environment",
    "target_from_url",
]
