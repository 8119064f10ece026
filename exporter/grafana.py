"""Grafana dashboards, generated from :mod:`exporter.causes` and the rule settings of :mod:`exporter.rules`.

``badgateway-exporter dashboards render`` writes ``grafana/dashboards/badgateway-overview.json``. The cause
stats (one per entry of :data:`exporter.causes.CAUSES`, with its runbook), the recording-rule names
(which carry ``error_rate_window``), the front/backend target regexes, the exporter job and the
runbook base URL come from the same table and :class:`exporter.rules.Settings` that render the
alert rules, so the dashboards cannot drift from the rules. Do not edit the JSON by hand::

    badgateway-exporter dashboards render --out grafana/dashboards
    badgateway-exporter dashboards check  --out grafana/dashboards   # exit 1 when the JSON is stale

The JSON targets Grafana 10/11 (``schemaVersion`` 39): a ``datasource`` variable (type
``prometheus``) and no datasource uid anywhere, a multi-value ``instance`` variable so one dashboard
serves a fleet, a stable dashboard ``uid``.
"""

from __future__ import annotations

import argparse
import json
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exporter.causes import CAUSES
from exporter.rules import RulesError, Settings, settings_from_args, stale_files, write_files

JSON = dict[str, Any]

SCHEMA_VERSION = 39
GRID_WIDTH = 24
OVERVIEW_UID = "badgateway-overview"
OVERVIEW_FILE = "badgateway-overview.json"
DASHBOARDS_DIR = "grafana/dashboards"

DATASOURCE: JSON = {"type": "prometheus", "uid": "${datasource}"}
INST = 'instance=~"$instance"'
JOB = 'job=~"$exporter_job"'
# Kinds of nginx upstream errors for which nginx answers 504 (a timeout); every other kind is a 502.
TIMEOUT_KINDS = "connect_timeout|read_timeout"

PANEL_TYPES = frozenset({"row", "stat", "timeseries", "state-timeline", "bargauge", "gauge", "table"})

GREEN = "green"
RED = "red"
ORANGE = "orange"
YELLOW = "yellow"
BLUE = "blue"


def _steps(*steps: tuple[str, float | None]) -> JSON:
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for c, v in steps]}


def _mapping(values: dict[str, tuple[str, str]]) -> list[JSON]:
    """A Grafana value mapping: raw value -> (text, color)."""
    return [
        {
            "type": "value",
            "options": {
                raw: {"text": text, "color": color, "index": i}
                for i, (raw, (text, color)) in enumerate(values.items())
            },
        }
    ]


OK_CAUSE = _mapping({"0": ("OK", GREEN), "1": ("CAUSE", RED)})
UP_DOWN = _mapping({"0": ("down", RED), "1": ("up", GREEN)})
CAUSE_STEPS = _steps((GREEN, None), (RED, 1))


def or_zero(expr: str) -> str:
    """``expr``, or 0 for each selected instance that has no such series.

    For counters that only get series once something happened (log events, upstream errors): the
    panel then shows 0 per instance on a healthy host instead of "No data", and keeps the
    ``instance`` dimension. ``badgateway_build_info`` exists for every scraped exporter.
    """
    return f"({expr})\nor on (instance)\n(0 * group by (instance) (badgateway_build_info{{{INST}}}))"


@dataclass
class Target:
    expr: str
    legend: str = ""
    instant: bool = False

    def to_json(self, ref_id: str) -> JSON:
        target: JSON = {
            "datasource": DATASOURCE,
            "editorMode": "code",
            "expr": self.expr,
            "legendFormat": self.legend or "__auto",
            "range": not self.instant,
            "instant": self.instant,
            "refId": ref_id,
        }
        return target


