"""systemd unit states read straight from systemd's D-Bus API (no ``systemctl``).

For each configured unit the check reads ``LoadState``, ``ActiveState``, ``SubState`` (one
``Manager.ListUnitsByNames`` for all units), ``UnitFileState``, ``ActiveEnterTimestamp``
(``org.freedesktop.systemd1.Unit``) and ``NRestarts``, ``MainPID`` (``org.freedesktop.systemd1.Service``)
over one kept connection to the system bus. Everything is one pipelined batch (one round trip): the
``Properties.Get`` calls go to the unit's object path, which systemd derives from the unit's name.
Replies are matched by serial. Every socket operation is bounded by the scrape deadline.

The D-Bus wire format is written and read here directly (only what this check sends and reads):
a generic client library spends most of this check's CPU time building message objects.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import signal
import socket
import struct
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, NamedTuple
from urllib.parse import unquote_to_bytes

from exporter.checks.journal import JournalReader, UnitJournal
from exporter.deadline import Deadline
from exporter.families import CounterMetricFamily, GaugeMetricFamily, Metric

DEFAULT_SYSTEM_BUS: Final = "unix:path=/run/dbus/system_bus_socket"

ACTIVE_STATES: Final = ("active", "activating", "deactivating", "inactive", "failed", "reloading")
ENABLED_FILE_STATES: Final = frozenset({"enabled", "enabled-runtime", "static", "indirect", "alias"})

_SYSTEMD: Final = "org.freedesktop.systemd1"
_MANAGER_PATH: Final = "/org/freedesktop/systemd1"
_MANAGER_IFACE: Final = "org.freedesktop.systemd1.Manager"
_UNIT_IFACE: Final = "org.freedesktop.systemd1.Unit"
_SERVICE_IFACE: Final = "org.freedesktop.systemd1.Service"
_PROPERTIES_IFACE: Final = "org.freedesktop.DBus.Properties"
_UNIT_PATH_PREFIX: Final = "/org/freedesktop/systemd1/unit/"
_NO_SUCH_UNIT: Final = "org.freedesktop.systemd1.NoSuchUnit"
_INVALID_ARGS: Final = "org.freedesktop.DBus.Error.InvalidArgs"
_SERVICE_UNKNOWN: Final = "org.freedesktop.DBus.Error.ServiceUnknown"

# (interface, property) pairs read with Properties.Get for every unit, in this order, on every run.
_STATE_PROPERTIES: Final = (
    (_UNIT_IFACE, "UnitFileState"),
    (_UNIT_IFACE, "ActiveEnterTimestamp"),
    (_SERVICE_IFACE, "MainPID"),
)
# How the unit last ended and how often it restarted: read again only when the unit is not running,
# or is not the same run of it as last time (its state, ActiveEnterTimestamp or MainPID changed).
_DETAIL_PROPERTIES: Final = (
    (_SERVICE_IFACE, "NRestarts"),
    (_SERVICE_IFACE, "Result"),
    (_SERVICE_IFACE, "ExecMainCode"),
    (_SERVICE_IFACE, "ExecMainStatus"),
    (_UNIT_IFACE, "InactiveEnterTimestamp"),
)

RESULTS: Final = (
    "success", "exit-code", "signal", "core-dump", "timeout", "oom-kill", "start-limit-hit", "watchdog",
    "resources", "protocol", "other",
)  # fmt: skip
"""systemd's ``Result`` of a service, bounded: anything systemd adds later counts as ``other``."""
EXIT_CODES: Final = {1: "exited", 2: "killed", 3: "dumped"}
"""``ExecMainCode`` (the kernel's ``CLD_*``): how the main process ended."""
DEFAULT_RESTART_WINDOW_SECONDS: Final = 600.0


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
    result: str = ""
    """systemd's ``Result`` (``exit-code``, ``signal``, ``oom-kill``, ``start-limit-hit``, ...; "" if none)."""
    exec_main_code: int | None = None
    """How the last main process ended: 1 exited, 2 killed by a signal, 3 dumped core (0: still running)."""
    exec_main_status: int | None = None
    """Its exit status, or the signal's number when it was killed."""
    inactive_enter_timestamp_seconds: float | None = None
    """Unix time the unit last became inactive or failed."""
    restarts_in_window: int | None = None
    """Automatic restarts within the check's window (a restart loop); None when unknown."""
    journal: UnitJournal | None = None
    """Its last journal lines, read when it failed, stopped with an error or restarts; else None."""

    @property
    def troubled(self) -> bool:
        """Failed, stopped with an error, waiting to be restarted, or restarted lately: read its journal."""
        if self.load_state != "loaded":
            return False
        if (
            self.active_state == "failed"
            or self.sub_state == "auto-restart"
            or (self.restarts_in_window or 0) > 0
        ):
            return True
        return self.active_state == "inactive" and self.result not in ("", "success")

    @property
    def exit_code_name(self) -> str | None:
        """``exited``, ``killed`` or ``dumped`` for a main process that ended; None otherwise."""
        return EXIT_CODES.get(self.exec_main_code or 0)

    def how_it_ended(self) -> str | None:
        """``exit-code, status=78`` or ``signal, SIGKILL`` or ``oom-kill``: why the unit stopped or failed."""
        if self.result in ("", "success"):
            return None
        parts = [self.result]
        code, status = self.exit_code_name, self.exec_main_status
        if code == "exited" and status is not None:
            parts.append(f"status={status}")
        elif code in ("killed", "dumped") and status:
            parts.append(_signal_name(status) + (" (core dumped)" if code == "dumped" else ""))
        return ", ".join(parts)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


