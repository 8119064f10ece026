"""One module per check of the runbook.

Each check module exposes a ``*Check`` class with a ``collector`` name and a
``run(deadline) -> Result`` method returning a frozen dataclass. The metrics view
(:mod:`exporter.metrics`) and the diagnosis view (:mod:`exporter.diagnosis`) read the same results.
"""

from __future__ import annotations

from typing import Protocol, TypeVar

from exporter.deadline import Deadline

R_co = TypeVar("R_co", covariant=True)


class Check(Protocol[R_co]):
    """A check of one thing on the host, bounded by a deadline."""

    @property
    def collector(self) -> str:
        """The ``collector`` label value this check reports under."""
        ...

    def run(self, deadline: Deadline) -> R_co:
        """Run once, returning before ``deadline`` as far as the OS allows."""
        ...