@dataclass
class Panel:
    kind: str
    title: str
    targets: list[Target]
    width: int
    height: int
    description: str = ""
    unit: str = ""
    thresholds: JSON | None = None
    mappings: list[JSON] = field(default_factory=list)
    options: JSON = field(default_factory=dict)
    custom: JSON = field(default_factory=dict)
    links: list[JSON] = field(default_factory=list)
    color: JSON | None = None
    min: float | None = None
    max: float | None = None
    overrides: list[JSON] = field(default_factory=list)

    def to_json(self, panel_id: int, x: int, y: int) -> JSON:
        defaults: JSON = {}
        if self.color is not None:
            defaults["color"] = self.color
        elif self.kind in ("stat", "state-timeline", "gauge", "bargauge"):
            defaults["color"] = {"mode": "thresholds"}
        else:
            defaults["color"] = {"mode": "palette-classic"}
        if self.custom:
            defaults["custom"] = self.custom
        defaults["mappings"] = self.mappings
        defaults["thresholds"] = self.thresholds or _steps((GREEN, None))
        if self.unit:
            defaults["unit"] = self.unit
        if self.min is not None:
            defaults["min"] = self.min
        if self.max is not None:
            defaults["max"] = self.max
        panel: JSON = {
            "id": panel_id,
            "type": self.kind,
            "title": self.title,
            "description": self.description,
            "datasource": DATASOURCE,
            "gridPos": {"h": self.height, "w": self.width, "x": x, "y": y},
            "fieldConfig": {"defaults": defaults, "overrides": self.overrides},
            "options": self.options,
            "targets": [t.to_json(chr(ord("A") + i)) for i, t in enumerate(self.targets)],
        }
        if self.links:
            panel["links"] = self.links
        return panel


# ---------------------------------------------------------------- panel kinds


def stat(
    title: str,
    targets: list[Target],
    width: int,
    height: int = 4,
    *,
    description: str = "",
    unit: str = "",
    thresholds: JSON | None = None,
    mappings: list[JSON] | None = None,
    links: list[JSON] | None = None,
    text_mode: str = "value",
    graph: bool = False,
) -> Panel:
    return Panel(
        "stat",
        title,
        targets,
        width,
        height,
        description=description,
        unit=unit,
        thresholds=thresholds,
        mappings=mappings or [],
        links=links or [],
        options={
            "colorMode": "background",
            "graphMode": "area" if graph else "none",
            "justifyMode": "center",
            "orientation": "auto",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "showPercentChange": False,
            "textMode": text_mode,
            "wideLayout": True,
        },
    )


