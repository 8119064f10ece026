"""The Grafana dashboards: JSON model checks, and every query evaluated by a real Prometheus.

No Grafana server can run here, so the guard is the data: the real stack, two real exporters (a
two-host fleet) and Debian's real Prometheus loading the bundled rules; every target of every panel
(template variables substituted as Grafana would) must return data on the healthy stack, except the
few documented in :data:`EXCEPTIONS`; the cause stats must turn red when PHP-FPM or the backend is
stopped for real.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness.alerting import Prometheus, running_prometheus
from harness.exporters import cli, running_exporter, stack_config

from exporter.causes import CAUSES, FACT_LABELS
from exporter.demo.stack import Stack
from exporter.mixin import panels as grid
from exporter.mixin.cli import dashboards_main
from exporter.mixin.dashboards import render as render_dashboards
from exporter.mixin.fleet_dashboard import FLEET_UID
from exporter.mixin.recording import recording_rules
from exporter.mixin.rows import CAUSE_INFO_TITLE
from exporter.mixin.rules import RULES_FILE
from exporter.mixin.settings import DEFAULT_RUNBOOK_BASE_URL, Settings

REPO = Path(__file__).resolve().parents[1]
GRAFANA = REPO / "grafana"
DASHBOARDS = GRAFANA / "dashboards"
PROVISIONING = GRAFANA / "provisioning"
JOB = "badgateway"

JSON = dict[str, Any]

# Targets allowed to return nothing on the healthy test stack, and why. Keep this short.
SYSTEMD_ONLY = "needs systemd: no badgateway_unit_* series without it (this host has no systemd as PID 1)"
EXCEPTIONS: dict[tuple[str, str], str] = {
    ("systemd unit states", "A"): SYSTEMD_ONLY,
    ("Unit restarts (systemd)", "A"): SYSTEMD_ONLY,
}
# Targets with data only while a cause is found, and why: empty on the healthy stack, checked in the
# incident phase.
INCIDENT_ONLY: dict[tuple[str, str], str] = {
    (CAUSE_INFO_TITLE, "A"): "badgateway_cause_info has one sample per cause finding, none on a healthy host",
}
# Annotations read ALERTS, which only has series during an incident: checked in the incident phase.
INCIDENT_ONLY_ANNOTATIONS = {
    "Cause alerts",
    "Gateway errors without a known cause",
    "Warnings",
}

BUILTIN_METRICS = {"up", "ALERTS", "ALERTS_FOR_STATE", "scrape_duration_seconds", "scrape_samples_scraped"}
GRAFANA_VARIABLES = {"__rate_interval", "__interval", "__interval_ms", "__range", "__range_s",
                     "__data", "__field", "__all"}  # fmt: skip
PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right",
    "bool", "and", "or", "unless", "offset", "inf", "nan",
}  # fmt: skip


# ---------------------------------------------------------------- helpers over the JSON


def dashboards() -> dict[str, JSON]:
    return {p.name: json.loads(p.read_text(encoding="utf-8")) for p in sorted(DASHBOARDS.glob("*.json"))}


def panels(dashboard: JSON) -> Iterator[JSON]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


@dataclass(frozen=True)
class Query:
    dashboard: str
    panel: str
    ref: str
    expr: str


def queries(dashboard_name: str, dashboard: JSON) -> list[Query]:
    found = []
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            found.append(Query(dashboard_name, panel["title"], target["refId"], target["expr"]))
    return found


def annotation_queries(dashboard: JSON) -> dict[str, str]:
    return {a["name"]: a["expr"] for a in dashboard["annotations"]["list"] if "expr" in a}


def cause_stats(dashboard: JSON) -> dict[str, JSON]:
    """Alert name -> its stat panel in the first row."""
    by_title = {p["title"]: p for p in panels(dashboard) if p["type"] == "stat"}
    return {info.alert: by_title[info.alert] for info in CAUSES.values()}


def panel_by_title(dashboard: JSON, title: str) -> JSON:
    (panel,) = [p for p in panels(dashboard) if p.get("title") == title]
    return panel


def walk(node: object) -> Iterator[tuple[str, object]]:
    """Every (key, value) pair in a JSON document, depth first."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value
            yield from walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk(item)


