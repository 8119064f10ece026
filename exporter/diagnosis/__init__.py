"""The diagnosis view: the runbook's steps over one round, and the causes they prove.

Each step (:mod:`exporter.diagnosis.steps`) reads the round and yields findings; each cause's spec
(:mod:`exporter.causes`) then decides from those findings whether it is active. A front probe's
502/504 that no cause explains becomes a finding of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from exporter.causes import CAUSES, Cause, Finding, Verdict
from exporter.config import Config
from exporter.diagnosis.context import StepContext
from exporter.diagnosis.steps import STEPS
from exporter.diagnosis.steps.probes import nginx_error_log
from exporter.rounds import RoundResults

__all__ = ["Diagnosis", "Finding", "Verdict", "diagnose"]


@dataclass(frozen=True)
class Diagnosis:
    """All findings and the causes they point to."""

    findings: tuple[Finding, ...]
    causes: frozenset[Cause] = field(default_factory=frozenset)
    gateway_errors: tuple[str, ...] = ()  # front probes answered 502/504
    evidence: dict[Cause, tuple[Finding, ...]] = field(default_factory=dict, compare=False)
    """For each active cause, the findings that decided it (the first one's fix is the fix)."""

    @property
    def healthy(self) -> bool:
        return not self.causes and not self.gateway_errors

    def fix(self, cause: Cause) -> tuple[str, ...]:
        deciding = self.evidence.get(cause, ())
        return deciding[0].fix if deciding else ()


def diagnose(results: RoundResults, config: Config) -> Diagnosis:
    """Read one round's results the way the runbook does."""
    ctx = StepContext.of(results, config)
    findings: list[Finding] = []
    for step in STEPS:
        findings.extend(step(ctx, findings))
    evidence = {spec.cause: found for spec in CAUSES.values() if (found := spec.decide(spec.cause, findings))}
    gateway_errors = tuple(
        f"{probe.url} answered {probe.status_code}"
        for probe in results.http
        if probe.role == "front" and probe.gateway_error
    )
    if gateway_errors and not evidence:
        findings.append(_unexplained(gateway_errors, ctx))
    return Diagnosis(tuple(findings), frozenset(evidence), gateway_errors, evidence)


def _unexplained(gateway_errors: tuple[str, ...], ctx: StepContext) -> Finding:
    return Finding(
        "gateway_errors",
        "nginx answers without gateway errors",
        Verdict.FAIL,
        (*gateway_errors, "no cause identified by the probes: read the nginx error log"),
        fix=(f"sudo tail -50 {nginx_error_log(ctx)}",),
    )
