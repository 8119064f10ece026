"""``ps aux | grep -E 'php-fpm|uvicorn|nginx'``: the process view, which also works in containers."""

from __future__ import annotations

import os
import pwd
import re
import socket
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from exporter.checks.proctable import ProcEntry, ProcTable, read_proc_file
from exporter.config import PidFiles, ProcessPatterns
from exporter.deadline import Deadline
from exporter.families import GaugeMetricFamily, Metric

SERVICES = ("nginx", "php_fpm", "backend")
_MATCH_CACHE_LIMIT = 4096
_UID_CACHE_LIMIT = 65536


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


class ProcessesCheck:
    """Counts and resident memory of nginx, php-fpm and the backend, found by command line.

    The process table is :class:`ProcTable`'s; the services' own processes have their ``stat`` read
    every run (a worker that became a zombie or lost its parent is seen at once).
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
        self._table = ProcTable(proc_root)
        # Processes of a service in the last run: read again every run (zombie, parent, memory).
        self._watched: set[int] = set()
        self._members = _Members(proc_root, self._table)
        self._lock = threading.Lock()
        # command line -> services whose pattern it matches (command lines rarely change)
        self._matches: dict[str, tuple[str, ...]] = {}

    def run(self, deadline: Deadline) -> ProcessesResult:
        with self._lock:
            table = self._table.scan(self._watched)
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
            services.append(self._members.describe(service, [table[pid] for pid in top], members, table))
        self._watched = watched
        return ProcessesResult(services=tuple(services))

    def _identify(self, mains_of: dict[str, list[int]], table: dict[int, ProcEntry]) -> None:
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


def _cgroup_unit(path: str) -> str | None:
    """The unit whose cgroup a process is in (the last ``.service`` of its systemd cgroup path)."""
    try:
        lines = read_proc_file(path, 2048).decode("utf-8", "replace").splitlines()
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
        text = read_proc_file(path, 64).split(b"\n", 1)[0].strip()
    except OSError:
        return 0
    return int(text) if text.isdigit() else 0


class _Members:
    """Resident memory and owner of processes, read from ``/proc`` without per-process objects."""

    def __init__(self, proc_root: str, table: ProcTable) -> None:
        self._proc = proc_root
        self._table = table
        self._page_size = os.sysconf("SC_PAGE_SIZE")
        self._user_names: dict[int, str] = {}
        self._uids: dict[tuple[int, int], int] = {}

    def describe(
        self, service: str, mains: list[ProcEntry], members: set[int], table: dict[int, ProcEntry]
    ) -> ServiceProcesses:
        """Memory from each member's ``statm`` (exact: ``stat``'s is the kernel's per-CPU estimate,
        hundreds of KiB off), owners from ``/proc/PID`` (once per process, once it has settled)."""
        rss = 0
        count = 0
        users: set[str] = set()
        for pid in members:
            entry = table.get(pid)
            uid = self._uid(entry) if entry is not None else None
            pages = self._resident_pages(pid) if uid is not None else None
            if uid is None or pages is None:
                continue
            rss += pages * self._page_size
            users.add(self._user_name(uid))
            count += 1
        return ServiceProcesses(
            service=service,
            count=count,
            resident_memory_bytes=rss,
            main_pids=tuple(entry.pid for entry in mains),
            main_commands=tuple(entry.command[:200] for entry in mains),
            users=tuple(sorted(users)),
            started_at=min((t for e in mains if (t := self._table.started_at(e)) is not None), default=None),
        )

    def _resident_pages(self, pid: int) -> int | None:
        try:
            return int(read_proc_file(f"{self._proc}/{pid}/statm", 256).split()[1])
        except (OSError, IndexError, ValueError):
            return None

    def _uid(self, entry: ProcEntry) -> int | None:
        """The owner of ``/proc/PID``, looked at once per process once it has run a while (a worker
        changes its user right after its fork); None when it has gone."""
        key = (entry.pid, entry.start_ticks)
        uid = self._uids.get(key)
        if uid is None:
            try:
                uid = os.stat(f"{self._proc}/{entry.pid}").st_uid
            except OSError:
                return None
            if self._table.settled(entry):
                if len(self._uids) >= _UID_CACHE_LIMIT:
                    self._uids.clear()
                self._uids[key] = uid
        return uid

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
