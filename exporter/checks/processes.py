"""``ps aux | grep -E 'php-fpm|uvicorn|nginx'``: the process view, which also works in containers."""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client.core import GaugeMetricFamily, Metric

from exporter.config import PidFiles, ProcessPatterns
from exporter.deadline import Deadline

SERVICES = ("nginx", "php_fpm", "backend")
_TITLE_SETTLE_SECONDS = 5.0
_MATCH_CACHE_LIMIT = 4096
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ServiceProcesses:
    """The processes of one service: the matched main processes and all their descendants."""

    service: str
    count: int
    resident_memory_bytes: int
    main_pids: tuple[int, ...]
    main_commands: tuple[str, ...]
    users: tuple[str, ...]
    started_at: float | None = None
    """When the oldest main process started (Unix time), if known: lines before it are of an earlier one."""


@dataclass(frozen=True)
class ProcessesResult:
    """Processes per service."""

    services: tuple[ServiceProcesses, ...]

    def of(self, service: str) -> ServiceProcesses | None:
        return next((s for s in self.services if s.service == service), None)


@dataclass(frozen=True)
class _ProcEntry:
    pid: int
    ppid: int
    command: str


class ProcessesCheck:
    """Counts and resident memory of nginx, php-fpm and the backend, found by command line.

    The process table is read straight from ``/proc`` (what psutil reads, without its per-process
    objects), since a scrape must stay within milliseconds. ``stat`` and the command line of a
    process are read while it is new (it may still rename itself) and, for the services'
    processes, every run; any other process is recognised by its ``/proc/PID`` inode, which a
    reused PID does not share, and costs no read at all.
    """

    collector = "processes"

    def __init__(
        self,
        patterns: ProcessPatterns,
        proc_root: str = "/proc",
        pid_files: PidFiles | None = None,
        units: dict[str, str] | None = None,
        discovered_pid_files: frozenset[str] = frozenset(),
    ) -> None:
        """``discovered_pid_files``: services whose pid file discovery read from a config file (which the
        running master may not use): a missing one leaves the decision to the titles."""
        self._patterns = {service: re.compile(getattr(patterns, service)) for service in SERVICES}
        files = pid_files or PidFiles()
        self._pid_files = {s: path for s in SERVICES if (path := getattr(files, s)) is not None}
        self._discovered_pid_files = discovered_pid_files
        self._units = dict(units or {})
        """Service -> its systemd unit: of the processes with its title, those in the unit's cgroup."""
        self._systemd_host = os.path.isdir("/run/systemd/system")
        self._proc = proc_root
        # (pid, inode of /proc/PID) -> what stat and cmdline said, and when the process was first seen
        self._known: dict[tuple[int, int], tuple[_ProcEntry, float]] = {}
        # Processes of a service in the last run: read again every run (zombie, parent, memory).
        self._watched: set[int] = set()
        self._members = _Members(proc_root)
        self._lock = threading.Lock()
        # command line -> services whose pattern it matches (command lines rarely change)
        self._matches: dict[str, tuple[str, ...]] = {}

    def run(self, deadline: Deadline) -> ProcessesResult:
        with self._lock:
            table = self._scan()
            mains_of: dict[str, list[int]] = {service: [] for service in self._patterns}
            matches = self._matches
            for pid, entry in table.items():
                hits = matches.get(entry.command)
                if hits is None:
                    command = entry.command
                    hits = tuple(name for name, pattern in self._patterns.items() if pattern.search(command))
                    if len(matches) >= _MATCH_CACHE_LIMIT:
                        matches.clear()
                    matches[command] = hits
                for service in hits:
                    mains_of[service].append(pid)
            self._identify(mains_of, table)
        children: dict[int, list[int]] = {}
        for entry in table.values():
            children.setdefault(entry.ppid, []).append(entry.pid)
        services = []
        watched: set[int] = set()
        for service, mains in mains_of.items():
            members: set[int] = set()
            stack = list(mains)
            while stack:
                pid = stack.pop()
                if pid not in members:
                    members.add(pid)
                    stack.extend(children.get(pid, ()))
            watched |= members
            top = sorted(pid for pid in mains if table[pid].ppid not in members)
            services.append(
                self._members.describe(service, top, [table[pid].command for pid in top], members)
            )
        self._watched = watched
        return ProcessesResult(services=tuple(services))

    def _identify(self, mains_of: dict[str, list[int]], table: dict[int, _ProcEntry]) -> None:
        """Of the processes with a service's title, the one its pid file names, or those of its unit."""
        for service, unit in self._units.items():
            if service not in self._pid_files:
                mains_of[service] = self._in_unit(mains_of[service], unit)
        for service, path in self._pid_files.items():
            # The pid file says which process is the service, whatever else has its title: a
            # missing or stale one means it does not run (a master removes it when it stops).
            named = _pid_in(path)
            if named or service not in self._discovered_pid_files:
                mains_of[service] = [named] if named in table else []

    def _in_unit(self, pids: list[int], unit: str) -> list[int]:
        """Those of ``pids`` in ``unit``'s cgroup (its MainPID and children): all of them when none is
        and this host does not run systemd itself (then the cgroups name no unit)."""
        inside = [pid for pid in pids if _cgroup_unit(f"{self._proc}/{pid}/cgroup") == unit]
        return inside if inside or self._systemd_host else pids

    def _scan(self) -> dict[int, _ProcEntry]:
        table: dict[int, _ProcEntry] = {}
        known = self._known
        watched = self._watched
        seen: set[tuple[int, int]] = set()
        now = time.monotonic()
        uptime = self._uptime()
        with os.scandir(self._proc) as listing:
            for item in listing:
                name = item.name
                if not name.isdigit():
                    continue
                pid = int(name)
                key = (pid, item.inode())
                seen.add(key)
                cached = known.get(key)
                if cached is not None and pid not in watched and now - cached[1] > _TITLE_SETTLE_SECONDS:
                    table[pid] = cached[0]
                    continue
                try:
                    raw = _read(f"{self._proc}/{name}/stat", 1024)
                except OSError:
                    continue
                # comm may hold spaces and parentheses: fields start after the last ')'.
                fields = raw[raw.rfind(b")") + 2 :].split(None, 20)  # up to starttime (field 22)
                if len(fields) < 20 or fields[0] == b"Z":
                    known.pop(key, None)
                    continue
                if cached is not None and now - cached[1] > _TITLE_SETTLE_SECONDS:
                    command, first_seen = cached[0].command, cached[1]
                else:
                    # A new process may still rename itself (php-fpm, nginx set their titles after exec).
                    command = self._read_command(pid, raw)
                    if cached is None:
                        # Seen for the first time: count its settling time from its start, not from
                        # now, so that a process which has run for a while is not read again for 5 s.
                        age = uptime - int(fields[19]) / _CLOCK_TICKS if uptime is not None else 0.0
                        first_seen = now - min(max(age, 0.0), _TITLE_SETTLE_SECONDS + 1.0)
                    else:
                        first_seen = cached[1]
                entry = _ProcEntry(pid=pid, ppid=int(fields[1]), command=command)
                known[key] = (entry, first_seen)
                table[pid] = entry
        for key in known.keys() - seen:
            del known[key]
        return table

    def _uptime(self) -> float | None:
        try:
            return float(_read(f"{self._proc}/uptime", 64).split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _read_command(self, pid: int, stat_raw: bytes) -> str:
        try:
            cmdline = _read(f"{self._proc}/{pid}/cmdline")
        except OSError:
            cmdline = b""
        command = cmdline.replace(b"\0", b" ").strip().decode("utf-8", "replace")
        if not command:
            command = stat_raw[stat_raw.find(b"(") + 1 : stat_raw.rfind(b")")].decode("utf-8", "replace")
        return command


def _cgroup_unit(path: str) -> str | None:
    """The unit whose cgroup a process is in (the last ``.service`` of its systemd cgroup path)."""
    try:
        lines = _read(path, 2048).decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, cgroup = line.split(":", 2) if line.count(":") >= 2 else ("", "", "")
        if controllers in ("name=systemd", ""):
            units = [part for part in cgroup.split("/") if part.endswith(".service")]
            if units:
                return units[-1]
    return None


def _pid_in(path: str) -> int:
    """The pid a pid file names; 0 when there is no such file or it names none."""
    try:
        text = _read(path, 64).split(b"\n", 1)[0].strip()
    except OSError:
        return 0
    return int(text) if text.isdigit() else 0


def _read(path: str, size: int = 4096) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, size)
    finally:
        os.close(fd)


