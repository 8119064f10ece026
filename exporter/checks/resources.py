"""``free -h`` and ``df -h``: memory, swap, OOM kills and the filesystems the stack writes to."""

from __future__ import annotations

import os
import re
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from exporter.deadline import Deadline
from exporter.families import CounterMetricFamily, GaugeMetricFamily, Metric


@dataclass(frozen=True)
class FilesystemUsage:
    """One mounted filesystem holding some of the watched paths."""

    mountpoint: str
    paths: tuple[str, ...]
    size_bytes: int
    avail_bytes: int
    files: int
    files_free: int


@dataclass(frozen=True)
class ResourcesResult:
    """Memory, swap, the kernel's OOM-kill counter and filesystem usage."""

    memory_total_bytes: int
    memory_available_bytes: int
    swap_total_bytes: int
    swap_free_bytes: int
    oom_kills: int | None  # None on kernels before 4.13, which do not count them
    filesystems: tuple[FilesystemUsage, ...]
    missing_paths: tuple[str, ...]


def _device(path: str) -> int:
    try:
        return os.stat(path).st_dev
    except OSError:
        return -1


def _mountpoint(path: str) -> str:
    path = os.path.realpath(path)
    while not os.path.ismount(path):
        path = os.path.dirname(path)
    return path


class ResourcesCheck:
    """Reads ``/proc/meminfo``, ``/proc/vmstat`` and ``statvfs()`` of each watched path's mount."""

    collector = "resources"

    def __init__(self, paths: Iterable[str], proc_root: str = "/proc") -> None:
        self._paths = tuple(paths)
        self._proc = proc_root
        self._layout: tuple[dict[str, list[str]], list[str]] = ({}, [])
        self._layout_key: tuple[int, ...] | None = None

    def run(self, deadline: Deadline) -> ResourcesResult:
        meminfo = self._read_meminfo()
        mounts, missing = self._mount_layout()
        filesystems = []
        for mountpoint, paths in sorted(mounts.items()):
            st = os.statvfs(mountpoint)
            filesystems.append(
                FilesystemUsage(
                    mountpoint=mountpoint,
                    paths=tuple(paths),
                    size_bytes=st.f_blocks * st.f_frsize,
                    avail_bytes=st.f_bavail * st.f_frsize,
                    files=st.f_files,
                    files_free=st.f_favail,
                )
            )
        return ResourcesResult(
            memory_total_bytes=meminfo["MemTotal"],
            memory_available_bytes=meminfo.get("MemAvailable", meminfo.get("MemFree", 0)),
            swap_total_bytes=meminfo.get("SwapTotal", 0),
            swap_free_bytes=meminfo.get("SwapFree", 0),
            oom_kills=self._read_oom_kills(),
            filesystems=tuple(filesystems),
            missing_paths=tuple(missing),
        )

    def _mount_layout(self) -> tuple[dict[str, list[str]], list[str]]:
        """Which mount holds each watched path, found again only when a path's device changes."""
        key = tuple(_device(path) for path in self._paths)
        if key != self._layout_key:
            mounts: dict[str, list[str]] = {}
            missing: list[str] = []
            for path in self._paths:
                if os.path.exists(path):
                    mounts.setdefault(_mountpoint(path), []).append(path)
                else:
                    missing.append(path)
            self._layout, self._layout_key = (mounts, missing), key
        return self._layout

    def _read_meminfo(self) -> dict[str, int]:
        values: dict[str, int] = {}
        with open(f"{self._proc}/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                key, _, rest = line.partition(":")
                parts = rest.split()
                if parts:
                    values[key] = int(parts[0]) * (1024 if len(parts) > 1 else 1)
        return values

    def _read_oom_kills(self) -> int | None:
        with open(f"{self._proc}/vmstat", encoding="ascii") as vmstat:
            for line in vmstat:
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
        return None


class OomKillWindow:
    """How many OOM kills the kernel counted within the last ``seconds`` (from successive readings)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._readings: deque[tuple[float, int]] = deque()

    def observe(self, now: float, count: int | None) -> int | None:
        if count is None:
            return None
        readings = self._readings
        if readings and count < readings[-1][1]:
            readings.clear()  # the counter went back: a reboot or another kernel's /proc
        if not readings or readings[-1][1] != count:
            readings.append((now, count))  # only when it changes: a scrape a second must not pile up
        while len(readings) > 1 and now - readings[1][0] >= self.seconds:
            readings.popleft()
        return count - readings[0][1]


def metric_families(result: ResourcesResult) -> Iterable[Metric]:
    """Memory, swap, OOM kills and per-mount filesystem figures."""
    families: list[Metric] = [
        GaugeMetricFamily(
            "badgateway_memory_total_bytes", "Physical memory.", value=result.memory_total_bytes
        ),
        GaugeMetricFamily(
            "badgateway_memory_available_bytes",
            "Memory available for new work without swapping (MemAvailable).",
            value=result.memory_available_bytes,
        ),
        GaugeMetricFamily("badgateway_swap_total_bytes", "Swap space.", value=result.swap_total_bytes),
        GaugeMetricFamily("badgateway_swap_free_bytes", "Unused swap space.", value=result.swap_free_bytes),
    ]
    if result.oom_kills is not None:
        families.append(
            CounterMetricFamily(
                "badgateway_oom_kills",
                "Processes killed by the kernel's OOM killer since boot.",
                value=result.oom_kills,
            )
        )
    size = GaugeMetricFamily("badgateway_filesystem_size_bytes", "Filesystem size.", labels=["mountpoint"])
    avail = GaugeMetricFamily(
        "badgateway_filesystem_avail_bytes", "Space available to unprivileged users.", labels=["mountpoint"]
    )
    files_free = GaugeMetricFamily(
        "badgateway_filesystem_files_free",
        "Free inodes available to unprivileged users.",
        labels=["mountpoint"],
    )
    for fs in result.filesystems:
        size.add_metric([fs.mountpoint], float(fs.size_bytes))
        avail.add_metric([fs.mountpoint], float(fs.avail_bytes))
        files_free.add_metric([fs.mountpoint], float(fs.files_free))
    families += [size, avail, files_free]
    return families


KMSG = "/dev/kmsg"
MAX_KMSG_RECORDS = 100_000
_KILLED = re.compile(rb"(?:Out of memory|Memory cgroup out of memory): Killed process \d+")


def oom_kills_in_kernel_log(window_seconds: float, deadline: Deadline, kmsg: str = KMSG) -> int | None:
    """OOM kills the kernel's ring buffer records within the last ``window_seconds`` (``dmesg | grep``).

    A process that has just started has no earlier ``oom_kill`` count to compare with: this is how
    ``diagnose``, run once, still sees the OOM kill of a minute ago. None when the ring buffer cannot
    be read (not root with ``kernel.dmesg_restrict``, no ``/dev/kmsg``).
    """
    try:
        fd = os.open(kmsg, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        with open("/proc/uptime", encoding="ascii") as uptime:
            now = float(uptime.read().split()[0])
        return count_recent_kills(_records(fd, deadline), now - window_seconds)
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)


def _records(fd: int, deadline: Deadline) -> Iterator[bytes]:
    """Each read() of ``/dev/kmsg`` is one record; EAGAIN at the end of the buffer."""
    for _ in range(MAX_KMSG_RECORDS):
        if deadline.expired():
            return
        try:
            yield os.read(fd, 8192)
        except BlockingIOError:
            return
        except BrokenPipeError:  # the buffer wrapped under us: the next read continues
            continue


def count_recent_kills(records: Iterable[bytes], since: float) -> int:
    """Kill records (``PRIO,SEQ,MICROSECONDS,FLAGS;MESSAGE``) stamped at ``since`` seconds after boot or later."""
    kills = 0
    for record in records:
        head, _, message = record.partition(b";")
        fields = head.split(b",")
        if (
            len(fields) >= 3
            and fields[2].isdigit()
            and _KILLED.search(message)
            and int(fields[2]) / 1e6 >= since
        ):
            kills += 1
    return kills
