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

__all__ = [
    "EXIT_CAUSE_NOW",
    "EXIT_HEALTHY",
    "EXIT_LATENT_ONLY",
    "Diagnosis",
    "Finding",
    "Verdict",
    "diagnose",
]

EXIT_HEALTHY = 0
EXIT_CAUSE_NOW = 1
EXIT_LATENT_ONLY = 3  # 2 is bad usage or configuration


@dataclass(frozen=True)
class Diagnosis:
    """All findings and the causes they point to."""

    findings: tuple[Finding, ...]
    causes: frozenset[Cause] = field(default_factory=frozenset)
    gateway_errors: tuple[str, ...] = ()  # front probes answered 502/504
    evidence: dict[Cause, tuple[Finding, ...]] = field(default_factory=dict, compare=False)
    """For each active cause, the findings that decided it (the first one's fix is the fix)."""
    latent: frozenset[Cause] = field(default_factory=frozenset)
    """Active causes that nothing answers 502/504 for yet (nginx -t fails while nginx still serves)."""

    @property
    def healthy(self) -> bool:
        return not self.causes and not self.gateway_errors

    @property
    def now(self) -> frozenset[Cause]:
        """The causes of 502/504 happening now."""
        return self.causes - self.latent

    @property
    def latent_findings(self) -> tuple[Finding, ...]:
        """Warnings that will become 502/504 on the next reload, restart or reboot."""
        return tuple(f for f in self.findings if f.latent)

    @property
    def exit_code(self) -> int:
        """0 healthy, 1 a cause of 502/504 now, 3 only problems for the next reload or restart."""
        if self.now or self.gateway_errors:
            return EXIT_CAUSE_NOW
        if self.latent or self.latent_findings:
            return EXIT_LATENT_ONLY
        return EXIT_HEALTHY

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
    serving = ctx.answering["nginx"] or bool(ctx.running["nginx"])
    latent = frozenset(c for c in evidence if CAUSES[c].latent_while_serving and serving)
    return Diagnosis(tuple(findings), frozenset(evidence), gateway_errors, evidence, latent)


def _unexplained(gateway_errors: tuple[str, ...], ctx: StepContext) -> Finding:
    return Finding(
        "gateway_errors",
        "nginx answers without gateway errors",
        Verdict.FAIL,
        (*gateway_errors, "no cause identified by the probes: read the nginx error log"),
        fix=(f"sudo tail -50 {nginx_error_log(ctx)}",),
    )
