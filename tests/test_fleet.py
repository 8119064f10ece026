"""The fleet test: one incident on one host of many is one page for that host, none for the others.

Three hosts, each a real stack (nginx + PHP-FPM + uvicorn on its own loopback) with a real exporter in
its own network namespace (``harness.fleet``): eu/web-1 and eu/web-2 in cluster ``eu`` (region
eu-west), us/web-1 in cluster ``us`` (region us-east), so the instance name ``web-1:9502`` exists in
both clusters. Two Prometheus agents (``--enable-feature=agent``, one per cluster, external labels
``cluster`` and ``region``) remote-write to a central Prometheus (``--web.enable-remote-write-receiver``)
that evaluates the bundled rules, rendered with ``--for-scale 0.05 --set
identity_labels=region,cluster,instance``, and sends to the bundled Alertmanager configuration
rendered with them. Then the same through federation: one leaf Prometheus per cluster, the central
one scraping their ``/federate``.

For each step, faults of the catalogue are injected through the hosts' ``demo break``: exactly the
pages of those hosts arrive (alert, cluster, region, instance and cause right), nothing for the
others, and the healthy fleet is silent. While the faults hold, ``badgateway-exporter fleet`` and
every query of the fleet dashboard are checked against the central Prometheus. The short form (CI)
runs three hosts, one fault, then two faults on two hosts at once, a healthy window, and the
two-fault step through federation; ``BADGATEWAY_FLEET=1`` runs every host with every fault, both ways.
See docs/fleet.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from harness import poll
from harness.alerting import paging_refusal
from harness.fleet import (
    FLEET_SETTINGS,
    Central,
    Host,
    Mode,
    StepResult,
    central_pipeline,
    first_samples,
    host,
    leftovers,
    namespace_refusal,
    run_step,
)

from exporter.demo.catalogue import find_fault
from exporter.demo.stack import make_root
from exporter.mixin.fleet_dashboard import (
    EXPORTERS_DOWN_TITLE,
    FLEET_FILE,
    INCIDENT_ONLY,
    TOP_KINDS_TITLE,
    fleet,
)
from exporter.mixin.settings import settings_from_args

FULL = os.environ.get("BADGATEWAY_FLEET") == "1"
HEALTHY_SECONDS = float(os.environ.get("BADGATEWAY_FLEET_HEALTHY", "120" if FULL else "20"))
REPORT_ENV = "BADGATEWAY_FLEET_REPORT"
HOSTS = (("web-1:9502", "eu", "eu-west"), ("web-2:9502", "eu", "eu-west"), ("web-1:9502", "us", "us-east"))
FAULTS = ("php_fpm_stopped", "backend_unhealthy")
RULE_SETTINGS = settings_from_args(list(FLEET_SETTINGS), [])


@dataclass
class FleetRun:
    netns: str
    healthy: dict[str, int] = field(default_factory=dict)  # mode -> notifications in the healthy window
    steps: list[StepResult] = field(default_factory=list)
    healthy_checks: dict[str, list[str]] = field(default_factory=dict)  # mode -> problems found healthy
    down_check: list[str] = field(default_factory=list)
    wall_seconds: float = 0.0
    leftovers: list[str] = field(default_factory=list)
    log: list[str] = field(default_factory=list)


def _requirements() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, nginx workers as www-data)"
    return paging_refusal()


# ---------------------------------------------------------------- what is checked while faults hold


def fleet_cli(central: Central, *args: str) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-m", "exporter", "fleet", "--prometheus", central.prometheus.url, *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert not done.stderr.strip() or done.returncode == 2, done.stderr
    return done.returncode, done.stdout if done.returncode != 2 else done.stderr


def check_fleet_command(
    central: Central,
    hosts: list[Host],
    expected: set[tuple[str, str, str]],
    ages: dict[tuple[str, str], float],
) -> list[str]:
    """``fleet --format json`` and the text view name exactly the ``expected`` (cluster, instance, cause),
    each since it was injected (``ages``: seconds since the injection on each host)."""
    problems = []
    code, out = fleet_cli(central, "--format", "json")
    document: dict[str, Any] = json.loads(out) if code != 2 else {}
    want_code = 1 if expected else 0
    if code != want_code:
        problems.append(f"fleet exit {code}, expected {want_code}: {out[:300]}")
        return problems
    got = {(c["host"].get("cluster"), c["host"].get("instance"), c["cause"]) for c in document["causes"]}
    if got != expected:
        problems.append(f"fleet named {sorted(got)}, expected {sorted(expected)}")
    if document["hosts"] != len(hosts) or document["exporters_down"]:
        problems.append(f"fleet saw {document['hosts']} hosts, down {document['exporters_down']}")
    for cause in document["causes"]:
        if not cause["findings"] or not all(f["fix"] for f in cause["findings"]):
            problems.append(f"no fix for {cause['name']} {cause['cause']}: {cause['findings']}")
        age = ages.get((cause["host"].get("cluster"), cause["host"].get("instance")), 0.0)
        since = cause["since_seconds"]
        if since is None or not 0 <= since <= age + 2 or cause["since_before_lookback"]:
            problems.append(f"since of {cause['name']} {cause['cause']}: {since}s, injected {age:.1f}s ago")
        if cause["host"].get("region") not in {h.region for h in hosts}:
            problems.append(f"no region on {cause['host']}")
    code, text = fleet_cli(central)
    for cluster, instance, cause in expected:
        if f"{instance} (cluster={cluster}, region=" not in text or f"({cause})" not in text:
            problems.append(f"text view lacks {cluster}/{instance} {cause}:\n{text}")
    if expected and ("or earlier" in text or " ago)" not in text):
        problems.append(f"text view's since:\n{text}")
    if not expected and "Healthy: no cause of 502/504 on any host." not in text:
        problems.append(f"text view of a healthy fleet:\n{text}")
    return problems


def _substitute(expr: str) -> str:
    for name, value in {
        "exporter_job": "badgateway",
        "region": ".+",
        "cluster": ".+",
        "instance": ".+",
    }.items():
        expr = expr.replace(f"${{{name}}}", value).replace(f"${name}", value)
    assert "$" not in expr, expr
    return expr


def dashboard_queries(central: Central | None = None) -> list[tuple[str, str]]:
    """Every query of the fleet dashboard the harness rendered (or rendered here with the same settings)."""
    path = central.dashboards / FLEET_FILE if central is not None else None
    document = json.loads(path.read_text(encoding="utf-8")) if path is not None else fleet(RULE_SETTINGS)
    found = []
    for panel in document["panels"]:
        for target in panel.get("targets", []):
            found.append((panel["title"], target["expr"]))
    for variable in document["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable["definition"])
            assert match
            found.append((f"variable {variable['name']}", f"group by ({match.group(2)}) ({match.group(1)})"))
    return found


def check_dashboard(central: Central, hosts: list[Host], expected: set[tuple[str, str, str]]) -> list[str]:
    """Every query of the fleet dashboard on the central Prometheus: data where there must be, and the
    causes table and the top hosts naming the right hosts."""
    problems = []
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for title, expr in dashboard_queries(central):
        results[(title, expr)] = central.prometheus.query(_substitute(expr))
        empty_ok = title in INCIDENT_ONLY and not expected
        if title == EXPORTERS_DOWN_TITLE:
            empty_ok = True  # every exporter is up during the steps; checked when one is stopped
        if title == TOP_KINDS_TITLE:
            # Upstream errors come with a stopped PHP-FPM (nginx logs connect() failures); an unhealthy
            # backend answers 500 itself, which nginx passes on without an upstream error.
            empty_ok = not any(cause == "php_fpm_down" for _, _, cause in expected)
        if not results[(title, expr)] and not empty_ok:
            problems.append(f"{title}: no data for {expr}")
        if (
            title in INCIDENT_ONLY
            and not expected
            and title != TOP_KINDS_TITLE
            and results[(title, expr)]
            and title != EXPORTERS_DOWN_TITLE
        ):
            problems.append(f"{title}: data on a healthy fleet: {results[(title, expr)]}")
    for (title, expr), rows in results.items():
        if title == "Hosts and their causes now" and "badgateway_cause" in expr:
            got = {
                (r["metric"].get("cluster"), r["metric"].get("instance"), r["metric"].get("cause"))
                for r in rows
            }
            if got != expected:
                problems.append(f"{title}: {sorted(got)}, expected {sorted(expected)}")
        if title == "Hosts with the most gateway errors":
            rates = {
                (r["metric"].get("cluster"), r["metric"].get("instance")): float(r["value"][1]) for r in rows
            }
            if set(rates) != {h.key for h in hosts}:
                problems.append(f"{title}: hosts {sorted(rates)}")
            failing = {(c, i) for c, i, cause in expected if cause == "php_fpm_down"}  # 502s under the load
            if any(rates.get(key, 0.0) <= 0 for key in failing):
                problems.append(
                    f"{title}: no errors for the hosts without PHP-FPM {sorted(failing)}: {rates}"
                )
        names = {r["metric"].get("instance") for r in rows}
        if title.startswith("variable instance") and names != {h.name for h in hosts}:
            problems.append(f"{title}: {rows}")
    return problems


def _expected_now(result: StepResult) -> set[tuple[str, str, str]]:
    return {(cluster, instance, cause) for (_, cluster, instance), cause in result.expected.items()}


# ---------------------------------------------------------------- the run


def _steps(hosts: list[Host], mode: Mode) -> list[tuple[str, dict[Host, str]]]:
    two = ("two faults on two hosts", {hosts[2]: "backend_unhealthy", hosts[1]: "php_fpm_stopped"})
    if not FULL:
        return [("one fault", {hosts[0]: "php_fpm_stopped"}), two] if mode == "remote_write" else [two]
    single = [(f"{fault} on {h.cluster}/{h.name}", {h: fault}) for fault in FAULTS for h in hosts]
    three = ("three hosts at once", {hosts[0]: "backend_unhealthy", hosts[1]: "php_fpm_stopped",
                                     hosts[2]: "php_fpm_stopped"})  # fmt: skip
    return [*single, two, three]


def _variant(run: FleetRun, mode: Mode, hosts: list[Host], work: Path) -> None:
    def log(text: str) -> None:
        run.log.append(text)
        print(text, flush=True)

    started = time.monotonic()
    with central_pipeline(mode, hosts, work / mode, log) as central:
        first_samples(central, hosts)
        log(f"{mode}: every host in the central Prometheus {time.monotonic() - started:.1f}s after its start")
        window = HEALTHY_SECONDS if mode == "remote_write" or FULL else min(HEALTHY_SECONDS, 10.0)
        mark = central.webhook.count()
        deadline = time.monotonic() + window
        poll(lambda: time.monotonic() >= deadline or central.webhook.count() > mark, window + 1, 0.5)
        run.healthy[mode] = central.webhook.count() - mark
        run.healthy_checks[mode] = check_fleet_command(central, hosts, set(), {}) + check_dashboard(
            central, hosts, set()
        )
        log(
            f"{mode}: healthy {window:g}s, {run.healthy[mode]} notification(s); {run.healthy_checks[mode] or 'ok'}"
        )

        def on_active(result: StepResult) -> None:
            expected = _expected_now(result)
            now = time.monotonic()
            ages = {key[1:]: now - at for key, at in result.injected_at.items()}
            result.checks["fleet"] = check_fleet_command(central, hosts, expected, ages)
            result.checks["dashboard"] = check_dashboard(central, hosts, expected)
            result.problems += result.checks["fleet"] + result.checks["dashboard"]
            if result.name == "two faults on two hosts":
                log("   badgateway-exporter fleet says:\n" + fleet_cli(central)[1])

        for name, faults in _steps(hosts, mode):
            run.steps.append(run_step(central, name, faults, on_active))
        if mode == _LAST:
            run.down_check = _exporter_down(central, hosts)


_LAST: Mode = "federation"


def _exporter_down(central: Central, hosts: list[Host]) -> list[str]:
    """Stop us/web-1's exporter (its whole host): ``fleet`` lists it as down, exit 3, nothing else."""
    victim = hosts[2]
    victim.stop()

    def listed() -> bool:
        code, out = fleet_cli(central, "--format", "json")
        if code != 3:
            return False
        down = json.loads(out)["exporters_down"]
        return [(d["host"].get("cluster"), d["host"].get("instance")) for d in down] == [victim.key]

    if not poll(listed, 30.0, 0.5):
        return [f"fleet did not list {victim.key} as down: {fleet_cli(central, '--format', 'json')}"]
    expr = next(e for t, e in dashboard_queries(central) if t == EXPORTERS_DOWN_TITLE)
    rows = central.prometheus.query(_substitute(expr))
    if {(r["metric"].get("cluster"), r["metric"].get("instance")) for r in rows} != {victim.key}:
        return [f"dashboard Exporters down: {rows}"]
    return []