def metric_names(expr: str) -> set[str]:
    """Series names a PromQL expression selects (functions, keywords and labels removed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*", text):
        if text[match.end() :].lstrip().startswith("("):
            continue  # a function or an aggregation
        if match.group() not in PROMQL_WORDS:
            names.add(match.group())
    return names


def documented_metrics() -> set[str]:
    text = (REPO / "docs" / "metrics.md").read_text(encoding="utf-8")
    return set(re.findall(r"^\| `(badgateway_[a-z0-9_]+)`", text, flags=re.MULTILINE))


def recorded_names() -> set[str]:
    document = yaml.safe_load((REPO / "rules" / RULES_FILE).read_text(encoding="utf-8"))
    return {rule["record"] for group in document["groups"] for rule in group["rules"] if "record" in rule}


def threshold_color(panel: JSON, value: float) -> str:
    steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    color = steps[0]["color"]
    for step in steps[1:]:
        if value >= step["value"]:
            color = step["color"]
    return str(color)


def mapped_color(panel: JSON, value: float) -> str | None:
    for mapping in panel["fieldConfig"]["defaults"]["mappings"]:
        for raw, result in mapping["options"].items():
            if float(raw) == value and "color" in result:
                return str(result["color"])
    return None


def display_color(panel: JSON, value: float) -> str:
    """The color Grafana shows: a value mapping's color wins over the thresholds."""
    return mapped_color(panel, value) or threshold_color(panel, value)


# ---------------------------------------------------------------- static checks


def test_committed_dashboards_equal_fresh_render() -> None:
    rendered = render_dashboards()
    assert sorted(rendered) == sorted(p.name for p in DASHBOARDS.glob("*.json"))
    assert dashboards_main(["check", "--out", str(DASHBOARDS)]) == 0, (
        "run: badgateway-exporter dashboards render"
    )


def test_render_command(tmp_path: Path) -> None:
    assert (
        dashboards_main(["render", "--out", str(tmp_path), "--runbook-base-url", "https://wiki.example/rb"])
        == 0
    )
    assert sorted(p.name for p in tmp_path.glob("*.json")) == sorted(render_dashboards())
    document = json.loads((tmp_path / grid.OVERVIEW_FILE).read_text(encoding="utf-8"))
    runbook = {v["name"]: v for v in document["templating"]["list"]}["runbook_base"]
    assert runbook["query"] == "https://wiki.example/rb"
    assert dashboards_main(["check", "--out", str(tmp_path)]) == 1  # default settings differ
    assert dashboards_main(["render", "--out", str(tmp_path), "--set", "nope=1"]) == 2


