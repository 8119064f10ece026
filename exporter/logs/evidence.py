"""One classified log line kept as evidence: what ``diagnose`` and the round show of a log."""

from __future__ import annotations

from dataclasses import dataclass

from exporter.logs.classify import MAX_LINE_BYTES, NONE, Source, classify_phpfpm, line_time, tally_nginx

SHOWN_CHARS = 500


@dataclass(frozen=True)
class Evidence:
    """One classified line of a log."""

    path: str
    source: Source
    time: str | None
    """``YYYY-MM-DD HH:MM:SS`` as written in the line (local time of the host), or None."""
    kind: str
    """nginx ``kind`` or PHP-FPM ``event``; never ``none``."""
    upstream: str | None = None
    pool: str | None = None
    line: str = ""
    """The line itself, decoded with replacement characters, at most 500 characters."""


def evidence_of(raw: bytes, source: Source, path: str) -> Evidence | None:
    """The line as evidence, or None when it is no upstream error (nginx) or no event (PHP-FPM)."""
    line = raw[:MAX_LINE_BYTES]
    if source == "nginx":
        if b"upstream" not in line:
            return None
        counts: dict[tuple[str, str | None], int] = {}
        if not tally_nginx((line,), counts):
            return None
        ((kind, upstream),) = counts
        return Evidence(path, "nginx", line_time(line), kind, upstream=upstream, line=_text(line))
    event, pool, _signal = classify_phpfpm(line)
    if event == NONE:
        return None
    return Evidence(path, "php-fpm", line_time(line), event, pool=pool, line=_text(line))


def _text(line: bytes) -> str:
    return line.decode("utf-8", "replace").rstrip("\r")[:SHOWN_CHARS]