class RestartWindow:
    """Automatic restarts (``NRestarts``) per unit within the last ``seconds``, from the readings of each run.

    On a unit's first reading nothing earlier is known: its restarts count as within the window when
    the unit changed state within it (``NRestarts`` counts from the last manual start). A manual
    start resets ``NRestarts``; the history starts over then.
    """

    def __init__(self, seconds: float = DEFAULT_RESTART_WINDOW_SECONDS) -> None:
        self.seconds = seconds
        self._seen: dict[str, list[tuple[float, int]]] = {}

    def observe(self, unit: UnitStatus, now: float, wall: float) -> int | None:
        if unit.n_restarts is None:
            return None
        seen = self._seen.get(unit.name)
        if not seen or unit.n_restarts < seen[-1][1]:
            changed = max(
                unit.active_enter_timestamp_seconds or 0.0, unit.inactive_enter_timestamp_seconds or 0.0
            )
            recent = unit.sub_state == "auto-restart" or wall - changed <= self.seconds
            seen = self._seen[unit.name] = [(now - self.seconds, 0 if recent else unit.n_restarts)]
        if seen[-1][1] != unit.n_restarts:
            seen.append((now, unit.n_restarts))  # only when it changes: frequent scrapes must not pile up
        # Keep the last change older than the window as the baseline, and every change within it.
        while len(seen) > 1 and seen[1][0] <= now - self.seconds:
            seen.pop(0)
        return unit.n_restarts - seen[0][1]


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


class _Call(NamedTuple):
    """A method call, hashable so its serialised form can be cached."""

    destination: str
    path: str
    interface: str
    method: str
    signature: str = ""
    body: tuple[Any, ...] = ()


_Reply = tuple[Any, ...] | _BusError


