"""The runbook's ``free -h`` and ``df -h``."""

from __future__ import annotations

from collections.abc import Sequence

from exporter.causes import Cause, Facts, Finding, Verdict, disk_full, memory_exhausted
from exporter.checks.resources import FilesystemUsage, ResourcesResult
from exporter.config import Thresholds
from exporter.diagnosis.context import StepContext, human_bytes


def resources(ctx: StepContext, earlier: Sequence[Finding]) -> list[Finding]:
    del earlier
    res = ctx.results.resources
    if res is None:
        return [ctx.not_checked("resources", "Memory and disk")]
    thresholds = ctx.config.thresholds
    findings = [memory_finding(res, ctx.results.recent_oom_kills, thresholds)]
    findings += [filesystem_finding(fs, thresholds) for fs in res.filesystems]
    findings += [
        Finding(f"disk:{path}", f"Disk space for {path}", Verdict.SKIP, (f"{path} does not exist",))
        for path in res.missing_paths
    ]
    return findings


def memory_finding(res: ResourcesResult, recent_oom_kills: int | None, thresholds: Thresholds) -> Finding:
    total, available = res.memory_total_bytes, res.memory_available_bytes
    evidence = [
        f"available {human_bytes(available)} of {human_bytes(total)} ({available / total:.1%})"
        if total
        else "no memory figures",
        f"swap free {human_bytes(res.swap_free_bytes)} of {human_bytes(res.swap_total_bytes)}",
    ]
    if res.oom_kills is not None:
        evidence.append(f"OOM kills since boot: {res.oom_kills}")
    low = bool(total) and available / total < thresholds.memory_available_ratio
    if recent_oom_kills:
        minutes = thresholds.oom_kill_window_seconds / 60
        evidence.append(
            f"the kernel's OOM killer killed {recent_oom_kills} process(es) in the last {minutes:g} min"
        )
    if low or recent_oom_kills:
        title = "The server is out of memory" if low else "The kernel's OOM killer killed a process recently"
        return Finding("memory", title, Verdict.FAIL, tuple(evidence), Cause.MEMORY_EXHAUSTED,
                       memory_exhausted.FIX)  # fmt: skip
    return Finding("memory", "Enough free memory", Verdict.OK, tuple(evidence))


def filesystem_full(fs: FilesystemUsage, thresholds: Thresholds) -> bool:
    """Space or inodes below the thresholds (the byte floor is capped at 10% of small filesystems)."""
    floor = max(
        fs.size_bytes * thresholds.filesystem_avail_ratio,
        min(thresholds.filesystem_avail_bytes, fs.size_bytes * 0.1),
    )
    inodes_low = fs.files > 0 and fs.files_free / fs.files < thresholds.filesystem_files_free_ratio
    return fs.avail_bytes < floor or inodes_low


def filesystem_finding(fs: FilesystemUsage, thresholds: Thresholds) -> Finding:
    step = f"disk:{fs.mountpoint}"
    title = f"Free space on {fs.mountpoint}"
    evidence = (
        f"{human_bytes(fs.avail_bytes)} available of {human_bytes(fs.size_bytes)};"
        f" {fs.files_free} of {fs.files} inodes free",
        f"holds: {', '.join(fs.paths)}",
    )
    if filesystem_full(fs, thresholds):
        return Finding(step, f"{fs.mountpoint} is full", Verdict.FAIL, evidence, Cause.DISK_FULL,
                       disk_full.free_space(fs.mountpoint), Facts(file=fs.mountpoint))  # fmt: skip
    return Finding(step, title, Verdict.OK, evidence)
