"""The diagnosis view: the runbook's steps over one round, and the causes they prove.

Each step (:mod:`exporter.diagnosis.steps`) reads the round and yields findings; each cause's spec
(:mod:`exporter.causes`) then decides from those findings whether it is active. A front probe's
502/504 that no cause explains becomes a finding of its own.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from exporter.causes import CAUSES, Cause, Finding, Verdict, failing_findings
from exporter.config import Config
from exporter.diagnosis.context import StepContext
from exporter.diagnosis.explain import explained, gateway_episodes, upstream_role
from exporter.diagnosis.steps import STEPS
from exporter.diagnosis.steps.log_causes import LOG_DECIDED, episodes_of
from exporter.diagnosis.steps.probes import nginx_error_log
from exporter.logs.episodes import Episode
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
    unexplained: tuple[Episode, ...] = ()
    """nginx's current upstream errors that no active cause explains (``cause="unexplained"``)."""

    @property
    def healthy(self) -> bool:
        return not self.causes and not self.gateway_errors and not self.unexplained

    @property
    def is_unexplained(self) -> bool:
        """502/504s now (the front probe's, or nginx's log lines) that no cause explains."""
        return bool(self.unexplained) or bool(self.gateway_errors and not self.now)

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
        if self.now or self.gateway_errors or self.unexplained:
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
    evidence = _unexplained_by_others(_decided(findings))
    gateway_errors = tuple(
        f"{probe.url} answered {probe.status_code}"
        for probe in results.http
        if probe.role == "front" and probe.gateway_error
    )
    serving = {name: ctx.answering.get(name, False) or bool(ctx.running.get(name)) for name in ctx.answering}
    latent = frozenset(
        c for c in evidence if CAUSES[c].latent_while_serving and serving.get(CAUSES[c].serving, False)
    )
    unexplained = _unexplained_episodes(ctx, frozenset(evidence) - latent)
    if (gateway_errors and not evidence) or unexplained:
        findings.append(_unexplained(gateway_errors if not evidence else (), unexplained, ctx))
    return Diagnosis(tuple(findings), frozenset(evidence), gateway_errors, evidence, latent, unexplained)


def _decided(findings: list[Finding]) -> dict[Cause, tuple[Finding, ...]]:
    """Each cause's spec decides from the findings; the default decision (every failing step naming the
    cause) is read from one index of them, not a scan of every finding per cause."""
    failing: dict[Cause, list[Finding]] = {}
    for finding in findings:
        cause = finding.failing_cause
        if cause is not None:
            failing.setdefault(cause, []).append(finding)
    decided = {}
    for spec in CAUSES.values():
        found = (
            tuple(failing.get(spec.cause, ()))
            if spec.decide is failing_findings
            else spec.decide(spec.cause, findings)
        )
        if found:
            decided[spec.cause] = found
    return decided


def _unexplained_by_others(evidence: dict[Cause, tuple[Finding, ...]]) -> dict[Cause, tuple[Finding, ...]]:
    """Without the causes that a cause the logs prove explains (its spec's ``explains``, the inhibitions
    Alertmanager applies): a full backlog makes the probe see a busy pool, and the verdict names the
    backlog. The probes' own causes keep what they explain: PHP-FPM down with a pool file that will
    lock nginx out after the start names both, so that the start is not the whole fix."""
    explained = {
        alert
        for cause in evidence
        if cause in LOG_DECIDED
        for inhibition in CAUSES[cause].explains
        if not inhibition.target_labels
        for alert in inhibition.target_alerts
    }
    return {cause: found for cause, found in evidence.items() if CAUSES[cause].alert not in explained}


def _unexplained_episodes(ctx: StepContext, active: frozenset[Cause]) -> tuple[Episode, ...]:
    """nginx's current upstream errors that no active cause explains."""
    result = ctx.results.logs
    if result is None:
        return ()
    now, window = time.time(), ctx.config.logs.evidence_window_seconds
    left = []
    for episode in gateway_episodes(episodes_of(result, window, now), now, window):
        where = episode.key.where
        role = upstream_role(ctx.config, where) if where else None
        answering = ctx.answering.get(role, False) if role is not None else False
        procs = ctx.results.processes.of(role) if role is not None and ctx.results.processes else None
        started_at = procs.started_at if procs is not None else None
        if not explained(episode, active, role, answering, now, started_at):
            left.append(episode)
    return tuple(left)


SHOWN_UNEXPLAINED = 5


def _unexplained(gateway_errors: tuple[str, ...], episodes: tuple[Episode, ...], ctx: StepContext) -> Finding:
    counts = Counter[tuple[str, str]]()
    for episode in episodes:
        counts[episode.key.kind, episode.key.where] += episode.count
    kinds = [f"{n} x {kind}" + (f" ({where})" if where else "")
             for (kind, where), n in counts.most_common(SHOWN_UNEXPLAINED)]  # fmt: skip
    newest = sorted(episodes, key=lambda e: e.last)[-SHOWN_UNEXPLAINED:]
    evidence = (
        *gateway_errors,
        *((f"nginx logged, and no cause explains: {', '.join(kinds)}",) if kinds else ()),
        *(f"{e.key.path}: {e.line}" for e in newest if e.line),
        "unexplained: no cause identified by the probes or the logs",
    )
    return Finding(
        "gateway_errors",
        "nginx answers without gateway errors that no cause explains",
        Verdict.FAIL,
        evidence,
        fix=(f"sudo tail -50 {nginx_error_log(ctx)}",),
    )
