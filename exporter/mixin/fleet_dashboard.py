"""The fleet dashboard (uid ``badgateway-fleet``): which host has which cause and since when, the hosts
with the most gateway errors and the top upstream error kinds across the fleet, each host linking to
the per-host overview.

A host is identified by the rules' ``identity_labels`` (default ``instance``; ``cluster,instance`` …
in a fleet seen through remote write, federation, Thanos or Mimir): every aggregation keeps them and
each becomes a multi-value variable, so the same instance name in two clusters is two rows.
"""

from __future__ import annotations

from typing import Any

from exporter.mixin import recording
from exporter.mixin.panels import (
    CAUSE_STEPS,
    DATASOURCE,
    GREEN,
    JSON,
    OK_CAUSE,
    OVERVIEW_UID,
    RED,
    SCHEMA_VERSION,
    YELLOW,
    Grid,
    Panel,
    Row,
    Target,
    bargauge,
    stat,
    state_timeline,
    steps,
)
from exporter.mixin.settings import Settings

FLEET_UID = "badgateway-fleet"
FLEET_FILE = "badgateway-fleet.json"
HOSTS_CAUSES_TITLE = "Hosts and their causes now"
TOP_HOSTS_TITLE = "Hosts with the most gateway errors"
TOP_KINDS_TITLE = "Top upstream error kinds across the fleet"
EXPORTERS_DOWN_TITLE = "Hosts whose exporter is down"
CAUSES_OVER_TIME_TITLE = "Causes per host over time"
INCIDENT_ONLY = (HOSTS_CAUSES_TITLE, TOP_KINDS_TITLE, EXPORTERS_DOWN_TITLE, CAUSES_OVER_TIME_TITLE)
"""Panels without data on a healthy fleet by design (no cause, no upstream error, every exporter up)."""

_OVERVIEW = f"/d/{OVERVIEW_UID}/?${{datasource:queryparam}}"


def _filters(s: Settings) -> str:
    return ", ".join(f'{label}=~"${label}"' for label in s.identity)


def _legend(s: Settings) -> str:
    return " ".join(f"{{{{{label}}}}}" for label in s.identity)


def _host_link(field_ref: str) -> JSON:
    """A data link to the per-host overview of the host in ``field_ref`` (``__data.fields`` or ``__field.labels``)."""
    return {
        "title": f"Overview of ${{{field_ref}.instance}}",
        "url": f"{_OVERVIEW}&var-instance=${{{field_ref}.instance}}",
        "targetBlank": False,
    }


def _link_override(field: str, link: JSON) -> JSON:
    return {"matcher": {"id": "byName", "options": field}, "properties": [{"id": "links", "value": [link]}]}


def _frame_links(link: JSON) -> JSON:
    return {
        "matcher": {"id": "byFrameRefID", "options": "A"},
        "properties": [{"id": "links", "value": [link]}],
    }


def _hosts_causes(s: Settings) -> Panel:
    ids, f = s.scope.by, _filters(s)
    columns = [*s.identity, "cause", "since"]
    return Panel(
        "table",
        HOSTS_CAUSES_TITLE,
        [
            Target(f"max by ({ids}, cause) (badgateway_cause{{{f}}} == 1)", table=True),
            Target(f'max by ({ids}, cause) (ALERTS_FOR_STATE{{category="cause", {f}}}) * 1000', table=True),
        ],
        24,
        8,
        description=(
            "One line per host and cause the exporters find right now (`badgateway_cause == 1`), with"
            " since when the cause alert has held (`ALERTS_FOR_STATE`, where the rules are evaluated; empty"
            " until the rules see it). The instance links to that host's overview. Empty on a healthy fleet."
        ),
        custom={"align": "auto", "cellOptions": {"type": "auto"}, "filterable": True, "inspect": False},
        color={"mode": "thresholds"},
        overrides=[
            _link_override("instance", _host_link("__data.fields")),
            {
                "matcher": {"id": "byName", "options": "since"},
                "properties": [{"id": "unit", "value": "dateTimeAsIso"}],
            },
        ],
        transformations=[
            {"id": "merge", "options": {}},
            {
                "id": "organize",
                "options": {
                    "excludeByName": {"Time": True, "Value #A": True},
                    "indexByName": {name: i for i, name in enumerate(columns)},
                    "renameByName": {"Value #B": "since"},
                },
            },
        ],
        options={
            "cellHeight": "sm",
            "footer": {"show": False, "reducer": ["sum"], "countRows": False, "fields": ""},
            "showHeader": True,
            "sortBy": [{"displayName": "since", "desc": False}],
        },
    )