class _Members:
    """Resident memory and owner of processes, read from ``/proc`` without per-process objects."""

    def __init__(self, proc_root: str) -> None:
        self._proc = proc_root
        self._page_size = os.sysconf("SC_PAGE_SIZE")
        self._user_names: dict[int, str] = {}

    def describe(
        self, service: str, main_pids: list[int], main_commands: list[str], members: set[int]
    ) -> ServiceProcesses:
        rss = 0
        count = 0
        users: set[str] = set()
        for pid in members:
            try:
                statm = _read(f"{self._proc}/{pid}/statm", 256).split()
                uid = os.stat(f"{self._proc}/{pid}").st_uid
            except OSError:
                continue
            rss += int(statm[1]) * self._page_size
            users.add(self._user_name(uid))
            count += 1
        return ServiceProcesses(
            service=service,
            count=count,
            resident_memory_bytes=rss,
            main_pids=tuple(main_pids),
            main_commands=tuple(command[:200] for command in main_commands),
            users=tuple(sorted(users)),
            started_at=self._started_at(main_pids),
        )

    def _started_at(self, pids: list[int]) -> float | None:
        """The oldest start time of ``pids`` (psutil: ``/proc/PID/stat`` and the boot time)."""
        if self._proc != "/proc" or not pids:
            return None
        import psutil

        times = []
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                times.append(psutil.Process(pid).create_time())
        return min(times) if times else None

    def _user_name(self, uid: int) -> str:
        name = self._user_names.get(uid)
        if name is None:
            try:
                name = pwd.getpwuid(uid).pw_name
            except KeyError:
                name = str(uid)
            self._user_names[uid] = name
        return name


