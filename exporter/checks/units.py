"""systemd unit states read straight from systemd's D-Bus API (no ``systemctl``).

For each configured unit the check reads ``LoadState``, ``ActiveState``, ``SubState``,
``UnitFileState``, ``ActiveEnterTimestamp`` (``org.freedesktop.systemd1.Unit``) and ``NRestarts``,
``MainPID`` (``org.freedesktop.systemd1.Service``) over one kept connection to the system bus.
All units' calls are pipelined: every ``LoadUnit`` is sent at once, then every ``Properties.Get``,
and replies are matched by serial. Every socket operation is bounded by the scrape deadline.
"""

from __future__ import annotations

import itertools
import os
import re
import socket
import struct
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, NamedTuple

from jeepney import (  # type: ignore[import-untyped]
    DBusAddress,
    HeaderFields,
    Message,
    MessageType,
    Parser,
    new_method_call,
)
from jeepney.auth import BEGIN, Authenticator  # type: ignore[import-untyped]
from jeepney.bus import get_connectable_addresses  # type: ignore[import-untyped]
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from exporter.deadline import Deadline

DEFAULT_SYSTEM_BUS: Final = "unix:path=/run/dbus/system_bus_socket"
DEFAULT_UNIT_DIRS: Final = ("/etc/systemd/system", "/lib/systemd/system", "/usr/lib/systemd/system")

ACTIVE_STATES: Final = ("active", "activating", "deactivating", "inactive", "failed", "reloading")
ENABLED_FILE_STATES: Final = frozenset({"enabled", "enabled-runtime", "static", "indirect", "alias"})

_SYSTEMD: Final = "org.freedesktop.systemd1"
_MANAGER_PATH: Final = "/org/freedesktop/systemd1"
_MANAGER_IFACE: Final = "org.freedesktop.systemd1.Manager"
_UNIT_IFACE: Final = "org.freedesktop.systemd1.Unit"
_SERVICE_IFACE: Final = "org.freedesktop.systemd1.Service"
_NO_SUCH_UNIT: Final = "org.freedesktop.systemd1.NoSuchUnit"
_INVALID_ARGS: Final = "org.freedesktop.DBus.Error.InvalidArgs"

# (interface, property) pairs read for every unit, in this order.
_PROPERTIES: Final = (
    (_UNIT_IFACE, "LoadState"),
    (_UNIT_IFACE, "ActiveState"),
    (_UNIT_IFACE, "SubState"),
    (_UNIT_IFACE, "UnitFileState"),
    (_UNIT_IFACE, "ActiveEnterTimestamp"),
    (_SERVICE_IFACE, "NRestarts"),
    (_SERVICE_IFACE, "MainPID"),
)

_PHP_FPM_UNIT = re.compile(r"^php(\d+(?:\.\d+)*)?-fpm\.service$")


@dataclass(frozen=True)
class UnitStatus:
    """One unit as systemd reports it; ``load_state`` ``not-found`` for a unit that does not exist."""

    name: str
    load_state: str
    active_state: str
    sub_state: str
    unit_file_state: str
    n_restarts: int | None
    active_enter_timestamp_seconds: float | None
    main_pid: int | None
    error: str | None = None


@dataclass(frozen=True)
class UnitsResult:
    """The outcome of one run: ``available`` False (and ``error`` set) when systemd could not be asked."""

    available: bool
    error: str | None
    units: tuple[UnitStatus, ...]


class _BusError(Exception):
    """A D-Bus error reply."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}" if message else name)
        self.name = name


class _Connection:
    """A minimal blocking D-Bus client connection whose every operation honours a deadline."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.parser = Parser()
        self.serials = itertools.count(1)
        self.pending: dict[int, Message] = {}

    @classmethod
    def open(cls, path: str, deadline: Deadline) -> _Connection:
        if deadline.expired():
            raise TimeoutError("deadline passed")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.settimeout(deadline.remaining())
            sock.connect(path)
            sock.sendall(b"\0")
            auth = Authenticator(inc_null_byte=False)
            for line in auth:
                sock.settimeout(deadline.remaining())
                sock.sendall(line)
                data = sock.recv(1024)
                if not data:
                    raise ConnectionResetError("bus closed the connection during authentication")
                auth.feed(data)
            sock.settimeout(deadline.remaining())
            sock.sendall(BEGIN)
            conn = cls(sock)
            hello = _Call("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", "Hello")
            conn.call_all([hello], deadline)
        except BaseException:
            sock.close()
            raise
        return conn

    def close(self) -> None:
        self.sock.close()

    def call_all(self, calls: Sequence[_Call], deadline: Deadline) -> list[tuple[Any, ...] | _BusError]:
        """Send every call, then wait for all replies; bodies or errors in the same order."""
        if deadline.expired():
            raise TimeoutError("deadline passed")
        serials = [next(self.serials) for _ in calls]
        payload = b"".join(_serialise(c, s) for c, s in zip(calls, serials, strict=True))
        self.sock.settimeout(deadline.remaining())
        self.sock.sendall(payload)
        wanted = set(serials)
        while not wanted.issubset(self.pending):
            if deadline.expired():
                raise TimeoutError("deadline passed while waiting for the bus")
            self.sock.settimeout(deadline.remaining())
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionResetError("bus closed the connection")
            self.parser.add_data(data)
            while (msg := self.parser.get_next_message()) is not None:
                reply_to = msg.header.fields.get(HeaderFields.reply_serial)
                if reply_to in wanted:
                    self.pending[reply_to] = msg
        results: list[tuple[Any, ...] | _BusError] = []
        for serial in serials:
            msg = self.pending.pop(serial)
            if msg.header.message_type == MessageType.error:
                name = str(msg.header.fields.get(HeaderFields.error_name, "unknown error"))
                text = str(msg.body[0]) if msg.body and isinstance(msg.body[0], str) else ""
                results.append(_BusError(name, text))
            else:
                results.append(tuple(msg.body))
        return results