def _stats(s: Settings) -> list[Panel]:
    ids, f = s.scope.by, _filters(s)
    rate = recording.upstream_errors_rate(s)
    return [
        stat("Hosts", [Target(f"count(group by ({ids}) (badgateway_build_info{{{f}}}))", "hosts")], 6,
             description="Hosts whose exporter's series reach this Prometheus.", thresholds=steps((GREEN, None))),
        stat("Hosts with a cause", [Target(f"count(group by ({ids}) (badgateway_cause{{{f}}} == 1)) or vector(0)", "hosts")], 6,
             description="Hosts where the diagnosis names a cause of 502/504 right now.", thresholds=CAUSE_STEPS),
        stat("Exporters down", [Target(f'count(group by ({ids}) (up{{job=~"$exporter_job", {f}}} == 0)) or vector(0)', "down")], 6,
             description="Hosts whose exporter Prometheus cannot scrape: every cause there is unseen.",
             thresholds=steps((GREEN, None), (YELLOW, 1))),
        stat("Gateway errors across the fleet", [Target(f"sum({rate}{{{f}}}) or vector(0)", "errors/s")], 6,
             description=f"nginx upstream errors per second over {s.error_rate_window}, all selected hosts together.",
             unit="reqps", thresholds=steps((GREEN, None), (RED, s.gateway_error_rate))),
    ]  # fmt: skip


def _rankings(s: Settings) -> list[Panel]:
    ids, f = s.scope.by, _filters(s)
    rate, by_kind = recording.upstream_errors_rate(s), recording.upstream_errors_rate_by_kind(s)
    zero = f"0 * group by ({ids}) (badgateway_build_info{{{f}}})"
    hosts = bargauge(
        TOP_HOSTS_TITLE,
        [Target(f"topk(10, sum by ({ids}) ({rate}{{{f}}}) or on ({ids}) ({zero}))", _legend(s))],
        12,
        9,
        description=(
            f"The ten hosts with the most nginx upstream errors per second over {s.error_rate_window}"
            " (0 for a host without any). A bar links to that host's overview."
        ),
        unit="reqps",
        thresholds=steps((GREEN, None), (RED, s.gateway_error_rate)),
        min_value=0,
    )
    hosts.overrides = [_frame_links(_host_link("__field.labels"))]
    kinds = bargauge(
        TOP_KINDS_TITLE,
        [Target(f"topk(10, sum by (kind) ({by_kind}{{{f}}}) > 0)", "{{kind}}")],
        12,
        9,
        description=(
            "The upstream error kinds nginx logs most across the selected hosts (per second over"
            f" {s.error_rate_window}): connect_refused, socket_missing, read_timeout, … A bar opens the"
            " overview of every host. Empty while no host logs upstream errors."
        ),
        unit="reqps",
        thresholds=steps((YELLOW, None)),
        min_value=0,
    )
    kinds.overrides = [
        _frame_links({"title": "Overview of every host", "url": f"{_OVERVIEW}&var-instance=$__all"})
    ]
    return [hosts, kinds]


