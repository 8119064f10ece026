"""The upstream's listen queue is full: connect() fails at once with EAGAIN and nginx answers 502."""

from __future__ import annotations

from exporter.causes import commands
from exporter.causes.model import AlertText, Cause, CauseSpec, Inhibition

SPEC = CauseSpec(
    cause=Cause.LISTEN_BACKLOG_FULL,
    alert="ListenBacklogFull",
    title="The upstream's listen backlog is full",
    status_code=502,
    evidence=("logs",),
    page=AlertText(
        summary="The upstream's listen backlog is full on {instance} (nginx answers 502)",
        meaning="nginx on {instance} gets '(11: Resource temporarily unavailable)' connecting to an"
        " upstream socket: its listen queue is full (listen.backlog or net.core.somaxconn too small for"
        " the bursts) and nginx answers 502 at once instead of waiting.",
        for_seconds=60,
    ),
    faults=("listen_backlog_tiny",),
    explains=(
        Inhibition(
            ("PhpFpmPoolExhausted",),
            why="a full queue in front of busy workers: the requests refused by the queue are the 502s",
        ),
    ),
)


def raise_backlog(pool_file: str, current: str, somaxconn: int | None, unit: str) -> tuple[str, ...]:
    """``listen.backlog`` of the pool is ``current``; the kernel caps it at ``somaxconn``."""
    cap = f"net.core.somaxconn is {somaxconn}" if somaxconn is not None else "net.core.somaxconn caps it"
    steps = [f"in {pool_file}: listen.backlog = 4096   # now {current}; {cap}"]
    if somaxconn is not None and somaxconn < 4096:
        steps.append("sudo sysctl -w net.core.somaxconn=4096   # and in /etc/sysctl.d/ to keep it")
    steps += [commands.restart(unit), "if the workers are all busy too: raise pm.max_children"]
    return tuple(steps)