def test_dashboard_json_model() -> None:
    found = dashboards()
    assert found, "no dashboards in grafana/dashboards"
    for name, dashboard in found.items():
        where = name
        assert dashboard["schemaVersion"] == grid.SCHEMA_VERSION, where
        assert isinstance(dashboard["title"], str) and dashboard["title"], where
        assert re.fullmatch(r"[a-z0-9-]{1,40}", dashboard["uid"]), where
        assert dashboard["id"] is None, f"{where}: a fixed id breaks import into another Grafana"
        assert dashboard["time"] == {"from": "now-6h", "to": "now"}
        # Variables: a prometheus datasource variable, a multi-value instance variable.
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        instance = variables["instance"]
        assert instance["type"] == "query" and instance["multi"] and instance["includeAll"]
        assert instance["datasource"] == grid.DATASOURCE
        # Panels: ids unique, gridPos inside the 24-column grid, no overlap, known types.
        ids = [p["id"] for p in panels(dashboard)]
        assert len(ids) == len(set(ids)) and all(isinstance(i, int) and i > 0 for i in ids), where
        cells: dict[tuple[int, int], str] = {}
        for panel in panels(dashboard):
            title = f"{where}: panel {panel['title']!r}"
            assert panel["type"] in grid.PANEL_TYPES, title
            pos = panel["gridPos"]
            assert set(pos) == {"h", "w", "x", "y"} and all(isinstance(v, int) for v in pos.values()), title
            assert pos["x"] >= 0 and pos["y"] >= 0 and pos["w"] > 0 and pos["h"] > 0, title
            assert pos["x"] + pos["w"] <= grid.GRID_WIDTH, title
            for x in range(pos["x"], pos["x"] + pos["w"]):
                for y in range(pos["y"], pos["y"] + pos["h"]):
                    assert (x, y) not in cells, f"{title} overlaps {cells[(x, y)]!r}"
                    cells[(x, y)] = panel["title"]
            if panel["type"] == "row":
                continue
            assert panel["datasource"] == grid.DATASOURCE, title
            assert "fieldConfig" in panel and "options" in panel, title
            refs = [t["refId"] for t in panel["targets"]]
            assert refs and len(refs) == len(set(refs)), title
            for target in panel["targets"]:
                assert target["datasource"] == grid.DATASOURCE, title
                assert target["expr"].strip(), title
        # Every datasource reference uses the variable (the built-in Grafana annotation excepted).
        for key, value in walk(dashboard):
            if key == "datasource" and isinstance(value, dict) and value.get("type") != "grafana":
                assert value == grid.DATASOURCE, f"{where}: datasource {value}"
        # Every variable used is defined (or a Grafana built-in).
        text = json.dumps(dashboard)
        used = set(re.findall(r"\$\{?(\w+)", text))
        assert used <= set(variables) | GRAFANA_VARIABLES, used - set(variables) - GRAFANA_VARIABLES


def test_every_uid_is_unique() -> None:
    uids: list[str] = []
    for dashboard in dashboards().values():
        for key, value in walk(dashboard):  # the dashboard's own uid and any other
            if key == "uid" and value not in ("${datasource}", "-- Grafana --"):
                uids.append(str(value))
    for path in sorted(PROVISIONING.rglob("*.yml")):
        for key, value in walk(yaml.safe_load(path.read_text(encoding="utf-8"))):
            if key in ("uid", "folderUid"):
                uids.append(str(value))
    assert len(uids) == len(set(uids)), sorted(uids)
    assert {d["uid"] for d in dashboards().values()} == {grid.OVERVIEW_UID, FLEET_UID}


def test_every_metric_is_documented() -> None:
    allowed = documented_metrics() | recorded_names() | BUILTIN_METRICS
    assert {r["record"] for r in recording_rules(Settings())} <= recorded_names()
    used: dict[str, set[str]] = {}
    for name, dashboard in dashboards().items():
        exprs = [(q.panel, q.expr) for q in queries(name, dashboard)]
        exprs += list(annotation_queries(dashboard).items())
        for variable in dashboard["templating"]["list"]:
            if variable["type"] == "query":
                match = re.fullmatch(r"label_values\((.+),\s*\w+\)", variable["definition"])
                assert match, variable["definition"]
                exprs.append((variable["name"], match.group(1)))
        for where, expr in exprs:
            for metric in metric_names(expr):
                used.setdefault(metric, set()).add(where)
    unknown = {m: sorted(w) for m, w in used.items() if m not in allowed}
    assert not unknown, f"not in docs/metrics.md, rules/ or Prometheus built-ins: {unknown}"
    assert "badgateway_cause" in used


def test_metric_name_extraction() -> None:
    expr = (
        'max by (instance, unit) ((badgateway_unit_state{instance=~"$instance", state="a"} == 1) * 2)'
        " or on (instance) (0 * group by (instance) (badgateway_build_info))"
        ' - rate(x:y:rate5m{kind!~"a|b"}[$__rate_interval]) or vector(0) > bool 1e3'
    )
    assert metric_names(expr) == {"badgateway_unit_state", "badgateway_build_info", "x:y:rate5m"}