def metric_families(result: ProcessesResult) -> Iterable[Metric]:
    """``processes`` and ``process_resident_memory_bytes`` per service."""
    count = GaugeMetricFamily(
        "badgateway_processes",
        "Processes of the service (main processes and their children).",
        labels=["service"],
    )
    rss = GaugeMetricFamily(
        "badgateway_process_resident_memory_bytes",
        "Resident memory of the service's processes.",
        labels=["service"],
    )
    for service in result.services:
        count.add_metric([service.service], float(service.count))
        rss.add_metric([service.service], float(service.resident_memory_bytes))
    return (count, rss)


def listening_addresses(pids: Iterable[int]) -> list[str]:
    """Unix socket paths and TCP ``host:port`` the given processes listen on (``ss -xlp``)."""
    import psutil  # only when a socket is missing: ~1 MB of memory the scrape path never needs

    found: list[str] = []
    for pid in pids:
        try:
            connections = psutil.Process(pid).net_connections(kind="all")
        except psutil.Error:
            continue
        for conn in connections:
            if conn.family == socket.AF_UNIX and isinstance(conn.laddr, str) and conn.laddr:
                found.append(conn.laddr)
            elif conn.status == psutil.CONN_LISTEN and conn.laddr:
                host, port = conn.laddr[0], conn.laddr[1]
                found.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    return sorted(set(found))