class _Connection:
    """A minimal blocking D-Bus client connection whose every operation honours a deadline."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()
        self.serials = itertools.count(1)
        self.pending: dict[int, _Reply] = {}

    @classmethod
    def open(cls, path: str, deadline: Deadline) -> _Connection:
        if deadline.expired():
            raise TimeoutError("deadline passed")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.settimeout(deadline.remaining())
            sock.connect(path)
            # SASL EXTERNAL: the bus checks our credentials on the socket against the uid we name.
            uid = str(os.geteuid()).encode().hex().encode()
            sock.sendall(b"\0AUTH EXTERNAL " + uid + b"\r\n")
            answer = b""
            while b"\r\n" not in answer:
                sock.settimeout(deadline.remaining())
                data = sock.recv(1024)
                if not data:
                    raise ConnectionResetError("bus closed the connection during authentication")
                answer += data
            if not answer.startswith(b"OK "):
                raise ValueError(f"authentication refused: {answer.strip().decode('ascii', 'replace')}")
            sock.settimeout(deadline.remaining())
            sock.sendall(b"BEGIN\r\n")
            conn = cls(sock)
            hello = _Call("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", "Hello")
            conn.call_all([hello], deadline)
        except BaseException:
            sock.close()
            raise
        return conn

    def close(self) -> None:
        self.sock.close()

    def call_all(self, calls: Sequence[_Call], deadline: Deadline) -> list[_Reply]:
        """Send every call, then wait for all replies; bodies or errors in the same order."""
        if deadline.expired():
            raise TimeoutError("deadline passed")
        serials = [next(self.serials) for _ in calls]
        payload = b"".join(_serialise(c, s) for c, s in zip(calls, serials, strict=True))
        self.sock.settimeout(deadline.remaining())
        self.sock.sendall(payload)
        wanted = set(serials)
        pending = self.pending
        while not wanted.issubset(pending):
            if deadline.expired():
                raise TimeoutError("deadline passed while waiting for the bus")
            self.sock.settimeout(deadline.remaining())
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionResetError("bus closed the connection")
            self.buffer += data
            consumed = _read_replies(self.buffer, wanted, pending)
            del self.buffer[:consumed]
        return [pending.pop(serial) for serial in serials]


# -- the D-Bus wire format (https://dbus.freedesktop.org/doc/dbus-specification.html#message-protocol) --

_TEMPLATES: dict[_Call, bytes] = {}
_TEMPLATES_MAX = 4096
_U32 = struct.Struct("<I")
_HEADER = {ord("l"): struct.Struct("<III"), ord("B"): struct.Struct(">III")}  # body length, serial, fields
_MAX_MESSAGE = 2**27  # the specification's limit (128 MiB)
_METHOD_RETURN, _ERROR = 2, 3
_FIELD_ERROR_NAME, _FIELD_REPLY_SERIAL, _FIELD_SIGNATURE = 4, 5, 8
# Fixed-size types: (struct code, size = alignment).
_FIXED: Final = {
    "y": ("B", 1), "b": ("I", 4), "n": ("h", 2), "q": ("H", 2), "i": ("i", 4), "u": ("I", 4),
    "h": ("I", 4), "x": ("q", 8), "t": ("Q", 8), "d": ("d", 8),
}  # fmt: skip


class _Writer:
    """Little-endian marshalling of the few types our calls carry (strings, arrays of strings)."""

    def __init__(self) -> None:
        self.data = bytearray()

    def pad(self, alignment: int) -> None:
        self.data += bytes(-len(self.data) % alignment)

    def string(self, value: str) -> None:
        encoded = value.encode()
        self.pad(4)
        self.data += _U32.pack(len(encoded)) + encoded + b"\0"

    def signature(self, value: str) -> None:
        encoded = value.encode("ascii")
        self.data += bytes((len(encoded),)) + encoded + b"\0"

    def strings(self, values: Sequence[str]) -> None:
        """An array of strings (``as``)."""
        self.pad(4)
        at = len(self.data)
        self.data += bytes(4)
        for item in values:
            self.string(item)
        self.data[at : at + 4] = _U32.pack(len(self.data) - at - 4)


def _method_call(call: _Call) -> bytes:
    """The wire form of ``call`` with serial 0."""
    body = _Writer()
    if call.signature == "as":
        body.strings(call.body[0])
    elif call.signature.strip("s"):
        raise ValueError(f"cannot marshal a {call.signature!r} body")
    else:
        for value in call.body:
            body.string(value)
    fields = _Writer()
    header: list[tuple[int, str, str]] = [
        (1, "o", call.path), (2, "s", call.interface), (3, "s", call.method), (6, "s", call.destination)
    ]  # fmt: skip
    if call.signature:
        header.append((_FIELD_SIGNATURE, "g", call.signature))
    for field, kind, value in header:
        fields.pad(8)
        fields.data.append(field)
        fields.signature(kind)
        if kind == "g":
            fields.signature(value)
        else:
            fields.string(value)
    head = b"l\1\0\1" + _U32.pack(len(body.data)) + bytes(4) + _U32.pack(len(fields.data)) + fields.data
    return head + bytes(-len(head) % 8) + body.data


def _serialise(call: _Call, serial: int) -> bytes:
    """The wire form of ``call`` with ``serial``: built once, then only the serial (bytes 8-11) patched."""
    data = _TEMPLATES.get(call)
    if data is None:
        if len(_TEMPLATES) >= _TEMPLATES_MAX:
            _TEMPLATES.clear()
        data = _TEMPLATES[call] = _method_call(call)
    return data[:8] + _U32.pack(serial) + data[12:]


def _read_replies(buffer: bytearray, wanted: set[int], replies: dict[int, _Reply]) -> int:
    """Parse the complete messages in ``buffer``; store replies to ``wanted`` serials; bytes consumed.

    Other messages (signals, replies to calls abandoned at an earlier deadline) are skipped by their
    length alone.
    """
    data = bytes(buffer)
    start = 0
    while len(data) - start >= 16:
        layout = _HEADER.get(data[start])
        if layout is None:
            raise ValueError("malformed message from the bus")
        body_length, _, fields_length = layout.unpack_from(data, start + 4)
        body_at = start + 16 + fields_length + (-fields_length % 8)
        end = body_at + body_length
        if body_length > _MAX_MESSAGE or fields_length > _MAX_MESSAGE:
            raise ValueError("oversized message from the bus")
        if end > len(data):
            break
        kind = data[start + 1]
        if kind in (_METHOD_RETURN, _ERROR):
            try:
                _read_reply(data, start, start + 16 + fields_length, body_at, wanted, replies)
            except (struct.error, IndexError) as exc:
                raise ValueError(f"malformed message from the bus: {exc}") from None
        start = end
    return start


def _read_reply(
    data: bytes, start: int, fields_end: int, body_at: int, wanted: set[int], replies: dict[int, _Reply]
) -> None:
    """Store the message at ``start`` (a method return or error) if it answers one of ``wanted``."""
    reader = _Reader(data, start + 16, start, "<" if data[start] == ord("l") else ">")
    fields = {code: variant[1] for code, variant in reader.array("(yv)", fields_end)}
    serial = fields.get(_FIELD_REPLY_SERIAL)
    if serial not in wanted:
        return
    reader.pos = body_at
    body = reader.values(fields.get(_FIELD_SIGNATURE, ""))
    if data[start + 1] == _ERROR:
        text = body[0] if body and isinstance(body[0], str) else ""
        replies[serial] = _BusError(str(fields.get(_FIELD_ERROR_NAME, "unknown error")), text)
    else:
        replies[serial] = body


class _Reader:
    """Unmarshals D-Bus values from ``data``; alignment is relative to the message start ``base``."""

    def __init__(self, data: bytes, pos: int, base: int, order: str) -> None:
        self.data = data
        self.pos = pos
        self.base = base
        self.order = order

    def align(self, alignment: int) -> None:
        self.pos += -(self.pos - self.base) % alignment

    def values(self, signature: str) -> tuple[Any, ...]:
        out = []
        i = 0
        while i < len(signature):
            value, i = self.value(signature, i)
            out.append(value)
        return tuple(out)

    def value(self, signature: str, i: int) -> tuple[Any, int]:
        """The value of the complete type starting at ``signature[i]``, and the index after that type."""
        code = signature[i]
        data = self.data
        fixed = _FIXED.get(code)
        if fixed is not None:
            fmt, size = fixed
            self.align(size)
            (number,) = struct.unpack_from(self.order + fmt, data, self.pos)
            self.pos += size
            return (bool(number) if code == "b" else number), i + 1
        if code in "so":
            self.align(4)
            (length,) = struct.unpack_from(self.order + "I", data, self.pos)
            start = self.pos + 4
            self.pos = start + length + 1
            return data[start : start + length].decode("utf-8", "replace"), i + 1
        if code == "g":
            length = data[self.pos]
            start = self.pos + 1
            self.pos = start + length + 1
            return data[start : start + length].decode("ascii", "replace"), i + 1
        if code == "v":
            inner, _ = self.value("g", 0)
            value, _ = self.value(inner, 0) if inner else (None, 0)
            return (inner, value), i + 1
        if code == "a":
            end_of_type = _type_end(signature, i + 1)
            self.align(4)
            (length,) = struct.unpack_from(self.order + "I", data, self.pos)
            self.pos += 4
            self.align(_alignment(signature[i + 1]))
            return self.array(signature[i + 1 : end_of_type], self.pos + length), end_of_type
        if code in "({":
            self.align(8)
            end_of_type = _type_end(signature, i)
            return self.values(signature[i + 1 : end_of_type - 1]), end_of_type
        raise ValueError(f"unsupported D-Bus type {code!r} in a reply")

    def array(self, element: str, end: int) -> list[Any]:
        items = []
        while self.pos < end:
            items.append(self.value(element, 0)[0])
        self.pos = end
        return items


def _alignment(code: str) -> int:
    if code in "({":
        return 8
    if code in "sao":
        return 4
    fixed = _FIXED.get(code)
    return fixed[1] if fixed is not None else 1  # g, v


def _type_end(signature: str, i: int) -> int:
    """The index just past the complete type starting at ``signature[i]``."""
    depth = 0
    while True:
        code = signature[i]
        i += 1
        if code in "({":
            depth += 1
        elif code in ")}":
            depth -= 1
        if depth == 0 and code != "a":
            return i


def _socket_path(address: str) -> str:
    """The socket of the first ``unix:path=`` or ``unix:abstract=`` entry of a D-Bus address."""
    for entry in address.split(";"):
        transport, _, params = entry.partition(":")
        if transport != "unix":
            continue
        for param in params.split(","):
            key, _, value = param.partition("=")
            if key in ("path", "abstract") and value:
                path = unquote_to_bytes(value).decode()
                return path if key == "path" else "\0" + path
    raise ValueError(
        f"unsupported D-Bus address {address!r}: only unix:path= and unix:abstract= are supported"
    )


def _unit_path(name: str) -> str:
    """systemd's object path of a unit: bytes other than ``[A-Za-z0-9]`` (and a leading digit) as ``_xx``."""
    encoded = name.encode()
    label = "".join(
        chr(b) if (65 <= b <= 90 or 97 <= b <= 122 or (48 <= b <= 57 and i > 0)) else f"_{b:02x}"
        for i, b in enumerate(encoded)
    )
    return _UNIT_PATH_PREFIX + (label or "_")


