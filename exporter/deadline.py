"""A monotonic deadline shared by every check of one probe round."""

from __future__ import annotations

import time
from dataclasses import dataclass

MAX_SCRAPE_TIMEOUT_SECONDS = 120.0
"""The longest round deadline a scrape or ``diagnose --timeout`` may ask for."""


@dataclass(frozen=True)
class Deadline:
    """An absolute point on the monotonic clock after which work must stop."""

    at: float

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(time.monotonic() + seconds)

    def remaining(self, floor: float = 0.001) -> float:
        """Seconds left, never below ``floor`` so it can be passed as a timeout."""
        return max(self.at - time.monotonic(), floor)

    def expired(self) -> bool:
        return time.monotonic() >= self.at

    def capped(self, seconds: float) -> Deadline:
        """This deadline or ``seconds`` from now, whichever comes first."""
        return Deadline(min(self.at, time.monotonic() + seconds))