def test_cause_stats_follow_the_causes_table() -> None:
    dashboard = json.loads((DASHBOARDS / grid.OVERVIEW_FILE).read_text(encoding="utf-8"))
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["runbook_base"]["query"] == DEFAULT_RUNBOOK_BASE_URL
    assert variables["exporter_job"]["query"] == Settings().exporter_job
    stats = cause_stats(dashboard)
    # The first row: one stat per cause, in the table's order, then the rates (stats up to its graphs).
    panels = dashboard["panels"][1:]
    first_row = panels[: next(i for i, p in enumerate(panels) if p["type"] != "stat")]
    assert max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in first_row) <= 17  # at a glance: four short rows
    assert [p["title"] for p in first_row[: len(CAUSES)]] == [i.alert for i in CAUSES.values()]
    assert {"502 rate (upstream errors)", "504 rate (upstream timeouts)", "Front probe status"} <= {
        p["title"] for p in first_row
    }
    for info in CAUSES.values():
        panel = stats[info.alert]
        (target,) = panel["targets"]
        assert f'cause="{info.cause}"' in target["expr"]
        (link,) = panel["links"]
        assert link["url"] == f"${{runbook_base}}/{info.alert}.md"  # the rules' runbook_url scheme
        assert (REPO / info.runbook_path).is_file()
        assert display_color(panel, 0) == "green" and threshold_color(panel, 0) == "green"
        assert display_color(panel, 1) == "red" and threshold_color(panel, 1) == "red"


def test_cause_info_table_says_what_diagnose_says() -> None:
    """One table of ``badgateway_cause_info`` (cause, fix and the facts) of the selected instances."""
    dashboard = json.loads((DASHBOARDS / grid.OVERVIEW_FILE).read_text(encoding="utf-8"))
    table = panel_by_title(dashboard, CAUSE_INFO_TITLE)
    assert table["type"] == "table"
    (target,) = table["targets"]
    columns = ("instance", "cause", "fix", *FACT_LABELS)
    assert target["expr"] == f'max by ({", ".join(columns)}) (badgateway_cause_info{{instance=~"$instance"}})'
    assert target["format"] == "table" and target["instant"] and not target["range"]
    (organize,) = table["transformations"]
    assert organize["id"] == "organize"
    assert list(organize["options"]["indexByName"]) == list(columns)
    assert organize["options"]["excludeByName"] == {"Time": True, "Value": True}
    fix = next(o for o in table["fieldConfig"]["overrides"] if o["matcher"]["options"] == "fix")
    assert {"id": "custom.cellOptions", "value": {"type": "auto", "wrapText": True}} in fix["properties"]
    # In the causes row, below the stats: the page and the dashboard say the same.
    (cause_row,) = [p for p in dashboard["panels"] if p["type"] == "row" and p["title"].startswith("Causes")]
    next_row = min(
        p["gridPos"]["y"]
        for p in dashboard["panels"]
        if p["type"] == "row" and p["gridPos"]["y"] > cause_row["gridPos"]["y"]
    )
    assert cause_row["gridPos"]["y"] < table["gridPos"]["y"] < next_row
    assert {"type": "panel", "id": "table", "name": "table", "version": ""} in dashboard["__requires"]


def test_panel_descriptions_name_real_alerts() -> None:
    """Alert names in the dashboard (descriptions, titles, links) are alerts of the rules."""
    document = yaml.safe_load((REPO / "rules" / RULES_FILE).read_text(encoding="utf-8"))
    alerts = {r["alert"] for g in document["groups"] for r in g["rules"] if "alert" in r}
    text = (DASHBOARDS / grid.OVERVIEW_FILE).read_text(encoding="utf-8")
    named = set(re.findall(r"\b((?:Php|Nginx|Backend|BadGateway|Disk|Memory|Unit|Upstream)[A-Z]\w+)\b", text))
    assert named and named <= alerts, sorted(named - alerts)