class _Call(NamedTuple):
    """A method call, hashable so its serialised form can be cached."""

    destination: str
    path: str
    interface: str
    method: str
    signature: str | None = None
    body: tuple[Any, ...] = ()


_TEMPLATES: dict[_Call, tuple[bytes, str]] = {}
_TEMPLATES_MAX = 4096


def _serialise(call: _Call, serial: int) -> bytes:
    """The wire form of ``call`` with ``serial``: serialised once by jeepney, then only the serial patched.

    The fixed D-Bus header is: endianness, type, flags, version (4 bytes), body length (4), serial (4).
    """
    cached = _TEMPLATES.get(call)
    if cached is None:
        address = DBusAddress(call.path, call.destination, call.interface)
        data = new_method_call(address, call.method, call.signature, call.body).serialise(serial=1)
        if len(_TEMPLATES) >= _TEMPLATES_MAX:
            _TEMPLATES.clear()
        cached = _TEMPLATES[call] = (data, "<I" if data[:1] == b"l" else ">I")
    data, layout = cached
    return data[:8] + struct.pack(layout, serial) + data[12:]


def _socket_path(address: str) -> str:
    try:
        return str(next(iter(get_connectable_addresses(address))))
    except (RuntimeError, ValueError, StopIteration) as exc:
        raise ValueError(f"unsupported D-Bus address {address!r}: {exc}") from None


class UnitsCheck:
    """Reads the state of ``units`` from systemd over the system bus."""

    collector = "units"

    def __init__(self, units: Sequence[str], bus_address: str | None = None) -> None:
        self.units = tuple(units)
        self.bus_address = bus_address or os.environ.get("DBUS_SYSTEM_BUS_ADDRESS") or DEFAULT_SYSTEM_BUS
        self._lock = threading.Lock()
        self._conn: _Connection | None = None

    def close(self) -> None:
        """Drop the kept bus connection (a later run reopens it)."""
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def run(self, deadline: Deadline) -> UnitsResult:
        """Query all units once; never blocks past ``deadline`` (a stuck bus gives ``timeout``)."""
        if not self._lock.acquire(timeout=deadline.remaining()):
            return UnitsResult(False, "timeout", ())
        try:
            return self._run_locked(deadline)
        finally:
            self._lock.release()

    def _run_locked(self, deadline: Deadline) -> UnitsResult:
        try:
            path = _socket_path(self.bus_address)
        except ValueError as exc:
            return UnitsResult(False, str(exc), ())
        # A kept connection may have broken since the last run: retry once on a fresh one.
        for attempt in (1, 2):
            fresh = self._conn is None
            try:
                if self._conn is None:
                    self._conn = _Connection.open(path, deadline)
                units = self._query(self._conn, deadline)
            except TimeoutError:
                self._drop()
                return UnitsResult(False, "timeout", ())
            except (OSError, EOFError, ValueError) as exc:
                self._drop()
                if attempt == 1 and not fresh and not deadline.expired():
                    continue
                return UnitsResult(False, f"system bus {path}: {_describe(exc)}", ())
            except _BusError as exc:
                return UnitsResult(False, f"systemd: {exc}", ())
            return UnitsResult(True, None, units)
        raise AssertionError("unreachable")

    def _query(self, conn: _Connection, deadline: Deadline) -> tuple[UnitStatus, ...]:
        loads = conn.call_all(
            [_Call(_SYSTEMD, _MANAGER_PATH, _MANAGER_IFACE, "LoadUnit", "s", (u,)) for u in self.units],
            deadline,
        )
        paths: dict[str, str] = {}
        statuses: dict[str, UnitStatus] = {}
        for unit, reply in zip(self.units, loads, strict=True):
            if isinstance(reply, _BusError):
                if reply.name in (_NO_SUCH_UNIT, _INVALID_ARGS):
                    # A finding, not an error: the unit does not exist (or cannot, e.g. an invalid name).
                    note = None if reply.name == _NO_SUCH_UNIT else str(reply)
                    statuses[unit] = UnitStatus(
                        unit, "not-found", "inactive", "dead", "", None, None, None, note
                    )
                elif reply.name == "org.freedesktop.DBus.Error.ServiceUnknown":
                    raise reply  # no systemd on this bus
                else:
                    statuses[unit] = UnitStatus(unit, "error", "", "", "", None, None, None, str(reply))
            else:
                paths[unit] = str(reply[0])
        calls = [
            _Call(_SYSTEMD, paths[unit], "org.freedesktop.DBus.Properties", "Get", "ss", prop)
            for unit in self.units
            if unit in paths
            for prop in _PROPERTIES
        ]
        replies = iter(conn.call_all(calls, deadline)) if calls else iter(())
        for unit in self.units:
            if unit in paths:
                values = {name: _variant(next(replies)) for _, name in _PROPERTIES}
                statuses[unit] = _status(unit, values)
        return tuple(statuses[u] for u in self.units)


