"""The host is out of memory, or the OOM killer recently killed a process."""

from __future__ import annotations

from exporter.causes.model import AlertText, Cause, CauseSpec, Inhibition

SPEC = CauseSpec(
    cause=Cause.MEMORY_EXHAUSTED,
    alert="MemoryExhausted",
    title="The server is out of memory",
    status_code=502,
    evidence=("resources",),
    page=AlertText(
        summary="{instance} is out of memory",
        meaning="Memory is exhausted on {instance}: the OOM killer stops php-fpm or the backend and nginx"
        " answers 502.",
        for_seconds=120,
    ),
    faults=("oom_kill",),
    explains=(
        Inhibition(
            ("BackendDown",),
            (("oom_kill", "recent"),),
            why="a backend the OOM killer stopped; a backend down with no OOM kill is an independent fault",
        ),
    ),
)

FIX: tuple[str, ...] = (
    "free -h; ps aux --sort=-rss | head -15",
    "lower pm.max_children or the backend's worker count, add swap, or add memory",
    "sudo journalctl -k | grep -i 'killed process'   # what the OOM killer took",
)