def _timeline_and_down(s: Settings) -> list[Panel]:
    ids, f = s.scope.by, _filters(s)
    timeline = state_timeline(
        CAUSES_OVER_TIME_TITLE,
        [Target(f"max by ({ids}, cause) (badgateway_cause{{{f}}} == 1)", f"{_legend(s)} {{{{cause}}}}")],
        16,
        8,
        description="Since when each host has had each cause (only host and cause pairs that had one).",
        mappings=OK_CAUSE,
        thresholds=CAUSE_STEPS,
    )
    down = Panel(
        "table",
        EXPORTERS_DOWN_TITLE,
        [Target(f'max by ({ids}) (up{{job=~"$exporter_job", {f}}} == 0)', table=True)],
        8,
        8,
        description="Hosts whose exporter is down (`up == 0`): their causes are not seen. Empty when all are up.",
        custom={"align": "auto", "cellOptions": {"type": "auto"}, "filterable": True, "inspect": False},
        color={"mode": "thresholds"},
        overrides=[_link_override("instance", _host_link("__data.fields"))],
        transformations=[
            {
                "id": "organize",
                "options": {
                    "excludeByName": {"Time": True, "Value": True},
                    "indexByName": {n: i for i, n in enumerate(s.identity)},
                    "renameByName": {},
                },
            }
        ],
        options={
            "cellHeight": "sm",
            "showHeader": True,
            "footer": {"show": False, "reducer": ["sum"], "fields": ""},
        },
    )
    return [timeline, down]


def _variables(s: Settings) -> list[JSON]:
    found: list[JSON] = [
        {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus", "current": {},
         "hide": 0, "includeAll": False, "multi": False, "options": [], "refresh": 1, "regex": "", "skipUrlSync": False},
    ]  # fmt: skip
    for label in s.identity:
        query = f"label_values(badgateway_build_info, {label})"
        found.append(
            {"name": label, "label": label.capitalize(), "type": "query", "datasource": DATASOURCE,
             "definition": query, "query": {"qryType": 1, "query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
             "current": {}, "hide": 0, "includeAll": True, "allValue": ".+", "multi": True, "options": [],
             "refresh": 2, "regex": "", "sort": 1, "skipUrlSync": False}
        )  # fmt: skip
    job = s.exporter_job
    found.append(
        {"name": "exporter_job", "label": "Exporter job", "type": "textbox", "hide": 2, "skipUrlSync": False,
         "description": "job regex of the exporter's scrape config (the rules' exporter_job setting)",
         "query": job, "current": {"text": job, "value": job}, "options": [{"selected": True, "text": job, "value": job}]}
    )  # fmt: skip
    return found


def fleet(settings: Settings | None = None) -> JSON:
    """The fleet dashboard."""
    s = settings or Settings()
    grid = Grid()
    grid.row(Row("Fleet now: which host has which cause, since when", [*_stats(s), _hosts_causes(s)]))
    grid.row(Row("Where the gateway errors are", [*_rankings(s), *_timeline_and_down(s)]))
    kinds = sorted({p["type"] for p in grid.panels} - {"row"})
    requires: list[dict[str, Any]] = [
        {"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.0.0"},
        {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
        *({"type": "panel", "id": kind, "name": kind, "version": ""} for kind in kinds),
    ]
    return {
        "__requires": requires,
        "annotations": {"list": []},
        "description": (
            "Every host of the fleet: which cause of 502/504 where, since when, the hosts with the most gateway"
            " errors; each host links to its overview. Generated by exporter/mixin/; do not edit by hand."
        ),
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": [
            {
                "title": "Per-host overview",
                "type": "link",
                "icon": "dashboard",
                "url": _OVERVIEW,
                "targetBlank": False,
                "asDropdown": False,
                "includeVars": False,
                "keepTime": True,
                "tags": [],
                "tooltip": "The overview dashboard of badgateway-exporter",
            }
        ],
        "panels": grid.panels,
        "refresh": "30s",
        "schemaVersion": SCHEMA_VERSION,
        "tags": ["badgateway", "nginx", "php-fpm", "fleet"],
        "templating": {"list": _variables(s)},
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "title": "Bad Gateway: fleet",
        "uid": FLEET_UID,
        "version": 1,
        "weekStart": "",
    }
