"""A fault: one cause of :mod:`exporter.causes`, injected for real into a demo stack and healed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exporter.causes import CAUSES, Cause
from exporter.demo.services import Services
from exporter.demo.stack import Stack


@dataclass
class FaultContext:
    """What a fault acts on: the stack's files, its services, and the disk under it."""

    stack: Stack
    services: Services
    disk: Path | None = None  # mount point of a small filesystem holding the logs and the socket
    original_max_children: int = 0
    state: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.original_max_children:
            self.original_max_children = self.stack.max_children


@dataclass(frozen=True)
class Fault:
    """One cause, injected for real and healed."""

    name: str
    cause: Cause
    title: str
    inject: Callable[[FaultContext], None]
    heal: Callable[[FaultContext], None]
    unavailable: Callable[[FaultContext], str | None] = lambda ctx: None

    @property
    def alert(self) -> str:
        return CAUSES[self.cause].alert
