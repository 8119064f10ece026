"""The morning after: old log lines as incidents, each with the cause that explains it.

An incident is an episode (:mod:`exporter.logs.episodes`) of one kind to one upstream, or of one
PHP-FPM event in one pool: it starts with its first line and ends when no line of it came for the
window (default 5 minutes). Its cause is the one its lines prove (``upstream sent too big header``);
a generic incident (refused connects, resets) is explained by an incident with a cause that can
produce it and overlaps it in time (workers crashing while nginx saw resets), else it is unexplained.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from exporter.causes import CAUSES, Cause
from exporter.logs.episodes import Episode, EpisodeIndex, EpisodeKey, clock
from exporter.logs.lines import generic_explainers

MAX_INCIDENTS = 2000
"""Incidents kept by one analysis (the oldest-ending go first): memory stays bounded."""
CORRELATION_SECONDS = 2.0
"""How far apart in time two incidents may start or end and still be one (a crash, then the reset)."""


@dataclass(frozen=True)
class Incident:
    """One episode of the logs, explained."""

    episode: Episode
    cause: Cause | None
    """What explains it; None: unexplained."""
    by: str
    """``line``: its own lines prove the cause; ``overlap``: an incident of that cause at the same time."""

    def as_dict(self) -> dict[str, Any]:
        key, spec = self.episode.key, CAUSES.get(self.cause) if self.cause else None
        return {
            "source": key.source, "kind": key.kind, "where": key.where or None,
            "cause": self.cause.value if self.cause else "unexplained", "explained_by": self.by or None,
            "start": clock(self.episode.first), "end": clock(self.episode.last), "count": self.episode.count,
            "fix": f"{spec.title}: see {spec.runbook_path}" if spec else "read the lines: no cause explains them",
            "line": self.episode.line,
        }  # fmt: skip


def new_index(window_seconds: float) -> EpisodeIndex:
    """The index an analysis feeds, one key per source, kind, upstream or pool and cause (files merged)."""
    return EpisodeIndex(window_seconds, MAX_INCIDENTS)


def incident_key(source: str, kind: str, where: str | None, cause: Cause | None) -> EpisodeKey:
    """Rotated files of one log are one history: the key has no path."""
    return EpisodeKey("", source, kind, where or "", cause)


def incidents(episodes: Iterable[Episode]) -> list[Incident]:
    """Every episode as an incident, in the order they started."""
    ordered = sorted(episodes, key=lambda e: e.first)
    caused = [e for e in ordered if e.key.cause is not None]
    return [_explain(e, caused) for e in ordered]


def _explain(episode: Episode, caused: Sequence[Episode]) -> Incident:
    if episode.key.cause is not None:
        return Incident(episode, episode.key.cause, "line")
    if episode.key.source != "nginx":
        return Incident(episode, None, "")
    possible = generic_explainers(episode.key.kind)
    for other in caused:
        overlaps = (
            other.first - CORRELATION_SECONDS <= episode.last
            and episode.first <= other.last + CORRELATION_SECONDS
        )
        if overlaps and other.key.cause in possible:
            return Incident(episode, other.key.cause, "overlap")
    return Incident(episode, None, "")
