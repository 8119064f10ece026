"""The Python backend is not running."""

from __future__ import annotations

from exporter.causes import commands
from exporter.causes.model import AlertText, Cause, CauseSpec

SPEC = CauseSpec(
    cause=Cause.BACKEND_DOWN,
    alert="BackendDown",
    title="The Python backend is not running",
    status_code=502,
    evidence=("processes", "units", "http"),
    page=AlertText(
        summary="The Python backend is down on {instance}",
        meaning="The Python backend on {instance} does not answer: nginx answers 502 for what it proxies there.",
        for_seconds=60,
        labels=(("oom_kill", "recent_oom_kill"),),
    ),
    faults=("backend_stopped", "backend_crashes_at_boot"),
)


def start(unit: str) -> tuple[str, ...]:
    return commands.start_enable_journal(unit)
