"""What every runbook step reads: one round's results, the configuration, and facts derived once."""

from __future__ import annotations

from dataclasses import dataclass, field

from exporter.causes import Finding, Verdict
from exporter.causes.commands import unit_name
from exporter.config import Config
from exporter.discovery.units import default_php_fpm_unit
from exporter.rounds import CollectorOutcome, RoundResults

SERVICES: tuple[str, ...] = ("nginx", "php_fpm", "backend")
UNKNOWN_BACKEND_UNIT = "<the backend's unit: set units.backend>"


@dataclass(frozen=True)
class StepContext:
    """One round as the steps see it."""

    results: RoundResults
    config: Config
    failed: dict[str, CollectorOutcome]
    units: dict[str, str]
    """Service -> the unit a person types (``php8.2-fpm``)."""
    answering: dict[str, bool]
    """Service -> whether its probe got any answer this round."""
    running: dict[str, bool | None] = field(default_factory=dict)
    """Service -> whether its processes run (None: the process check did not run)."""

    @classmethod
    def of(cls, results: RoundResults, config: Config) -> StepContext:
        units = {
            "nginx": unit_name(config.units.nginx),
            "php_fpm": unit_name(config.units.php_fpm or default_php_fpm_unit()),
            "backend": unit_name(config.units.backend or UNKNOWN_BACKEND_UNIT),
        }
        answering = {
            "nginx": any(p.status_code is not None for p in results.http if p.role == "front"),
            "php_fpm": any(p.up for p in results.fastcgi),
            "backend": any(p.status_code is not None for p in results.http if p.role == "backend"),
        }
        procs = results.processes
        running: dict[str, bool | None] = {}
        for service in SERVICES:
            found = procs.of(service) if procs is not None else None
            running[service] = None if procs is None else (found is not None and found.count > 0)
        failed = {o.collector: o for o in results.collectors if not o.success}
        return cls(results, config, failed, units, answering, running)

    def not_checked(self, step: str, title: str) -> Finding:
        """A step whose collector did not deliver this round."""
        outcome = self.failed.get(step.split(":", maxsplit=1)[0])
        reason = (outcome.error if outcome else None) or "check did not run"
        return Finding(step, title, Verdict.SKIP, (f"not checked: {reason}",))


def human_bytes(value: float) -> str:
    """``1536`` -> ``1.5 KiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    return f"{value:.1f} TiB"