def test_provisioning_files() -> None:
    (ds_file,) = sorted((PROVISIONING / "datasources").glob("*.yml"))
    datasources = yaml.safe_load(ds_file.read_text(encoding="utf-8"))
    assert datasources["apiVersion"] == 1
    (ds,) = datasources["datasources"]
    assert ds["type"] == "prometheus" and ds["access"] == "proxy" and ds["url"].startswith("http")
    (db_file,) = sorted((PROVISIONING / "dashboards").glob("*.yml"))
    providers = yaml.safe_load(db_file.read_text(encoding="utf-8"))
    assert providers["apiVersion"] == 1
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and Path(provider["options"]["path"]).is_absolute()
    # The dashboards never name the provisioned datasource: they work with any Prometheus.
    for dashboard in dashboards().values():
        assert ds["uid"] not in json.dumps(dashboard) and ds["name"] not in json.dumps(dashboard["panels"])
    docs = (REPO / "docs" / "dashboards.md").read_text(encoding="utf-8")
    assert provider["options"]["path"] in docs, (
        "docs/dashboards.md must say where to mount grafana/dashboards"
    )


# ---------------------------------------------------------------- a real Prometheus


def poll_until(predicate: Callable[[], bool], timeout: float, what: str, detail: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}\n{detail()}")
        time.sleep(0.25)


