"""The backend runs but its health endpoint answers with errors."""

from __future__ import annotations

from collections.abc import Sequence

from exporter.causes import commands
from exporter.causes.model import AlertText, Cause, CauseSpec, Finding, failing_findings


def _unless_database_down(cause: Cause, findings: Sequence[Finding]) -> tuple[Finding, ...]:
    """Unhealthy because its database refuses: that is the cause (database_down)."""
    if any(f.failing_cause is Cause.DATABASE_DOWN for f in findings):
        return ()
    return failing_findings(cause, findings)


SPEC = CauseSpec(
    cause=Cause.BACKEND_UNHEALTHY,
    alert="BackendUnhealthy",
    title="The Python backend answers with errors",
    status_code=502,
    evidence=("http",),
    page=AlertText(
        summary="The Python backend answers with errors on {instance}",
        meaning="The Python backend on {instance} is running but its health check fails"
        " (database, configuration, dependencies).",
        for_seconds=120,
    ),
    faults=("backend_unhealthy",),
    decide=_unless_database_down,
)


def read_and_restart(unit: str, url: str | None) -> tuple[str, ...]:
    """See the error, read the backend's journal, restart once the reason is fixed."""
    if url is None:
        return (commands.journal(unit),)
    return f"curl -i {url}", commands.journal(unit), commands.restart(unit)
