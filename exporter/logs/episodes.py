"""Episodes: what each log said, by kind, since when, until when and how often.

An episode is the run of lines of one key (a log, its source, the kind or event, the upstream or pool
and the cause the lines prove) with no gap longer than the evidence window between two of them. A
cause from the logs holds while its episode goes on (its last line is within the window) and clears
when the lines stop, so an incident fixed an hour ago is history, not the page. Lines are dated by
the time written in them (the host's local time); a line without one by when it was read.

The tailer feeds an :class:`EpisodeIndex` as it reads; ``diagnose`` (run once, no tailer) feeds one
from the ends of the logs. Keys are bounded: the upstream and pool are the bounded labels of the
counters, and at most :data:`MAX_EPISODES` episodes are kept (the oldest-ending go first).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime

from exporter.causes import Cause

MAX_EPISODES = 256
SHOWN_CHARS = 500


@dataclass(frozen=True)
class EpisodeKey:
    """What the lines of one episode share."""

    path: str
    source: str
    """``nginx``, ``php-fpm`` or ``app``."""
    kind: str
    """nginx's ``kind``, or the ``event`` of a PHP-FPM or backend line."""
    where: str = ""
    """The upstream (nginx) or pool (PHP-FPM), as bounded as the counters' labels."""
    cause: Cause | None = None
    """The cause each of these lines proves alone, if any."""


@dataclass(frozen=True)
class Episode:
    """A run of lines of one key."""

    key: EpisodeKey
    first: float
    """When its first line was written (epoch seconds)."""
    last: float
    count: int
    line: str = ""
    """Its most recent line seen, at most 500 characters."""

    def current(self, now: float, window: float) -> bool:
        """Whether its lines still arrive: the last one within ``window`` seconds of ``now``."""
        return self.last >= now - window


def clock(epoch: float) -> str:
    """``YYYY-MM-DD HH:MM:SS`` of ``epoch`` in the host's local time, as the lines write it."""
    return datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M:%S")


def line_epoch(text: str | None, fallback: float) -> float:
    """``YYYY-MM-DD HH:MM:SS`` (local time, as :func:`~exporter.logs.classify.line_time` gives it) as
    epoch seconds, by slicing (strptime costs ten times as much); ``fallback`` when there is none."""
    if text is None or len(text) != 19:
        return fallback
    try:
        fields = (int(text[0:4]), int(text[5:7]), int(text[8:10]), int(text[11:13]), int(text[14:16]),
                  int(text[17:19]), 0, 0, -1)  # fmt: skip
        month, day, hour, minute, second = fields[1:6]
        if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second <= 60):
            return fallback  # mktime would roll 2026-13-01 over into 2027
        return time.mktime(fields)
    except (ValueError, OverflowError):
        return fallback


class EpisodeIndex:
    """Episodes by key, bounded; safe to feed from one thread and read from others."""

    def __init__(self, window_seconds: float, max_episodes: int = MAX_EPISODES) -> None:
        self.window = window_seconds
        self._max = max_episodes
        self._open: dict[EpisodeKey, Episode] = {}
        self._ended: list[Episode] = []
        self._lock = threading.Lock()

    def add(self, key: EpisodeKey, when: float, count: int = 1, line: str | None = None) -> None:
        """``count`` lines of ``key`` written at ``when``; ``line`` the last of them, when known."""
        with self._lock:
            self._add(key, when, count, line[:SHOWN_CHARS] if line is not None else None)

    def add_counts(self, counts: Iterable[tuple[EpisodeKey, int]], when: float) -> None:
        """Lines of several keys written at ``when`` (one block read at once): one lock for all."""
        with self._lock:
            for key, count in counts:
                self._add(key, when, count, None)

    def _add(self, key: EpisodeKey, when: float, count: int, text: str | None) -> None:
        """With the lock held."""
        episode = self._open.get(key)
        if episode is not None and when - episode.last > self.window:
            self._end(episode)
            episode = None
        if episode is None:
            self._open[key] = Episode(key, when, when, count, text or "")
            self._bound()
            return
        self._open[key] = Episode(
            key, min(episode.first, when), max(episode.last, when), episode.count + count,
            text if text is not None and when >= episode.last else episode.line,
        )  # fmt: skip

    def note_line(self, key: EpisodeKey, line: str) -> None:
        """The most recent line of an open episode, when it was found apart from its count."""
        with self._lock:
            episode = self._open.get(key)
            if episode is not None:
                self._open[key] = replace(episode, line=line[:SHOWN_CHARS])

    def episodes(self) -> tuple[Episode, ...]:
        """Every episode kept, the ended ones too, oldest last line first."""
        with self._lock:
            kept = [*self._ended, *self._open.values()]
        return tuple(sorted(kept, key=lambda e: e.last))

    def _end(self, episode: Episode) -> None:
        del self._open[episode.key]
        self._ended.append(episode)
        if len(self._ended) > self._max // 2:
            self._ended = sorted(self._ended, key=lambda e: e.last)[-(self._max // 2) :]

    def _bound(self) -> None:
        """Over the bound: the ended episodes go first, then the open ones that ended longest ago,
        a quarter at a time (one sort per many additions, not one scan per addition)."""
        if len(self._open) + len(self._ended) <= self._max:
            return
        if self._ended:
            self._ended = self._ended[len(self._ended) // 4 + 1 :]
            return
        kept = sorted(self._open.values(), key=lambda e: e.last)[len(self._open) // 4 + 1 :]
        self._open = {e.key: e for e in kept}


def index_of(items: Iterable[tuple[EpisodeKey, float, str]], window_seconds: float) -> EpisodeIndex:
    """An index fed with ``(key, when, line)`` in the order the lines were written."""
    index = EpisodeIndex(window_seconds)
    for key, when, line in sorted(items, key=lambda item: item[1]):
        index.add(key, when, 1, line)
    return index