def grafana_regex(values: list[str]) -> str:
    """``$instance`` as Grafana's Prometheus datasource interpolates a multi-value selection."""
    escaped = [re.sub(r"([\\$^*{}\[\]'+?.()|])", r"\\\\\1", v) for v in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def substitute(expr: str, instance: str, rate_interval: str = "10s") -> str:
    values = {
        "__rate_interval": rate_interval,
        "__interval": "1s",
        "__range": "5m",
        "instance": instance,
        "exporter_job": JOB,
    }
    for name, value in values.items():  # no variable name is a prefix of another one
        expr = expr.replace(f"${{{name}}}", value).replace(f"${name}", value)
    assert "$" not in expr, expr
    return expr


def first_value(result: list[JSON]) -> float | None:
    return float(result[0]["value"][1]) if result else None


@dataclass
class Setup:
    stack: Stack
    prometheus: Prometheus
    instances: list[str]
    dashboard: JSON

    def evaluate(self, instance_regex: str) -> dict[Query, list[JSON]]:
        return {
            q: self.prometheus.query(substitute(q.expr, instance_regex))
            for q in queries(grid.OVERVIEW_FILE, self.dashboard)
        }

    def stat_value(self, title: str) -> float | None:
        panel = panel_by_title(self.dashboard, title)
        (target,) = panel["targets"]
        return first_value(self.prometheus.query(substitute(target["expr"], grafana_regex(self.instances))))

    def red_causes(self) -> set[str]:
        red = set()
        for alert, panel in cause_stats(self.dashboard).items():
            value = self.stat_value(alert)
            if value is not None and display_color(panel, value) == "red":
                red.add(alert)
        return red

    def cause_info(self) -> list[dict[str, str]]:
        """The rows of the table of what ``diagnose`` says (the labels of each sample)."""
        (target,) = panel_by_title(self.dashboard, CAUSE_INFO_TITLE)["targets"]
        result = self.prometheus.query(substitute(target["expr"], grafana_regex(self.instances)))
        return [dict(s["metric"]) for s in result]

    def annotation(self, name: str) -> list[JSON]:
        expr = annotation_queries(self.dashboard)[name]
        return self.prometheus.query(substitute(expr, grafana_regex(self.instances)))


@pytest.fixture
def setup(stack: Stack, tmp_path: Path) -> Iterator[Setup]:
    rules_dir = tmp_path / "rules"
    done = cli("rules", "render", "--out", str(rules_dir), "--for-scale", "0", timeout=60)
    assert done.returncode == 0, done.stderr
    with ExitStack() as stack_of:
        # Prometheus' 1 s scrape timeout leaves the default 0.5 s margin only 0.5 s: take 0.2.
        config = stack_config(stack, scrape_timeout_margin_seconds=0.2)
        exporters = [stack_of.enter_context(running_exporter(config)) for _ in range(2)]
        instances = [e.url.removeprefix("http://") for e in exporters]
        prometheus = stack_of.enter_context(running_prometheus(tmp_path, instances, [rules_dir / RULES_FILE]))
        dashboard = json.loads((DASHBOARDS / grid.OVERVIEW_FILE).read_text(encoding="utf-8"))
        yield Setup(stack, prometheus, instances, dashboard)


@pytest.mark.timeout(150)
def test_every_panel_query_on_a_real_prometheus(setup: Setup) -> None:
    started = time.monotonic()
    prom = setup.prometheus
    both = grafana_regex(setup.instances)

    # The instance variable lists both exporters of the fleet.
    def variable_lists_both() -> bool:
        values = prom.get("/api/v1/label/instance/values", {"match[]": "badgateway_build_info"})
        return set(setup.instances) <= set(values)

    poll_until(variable_lists_both, 30, "the first scrape of both exporters", prom.log_tail)

    # On a healthy host no cause alert fires (the annotations stay empty).
    systemd = prom.query(f'badgateway_systemd_available{{instance=~"{both}"}}')
    has_systemd = any(float(s["value"][1]) == 1 for s in systemd)
    exceptions = INCIDENT_ONLY | ({} if has_systemd else EXCEPTIONS)

    last: dict[Query, list[JSON]] = {}

    def problem(q: Query, result: list[JSON]) -> str | None:
        """Why ``result`` is not yet what a healthy fleet of two gives (None: it is)."""
        if (q.panel, q.ref) in exceptions:
            return None
        if not result:
            return "no data"
        # Per-instance panels keep the instance dimension for every host of the fleet (no
        # "or vector(0)" collapsing it, no many-to-many matching errors).
        if re.search(r"by \(instance\b", q.expr):
            seen = {s["metric"].get("instance") for s in result}
            if not set(setup.instances) <= seen:
                return f"instances {sorted(map(str, seen))}"
        return None

    def all_panels_have_data() -> bool:
        nonlocal last
        last = setup.evaluate(both)
        return all(problem(q, result) is None for q, result in last.items())

    def missing() -> str:
        return "not there yet:\n" + "\n".join(
            f"  {q.panel} [{q.ref}]: {problem(q, result)}: {substitute(q.expr, both)}"
            for q, result in last.items()
            if problem(q, result) is not None
        )

    # Each host's series (and the recording rules over them) appear at their own first scrape
    # and evaluation: poll until every query answers for both hosts.
    poll_until(all_panels_have_data, 40, "every panel query to return data", missing)
    evaluated = len(last)
    # The exceptions are real: they have no data here, for the documented reason.
    for q, result in last.items():
        if (q.panel, q.ref) in exceptions:
            assert not result, f"{q.panel} [{q.ref}] has data now: drop it from EXCEPTIONS / INCIDENT_ONLY"
    # One host selected, and "All" (allValue .+): every query still answers.
    for regex in (grafana_regex(setup.instances[:1]), ".+"):
        for q, result in setup.evaluate(regex).items():
            assert result or (q.panel, q.ref) in exceptions, f"{q.panel} [{q.ref}] with instance={regex}"
    # "Warnings" is left out: with every for: scaled to 0, one collector missing its 1 s deadline on
    # a busy machine fires BadGatewayCollectorFailing at once.
    for name in INCIDENT_ONLY_ANNOTATIONS - {"Warnings"}:
        found = [a["metric"] for a in setup.annotation(name)]
        assert found == [], f"annotation {name!r} on a healthy stack: {found}"
    assert setup.red_causes() == set()
    assert setup.stat_value("Front probe status") == 200
    front_panel = panel_by_title(setup.dashboard, "Front probe status")
    assert display_color(front_panel, 200) == "green"
    healthy_seconds = time.monotonic() - started

    # PHP-FPM stopped for real: its stat turns red, the others stay green.
    setup.stack.stop_php_fpm()
    poll_until(
        lambda: setup.red_causes() == {"PhpFpmDown"},
        20,
        "PhpFpmDown red",
        lambda: f"red: {setup.red_causes()}",
    )
    poll_until(
        lambda: setup.stat_value("Front probe status") == 502,
        20,
        "front probe 502",
        lambda: f"front: {setup.stat_value('Front probe status')}",
    )
    assert display_color(front_panel, 502) == "red"
    poll_until(
        lambda: {a["metric"]["alertname"] for a in setup.annotation("Cause alerts")} == {"PhpFpmDown"},
        20,
        "the PhpFpmDown annotation",
        lambda: str(setup.annotation("Cause alerts")),
    )
    # The table says what diagnose says: the cause, and the fix it prints on that host.
    poll_until(
        lambda: {row.get("cause") for row in setup.cause_info() if row.get("fix")} == {"php_fpm_down"},
        20,
        "php_fpm_down with its fix in the table",
        lambda: str(setup.cause_info()),
    )
    # ... and the page says the same: the alert's description carries that fix, line by line.
    fixes = {row["fix"] for row in setup.cause_info() if row.get("cause") == "php_fpm_down"}

    def paged_fix() -> bool:
        alerts = prom.get("/api/v1/alerts", {})["alerts"]
        texts = [a["annotations"]["description"] for a in alerts if a["labels"]["alertname"] == "PhpFpmDown"]
        return bool(texts) and all(
            any("\nFix:\n  " + fix.replace("\n", "\n  ") in text for fix in fixes) for text in texts
        )

    poll_until(
        paged_fix, 20, "the PhpFpmDown description with the fix", lambda: str(prom.get("/api/v1/alerts", {}))
    )
    errors_exposed = bool(prom.query('count({__name__="badgateway_nginx_upstream_errors_total"})'))
    if errors_exposed:  # once the log metrics are wired in: the 502 rate stat goes red too
        rate_panel = panel_by_title(setup.dashboard, "502 rate (upstream errors)")
        poll_until(
            lambda: (setup.stat_value("502 rate (upstream errors)") or 0) > 0,
            20,
            "a 502 rate",
            lambda: str(setup.stat_value("502 rate (upstream errors)")),
        )
        assert rate_panel["fieldConfig"]["defaults"]["thresholds"]["steps"][1]["color"] == "red"

    # PHP-FPM back, backend stopped: PhpFpmDown turns green again, BackendDown red.
    setup.stack.start_php_fpm()
    setup.stack.stop_backend()
    poll_until(
        lambda: setup.red_causes() == {"BackendDown"},
        20,
        "BackendDown red and PhpFpmDown green",
        lambda: f"red: {setup.red_causes()}",
    )
    poll_until(
        lambda: "BackendDown" in {a["metric"]["alertname"] for a in setup.annotation("Cause alerts")},
        20,
        "the BackendDown annotation",
        lambda: str(setup.annotation("Cause alerts")),
    )
    # The causes-over-time timeline shows it per cause.
    timeline = panel_by_title(setup.dashboard, "Causes over time")
    series = prom.query(substitute(timeline["targets"][0]["expr"], both))
    assert {s["metric"]["cause"] for s in series if float(s["value"][1]) == 1} == {"backend_down"}
    total = time.monotonic() - started
    print(
        f"\n{evaluated} panel queries evaluated; healthy phase {healthy_seconds:.1f}s,"
        f" incidents {total - healthy_seconds:.1f}s"
    )
