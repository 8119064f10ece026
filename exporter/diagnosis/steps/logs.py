"""Step 3 of the runbook: the last upstream errors in the nginx and PHP-FPM logs."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from exporter.causes import Finding, Verdict
from exporter.diagnosis.context import StepContext

SHOWN_LINES = 5
SHOWN_KINDS = 5


def logs(ctx: StepContext, earlier: Sequence[Finding]) -> list[Finding]:
    del earlier
    result = ctx.results.logs
    if result is None:
        return [ctx.not_checked("logs", "The nginx and PHP-FPM logs")]
    if not result.paths:
        return [
            Finding("logs", "The nginx and PHP-FPM logs", Verdict.SKIP,
                    (f"no log matches {', '.join(result.patterns)}",))
        ]  # fmt: skip
    if not result.recent:
        return [
            Finding("logs", "The nginx and PHP-FPM logs show no recent upstream errors", Verdict.OK,
                    (f"read the end of {', '.join(result.paths)}",))
        ]  # fmt: skip
    recent = result.recent
    by_kind = Counter((e.kind, e.upstream or e.pool or "") for e in recent)
    summary = [
        f"{count} x {kind}" + (f" ({where})" if where else "")
        for (kind, where), count in by_kind.most_common(SHOWN_KINDS)
    ]
    last = [f"{e.path}: {e.line}" for e in recent[-SHOWN_LINES:]]
    return [
        Finding(
            "logs",
            f"The nginx and PHP-FPM logs show {len(recent)} recent upstream error(s) or PHP-FPM event(s)",
            Verdict.WARN,
            (f"last {len(recent)} error(s): " + ", ".join(summary), *last),
            fix=tuple(f"sudo tail -50 {path}" for path in result.paths),
        )
    ]