class UnitsCheck:
    """Reads the state of ``units`` from systemd over the system bus."""

    collector = "units"

    def __init__(
        self,
        units: Sequence[str],
        bus_address: str | None = None,
        restart_window_seconds: float = DEFAULT_RESTART_WINDOW_SECONDS,
        journal: JournalReader | None = None,
    ) -> None:
        self.units = tuple(units)
        self.journal = journal
        self._restarts = RestartWindow(restart_window_seconds)
        self.bus_address = bus_address or os.environ.get("DBUS_SYSTEM_BUS_ADDRESS") or DEFAULT_SYSTEM_BUS
        self._lock = threading.Lock()
        self._conn: _Connection | None = None
        # Unit name -> the name ListUnitsByNames reports for it (differs for an alias).
        self._ids: dict[str, str] = {}
        # The calls are built once: every run sends the state calls, and the detail calls of some units.
        self._state_calls = [
            _Call(_SYSTEMD, _MANAGER_PATH, _MANAGER_IFACE, "ListUnitsByNames", "as", (self.units,))
        ]
        self._state_calls += [
            _Call(_SYSTEMD, _unit_path(unit), _PROPERTIES_IFACE, "Get", "ss", prop)
            for unit in self.units
            for prop in _STATE_PROPERTIES
        ]
        self._detail_calls = {
            unit: [
                _Call(_SYSTEMD, _unit_path(unit), _PROPERTIES_IFACE, "Get", "ss", p)
                for p in _DETAIL_PROPERTIES
            ]
            for unit in self.units
        }
        # Unit -> (the run it describes: state, ActiveEnterTimestamp, MainPID; its detail values).
        self._details: dict[str, tuple[tuple[Any, ...], list[_Reply]]] = {}

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
            now, wall = time.monotonic(), time.time()
            units = tuple(
                dataclasses.replace(u, restarts_in_window=self._restarts.observe(u, now, wall)) for u in units
            )
            return UnitsResult(True, None, self._with_journals(units, deadline))
        raise AssertionError("unreachable")

    def _with_journals(self, units: tuple[UnitStatus, ...], deadline: Deadline) -> tuple[UnitStatus, ...]:
        """Each troubled unit with its last journal lines (read one after the other, under ``deadline``)."""
        reader = self.journal
        if reader is None or reader.lines <= 0:
            return units
        return tuple(
            dataclasses.replace(u, journal=reader.read(u.name, deadline)) if u.troubled else u for u in units
        )

    def _query(self, conn: _Connection, deadline: Deadline) -> tuple[UnitStatus, ...]:
        asked = [unit for unit in self.units if unit not in self._details]
        calls = self._state_calls + [call for unit in asked for call in self._detail_calls[unit]]
        listed, *replies = conn.call_all(calls, deadline)
        if isinstance(listed, _BusError):
            if listed.name == _SERVICE_UNKNOWN:
                raise listed  # no systemd on this bus
            return tuple(_failed(unit, listed) for unit in self.units)
        # (name, description, load, active, sub, following, path, job id, job type, job path) per unit
        # found; a name systemd cannot take (no suffix, bad characters) is left out.
        states: dict[str, Any] = {str(entry[0]): entry for entry in listed[0]}
        self._list_aliases(conn, states, deadline)
        size = len(_STATE_PROPERTIES)
        state_values = {unit: replies[i * size : (i + 1) * size] for i, unit in enumerate(self.units)}
        details = dict(self._detail_replies(asked, replies[len(self.units) * size :]))
        runs = {
            unit: _run_of(states.get(self._ids.get(unit, unit)), state_values[unit]) for unit in self.units
        }
        stale = [u for u in self.units if u not in details and self._details[u][0] != runs[u]]
        if stale:
            details.update(self._detail_replies(stale, conn.call_all(
                [call for unit in stale for call in self._detail_calls[unit]], deadline)))  # fmt: skip
        return tuple(
            self._status_of(unit, states, state_values[unit], details, runs[unit]) for unit in self.units
        )

    def _status_of(
        self,
        unit: str,
        states: dict[str, Any],
        state_values: list[_Reply],
        details: dict[str, list[_Reply]],
        run: tuple[Any, ...],
    ) -> UnitStatus:
        detail = details.get(unit) or self._details[unit][1]
        # Kept for the next run only while the unit runs: any other state is read every time.
        if run[0] == "active":
            self._details[unit] = (run, detail)
        else:
            self._details.pop(unit, None)
        entry = states.get(self._ids.get(unit, unit))
        if entry is None:
            return _unlisted(unit, state_values + detail)
        return _status(unit, entry, [_variant(v) for v in state_values + detail])

    @staticmethod
    def _detail_replies(
        units: Sequence[str], replies: Sequence[_Reply]
    ) -> Iterable[tuple[str, list[_Reply]]]:
        size = len(_DETAIL_PROPERTIES)
        return ((unit, list(replies[i * size : (i + 1) * size])) for i, unit in enumerate(units))

    def _list_aliases(self, conn: _Connection, states: dict[str, Any], deadline: Deadline) -> None:
        """Add to ``states`` each unit it lacks that systemd lists alone, under the name it lists."""
        missing = [unit for unit in self.units if self._ids.get(unit, unit) not in states]
        if not missing:
            return
        # Aliases are listed under their unit's own name: ask for each one alone to tell.
        alone = [
            _Call(_SYSTEMD, _MANAGER_PATH, _MANAGER_IFACE, "ListUnitsByNames", "as", ((unit,),))
            for unit in missing
        ]
        for unit, reply in zip(missing, conn.call_all(alone, deadline), strict=True):
            if not isinstance(reply, _BusError) and len(reply[0]) == 1:
                self._ids[unit] = str(reply[0][0][0])
                states[self._ids[unit]] = reply[0][0]


