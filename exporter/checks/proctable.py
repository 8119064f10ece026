"""The host's process table, read straight from ``/proc`` and cached per process.

What psutil reads, without its per-process objects: a scrape must stay within milliseconds. ``stat``
and the command line of a process are read while it is new (it may still rename itself, or not have
exec'd yet) and, for the ``watched`` ones, every scan; any other process is recognised by its
``/proc/PID`` inode, which ``scandir`` returns for free and a reused PID does not share.
"""

from __future__ import annotations

import os
import time
from collections.abc import Collection
from dataclasses import dataclass

TITLE_SETTLE_SECONDS = 5.0
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_MAX_STAT_BYTES = 16 << 20


@dataclass(frozen=True)
class ProcEntry:
    """One process as ``/proc/PID/stat`` and ``cmdline`` describe it."""

    pid: int
    ppid: int
    command: str
    start_ticks: int
    """When it started, in clock ticks after boot (``stat`` field 22): with the PID, who it is."""


class ProcTable:
    """Scans ``/proc``; each process's ``stat`` and command line are read while it is new."""

    def __init__(self, proc_root: str = "/proc") -> None:
        self._proc = proc_root
        # (pid, inode of /proc/PID) -> what stat and cmdline said, and when the process was first seen
        self._known: dict[tuple[int, int], tuple[ProcEntry, float]] = {}
        self._boot_time: float | None = None

    def scan(self, watched: Collection[int] = ()) -> dict[int, ProcEntry]:
        """Every live process by PID (zombies left out); ``watched`` PIDs have ``stat`` read again."""
        table: dict[int, ProcEntry] = {}
        known = self._known
        seen: set[tuple[int, int]] = set()
        now = time.monotonic()
        with os.scandir(self._proc) as listing:
            for item in listing:
                if not item.name.isdigit():
                    continue
                pid = int(item.name)
                key = (pid, item.inode())
                seen.add(key)
                cached = known.get(key)
                if cached is None:
                    entry = self._read_entry(pid, None)
                    first_seen = self._first_seen(entry, now) if entry is not None else now
                else:
                    entry, first_seen = cached
                    settled = now - first_seen > TITLE_SETTLE_SECONDS
                    if settled and pid not in watched:
                        table[pid] = entry
                        continue
                    entry = self._read_entry(pid, entry.command if settled else None)
                if entry is None:
                    known.pop(key, None)
                    continue
                known[key] = (entry, first_seen)
                table[pid] = entry
        for key in known.keys() - seen:
            del known[key]
        return table

    @staticmethod
    def settled(entry: ProcEntry) -> bool:
        """Whether ``entry`` has run longer than :data:`TITLE_SETTLE_SECONDS` (the boot-time clock is
        the one ``stat``'s start time counts on)."""
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - entry.start_ticks / _CLOCK_TICKS
        return age > TITLE_SETTLE_SECONDS

    def start_ticks(self, pid: int) -> int | None:
        """``pid``'s start time (``stat`` field 22) now, None when it no longer runs (or is a zombie)."""
        entry = self._read_entry(pid, "")
        return entry.start_ticks if entry is not None else None

    def started_at(self, entry: ProcEntry) -> float | None:
        """When ``entry`` started (Unix time), from the boot time in ``/proc/stat``."""
        if self._boot_time is None:
            try:
                # Read whole (once): on a big host the interrupt counters before btime fill 64 KiB.
                with open(f"{self._proc}/stat", "rb") as stat_file:
                    stat = stat_file.read(_MAX_STAT_BYTES)
                self._boot_time = float(stat.split(b"\nbtime ", 1)[1].split(None, 1)[0])
            except (OSError, ValueError, IndexError):
                return None
        return self._boot_time + entry.start_ticks / _CLOCK_TICKS

    def _read_entry(self, pid: int, command: str | None) -> ProcEntry | None:
        """``stat`` of ``pid`` (its command line too unless ``command`` is known); None for a zombie."""
        try:
            raw = read_proc_file(f"{self._proc}/{pid}/stat", 1024)
        except OSError:
            return None
        # comm may hold spaces and parentheses: fields start after the last ')'.
        fields = raw[raw.rfind(b")") + 2 :].split(None, 20)  # up to starttime (field 22)
        if len(fields) < 20 or fields[0] == b"Z":
            return None
        if command is None:
            # A new process may still rename itself (php-fpm, nginx set their titles after exec).
            command = self._read_command(pid, raw)
        return ProcEntry(pid=pid, ppid=int(fields[1]), command=command, start_ticks=int(fields[19]))

    def _first_seen(self, entry: ProcEntry, now: float) -> float:
        """Its settling time counts from its start, not from now: a process that has run for a while
        is not read again for 5 s just because the exporter sees it for the first time."""
        uptime = self._uptime()
        age = uptime - entry.start_ticks / _CLOCK_TICKS if uptime is not None else 0.0
        return now - min(max(age, 0.0), TITLE_SETTLE_SECONDS + 1.0)

    def _uptime(self) -> float | None:
        try:
            return float(read_proc_file(f"{self._proc}/uptime", 64).split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _read_command(self, pid: int, stat_raw: bytes) -> str:
        try:
            cmdline = read_proc_file(f"{self._proc}/{pid}/cmdline")
        except OSError:
            cmdline = b""
        command = cmdline.replace(b"\0", b" ").strip().decode("utf-8", "replace")
        if not command:
            command = stat_raw[stat_raw.find(b"(") + 1 : stat_raw.rfind(b")")].decode("utf-8", "replace")
        return command


def read_proc_file(path: str, size: int = 4096) -> bytes:
    """The first ``size`` bytes of a small file (one ``read``: ``/proc`` files are made on open)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, size)
    finally:
        os.close(fd)


__all__ = ["TITLE_SETTLE_SECONDS", "ProcEntry", "ProcTable", "read_proc_file"]
