"""The diagnosis for a person at a terminal (text) and for scripts (JSON)."""

from __future__ import annotations

from datetime import datetime

from exporter.causes import CAUSES, Cause, Finding, Verdict
from exporter.config import printable
from exporter.diagnosis import Diagnosis
from exporter.logs.episodes import Episode

_MARKS = {Verdict.OK: "ok  ", Verdict.WARN: "warn", Verdict.FAIL: "FAIL", Verdict.SKIP: "skip"}
_COLORS = {Verdict.OK: "32", Verdict.WARN: "33", Verdict.FAIL: "31;1", Verdict.SKIP: "90"}


def finding_json(finding: Finding) -> dict[str, object]:
    return {
        "step": finding.step,
        "title": finding.title,
        "verdict": finding.verdict.value,
        "evidence": list(finding.evidence),
        "cause": finding.cause.value if finding.cause else None,
        "fix": list(finding.fix),
    }


def _cause_json(diagnosis: Diagnosis, cause: Cause) -> dict[str, object]:
    spec = CAUSES[cause]
    return {
        "cause": cause.value,
        "title": spec.title,
        "alert": spec.alert,
        "runbook": spec.runbook_path,
        "now": cause not in diagnosis.latent,
        "fix": list(diagnosis.fix(cause)),
    }


def diagnosis_json(diagnosis: Diagnosis) -> dict[str, object]:
    """The diagnosis as a JSON-able document (``diagnose --format json``)."""
    return {
        "healthy": diagnosis.healthy,
        "exit_code": diagnosis.exit_code,
        "causes": [_cause_json(diagnosis, cause) for cause in sorted(diagnosis.causes)],
        "latent": [finding_json(f) for f in diagnosis.latent_findings],
        "gateway_errors": list(diagnosis.gateway_errors),
        "unexplained": [_episode_json(e) for e in diagnosis.unexplained],
        "findings": [finding_json(f) for f in diagnosis.findings],
    }


def _episode_json(episode: Episode) -> dict[str, object]:
    key = episode.key
    return {
        "log": key.path, "source": key.source, "kind": key.kind, "upstream": key.where or None,
        "count": episode.count, "first": _iso(episode.first), "last": _iso(episode.last), "line": episode.line,
    }  # fmt: skip


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch).astimezone().isoformat(timespec="seconds")


def _finding_lines(finding: Finding, color: bool) -> list[str]:
    mark = _paint(f"[{_MARKS[finding.verdict]}]", _COLORS[finding.verdict], color)
    # Evidence quotes log lines and file contents: control characters are shown escaped (\x1b),
    # never sent to the terminal.
    lines = [
        f"{mark} {printable(finding.title)}",
        *(f"       {printable(item)}" for item in finding.evidence),
    ]
    if finding.verdict in (Verdict.FAIL, Verdict.WARN):
        if finding.cause:
            lines.append(f"       cause: {finding.cause.value}")
        lines.extend(f"       fix:   {printable(command)}" for command in finding.fix)
    return lines


def render_text(diagnosis: Diagnosis, color: bool = False) -> str:
    """Each step, its evidence, the verdict and the fix; then the causes found, now before later."""
    lines = [line for finding in diagnosis.findings for line in _finding_lines(finding, color)]
    lines.append("")
    if diagnosis.healthy and not diagnosis.latent_findings:
        lines.append(_paint("Verdict: no cause of 502/504 found.", "32;1", color))
        return "\n".join(lines)
    lines += _now_lines(diagnosis, color)
    lines += _latent_lines(diagnosis, color)
    if diagnosis.gateway_errors:
        lines.append("Gateway errors seen: " + "; ".join(printable(e) for e in diagnosis.gateway_errors))
    return "\n".join(lines)


def _cause_lines(diagnosis: Diagnosis, cause: Cause) -> list[str]:
    spec = CAUSES[cause]
    return [
        f"  {cause.value}: {spec.title} (runbook: {spec.runbook_path})",
        *(f"      {printable(command)}" for command in diagnosis.fix(cause)),
    ]


def _now_lines(diagnosis: Diagnosis, color: bool) -> list[str]:
    if not diagnosis.now:
        if diagnosis.gateway_errors or diagnosis.unexplained:
            return [
                _paint("Verdict: nginx answers 502/504 and no cause explains it: unexplained (see above).",
                       "31;1", color)
            ]  # fmt: skip
        return [_paint("Verdict: nothing answers 502/504 now.", "32;1", color)]
    count = len(diagnosis.now)
    lines = [
        _paint(f"Verdict: {count} cause{'s' if count > 1 else ''} of 502/504 happening now:", "31;1", color)
    ]
    for cause in sorted(diagnosis.now):
        lines += _cause_lines(diagnosis, cause)
    if diagnosis.unexplained:
        count = sum(e.count for e in diagnosis.unexplained)
        lines.append(
            f"  unexplained: {count} more upstream error(s) in nginx's log that no cause explains (see above)"
        )
    return lines


def _latent_lines(diagnosis: Diagnosis, color: bool) -> list[str]:
    found = sorted(diagnosis.latent)
    warnings = diagnosis.latent_findings
    if not found and not warnings:
        return []
    lines = [_paint("Will cause 502/504 on the next reload, restart or reboot:", "33;1", color)]
    for cause in found:
        lines += _cause_lines(diagnosis, cause)
    for finding in warnings:
        lines.append(f"  {printable(finding.title)}")
        lines.extend(f"      {printable(command)}" for command in finding.fix)
    return lines


def _paint(text: str, code: str, color: bool) -> str:
    return f"\033[{code}m{text}\033[0m" if color else text