def _run_of(entry: tuple[Any, ...] | None, state_values: Sequence[_Reply]) -> tuple[Any, ...]:
    """Which run of a unit this is: its active and sub state, ActiveEnterTimestamp and MainPID."""
    active, sub = (entry[3], entry[4]) if entry is not None else ("", "")
    return (active, sub, *(_variant(v) for v in state_values[1:]))


def _unlisted(unit: str, values: list[_Reply]) -> UnitStatus:
    """A unit systemd did not list: the name is invalid, and its property reads say why."""
    error = next((v for v in values if isinstance(v, _BusError)), None)
    if error is not None and error.name == _SERVICE_UNKNOWN:
        raise error
    return _failed(unit, error or _BusError(_INVALID_ARGS, f"systemd did not list {unit}"))


def _failed(unit: str, error: _BusError) -> UnitStatus:
    if error.name in (_NO_SUCH_UNIT, _INVALID_ARGS):
        # A finding, not an error: the unit does not exist (or cannot, e.g. an invalid name).
        note = None if error.name == _NO_SUCH_UNIT else str(error)
        return UnitStatus(unit, "not-found", "inactive", "dead", "", None, None, None, note)
    return UnitStatus(unit, "error", "", "", "", None, None, None, str(error))


def _variant(reply: _Reply) -> Any:
    """The value of a ``Properties.Get`` reply (a ``(signature, value)`` variant), None on error."""
    if isinstance(reply, _BusError) or not reply:
        return None
    variant = reply[0]
    return variant[1] if isinstance(variant, tuple) and len(variant) == 2 else None


