"""Step 3 of the runbook: the last upstream errors in the nginx and PHP-FPM logs."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timedelta

from exporter.causes import Finding, Verdict
from exporter.diagnosis.context import StepContext
from exporter.logs.evidence import Evidence

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
            Finding("logs", "The nginx and PHP-FPM logs show no upstream error", Verdict.OK,
                    (f"read the end of {', '.join(result.paths)}",))
        ]  # fmt: skip
    window = ctx.config.logs.evidence_window_seconds
    current, history = split_by_window(result.recent, window, datetime.now())
    span = f"{window / 60:g} min" if window >= 60 else f"{window:g} s"
    history_lines = _history_line(history, span)
    if not current:
        return [
            Finding("logs", f"The nginx and PHP-FPM logs show no upstream error in the last {span}", Verdict.OK,
                    (f"read the end of {', '.join(result.paths)}", *history_lines))
        ]  # fmt: skip
    by_kind = Counter((e.kind, e.upstream or e.pool or "") for e in current)
    summary = [
        f"{count} x {kind}" + (f" ({where})" if where else "")
        for (kind, where), count in by_kind.most_common(SHOWN_KINDS)
    ]
    last = [f"{e.path}: {e.line}" for e in current[-SHOWN_LINES:]]
    return [
        Finding(
            "logs",
            f"The nginx and PHP-FPM logs show {len(current)} upstream error(s) or PHP-FPM event(s) in the last {span}",
            Verdict.WARN,
            (f"last {len(current)} error(s): " + ", ".join(summary), *last, *history_lines),
            fix=tuple(f"sudo tail -50 {path}" for path in result.paths),
        )
    ]


def split_by_window(
    recent: Sequence[Evidence], seconds: float, now: datetime
) -> tuple[list[Evidence], list[Evidence]]:
    """The lines written within ``seconds`` before ``now`` (or with no time) and the older ones (history)."""
    cutoff = now - timedelta(seconds=seconds)
    current: list[Evidence] = []
    history: list[Evidence] = []
    for evidence in recent:
        when = _parse(evidence.time)
        (history if when is not None and when < cutoff else current).append(evidence)
    return current, history


def _parse(text: str | None) -> datetime | None:
    """``YYYY-MM-DD HH:MM:SS`` (as :func:`~exporter.logs.classify.line_time` writes it), by slicing:
    up to 200 lines a scrape, and strptime costs ten times as much."""
    if text is None or len(text) != 19:
        return None
    try:
        return datetime(int(text[0:4]), int(text[5:7]), int(text[8:10]), int(text[11:13]), int(text[14:16]),
                        int(text[17:19]))  # fmt: skip
    except ValueError:
        return None


def _history_line(history: Sequence[Evidence], span: str) -> tuple[str, ...]:
    if not history:
        return ()
    kinds = ", ".join(sorted({e.kind for e in history}))
    return (
        f"history, before the last {span}: {len(history)} line(s) ({kinds}), the last at {history[-1].time}",
    )
