"""The diagnosis for a person at a browser: the exporter's landing page ``/``.

A pure function of the last round's :class:`~exporter.diagnosis.Diagnosis` and when that round ran:
the causes first (happening now, then those for the next reload or restart), each with its title,
runbook and fix, then every runbook step with its verdict, evidence and fix. The page reloads itself
every few seconds but never starts a round: it shows what the last scrape of ``/metrics`` found.
Every value is HTML-escaped (evidence can quote log lines).
"""

from __future__ import annotations

import time
from html import escape

from exporter.causes import CAUSES, Cause, Finding, Verdict
from exporter.diagnosis import Diagnosis

REFRESH_SECONDS = 10
STALE_AFTER_SECONDS = 180.0
"""A round older than this is flagged: is anything still scraping ``/metrics``?"""

_VERDICT_LABELS = {Verdict.OK: "ok", Verdict.WARN: "warn", Verdict.FAIL: "FAIL", Verdict.SKIP: "skip"}

_STYLE = """
:root { color-scheme: light; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif; color: #1d2330;
  background: #f4f5f7; margin: 0; }
main { max-width: 1180px; margin: 0 auto; padding: 20px 28px 40px; }
header { display: flex; flex-wrap: wrap; align-items: baseline; gap: 6px 18px; }
header h1 { font-size: 20px; margin: 0; }
header nav a { margin-right: 12px; }
a { color: #1f5fbf; }
.watching { color: #5a6270; font-size: 13px; margin: 4px 0 16px; overflow-wrap: anywhere; }
.verdict { border-radius: 8px; padding: 14px 18px; margin-bottom: 18px; color: #fff; }
.verdict h2 { margin: 0 0 4px; font-size: 22px; }
.verdict p { margin: 0; opacity: .95; }
.verdict-healthy { background: #1e7b3c; }
.verdict-now { background: #b3261e; }
.verdict-latent { background: #a55b00; }
.verdict-none { background: #4b5563; }
.stale { background: #fff4ce; border: 1px solid #e0c060; border-radius: 6px; padding: 8px 12px;
  margin: 0 0 16px; }
h3 { font-size: 17px; margin: 22px 0 8px; }
.cause { background: #fff; border: 1px solid #d9dce1; border-left: 6px solid #b3261e; border-radius: 6px;
  padding: 10px 14px; margin-bottom: 10px; }
.cause.latent { border-left-color: #d98200; }
.cause h4 { margin: 0 0 2px; font-size: 16px; }
.meta { color: #5a6270; font-size: 13px; margin: 0 0 6px; }
code { font: 13px/1.4 ui-monospace, "DejaVu Sans Mono", monospace; }
p.label { margin: 8px 0 0; font-size: 12px; font-weight: 700; color: #5a6270; text-transform: uppercase;
  letter-spacing: .04em; }
pre.fix { background: #1d2330; color: #e8eaed; border-radius: 5px; padding: 8px 12px; margin: 3px 0 0;
  white-space: pre-wrap; overflow-wrap: anywhere; font: 13px/1.5 ui-monospace, "DejaVu Sans Mono", monospace; }
ul.evidence { margin: 2px 0; padding-left: 18px; }
ul.evidence li { overflow-wrap: anywhere; white-space: pre-wrap; font-size: 13px; }
table { width: 100%; border-collapse: collapse; background: #fff; border: 1px solid #d9dce1; }
th, td { text-align: left; vertical-align: top; padding: 7px 10px; border-bottom: 1px solid #e6e8eb; }
th { background: #eceef1; font-size: 13px; }
td.mark { width: 54px; }
.pill { display: inline-block; min-width: 38px; text-align: center; border-radius: 10px; padding: 1px 6px;
  font-size: 12px; font-weight: 700; color: #fff; }
.pill-ok { background: #1e7b3c; } .pill-warn { background: #c07000; }
.pill-fail { background: #b3261e; } .pill-skip { background: #8a919c; }
tr.row-fail td { background: #fdf0ef; } tr.row-warn td { background: #fff8ea; }
tr.row-skip td { color: #5a6270; }
footer { color: #5a6270; font-size: 12px; margin-top: 22px; }
"""


