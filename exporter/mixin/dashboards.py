"""Grafana dashboards, generated from :mod:`exporter.causes` and the :class:`~exporter.mixin.settings.Settings`
that render the alert rules.

``badgateway-exporter dashboards render`` writes ``grafana/dashboards/badgateway-overview.json`` and the
fleet dashboard ``badgateway-fleet.json`` (:mod:`~exporter.mixin.fleet_dashboard`). The
cause stats and the table of what ``diagnose`` says (one stat per spec of
:data:`exporter.causes.SPECS`, with its runbook), the recording-rule names (which carry
``error_rate_window``), the front/backend target regexes, the exporter job and the runbook base URL
come from the same specs and settings as the alert rules, so the dashboards cannot drift from the
rules. Do not edit the JSON by hand::

    badgateway-exporter dashboards render --out grafana/dashboards
    badgateway-exporter dashboards check  --out grafana/dashboards   # exit 1 when the JSON is stale

The JSON targets Grafana 10/11 (``schemaVersion`` 39): a ``datasource`` variable (type
``prometheus``) and no datasource uid anywhere, a multi-value ``instance`` variable so one dashboard
serves a fleet, a stable dashboard ``uid``.
"""

from __future__ import annotations

import json

from exporter.mixin.fleet_dashboard import FLEET_FILE, fleet
from exporter.mixin.panels import (
    DATASOURCE,
    INST,
    JSON,
    ORANGE,
    OVERVIEW_FILE,
    OVERVIEW_UID,
    RED,
    SCHEMA_VERSION,
    YELLOW,
    Grid,
)
from exporter.mixin.rows import ROWS
from exporter.mixin.settings import Settings


def _annotations() -> JSON:
    return {
        "list": [
            {
                "builtIn": 1,
                "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                "enable": True,
                "hide": True,
                "iconColor": "rgba(0, 211, 255, 1)",
                "name": "Annotations & Alerts",
                "type": "dashboard",
            },
            {
                "datasource": DATASOURCE,
                "enable": True,
                "expr": f'ALERTS{{alertstate="firing", category="cause", {INST}}}',
                "iconColor": RED,
                "name": "Cause alerts",
                "step": "1m",
                "tagKeys": "instance,cause,severity",
                "titleFormat": "{{alertname}}",
                "textFormat": "{{instance}}: {{cause}} ({{severity}})",
                "useValueForTime": False,
            },
            {
                "datasource": DATASOURCE,
                "enable": True,
                "expr": f'ALERTS{{alertstate="firing", category="symptom", {INST}}}',
                "iconColor": ORANGE,
                "name": "Gateway errors without a known cause",
                "step": "1m",
                "tagKeys": "instance,severity",
                "titleFormat": "{{alertname}}",
                "textFormat": "{{instance}}: nginx answers 502/504 and no cause alert explains it",
                "useValueForTime": False,
            },
            {
                "datasource": DATASOURCE,
                "enable": False,
                "expr": f'ALERTS{{alertstate="firing", category=~"warning|exporter", {INST}}}',
                "iconColor": YELLOW,
                "name": "Warnings",
                "step": "1m",
                "tagKeys": "instance,category",
                "titleFormat": "{{alertname}}",
                "textFormat": "{{instance}}",
                "useValueForTime": False,
            },
        ]
    }


def _templating(s: Settings) -> JSON:
    instance_query = "label_values(badgateway_build_info, instance)"
    return {
        "list": [
            {
                "name": "datasource",
                "label": "Data source",
                "type": "datasource",
                "query": "prometheus",
                "current": {},
                "hide": 0,
                "includeAll": False,
                "multi": False,
                "options": [],
                "refresh": 1,
                "regex": "",
                "skipUrlSync": False,
            },
            {
                "name": "instance",
                "label": "Instance",
                "type": "query",
                "datasource": DATASOURCE,
                "definition": instance_query,
                "query": {
                    "qryType": 1,
                    "query": instance_query,
                    "refId": "PrometheusVariableQueryEditor-VariableQuery",
                },
                "current": {},
                "hide": 0,
                "includeAll": True,
                "allValue": ".+",
                "multi": True,
                "options": [],
                "refresh": 2,
                "regex": "",
                "sort": 1,
                "skipUrlSync": False,
            },
            {
                "name": "exporter_job",
                "label": "Exporter job",
                "description": "job regex of the exporter's scrape config (the rules' exporter_job setting)",
                "type": "textbox",
                "query": s.exporter_job,
                "current": {"text": s.exporter_job, "value": s.exporter_job},
                "options": [{"selected": True, "text": s.exporter_job, "value": s.exporter_job}],
                "hide": 2,
                "skipUrlSync": False,
            },
            {
                "name": "runbook_base",
                "label": "Runbook base URL",
                "description": "where docs/runbooks/ is published (the rules' runbook_base_url setting)",
                "type": "textbox",
                "query": s.runbook_base,
                "current": {"text": s.runbook_base, "value": s.runbook_base},
                "options": [
                    {
                        "selected": True,
                        "text": s.runbook_base,
                        "value": s.runbook_base,
                    }
                ],
                "hide": 2,
                "skipUrlSync": False,
            },
        ]
    }


def overview(settings: Settings | None = None) -> JSON:
    """The overview dashboard: causes at a glance, then the evidence row by row."""
    s = settings or Settings()
    grid = Grid()
    for row in ROWS:
        grid.row(row(s))
    kinds = sorted({p["type"] for p in grid.panels} - {"row"})
    return {
        "__requires": [
            {"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.0.0"},
            {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
            *({"type": "panel", "id": kind, "name": kind, "version": ""} for kind in kinds),
        ],
        "annotations": _annotations(),
        "description": (
            "Why nginx answers 502/504: the cause found by badgateway-exporter, since when, and the evidence."
            " Generated by exporter/mixin/; do not edit by hand."
        ),
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": [
            {
                "title": "Runbooks",
                "type": "link",
                "icon": "doc",
                "url": "${runbook_base}/",
                "targetBlank": True,
                "asDropdown": False,
                "includeVars": False,
                "keepTime": False,
                "tags": [],
                "tooltip": "Runbooks of the alerts (docs/runbooks/)",
            }
        ],
        "panels": grid.panels,
        "refresh": "30s",
        "schemaVersion": SCHEMA_VERSION,
        "tags": ["badgateway", "nginx", "php-fpm"],
        "templating": _templating(s),
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "title": "Bad Gateway: overview",
        "uid": OVERVIEW_UID,
        "version": 1,
        "weekStart": "",
    }


def render(settings: Settings | None = None) -> dict[str, str]:
    """File name -> JSON text of every dashboard: the per-host overview and the fleet."""
    documents = {OVERVIEW_FILE: overview(settings), FLEET_FILE: fleet(settings)}
    return {name: json.dumps(doc, indent=2, ensure_ascii=False) + "\n" for name, doc in documents.items()}
