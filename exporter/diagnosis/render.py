"""The diagnosis for a person at a terminal (text) and for scripts (JSON)."""

from __future__ import annotations

from exporter.causes import CAUSES, Finding, Verdict
from exporter.diagnosis import Diagnosis

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


def diagnosis_json(diagnosis: Diagnosis) -> dict[str, object]:
    """The diagnosis as a JSON-able document (``diagnose --format json``)."""
    causes = [
        {"cause": cause.value, "title": CAUSES[cause].title, "alert": CAUSES[cause].alert,
         "runbook": CAUSES[cause].runbook_path, "fix": list(diagnosis.fix(cause))}
        for cause in sorted(diagnosis.causes)
    ]  # fmt: skip
    return {
        "healthy": diagnosis.healthy,
        "causes": causes,
        "gateway_errors": list(diagnosis.gateway_errors),
        "findings": [finding_json(f) for f in diagnosis.findings],
    }


def _finding_lines(finding: Finding, color: bool) -> list[str]:
    mark = _paint(f"[{_MARKS[finding.verdict]}]", _COLORS[finding.verdict], color)
    lines = [f"{mark} {finding.title}", *(f"       {item}" for item in finding.evidence)]
    if finding.verdict in (Verdict.FAIL, Verdict.WARN):
        if finding.cause:
            lines.append(f"       cause: {finding.cause.value}")
        lines.extend(f"       fix:   {command}" for command in finding.fix)
    return lines


def render_text(diagnosis: Diagnosis, color: bool = False) -> str:
    """Each step, its evidence, the verdict and the fix; then the causes found."""
    lines = [line for finding in diagnosis.findings for line in _finding_lines(finding, color)]
    lines.append("")
    if diagnosis.healthy:
        lines.append(_paint("Verdict: no cause of 502/504 found.", "32;1", color))
        return "\n".join(lines)
    if diagnosis.causes:
        lines.append(_paint(f"Verdict: {len(diagnosis.causes)} cause(s) of 502/504 found:", "31;1", color))
        for cause in sorted(diagnosis.causes):
            spec = CAUSES[cause]
            lines.append(f"  {cause.value}: {spec.title} (runbook: {spec.runbook_path})")
            lines.extend(f"      {command}" for command in diagnosis.fix(cause))
    if diagnosis.gateway_errors:
        lines.append("Gateway errors seen: " + "; ".join(diagnosis.gateway_errors))
    return "\n".join(lines)


def _paint(text: str, code: str, color: bool) -> str:
    return f"\033[{code}m{text}\033[0m" if color else text