def timeseries(
    title: str,
    targets: list[Target],
    width: int,
    height: int = 8,
    *,
    description: str = "",
    unit: str = "",
    stacked: bool = False,
    bars: bool = False,
    thresholds: JSON | None = None,
    min_value: float | None = None,
    max_value: float | None = None,
    overrides: list[JSON] | None = None,
) -> Panel:
    custom: JSON = {
        "drawStyle": "bars" if bars else "line",
        "lineInterpolation": "stepAfter",
        "lineWidth": 1,
        "fillOpacity": 60 if bars else 10,
        "showPoints": "never",
        "spanNulls": False,
        "stacking": {"mode": "normal" if stacked else "none", "group": "A"},
        "axisPlacement": "auto",
        "thresholdsStyle": {"mode": "dashed" if thresholds else "off"},
    }
    return Panel(
        "timeseries",
        title,
        targets,
        width,
        height,
        description=description,
        unit=unit,
        thresholds=thresholds,
        custom=custom,
        min=min_value,
        max=max_value,
        overrides=overrides or [],
        options={
            "legend": {
                "displayMode": "table",
                "placement": "right",
                "showLegend": True,
                "calcs": ["lastNotNull", "max"],
            },
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    )


def state_timeline(
    title: str,
    targets: list[Target],
    width: int,
    height: int = 8,
    *,
    description: str = "",
    mappings: list[JSON] | None = None,
    thresholds: JSON | None = None,
    unit: str = "",
) -> Panel:
    return Panel(
        "state-timeline",
        title,
        targets,
        width,
        height,
        description=description,
        mappings=mappings or [],
        thresholds=thresholds,
        unit=unit,
        custom={"fillOpacity": 80, "lineWidth": 0},
        options={
            "alignValue": "left",
            "mergeValues": True,
            "rowHeight": 0.9,
            "showValue": "auto",
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": False},
            "tooltip": {"mode": "single", "sort": "none"},
        },
    )


def bargauge(
    title: str,
    targets: list[Target],
    width: int,
    height: int = 8,
    *,
    description: str = "",
    unit: str = "",
    thresholds: JSON | None = None,
    min_value: float | None = None,
    max_value: float | None = None,
) -> Panel:
    return Panel(
        "bargauge",
        title,
        targets,
        width,
        height,
        description=description,
        unit=unit,
        thresholds=thresholds,
        min=min_value,
        max=max_value,
        options={
            "displayMode": "gradient",
            "orientation": "horizontal",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "showUnfilled": True,
            "valueMode": "color",
            "namePlacement": "auto",
            "sizing": "auto",
            "minVizHeight": 16,
            "minVizWidth": 8,
            "maxVizHeight": 300,
        },
    )


# ---------------------------------------------------------------- layout


@dataclass
class Row:
    title: str
    panels: list[Panel]
    description: str = ""


class _Grid:
    """Places panels left to right, wrapping at 24 columns; a row starts a new line."""

    def __init__(self) -> None:
        self.panels: list[JSON] = []
        self.next_id = 1
        self.x = 0
        self.y = 0
        self.line_height = 0

    def _newline(self) -> None:
        self.y += self.line_height
        self.x = 0
        self.line_height = 0

    def row(self, row: Row) -> None:
        self._newline()
        self.panels.append(
            {
                "id": self.next_id,
                "type": "row",
                "title": row.title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": GRID_WIDTH, "x": 0, "y": self.y},
                "panels": [],
            }
        )
        self.next_id += 1
        self.y += 1
        for panel in row.panels:
            self.add(panel)

    def add(self, panel: Panel) -> None:
        if panel.width > GRID_WIDTH:
            raise ValueError(f"panel {panel.title!r} is wider than the grid")
        if self.x + panel.width > GRID_WIDTH:
            self._newline()
        self.panels.append(panel.to_json(self.next_id, self.x, self.y))
        self.next_id += 1
        self.x += panel.width
        self.line_height = max(self.line_height, panel.height)


# ---------------------------------------------------------------- the overview dashboard


def _regex_literal(text: str) -> str:
    return json.dumps(text)


def _cause_row(s: Settings) -> Row:
    w = s.error_rate_window
    by_kind = f"instance_kind_upstream:badgateway_nginx_upstream_errors:rate{w}"
    front = _regex_literal(s.front_target)
    panels: list[Panel] = []
    for info in CAUSES.values():
        panels.append(
            stat(
                info.alert,
                [Target(f'max(badgateway_cause{{{INST}, cause="{info.cause}"}})', info.cause)],
                3,
                description=(
                    f'`badgateway_cause{{cause="{info.cause}"}}`: {info.title} (nginx answers {info.status_code}).'
                    " Red when the diagnosis finds this cause on any selected instance;"
                    f" the alert is {info.alert}. The link opens its runbook."
                ),
                thresholds=CAUSE_STEPS,
                mappings=OK_CAUSE,
                links=[
                    {
                        "title": f"Runbook: {info.alert}",
                        "url": f"${{runbook_base}}/{info.alert}.md",
                        "targetBlank": True,
                    }
                ],
            )
        )
    rate_steps = _steps((GREEN, None), (RED, s.gateway_error_rate))
    panels += [
        stat(
            "Active causes",
            [Target(f"sum(instance:badgateway_causes_active:count{{{INST}}})", "causes")],
            3,
            description="How many causes the diagnosis finds right now, over the selected instances.",
            thresholds=CAUSE_STEPS,
        ),
        stat(
            "502 rate (upstream errors)",
            [Target(f'sum({by_kind}{{{INST}, kind!~"{TIMEOUT_KINDS}"}}) or vector(0)', "502/s")],
            4,
            description=(
                f"nginx error-log upstream failures per second over {w} whose kind makes nginx answer 502"
                f" (every kind but {TIMEOUT_KINDS.replace('|', ', ')}). Red from {s.gateway_error_rate:g}/s,"
                " the NginxGatewayErrors threshold."
            ),
            unit="reqps",
            thresholds=rate_steps,
            graph=True,
        ),
        stat(
            "504 rate (upstream timeouts)",
            [Target(f'sum({by_kind}{{{INST}, kind=~"{TIMEOUT_KINDS}"}}) or vector(0)', "504/s")],
            4,
            description=f"nginx error-log upstream timeouts per second over {w} (nginx answers 504).",
            unit="reqps",
            thresholds=rate_steps,
            graph=True,
        ),
        stat(
            "Front probe status",
            [Target(f"max(badgateway_http_status_code{{{INST}, target=~{front}}})", "front")],
            4,
            description=(
                "HTTP status of the exporter's probe through nginx (worst of the selected instances);"
                " 502/504 is the symptom itself, 0 means no answer."
            ),
            thresholds=_steps((RED, None), (GREEN, 200), (ORANGE, 400), (RED, 500)),
            mappings=_mapping({"0": ("no answer", RED)}),
        ),
        state_timeline(
            "Causes over time",
            [Target(f"max by (cause) (badgateway_cause{{{INST}}})", "{{cause}}")],
            16,
            9,
            description="Since when each cause is found (red), over the selected instances.",
            mappings=OK_CAUSE,
            thresholds=CAUSE_STEPS,
        ),
        bargauge(
            "Active causes per instance",
            [
                Target(
                    f"sum by (instance) (instance:badgateway_causes_active:count{{{INST}}})", "{{instance}}"
                )
            ],
            8,
            9,
            description="Which hosts of the fleet have a cause right now.",
            thresholds=CAUSE_STEPS,
            min_value=0,
        ),
    ]
    return Row("Causes: which, since when, how bad", panels)


def _gateway_row(s: Settings) -> Row:
    w = s.error_rate_window
    by_kind = f"instance_kind_upstream:badgateway_nginx_upstream_errors:rate{w}"
    return Row(
        "Gateway errors (nginx error log)",
        [
            timeseries(
                "Upstream errors by kind",
                [Target(or_zero(f"sum by (instance, kind) ({by_kind}{{{INST}}})"), "{{instance}} {{kind}}")],
                12,
                description=f"Upstream failures per second ({w} rate) by kind; see docs/logs.md for the kinds.",
                unit="reqps",
                stacked=True,
            ),
            timeseries(
                "Upstream errors by upstream",
                [
                    Target(
                        or_zero(f"sum by (instance, upstream) ({by_kind}{{{INST}}})"),
                        "{{instance}} {{upstream}}",
                    )
                ],
                12,
                description=f"Upstream failures per second ({w} rate) by normalised upstream address.",
                unit="reqps",
                stacked=True,
            ),
            timeseries(
                "502 vs 504",
                [
                    Target(
                        or_zero(f'sum by (instance) ({by_kind}{{{INST}, kind!~"{TIMEOUT_KINDS}"}})'),
                        "{{instance}} 502",
                    ),
                    Target(
                        or_zero(f'sum by (instance) ({by_kind}{{{INST}, kind=~"{TIMEOUT_KINDS}"}})'),
                        "{{instance}} 504",
                    ),
                ],
                12,
                description="Upstream failures that nginx answers with 502 (refused, missing socket, reset…) and 504 (timeouts).",
                unit="reqps",
                thresholds=_steps((GREEN, None), (RED, s.gateway_error_rate)),
            ),
            timeseries(
                "PHP-FPM log events",
                [
                    Target(
                        or_zero(
                            "sum by (instance, event) "
                            f"(increase(badgateway_phpfpm_log_events_total{{{INST}}}[$__rate_interval]))"
                        ),
                        "{{instance}} {{event}}",
                    )
                ],
                12,
                description="max_children_reached, child_killed, execution_timeout, busy, bind_error in the PHP-FPM log.",
                unit="short",
                bars=True,
            ),
        ],
    )


UNIT_STATES = ("active", "reloading", "activating", "deactivating", "inactive", "failed")
UNIT_STATE_COLORS = (GREEN, BLUE, YELLOW, ORANGE, RED, RED)


def unit_state_expr() -> str:
    """The one-hot ``badgateway_unit_state`` as one number per unit (1 active … 6 failed)."""
    parts = [
        f'(badgateway_unit_state{{{INST}, state="{state}"}} == 1) * {code}'
        for code, state in enumerate(UNIT_STATES, start=1)
    ]
    return "max by (instance, unit) (\n  " + "\n  or ".join(parts) + "\n)"


def _units_row(s: Settings) -> Row:
    state_mapping = _mapping(
        {
            str(code): (state, color)
            for code, (state, color) in enumerate(zip(UNIT_STATES, UNIT_STATE_COLORS, strict=True), start=1)
        }
    )
    return Row(
        "Units and processes",
        [
            state_timeline(
                "systemd unit states",
                [Target(unit_state_expr(), "{{instance}} {{unit}}")],
                12,
                description="ActiveState of each unit over D-Bus (badgateway_unit_state). Empty on hosts without systemd (containers): see the process view.",
                mappings=state_mapping,
            ),
            state_timeline(
                "Services (process view)",
                [
                    Target(
                        f"max by (instance, service) (badgateway_processes{{{INST}}} > bool 0)",
                        "{{instance}} {{service}}",
                    )
                ],
                12,
                description="Whether processes of nginx, php_fpm and backend exist (works without systemd).",
                mappings=_mapping({"0": ("no processes", RED), "1": ("running", GREEN)}),
                thresholds=_steps((RED, None), (GREEN, 1)),
            ),
            stat(
                "Units not enabled at boot",
                [
                    Target(
                        or_zero(f"count by (instance) (badgateway_unit_enabled{{{INST}}} == 0)"),
                        "{{instance}}",
                    )
                ],
                8,
                description="Units that would stay down after a reboot (UnitNotEnabledAtBoot).",
                thresholds=_steps((GREEN, None), (ORANGE, 1)),
                text_mode="value_and_name",
            ),
            stat(
                "systemd",
                [Target(f"min(badgateway_systemd_available{{{INST}}})", "systemd")],
                8,
                description="Whether systemd answered on the system bus (else the diagnosis uses the process view).",
                mappings=_mapping({"0": ("no (processes)", BLUE), "1": ("yes", GREEN)}),
            ),
            stat(
                "nginx -t",
                [Target(f"min(badgateway_nginx_config_valid{{{INST}}})", "nginx -t")],
                8,
                description="Whether nginx -t accepts the configuration on disk (worst of the selected instances). No data: no verdict (see the exporter row).",
                mappings=_mapping({"0": ("invalid", RED), "1": ("valid", GREEN)}),
                thresholds=_steps((RED, None), (GREEN, 1)),
            ),
            timeseries(
                "Processes per service",
                [
                    Target(
                        f"sum by (instance, service) (badgateway_processes{{{INST}}})",
                        "{{instance}} {{service}}",
                    )
                ],
                12,
                unit="short",
                min_value=0,
            ),
            timeseries(
                "Unit restarts (systemd)",
                [
                    Target(
                        f"sum by (instance, unit) (increase(badgateway_unit_restarts_total{{{INST}}}[$__rate_interval]))",
                        "{{instance}} {{unit}}",
                    )
                ],
                12,
                description="Automatic restarts by Restart= (NRestarts). A crash loop shows here.",
                unit="short",
                bars=True,
            ),
        ],
    )


def _php_fpm_row(s: Settings) -> Row:
    pool = "instance, socket, pool"
    return Row(
        "PHP-FPM",
        [
            timeseries(
                "FastCGI probe latency",
                [
                    Target(
                        f"max by (instance, socket) (badgateway_fastcgi_probe_duration_seconds{{{INST}}})",
                        "{{instance}} {{socket}}",
                    )
                ],
                8,
                unit="s",
                min_value=0,
            ),
            state_timeline(
                "FastCGI probe",
                [
                    Target(
                        f"min by (instance, socket) (badgateway_fastcgi_up{{{INST}}})",
                        "{{instance}} {{socket}}",
                    )
                ],
                8,
                description="Whether the pool answers the FastCGI ping over the socket.",
                mappings=UP_DOWN,
                thresholds=_steps((RED, None), (GREEN, 1)),
            ),
            timeseries(
                "FastCGI probe failure reason",
                [
                    Target(
                        f"max by (instance, reason) (badgateway_fastcgi_probe_failure{{{INST}}})",
                        "{{instance}} {{reason}}",
                    )
                ],
                8,
                description="1 for the reason the probe fails: socket_missing, permission_denied, connection_refused, timeout, …",
                unit="short",
                min_value=0,
                max_value=1,
            ),
            timeseries(
                "Pool saturation: busy vs total workers",
                [
                    Target(
                        f"sum by ({pool}) (badgateway_phpfpm_active_processes{{{INST}}})",
                        "{{instance}} {{pool}} active",
                    ),
                    Target(
                        f"sum by ({pool}) (badgateway_phpfpm_total_processes{{{INST}}})",
                        "{{instance}} {{pool}} total",
                    ),
                    Target(
                        f"max by ({pool}) (badgateway_phpfpm_max_active_processes{{{INST}}})",
                        "{{instance}} {{pool}} most active since start",
                    ),
                ],
                8,
                description=(
                    "Busy workers against the workers the pool has (with pm = static, total is pm.max_children);"
                    " the probe's own status request counts as one busy worker."
                ),
                unit="short",
                min_value=0,
            ),
            timeseries(
                "Pool busy ratio",
                [
                    Target(
                        f"max by ({pool}) (instance_pool:badgateway_phpfpm_busy_workers:ratio{{{INST}}})",
                        "{{instance}} {{pool}}",
                    )
                ],
                8,
                unit="percentunit",
                min_value=0,
                max_value=1,
                thresholds=_steps((GREEN, None), (RED, 0.9)),
            ),
            timeseries(
                "Listen queue",
                [
                    Target(
                        f"max by ({pool}) (badgateway_phpfpm_listen_queue{{{INST}}})",
                        "{{instance}} {{pool}} waiting",
                    ),
                    Target(
                        f"max by ({pool}) (badgateway_phpfpm_max_listen_queue{{{INST}}})",
                        "{{instance}} {{pool}} most waiting since start",
                    ),
                    Target(
                        f"max by ({pool}) (badgateway_phpfpm_listen_queue_length{{{INST}}})",
                        "{{instance}} {{pool}} backlog size",
                    ),
                ],
                8,
                description="Requests waiting for a free worker; the pool is exhausted when this grows.",
                unit="short",
                min_value=0,
            ),
            timeseries(
                "Accepted connections",
                [
                    Target(
                        f"sum by ({pool}) (rate(badgateway_phpfpm_accepted_connections_total{{{INST}}}[$__rate_interval]))",
                        "{{instance}} {{pool}}",
                    )
                ],
                12,
                unit="reqps",
                min_value=0,
            ),
            timeseries(
                "max_children reached, slow requests",
                [
                    Target(
                        f"sum by ({pool}) (increase(badgateway_phpfpm_max_children_reached_total{{{INST}}}[$__rate_interval]))",
                        "{{instance}} {{pool}} max_children reached",
                    ),
                    Target(
                        f"sum by ({pool}) (increase(badgateway_phpfpm_slow_requests_total{{{INST}}}[$__rate_interval]))",
                        "{{instance}} {{pool}} slow requests",
                    ),
                ],
                12,
                unit="short",
                bars=True,
            ),
        ],
    )


def _probes_row(s: Settings) -> Row:
    return Row(
        "Backend and front probes",
        [
            timeseries(
                "HTTP probe latency",
                [
                    Target(
                        f"max by (instance, target) (badgateway_http_probe_duration_seconds{{{INST}}})",
                        "{{instance}} {{target}}",
                    )
                ],
                12,
                description=f"Backend health check and the probe through nginx (targets {s.front_target!r}, {s.backend_target!r}).",
                unit="s",
                min_value=0,
            ),
            state_timeline(
                "HTTP probe status code",
                [
                    Target(
                        f"max by (instance, target) (badgateway_http_status_code{{{INST}}})",
                        "{{instance}} {{target}}",
                    )
                ],
                12,
                description="Status code of each probe; 0 means no answer (refused, timeout). 502/504 on the front target is the symptom.",
                mappings=_mapping({"0": ("no answer", RED)}),
                thresholds=_steps((RED, None), (GREEN, 200), (ORANGE, 400), (RED, 500)),
            ),
        ],
    )


def _resources_row(s: Settings) -> Row:
    return Row(
        "Memory, swap, disk",
        [
            timeseries(
                "Memory",
                [
                    Target(
                        f"max by (instance) (badgateway_memory_available_bytes{{{INST}}})",
                        "{{instance}} available",
                    ),
                    Target(
                        f"max by (instance) (badgateway_memory_total_bytes{{{INST}}})", "{{instance}} total"
                    ),
                ],
                8,
                unit="bytes",
                min_value=0,
            ),
            bargauge(
                "Memory available",
                [
                    Target(
                        f"min by (instance) (instance:badgateway_memory_available:ratio{{{INST}}})",
                        "{{instance}}",
                    )
                ],
                4,
                unit="percentunit",
                min_value=0,
                max_value=1,
                thresholds=_steps((RED, None), (ORANGE, 0.05), (GREEN, 0.15)),
            ),
            timeseries(
                "Swap used",
                [
                    Target(
                        f"max by (instance) (badgateway_swap_total_bytes{{{INST}}})"
                        f" - max by (instance) (badgateway_swap_free_bytes{{{INST}}})",
                        "{{instance}} used",
                    ),
                    Target(
                        f"max by (instance) (badgateway_swap_total_bytes{{{INST}}})", "{{instance}} total"
                    ),
                ],
                6,
                unit="bytes",
                min_value=0,
            ),
            timeseries(
                "OOM kills",
                [
                    Target(
                        f"sum by (instance) (increase(badgateway_oom_kills_total{{{INST}}}[$__rate_interval]))",
                        "{{instance}}",
                    )
                ],
                6,
                description=f'Processes the kernel\'s OOM killer killed. BackendDown carries oom_kill="recent" after one in the last {s.oom_window}.',
                unit="short",
                bars=True,
                thresholds=_steps((GREEN, None), (RED, 1)),
            ),
            timeseries(
                "Resident memory by service",
                [
                    Target(
                        f"sum by (instance, service) (badgateway_process_resident_memory_bytes{{{INST}}})",
                        "{{instance}} {{service}}",
                    )
                ],
                8,
                unit="bytes",
                stacked=True,
                min_value=0,
            ),
            bargauge(
                "Disk available per mount",
                [
                    Target(
                        f"min by (instance, mountpoint) (instance_mountpoint:badgateway_filesystem_avail:ratio{{{INST}}})",
                        "{{instance}} {{mountpoint}}",
                    )
                ],
                8,
                unit="percentunit",
                min_value=0,
                max_value=1,
                thresholds=_steps((RED, None), (ORANGE, 0.05), (GREEN, s.disk_fill_ratio)),
            ),
            timeseries(
                "Disk and inodes free per mount",
                [
                    Target(
                        f"min by (instance, mountpoint) (badgateway_filesystem_avail_bytes{{{INST}}})",
                        "{{instance}} {{mountpoint}} bytes",
                    ),
                    Target(
                        f"min by (instance, mountpoint) (badgateway_filesystem_files_free{{{INST}}})",
                        "{{instance}} {{mountpoint}} inodes",
                    ),
                ],
                8,
                unit="bytes",
                min_value=0,
                overrides=[
                    {
                        "matcher": {"id": "byFrameRefID", "options": "B"},
                        "properties": [
                            {"id": "unit", "value": "short"},
                            {"id": "custom.axisPlacement", "value": "right"},
                        ],
                    }
                ],
            ),
        ],
    )


def _exporter_row(s: Settings) -> Row:
    return Row(
        "Exporter health",
        [
            state_timeline(
                "Scrape up",
                [Target(f"max by (instance) (up{{{INST}, {JOB}}})", "{{instance}}")],
                8,
                description="Whether Prometheus can scrape the exporter (BadGatewayExporterDown when 0).",
                mappings=UP_DOWN,
                thresholds=_steps((RED, None), (GREEN, 1)),
            ),
            state_timeline(
                "Collector success",
                [
                    Target(
                        f"min by (instance, collector) (badgateway_collector_success{{{INST}}})",
                        "{{instance}} {{collector}}",
                    )
                ],
                8,
                description="0: the collector failed or missed the deadline (BadGatewayCollectorFailing), its causes are not seen.",
                mappings=_mapping({"0": ("failed", RED), "1": ("ok", GREEN)}),
                thresholds=_steps((RED, None), (GREEN, 1)),
            ),
            timeseries(
                "Collector duration vs deadline",
                [
                    Target(
                        f"max by (instance, collector) (badgateway_collector_duration_seconds{{{INST}}})",
                        "{{instance}} {{collector}}",
                    ),
                    Target(
                        f"max by (instance) (badgateway_scrape_timeout_seconds{{{INST}}})",
                        "{{instance}} deadline",
                    ),
                    Target(
                        f"max by (instance) (scrape_duration_seconds{{{INST}, {JOB}}})",
                        "{{instance}} whole scrape",
                    ),
                ],
                8,
                unit="s",
                min_value=0,
            ),
            timeseries(
                "Log lines read",
                [
                    Target(
                        or_zero(
                            f"sum by (instance, log) (rate(badgateway_nginx_error_log_lines_total{{{INST}}}[$__rate_interval]))"
                        ),
                        "{{instance}} {{log}}",
                    )
                ],
                8,
                description="Lines the background tailer reads from the nginx error log.",
                unit="short",
            ),
            timeseries(
                "Log tailer lag and errors",
                [
                    Target(
                        or_zero(f"max by (instance, log) (badgateway_log_lag_bytes{{{INST}}})"),
                        "{{instance}} {{log}} lag",
                    ),
                    Target(
                        or_zero(
                            f"sum by (instance, log) (increase(badgateway_log_read_errors_total{{{INST}}}[$__rate_interval]))"
                        ),
                        "{{instance}} {{log}} read errors",
                    ),
                    Target(
                        or_zero(
                            f"sum by (instance, log) (increase(badgateway_log_rotations_total{{{INST}}}[$__rate_interval]))"
                        ),
                        "{{instance}} {{log}} rotations",
                    ),
                ],
                8,
                description="Bytes written but not yet read; read errors (e.g. permission denied) and rotations seen.",
                unit="short",
                overrides=[
                    {
                        "matcher": {"id": "byFrameRefID", "options": "A"},
                        "properties": [{"id": "unit", "value": "bytes"}],
                    }
                ],
            ),
            stat(
                "Exporter versions",
                [Target(f"count by (version) (badgateway_build_info{{{INST}}})", "{{version}}")],
                8,
                8,
                description="How many selected instances run each version.",
                text_mode="value_and_name",
                thresholds=_steps((BLUE, None)),
            ),
        ],
    )


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
                "query": s.runbook_base_url.rstrip("/"),
                "current": {"text": s.runbook_base_url.rstrip("/"), "value": s.runbook_base_url.rstrip("/")},
                "options": [
                    {
                        "selected": True,
                        "text": s.runbook_base_url.rstrip("/"),
                        "value": s.runbook_base_url.rstrip("/"),
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
    grid = _Grid()
    for row in (
        _cause_row(s),
        _gateway_row(s),
        _units_row(s),
        _php_fpm_row(s),
        _probes_row(s),
        _resources_row(s),
        _exporter_row(s),
    ):
        grid.row(row)
    return {
        "__requires": [
            {"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.0.0"},
            {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
            *(
                {"type": "panel", "id": kind, "name": kind, "version": ""}
                for kind in sorted(PANEL_TYPES - {"row", "gauge", "table"})
            ),
        ],
        "annotations": _annotations(),
        "description": (
            "Why nginx answers 502/504: the cause found by badgateway-exporter, since when, and the evidence."
            " Generated by exporter/grafana.py; do not edit by hand."
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
    """File name -> JSON text of every dashboard."""
    return {OVERVIEW_FILE: json.dumps(overview(settings), indent=2, ensure_ascii=False) + "\n"}


# ---------------------------------------------------------------- command line


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:
        raise RulesError(message)


def _parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(prog="python -m exporter.grafana", description=(__doc__ or "").splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("render", "write the dashboards"),
        ("check", "verify that the dashboards in --out equal a fresh render"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument(
            "--out", default=DASHBOARDS_DIR, help=f"folder of the dashboards (default: {DASHBOARDS_DIR})"
        )
        p.add_argument("--runbook-base-url", help="base of the runbook links (as for the rules)")
        p.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="a setting of `badgateway-exporter rules` (exporter_job, front_target, error_rate_window, …)",
        )
    return parser


def main(argv: list[str]) -> int:
    """``render|check``; exit 0, 1 (check found drift) or 2 (bad input)."""
    try:
        args = _parser().parse_args(argv)
        settings = settings_from_args(args.set, args.runbook_base_url)
        rendered = render(settings)
        out = Path(args.out)
        if args.command == "check":
            problems = stale_files(out, rendered, "badgateway-exporter dashboards render")
            for problem in problems:
                print(problem, file=sys.stderr)
            return 1 if problems else 0
        write_files(out, rendered)
        return 0
    except RulesError as exc:
        print(f"badgateway-exporter dashboards: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
