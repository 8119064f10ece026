"""Grafana panel kinds and the grid that places them: the building blocks of :mod:`exporter.mixin.dashboards`.

Every panel reads the ``datasource`` variable (no datasource uid is written anywhere) and the
``instance`` variable (:data:`INST`), so one dashboard serves any Prometheus and a fleet.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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


def steps(*pairs: tuple[str, float | None]) -> JSON:
    """Absolute thresholds: ``(color, from value)``, the first one from ``None``."""
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for c, v in pairs]}


def mapping(values: dict[str, tuple[str, str]]) -> list[JSON]:
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


OK_CAUSE = mapping({"0": ("OK", GREEN), "1": ("CAUSE", RED)})
UP_DOWN = mapping({"0": ("down", RED), "1": ("up", GREEN)})
CAUSE_STEPS = steps((GREEN, None), (RED, 1))


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
    table: bool = False
    """An instant query in Grafana's table format: one row per series, one column per label."""

    def to_json(self, ref_id: str) -> JSON:
        instant = self.instant or self.table
        target: JSON = {
            "datasource": DATASOURCE,
            "editorMode": "code",
            "expr": self.expr,
            "legendFormat": self.legend or "__auto",
            "range": not instant,
            "instant": instant,
            "refId": ref_id,
        }
        if self.table:
            target["format"] = "table"
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
    transformations: list[JSON] = field(default_factory=list)

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
        defaults["thresholds"] = self.thresholds or steps((GREEN, None))
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
        if self.transformations:
            panel["transformations"] = self.transformations
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


def table(
    title: str,
    targets: list[Target],
    width: int,
    height: int = 8,
    *,
    description: str = "",
    columns: tuple[str, ...],
    wrap: tuple[str, ...] = (),
    overrides: list[JSON] | None = None,
) -> Panel:
    """A table of the labels ``columns`` of instant queries in table format (time and value hidden).

    The cells of the ``wrap`` columns wrap (Grafana 11) and can be inspected (Grafana 10).
    """
    wrapped = [
        {
            "matcher": {"id": "byName", "options": name},
            "properties": [
                {"id": "custom.cellOptions", "value": {"type": "auto", "wrapText": True}},
                {"id": "custom.inspect", "value": True},
            ],
        }
        for name in wrap
    ]
    return Panel(
        "table",
        title,
        targets,
        width,
        height,
        description=description,
        custom={"align": "auto", "cellOptions": {"type": "auto"}, "filterable": True, "inspect": False},
        color={"mode": "thresholds"},
        overrides=wrapped + (overrides or []),
        transformations=[
            {
                "id": "organize",
                "options": {
                    "excludeByName": {"Time": True, "Value": True},
                    "indexByName": {name: i for i, name in enumerate(columns)},
                    "renameByName": {},
                },
            }
        ],
        options={
            "cellHeight": "sm",
            "footer": {"show": False, "reducer": ["sum"], "countRows": False, "fields": ""},
            "showHeader": True,
            "sortBy": [{"displayName": columns[0], "desc": False}] if columns else [],
        },
    )


# ---------------------------------------------------------------- layout


@dataclass
class Row:
    title: str
    panels: list[Panel]
    description: str = ""


class Grid:
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
