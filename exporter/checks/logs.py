"""The runbook's ``tail`` of the error logs, as a check: what the logs said, joined to the round.

Serving, a :class:`~exporter.logs.tailer.LogWatcher` tails the logs in its own thread and this check
only copies its counters and its recent lines (no file I/O on the scrape path). Run once
(``diagnose``), there is no watcher: the check reads the end of every configured log instead.
Either way ``/metrics`` and the diagnosis read the same :class:`LogsResult` of the round.
"""

from __future__ import annotations

import glob
import time
from dataclasses import dataclass

from exporter.config import LogSettings
from exporter.deadline import Deadline
from exporter.logs.episodes import Episode, index_of, line_epoch
from exporter.logs.evidence import Evidence
from exporter.logs.tailer import LogSnapshot, LogWatcher

ONE_SHOT_LINES = 200


@dataclass(frozen=True)
class LogsResult:
    """The logs' part of the round's evidence."""

    patterns: tuple[str, ...]
    paths: tuple[str, ...]
    """The files the patterns matched."""
    snapshot: LogSnapshot | None
    """The watcher's counters; None when run once, with no watcher."""
    recent: tuple[Evidence, ...]
    """The last upstream errors and PHP-FPM events, oldest first."""
    episodes: tuple[Episode, ...] = ()
    """What the logs said by kind and upstream or pool, with first and last time and count."""


class LogsCheck:
    """Reads the watcher (serving) or the logs' ends (once)."""

    collector = "logs"

    def __init__(self, settings: LogSettings, watcher: LogWatcher | None) -> None:
        self._settings = settings
        self._watcher = watcher
        self._patterns = (*settings.nginx, *settings.php_fpm, *settings.app)

    def run(self, deadline: Deadline) -> LogsResult:
        del deadline  # a copy of counters, or one read of at most 64 KiB per log
        if self._watcher is not None:
            snapshot = self._watcher.snapshot()
            watcher = self._watcher
            return LogsResult(self._patterns, tuple(sorted(snapshot.logs)), snapshot, watcher.recent(),
                              watcher.episodes())  # fmt: skip
        paths = tuple(sorted({path for pattern in self._patterns for path in glob.glob(pattern)}))
        # diagnose only (no tailer): the serving process never imports the offline reader
        from exporter.logs.analyze import recent_from_settings

        recent = tuple(recent_from_settings(self._settings, limit=ONE_SHOT_LINES))
        now = time.time()
        window = self._settings.evidence_window_seconds
        episodes = index_of(((e.key(), line_epoch(e.time, now), e.line) for e in recent), window).episodes()
        return LogsResult(self._patterns, paths, None, recent, episodes)
