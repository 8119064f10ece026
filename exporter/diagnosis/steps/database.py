"""``pg_isready``: does the backend's database accept connections, and is that why the backend fails?"""

from __future__ import annotations

from collections.abc import Sequence

from exporter.causes import Cause, Facts, Finding, Verdict, database_down
from exporter.diagnosis.context import StepContext

STEP = "database"
TITLE = "The backend's database accepts connections"


def database(ctx: StepContext, earlier: Sequence[Finding]) -> list[Finding]:
    """The database probe; a refusal behind an unhealthy backend is the cause (``database_down``)."""
    if not ctx.config.database.enabled:
        return []
    result = ctx.results.database
    if result is None:
        return [ctx.not_checked(STEP, TITLE)]
    target = result.target
    if target is None:
        return [Finding(STEP, TITLE, Verdict.SKIP, (result.detail or "no database found",))]
    where = f"{target.address} (from {target.source})"
    isready = f"pg_isready -h {target.host} -p {target.port}: {result.state.replace('_', ' ')}"
    evidence = (isready, *([result.detail] if result.detail else []))
    if result.state == "accepting":
        return [Finding(STEP, f"The backend's database at {target.address} accepts connections", Verdict.OK,
                        (*evidence, f"found at {where}"))]  # fmt: skip
    unhealthy = [f for f in earlier if f.failing_cause is Cause.BACKEND_UNHEALTHY]
    title = f"The backend's database at {target.address} does not accept connections"
    if not unhealthy:
        # The backend still answers (or is down for its own reason): the database alone is no 502.
        return [Finding(STEP, title, Verdict.WARN, (*evidence, f"found at {where}"))]
    backend = ctx.units["backend"]
    fix = database_down.start(target.address, ctx.config.database.unit, backend)
    because = f"the backend's health check fails ({unhealthy[0].title}) because its database does not answer"
    return [
        Finding(STEP, title, Verdict.FAIL, (*evidence, because, f"found at {where}"), Cause.DATABASE_DOWN, fix,
                Facts(unit=backend, socket=target.address))
    ]  # fmt: skip