def _run() -> FleetRun:
    started = time.monotonic()
    refusal = namespace_refusal()
    run = FleetRun("network namespaces" if refusal is None else f"shared loopback ({refusal})")
    work = make_root("bgwfleet-work-")
    roots: list[Path] = []
    try:
        with contextlib.ExitStack() as exits:
            hosts = []
            for i, (name, cluster, region) in enumerate(HOSTS, start=1):
                made = exits.enter_context(host(i, name, cluster, region, refusal is None))
                roots.append(made.root)
                hosts.append(made)
            run.log.append(f"{len(hosts)} hosts up ({run.netns}) in {time.monotonic() - started:.1f}s")
            print(run.log[-1], flush=True)
            for mode in ("remote_write", "federation"):
                _variant(run, mode, hosts, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    run.wall_seconds = time.monotonic() - started
    run.leftovers = leftovers(roots)
    report = _report(run)
    print("\n" + report, flush=True)
    target = os.environ.get(REPORT_ENV)
    if target:
        Path(target).write_text(report + "\n\n" + "\n".join(run.log) + "\n", encoding="utf-8")
    return run


def _report(run: FleetRun) -> str:
    lines = [
        f"fleet test ({'full' if FULL else 'short'}), hosts in {run.netns}, healthy notifications {run.healthy},"
        f" wall time {run.wall_seconds:.0f}s",
        "",
        "| mode | step | page (alert, cluster, instance) | fault→cause in central s | fault→page s | resolve s | result |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in run.steps:
        for key in sorted(r.expected):
            visible, page, resolve = (
                r.visible_seconds.get(key),
                r.page_seconds.get(key),
                r.resolve_seconds.get(key),
            )
            lines.append(
                f"| {r.mode} | {r.name} | {key[0]} {key[1]}/{key[2]} | {_fmt(visible)} | {_fmt(page)} | {_fmt(resolve)}"
                f" | {'ok' if r.ok else 'FAIL: ' + '; '.join(r.problems)} |"
            )
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


@pytest.fixture(scope="module")
def fleet_run() -> Iterator[FleetRun]:
    reason = _requirements()
    if reason is not None:
        pytest.skip(f"the fleet test needs real stacks and Prometheus: {reason}")
    yield _run()


@pytest.mark.timeout(1800)
def test_a_healthy_fleet_is_silent(fleet_run: FleetRun) -> None:
    assert fleet_run.healthy and all(n == 0 for n in fleet_run.healthy.values()), fleet_run.healthy
    assert all(not p for p in fleet_run.healthy_checks.values()), fleet_run.healthy_checks


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("mode", ["remote_write", "federation"])
def test_each_fault_pages_its_host_only(fleet_run: FleetRun, mode: str) -> None:
    steps = [s for s in fleet_run.steps if s.mode == mode]
    assert steps, f"no step ran through {mode}"
    for step in steps:
        assert step.ok, f"{mode} {step.name}: {'; '.join(step.problems)}"
        assert {(p["alertname"], p["cluster"], p["instance"]) for p in step.pages} == set(step.expected)


@pytest.mark.timeout(1800)
def test_federation_gives_the_same_pages(fleet_run: FleetRun) -> None:
    by_mode: dict[str, dict[str, set[tuple[str, str, str, str, str]]]] = {}
    for step in fleet_run.steps:
        pages = {(p["alertname"], p["cluster"], p["region"], p["instance"], p["cause"]) for p in step.pages}
        by_mode.setdefault(step.mode, {})[step.name] = pages
    shared = set(by_mode["remote_write"]) & set(by_mode["federation"])
    assert shared
    for name in shared:
        assert by_mode["remote_write"][name] == by_mode["federation"][name], name


@pytest.mark.timeout(1800)
def test_fleet_lists_a_stopped_exporter(fleet_run: FleetRun) -> None:
    assert fleet_run.down_check == []


@pytest.mark.timeout(1800)
def test_fleet_test_is_short_and_leaves_the_host_as_found(fleet_run: FleetRun) -> None:
    assert fleet_run.leftovers == []
    limit = 1500 if FULL else 240
    assert fleet_run.wall_seconds < limit, (
        f"the fleet test took {fleet_run.wall_seconds:.0f}s (limit {limit})"
    )


def test_fleet_dashboard_queries_keep_the_identity() -> None:
    """Every aggregation of the fleet dashboard keeps the identity labels of the settings."""
    for title, expr in dashboard_queries():
        if title.startswith("variable "):
            continue  # label_values of one label
        for group in re.findall(r"\b(?:by|on) \(([^)]*)\)", expr):
            labels = [g.strip() for g in group.split(",")]
            if "instance" in labels:
                assert labels[:3] == ["region", "cluster", "instance"], (title, expr)
    assert FLEET_FILE == "badgateway-fleet.json"
    assert find_fault("php_fpm_stopped").alert == "PhpFpmDown"