def render_html(
    diagnosis: Diagnosis | None,
    round_at: float | None,
    now: float,
    *,
    version: str,
    watching: str,
    refresh_seconds: int = REFRESH_SECONDS,
) -> str:
    """The landing page for the last round (``None``: no round has run yet).

    ``round_at`` and ``now`` are Unix times: when the round finished, and when the page is made.
    """
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="refresh" content="{int(refresh_seconds)}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_title(diagnosis)} · badgateway-exporter</title>",
        f"<style>{_STYLE}</style></head><body><main>",
        _header(version, watching),
    ]
    if diagnosis is None or round_at is None:
        parts.append(_no_round(refresh_seconds))
    else:
        parts += [
            _verdict(diagnosis, round_at, now, refresh_seconds),
            _stale(round_at, now),
            _causes_now(diagnosis),
            _latent(diagnosis),
            _gateway_errors(diagnosis),
            _steps(diagnosis.findings),
        ]
    parts.append(
        "<footer>The same verdict as <code>badgateway-exporter diagnose</code> and "
        '<code>badgateway_cause</code> on <a href="metrics">/metrics</a>.</footer>'
    )
    parts.append("</main></body></html>\n")
    return "\n".join(part for part in parts if part)


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _title(diagnosis: Diagnosis | None) -> str:
    if diagnosis is None:
        return "no round yet"
    if diagnosis.now or diagnosis.gateway_errors or diagnosis.unexplained:
        return "502/504 now"
    if diagnosis.latent or diagnosis.latent_findings:
        return "next reload or restart"
    return "healthy"


def _header(version: str, watching: str) -> str:
    return (
        f"<header><h1>badgateway-exporter {_e(version)}</h1>"
        '<nav><a href="metrics">/metrics</a><a href="-/healthy">/-/healthy</a></nav></header>\n'
        f'<p class="watching">Watching: {_e(watching or "nothing configured")}</p>'
    )


def _no_round(refresh_seconds: int) -> str:
    return (
        '<section class="verdict verdict-none" id="verdict" data-verdict="none">'
        "<h2>No round of checks has run yet</h2>"
        "<p>This page shows the last round a scrape of /metrics ran; it never probes by itself.</p>"
        "</section>\n"
        f'<p>Scrape <a href="metrics">/metrics</a> (or wait for Prometheus to), then this page, which reloads '
        f"every {int(refresh_seconds)} s, shows its verdict.</p>"
    )


def _verdict(diagnosis: Diagnosis, round_at: float, now: float, refresh_seconds: int) -> str:
    if diagnosis.now:
        count = len(diagnosis.now)
        kind, headline = "now", f"{count} cause{'' if count == 1 else 's'} of 502/504 happening now"
    elif diagnosis.gateway_errors or diagnosis.unexplained:
        kind, headline = "now", "nginx answers 502/504 and no cause explains it: unexplained"
    elif diagnosis.latent or diagnosis.latent_findings:
        kind, headline = "latent", "Nothing answers 502/504 now, but the next reload or restart will"
    else:
        kind, headline = "healthy", "No cause of 502/504 found"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(round_at))
    return (
        f'<section class="verdict verdict-{kind}" id="verdict" data-verdict="{kind}">'
        f"<h2>{_e(headline)}</h2>"
        f'<p>Last round: <time datetime="{_e(_iso(round_at))}">{_e(stamp)}</time>, '
        f'<span id="age">{_e(_age(now - round_at))}</span>. '
        f"This page reloads every {int(refresh_seconds)} s and shows the last round a scrape of /metrics ran.</p>"
        "</section>"
    )


def _stale(round_at: float, now: float) -> str:
    if now - round_at <= STALE_AFTER_SECONDS:
        return ""
    return (
        f'<p class="stale">This round is {_e(_age(now - round_at))}: nothing has scraped '
        '<a href="metrics">/metrics</a> since. Is Prometheus still scraping this exporter?</p>'
    )


def _iso(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds} s ago"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s ago"
    if seconds < 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min ago"
    return f"{seconds // 86400} d {seconds % 86400 // 3600} h ago"


