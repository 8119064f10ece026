"""A filesystem the stack writes to is full (space or inodes)."""

from __future__ import annotations

from exporter.causes.model import AlertText, Cause, CauseSpec, Inhibition

SPEC = CauseSpec(
    cause=Cause.DISK_FULL,
    alert="DiskFull",
    title="A filesystem the stack writes to is full",
    status_code=502,
    evidence=("resources",),
    page=AlertText(
        summary="A filesystem the stack writes to is full on {instance}",
        meaning="Disk space or inodes are exhausted on {instance}: PHP-FPM cannot create its socket or"
        " sessions, nginx cannot buffer, and nginx answers 502.",
        for_seconds=120,
    ),
    faults=("disk_full",),
    explains=(Inhibition(("DiskWillFillSoon",), why="the disk is already full"),),
)


def free_space(mountpoint: str) -> tuple[str, ...]:
    return (
        f"df -h {mountpoint}; sudo du -xh {mountpoint} 2>/dev/null | sort -h | tail -20",
        "sudo journalctl --vacuum-size=200M; remove old rotated logs in /var/log/nginx",
    )
