"""The runbook index ``docs/runbooks/README.md``: every alert with its cause, severity, ``for:``, title
and its runbooks in English and Russian, from the same specs and alert table as the rules.
"""

from __future__ import annotations

import posixpath

from exporter.causes import SPECS
from exporter.mixin.alerts import AlertSpec, alert_specs, scaled_for
from exporter.mixin.settings import Settings, format_duration, header

INDEX_FILE = "README.md"
RUNBOOKS_DIR = "docs/runbooks"


def runbook_links(alert: str) -> tuple[str, str]:
    """The English and Russian runbook of ``alert``, relative to :data:`RUNBOOKS_DIR`."""
    spec = next((s for s in SPECS if s.alert == alert), None)
    if spec is None:
        return f"{alert}.md", f"ru/{alert}.md"
    en, ru = spec.runbooks
    return posixpath.relpath(en, RUNBOOKS_DIR), posixpath.relpath(ru, RUNBOOKS_DIR)


def _row(alert: AlertSpec, settings: Settings, *cells: str) -> str:
    for_seconds = scaled_for(alert, settings)
    en, ru = runbook_links(alert.name)
    columns = [
        alert.name,
        *cells,
        alert.severity,
        format_duration(for_seconds) if round(for_seconds) > 0 else "—",
        alert.title,
        f"[en]({en}) · [ru]({ru})",
    ]
    return "| " + " | ".join(columns) + " |"


def index(settings: Settings) -> str:
    """The text of ``docs/runbooks/README.md``."""
    alerts = alert_specs(settings)
    status = {spec.alert: spec.status_code for spec in SPECS}
    lines = [
        *(f"<!-- {line.removeprefix('# ')} -->" for line in header("rules", settings)),
        "",
        "# Runbooks",
        "",
        "One runbook per alert of `rules/badgateway.rules.yml`, in English and in Russian (`ru/`).",
        "`runbook_url` and `runbook_url_ru` of each alert point at these files under the rules'",
        "`runbook_base_url`. `sudo badgateway-exporter diagnose` names the same causes; each cause",
        "alert's description carries the fix it prints.",
        "",
        "## Causes of a 502/504",
        "",
        "| Alert | cause | nginx answers | severity | for | what is wrong | runbook |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *(_row(a, settings, f"`{a.cause}`", str(status[a.name])) for a in alerts if a.category == "cause"),
        "",
        "## The symptom, the warnings and the exporter's health",
        "",
        "| Alert | category | cause | severity | for | what is wrong | runbook |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *(_row(a, settings, a.category, f"`{a.cause}`") for a in alerts if a.category != "cause"),
        "",
    ]
    return "\n".join(lines)


def render(settings: Settings) -> dict[str, str]:
    """File name -> text of what ``rules render`` writes into the runbooks folder."""
    return {INDEX_FILE: index(settings)}
