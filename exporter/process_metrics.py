"""The exporter's own ``process_*`` and ``python_*`` families, as prometheus_client's default collectors write them.

Its ``ProcessCollector``, ``PlatformCollector`` and ``GCCollector`` cannot be imported without the
rest of prometheus_client (see :mod:`exporter.families`); these are the same names, help texts,
types, labels and sources (``/proc/self/stat``, ``limits`` and ``fd``, ``platform``,
``gc.get_stats()``), which ``tests/test_process_metrics.py`` holds to the library's collectors.
"""

from __future__ import annotations

import gc
import os
import platform
from collections.abc import Iterator
from functools import cache

from exporter.families import CounterMetricFamily, GaugeMetricFamily, Metric

_PROC_SELF = "/proc/self"
_CPYTHON = platform.python_implementation() == "CPython"  # gc.get_stats() means what the GC families say


@cache
def _clock() -> tuple[float, float, int]:
    """Clock ticks a second, boot time (``btime`` of ``/proc/stat``) and the page size; 0 boot time without /proc."""
    ticks = float(os.sysconf("SC_CLK_TCK"))
    btime = 0.0
    try:
        with open("/proc/stat", "rb") as stat:
            for line in stat:
                if line.startswith(b"btime "):
                    btime = float(line.split()[1])
                    break
    except OSError:
        pass
    return ticks, btime, os.sysconf("SC_PAGESIZE")


def process_families() -> list[Metric]:
    """``process_*``: CPU, memory, start time and file descriptors of this process (empty without /proc)."""
    ticks, btime, page_size = _clock()
    if not btime:
        return []
    families: list[Metric] = []
    try:
        with open(f"{_PROC_SELF}/stat", "rb") as stat:
            parts = stat.read().split(b")")[-1].split()
    except OSError:
        parts = []
    if parts:
        families += [
            GaugeMetricFamily(
                "process_virtual_memory_bytes", "Virtual memory size in bytes.", value=float(parts[20])
            ),
            GaugeMetricFamily(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                value=float(parts[21]) * page_size,
            ),
            GaugeMetricFamily(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                value=float(parts[19]) / ticks + btime,
            ),
            CounterMetricFamily(
                "process_cpu_seconds_total",
                "Total user and system CPU time spent in seconds.",
                value=(float(parts[11]) + float(parts[12])) / ticks,
            ),
        ]
    return families + _fd_families()


def _fd_families() -> list[Metric]:
    try:
        with open(f"{_PROC_SELF}/limits", "rb") as limits:
            max_fds = next(float(line.split()[3]) for line in limits if line.startswith(b"Max open file"))
        open_fds = len(os.listdir(f"{_PROC_SELF}/fd"))
    except (OSError, StopIteration, IndexError, ValueError):
        return []
    return [
        GaugeMetricFamily("process_open_fds", "Number of open file descriptors.", value=float(open_fds)),
        GaugeMetricFamily("process_max_fds", "Maximum number of open file descriptors.", value=max_fds),
    ]


@cache
def _platform_family() -> Metric:
    major, minor, patchlevel = platform.python_version_tuple()
    info = {
        "version": platform.python_version(),
        "implementation": platform.python_implementation(),
        "major": major,
        "minor": minor,
        "patchlevel": patchlevel,
    }
    family = GaugeMetricFamily("python_info", "Python platform information", labels=list(info))
    family.add_metric(list(info.values()), 1.0)
    return family


_GC_FAMILIES = (
    ("python_gc_objects_collected", "Objects collected during gc", "collected"),
    ("python_gc_objects_uncollectable", "Uncollectable objects found during GC", "uncollectable"),
    ("python_gc_collections", "Number of times this generation was collected", "collections"),
)


def _gc_families() -> list[Metric]:
    stats = gc.get_stats()
    families: list[Metric] = []
    for name, documentation, key in _GC_FAMILIES:
        family = CounterMetricFamily(name, documentation, labels=["generation"])
        for generation, stat in enumerate(stats):
            family.add_metric([str(generation)], float(stat[key]))
        families.append(family)
    return families


def own_families() -> Iterator[Metric]:
    """What prometheus_client's default registry adds to every exporter: process, platform, GC."""
    yield from process_families()
    yield _platform_family()
    if _CPYTHON:
        yield from _gc_families()
