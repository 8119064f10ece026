"""The runbook's step 3 for ``diagnose``: the last upstream errors in the nginx and PHP-FPM logs."""

from __future__ import annotations

import glob
from collections import Counter

from exporter.config import LogSettings
from exporter.diagnosis import Finding, Verdict
from exporter.logs.analyze import recent_from_settings

SHOWN_LINES = 5


def log_finding(settings: LogSettings) -> Finding:
    """Read the tail of every configured log once and summarise what went wrong there."""
    title = "The nginx and PHP-FPM logs show no recent upstream errors"
    patterns = [*settings.nginx, *settings.php_fpm]
    paths = sorted({path for pattern in patterns for path in glob.glob(pattern)})
    if not paths:
        return Finding("logs", title, Verdict.SKIP, (f"no log matches {', '.join(patterns)}",))
    evidence = recent_from_settings(settings, limit=200)
    if not evidence:
        return Finding("logs", title, Verdict.OK, (f"read the end of {', '.join(paths)}",))
    by_kind = Counter((e.kind, e.upstream or e.pool or "") for e in evidence)
    summary = [
        f"{count} x {kind}" + (f" ({where})" if where else "")
        for (kind, where), count in by_kind.most_common(5)
    ]
    last = [f"{e.path}: {e.line}" for e in evidence[-SHOWN_LINES:]]
    return Finding(
        "logs",
        title,
        Verdict.WARN,
        (f"last {len(evidence)} error(s): " + ", ".join(summary), *last),
        fix=tuple(f"sudo tail -50 {path}" for path in paths),
    )