def _fix(commands: tuple[str, ...]) -> str:
    if not commands:
        return ""
    lines = "\n".join(_e(command) for command in commands)
    return f'<p class="label">Fix:</p><pre class="fix">{lines}</pre>'


def _cause(diagnosis: Diagnosis, cause: Cause, latent: bool) -> str:
    spec = CAUSES[cause]
    return (
        f'<article class="cause{" latent" if latent else ""}" data-cause="{_e(cause.value)}">'
        f"<h4>{_e(spec.title)}</h4>"
        f'<p class="meta"><code>{_e(cause.value)}</code> · alert {_e(spec.alert)} · '
        f"{'then nginx answers' if latent else 'nginx answers'} {_e(spec.status_code)} · "
        f"runbook <code>{_e(spec.runbook_path)}</code></p>"
        f"{_fix(diagnosis.fix(cause))}</article>"
    )


def _causes_now(diagnosis: Diagnosis) -> str:
    if not diagnosis.now:
        return ""
    cards = "\n".join(_cause(diagnosis, cause, latent=False) for cause in sorted(diagnosis.now))
    return f'<section id="now"><h3>Happening now</h3>\n{cards}</section>'


def _latent(diagnosis: Diagnosis) -> str:
    found = sorted(diagnosis.latent)
    warnings = diagnosis.latent_findings
    if not found and not warnings:
        return ""
    cards = [_cause(diagnosis, cause, latent=True) for cause in found]
    cards += [
        f'<article class="cause latent" data-step="{_e(finding.step)}"><h4>{_e(finding.title)}</h4>'
        f"{_evidence(finding.evidence)}{_fix(finding.fix)}</article>"
        for finding in warnings
    ]
    body = "\n".join(cards)
    return f'<section id="latent"><h3>On the next reload, restart or reboot</h3>\n{body}</section>'


def _gateway_errors(diagnosis: Diagnosis) -> str:
    if not diagnosis.gateway_errors and not diagnosis.unexplained:
        return ""
    unexplained = [f"unexplained: {e.count} x {e.key.kind}" + (f" ({e.key.where})" if e.key.where else "")
                   + f", the last: {e.line}" for e in diagnosis.unexplained]  # fmt: skip
    items = "".join(f"<li>{_e(error)}</li>" for error in (*diagnosis.gateway_errors, *unexplained))
    return f'<section id="gateway-errors"><h3>Gateway errors seen</h3><ul class="evidence">{items}</ul></section>'


def _evidence(evidence: tuple[str, ...]) -> str:
    if not evidence:
        return ""
    return '<ul class="evidence">' + "".join(f"<li>{_e(item)}</li>" for item in evidence) + "</ul>"


def _step_row(finding: Finding) -> str:
    verdict = finding.verdict.value
    cause = ""
    if finding.cause is not None and finding.verdict in (Verdict.FAIL, Verdict.WARN):
        cause = f'<p class="meta">cause: <code>{_e(finding.cause.value)}</code></p>'
    fix = _fix(finding.fix) if finding.verdict in (Verdict.FAIL, Verdict.WARN) else ""
    return (
        f'<tr class="row-{verdict}" data-step="{_e(finding.step)}" data-verdict="{verdict}">'
        f'<td class="mark"><span class="pill pill-{verdict}">{_VERDICT_LABELS[finding.verdict]}</span></td>'
        f"<td><strong>{_e(finding.title)}</strong>{_evidence(finding.evidence)}{cause}{fix}</td></tr>"
    )


def _steps(findings: tuple[Finding, ...]) -> str:
    rows = "\n".join(_step_row(finding) for finding in findings)
    counts = ", ".join(
        f"{sum(f.verdict is verdict for f in findings)} {_VERDICT_LABELS[verdict]}"
        for verdict in (Verdict.FAIL, Verdict.WARN, Verdict.OK, Verdict.SKIP)
        if any(f.verdict is verdict for f in findings)
    )
    return (
        f'<section id="steps"><h3>Every runbook step ({len(findings)}{": " + counts if counts else ""})</h3>'
        "<table><thead><tr><th>verdict</th><th>step, evidence and fix</th></tr></thead>"
        f"<tbody>\n{rows}\n</tbody></table></section>"
    )