def _variant(reply: tuple[Any, ...] | _BusError) -> Any:
    """The value of a ``Properties.Get`` reply (a ``(signature, value)`` variant), None on error."""
    if isinstance(reply, _BusError) or not reply:
        return None
    variant = reply[0]
    return variant[1] if isinstance(variant, tuple) and len(variant) == 2 else None


def _status(unit: str, values: dict[str, Any]) -> UnitStatus:
    timestamp = values["ActiveEnterTimestamp"]
    main_pid = values["MainPID"]
    restarts = values["NRestarts"]
    return UnitStatus(
        name=unit,
        load_state=str(values["LoadState"] or ""),
        active_state=str(values["ActiveState"] or ""),
        sub_state=str(values["SubState"] or ""),
        unit_file_state=str(values["UnitFileState"] or ""),
        n_restarts=int(restarts) if isinstance(restarts, int) else None,
        active_enter_timestamp_seconds=timestamp / 1e6 if isinstance(timestamp, int) and timestamp else None,
        main_pid=int(main_pid) if isinstance(main_pid, int) and main_pid else None,
    )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def metric_families(result: UnitsResult) -> Iterable[Metric]:
    """The ``badgateway_unit_*`` and ``badgateway_systemd_available`` families for one result."""
    available = GaugeMetricFamily(
        "badgateway_systemd_available", "1 if systemd answered on the system bus during this scrape."
    )
    available.add_metric([], 1.0 if result.available else 0.0)
    yield available
    if not result.available:
        return
    state = GaugeMetricFamily(
        "badgateway_unit_state", "systemd ActiveState of the unit, one-hot.", labels=["unit", "state"]
    )
    loaded = GaugeMetricFamily(
        "badgateway_unit_loaded",
        "1 if the unit file was found and loaded (LoadState=loaded).",
        labels=["unit"],
    )
    enabled = GaugeMetricFamily(
        "badgateway_unit_enabled",
        "1 if the unit starts at boot (UnitFileState enabled, enabled-runtime, static, indirect or alias).",
        labels=["unit"],
    )
    restarts = CounterMetricFamily(
        "badgateway_unit_restarts",
        "Automatic restarts of the service by systemd (NRestarts).",
        labels=["unit"],
    )
    since = GaugeMetricFamily(
        "badgateway_unit_active_since_seconds",
        "Unix time the unit last entered the active state; only while active or reloading.",
        labels=["unit"],
    )
    for unit in result.units:
        for name in ACTIVE_STATES:
            state.add_metric([unit.name, name], 1.0 if unit.active_state == name else 0.0)
        loaded.add_metric([unit.name], 1.0 if unit.load_state == "loaded" else 0.0)
        enabled.add_metric([unit.name], 1.0 if unit.unit_file_state in ENABLED_FILE_STATES else 0.0)
        if unit.n_restarts is not None:
            restarts.add_metric([unit.name], float(unit.n_restarts))
        if unit.active_enter_timestamp_seconds is not None and unit.active_state in ("active", "reloading"):
            since.add_metric([unit.name], unit.active_enter_timestamp_seconds)
    yield from (state, loaded, enabled, restarts, since)


def _php_version(name: str) -> tuple[int, ...] | None:
    match = _PHP_FPM_UNIT.match(name)
    if match is None:
        return None
    return tuple(int(part) for part in match.group(1).split(".")) if match.group(1) else ()


def default_php_fpm_unit(unit_dirs: Sequence[str | os.PathLike[str]] = DEFAULT_UNIT_DIRS) -> str:
    """The host's ``php*-fpm.service`` with the highest version, else ``php-fpm.service``."""
    found: dict[str, tuple[int, ...]] = {}
    for directory in unit_dirs:
        try:
            names = [entry.name for entry in Path(directory).iterdir()]
        except OSError:
            continue
        for name in names:
            version = _php_version(name)
            if version is not None:
                found[name] = version
    if not found:
        return "php-fpm.service"
    return max(found, key=lambda name: (found[name], name))