def _timestamp(value: Any) -> float | None:
    return value / 1e6 if isinstance(value, int) and value else None


def _number(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def _status(unit: str, entry: tuple[Any, ...], values: list[Any]) -> UnitStatus:
    file_state, timestamp, main_pid, restarts, result, code, status, inactive = values
    return UnitStatus(
        name=unit,
        load_state=str(entry[2]),
        active_state=str(entry[3]),
        sub_state=str(entry[4]),
        unit_file_state=str(file_state or ""),
        n_restarts=int(restarts) if isinstance(restarts, int) else None,
        active_enter_timestamp_seconds=timestamp / 1e6 if isinstance(timestamp, int) and timestamp else None,
        main_pid=int(main_pid) if isinstance(main_pid, int) and main_pid else None,
        result=str(result or ""),
        exec_main_code=_number(code),
        exec_main_status=_number(status),
        inactive_enter_timestamp_seconds=_timestamp(inactive),
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
    yield from _failure_families(result.units)


def _failure_families(units: Sequence[UnitStatus]) -> Iterable[Metric]:
    """Why a unit stopped or failed (``Result``, the main process's exit), and restarts in the window."""
    outcome = GaugeMetricFamily(
        "badgateway_unit_result",
        "systemd's Result of the service, one-hot (exit-code, signal, oom-kill, start-limit-hit, timeout, ...;"
        " other for a value not listed).",
        labels=["unit", "result"],
    )
    main_exit = GaugeMetricFamily(
        "badgateway_unit_main_exit_status",
        "How the unit's last main process ended: its exit status (code=exited) or the signal's number"
        " (code=killed, dumped); absent while it runs.",
        labels=["unit", "code"],
    )
    inactive = GaugeMetricFamily(
        "badgateway_unit_inactive_since_seconds",
        "Unix time the unit became inactive or failed; only while inactive or failed.",
        labels=["unit"],
    )
    window = GaugeMetricFamily(
        "badgateway_unit_restarts_in_window",
        "Automatic restarts by systemd within the exporter's restart window (units.restart_window_seconds):"
        " a restart loop.",
        labels=["unit"],
    )
    for unit in units:
        if unit.result:
            known = unit.result if unit.result in RESULTS else "other"
            for name in RESULTS:
                outcome.add_metric([unit.name, name], 1.0 if known == name else 0.0)
        code = unit.exit_code_name
        if code is not None and unit.exec_main_status is not None and unit.main_pid is None:
            main_exit.add_metric([unit.name, code], float(unit.exec_main_status))
        if unit.inactive_enter_timestamp_seconds is not None and unit.active_state in ("inactive", "failed"):
            inactive.add_metric([unit.name], unit.inactive_enter_timestamp_seconds)
        if unit.restarts_in_window is not None:
            window.add_metric([unit.name], float(unit.restarts_in_window))
    yield from (outcome, main_exit, inactive, window)
