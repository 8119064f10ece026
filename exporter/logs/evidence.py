"""One classified log line kept as evidence: what ``diagnose`` and the round show of a log."""

from __future__ import annotations

from dataclasses import dataclass

from exporter.causes import Cause
from exporter.logs.classify import MAX_LINE_BYTES, NONE, classify_phpfpm, line_time, tally_nginx
from exporter.logs.episodes import SHOWN_CHARS, EpisodeKey
from exporter.logs.lines import classify_app, nginx_cause, phpfpm_cause


@dataclass(frozen=True)
class Evidence:
    """One classified line of a log."""

    path: str
    source: str
    """``nginx``, ``php-fpm`` or ``app`` (the backend's own log)."""
    time: str | None
    """``YYYY-MM-DD HH:MM:SS`` as written in the line (local time of the host), or None."""
    kind: str
    """nginx ``kind`` or the PHP-FPM or backend ``event``; never ``none``."""
    upstream: str | None = None
    pool: str | None = None
    line: str = ""
    """The line itself, decoded with replacement characters, at most 500 characters."""
    cause: Cause | None = None
    """The cause this line proves alone (see :mod:`exporter.logs.lines`)."""

    def key(self, where: str | None = None) -> EpisodeKey:
        """Its episode's key; ``where`` replaces the upstream or pool by its bounded label."""
        label = where if where is not None else (self.upstream or self.pool or "")
        return EpisodeKey(self.path, self.source, self.kind, label, self.cause)


def evidence_of(raw: bytes, source: str, path: str) -> Evidence | None:
    """The line as evidence, or None when it is no upstream error (nginx) or no event (the others)."""
    line = raw[:MAX_LINE_BYTES]
    if source == "nginx":
        if b"upstream" not in line and b"could not be resolved" not in line:
            return None
        counts: dict[tuple[str, str | None], int] = {}
        if not tally_nginx((line,), counts):
            return None
        ((kind, upstream),) = counts
        return Evidence(path, "nginx", line_time(line), kind, upstream=upstream, line=_text(line),
                        cause=nginx_cause(kind, upstream))  # fmt: skip
    if source == "app":
        event, cause = classify_app(line)
        if event == NONE:
            return None
        return Evidence(path, "app", line_time(line), event, line=_text(line), cause=cause)
    event, pool, signal = classify_phpfpm(line)
    if event == NONE:
        return None
    return Evidence(path, "php-fpm", line_time(line), event, pool=pool, line=_text(line),
                    cause=phpfpm_cause(event, signal))  # fmt: skip


def _text(line: bytes) -> str:
    return line.decode("utf-8", "replace").rstrip("\r")[:SHOWN_CHARS]
