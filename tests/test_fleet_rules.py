"""The identity settings of the rules: ``--set identity_labels=cluster,instance`` and ``--set selector=…``.

One host of a fleet is identified by more than its ``instance`` when a central Prometheus (remote write,
federation, Thanos, Mimir) sees several clusters: every ``by (…)``, every ``on (…)``, every recording
rule, every template query and every ``equal:`` of the inhibitions must keep all identity labels. The
promtool test ``tests/rules/fleet/two_clusters.yml`` has two clusters sharing instance names; it passes
on rules rendered with the setting and fails on the default rules (which merge the two hosts), and a
real Alertmanager with the rendered inhibitions never lets one cluster's cause mute another's symptom.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness.alerting import running_alertmanager

from exporter.mixin import inhibitions, rules
from exporter.mixin.cli import dashboards_main, rules_main

ROOT = Path(__file__).resolve().parents[1]
CASE = ROOT / "tests" / "rules" / "fleet" / "two_clusters.yml"
PROMTOOL = shutil.which("promtool")
AMTOOL = shutil.which("amtool")
FLEET = ["--set", "identity_labels=cluster,instance"]
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian package prometheus) missing")


def _render(out: Path, *extra: str) -> tuple[dict[str, Any], str]:
    assert rules_main(["render", "--out", str(out), *extra]) == 0
    rule_file = yaml.safe_load((out / rules.RULES_FILE).read_text(encoding="utf-8"))
    return rule_file, (out / inhibitions.ALERTMANAGER_FILE).read_text(encoding="utf-8")


def _exprs(rule_file: dict[str, Any]) -> list[str]:
    return [r["expr"] for g in rule_file["groups"] for r in g["rules"]]


def _promtool_test(rule_dir: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    case = yaml.safe_load(CASE.read_text(encoding="utf-8"))
    case["rule_files"] = [str(rule_dir / rules.RULES_FILE)]
    path = tmp_path / f"{rule_dir.name}-{CASE.name}"
    path.write_text(yaml.safe_dump(case, sort_keys=False), encoding="utf-8")
    return subprocess.run(
        [PROMTOOL, "test", "rules", str(path)], capture_output=True, text=True, timeout=60, check=False
    )


def test_identity_labels_reach_every_aggregation_join_and_inhibition(tmp_path: Path) -> None:
    rule_file, am = _render(tmp_path, *FLEET)
    groupings = [g for e in _exprs(rule_file) for g in re.findall(r"\b(?:by|on) \(([^)]*)\)", e)]
    assert groupings, "no aggregation found"
    host_groupings = [g for g in groupings if "instance" in g.split(", ")]
    assert host_groupings and all(g.startswith("cluster, instance") for g in host_groupings), host_groupings
    text = (tmp_path / rules.RULES_FILE).read_text(encoding="utf-8")
    # Every template query of the alert's host filters on both labels.
    assert "instance=%q" in text
    assert text.count("{instance=%q") == 0 and text.count(",instance=%q") == text.count(
        "cluster=%q,instance=%q"
    )
    assert "$labels.cluster $labels.instance" in text
    equals = re.findall(r"equal: \[(.*)\]", am)
    assert equals and set(equals) == {"cluster, instance"}, equals
    assert "group_by: [cluster, instance]" in am
    assert "identity_labels=cluster,instance" in text.splitlines()[2]
    if PROMTOOL is not None:
        check = subprocess.run([PROMTOOL, "check", "rules", str(tmp_path / rules.RULES_FILE)],
                               capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        assert check.returncode == 0, check.stdout + check.stderr
    if AMTOOL is not None:
        check = subprocess.run([AMTOOL, "check-config", str(tmp_path / inhibitions.ALERTMANAGER_FILE)],
                               capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        assert check.returncode == 0, check.stdout + check.stderr


def test_default_identity_renders_the_committed_rules(tmp_path: Path) -> None:
    """``identity_labels=instance`` is the default: the shipped files are what it renders."""
    _render(tmp_path, "--set", "identity_labels=instance")
    for name in (rules.RULES_FILE, inhibitions.ALERTMANAGER_FILE):
        assert (tmp_path / name).read_text(encoding="utf-8") == (ROOT / "rules" / name).read_text(
            encoding="utf-8"
        ), f"{name}: the default identity must render the committed file"


def test_selector_is_added_to_every_series(tmp_path: Path) -> None:
    rule_file, _ = _render(tmp_path, "--set", 'selector=job="badgateway",env=~"prod|stage"')
    text = (tmp_path / rules.RULES_FILE).read_text(encoding="utf-8")
    series = re.findall(r"(?<![\w:])badgateway_[a-z0-9_]+(?![\w:])(\{[^}]*\})?", "\n".join(_exprs(rule_file)))
    assert series and all(s.startswith('{job="badgateway",env=~"prod|stage"') for s in series), series
    assert 'badgateway_cause_info{job="badgateway",env=~"prod|stage",instance=%q' in text
    if PROMTOOL is not None:
        check = subprocess.run([PROMTOOL, "check", "rules", str(tmp_path / rules.RULES_FILE)],
                               capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        assert check.returncode == 0, check.stdout + check.stderr


@needs_promtool
def test_two_clusters_sharing_an_instance_name(tmp_path: Path) -> None:
    fleet_dir = tmp_path / "fleet"
    _render(fleet_dir, *FLEET)
    done = _promtool_test(fleet_dir, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    # The same series against the default rules: the two web-1 hosts are one alert with both fixes,
    # and us/web-2's cause silences eu/web-2's symptom. The setting is what makes the fleet right.
    default_dir = tmp_path / "default"
    _render(default_dir)
    merged = _promtool_test(default_dir, tmp_path)
    assert merged.returncode != 0
    report = merged.stdout + merged.stderr
    assert "php8.2-fpm\\n\\nUnit: php8.3-fpm.service" in report, report


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("identity_labels=cluster", "must include instance"),
        ("identity_labels=cluster,cluster,instance", "named twice"),
        ("identity_labels=clus-ter,instance", "is not a label name"),
        ("selector=job=badgateway", "expected PromQL label matchers"),
        ('selector=job="a`b"', "expected PromQL label matchers"),
    ],
)
@pytest.mark.parametrize("command", ["rules", "dashboards"])
def test_bad_identity_settings_are_one_line_and_exit_2(
    command: str, assignment: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main = rules_main if command == "rules" else dashboards_main
    assert main(["render", "--out", str(tmp_path), "--set", assignment]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err, err


def _alert(name: str, cluster: str, instance: str) -> dict[str, Any]:
    now = datetime.now(UTC)
    category = "symptom" if name == "NginxGatewayErrors" else "cause"
    return {
        "labels": {"alertname": name, "cluster": cluster, "instance": instance, "job": "badgateway",
                   "severity": "critical", "category": category},
        "annotations": {"summary": f"{name} on {cluster}/{instance}"},
        "startsAt": now.isoformat(),
        "endsAt": (now + timedelta(minutes=10)).isoformat(),
    }  # fmt: skip


def test_a_cause_in_one_cluster_never_inhibits_another(tmp_path: Path) -> None:
    """A real Alertmanager with the rendered inhibitions: PhpFpmDown on eu/web-1 mutes eu/web-1's symptom
    only; us/web-1 (same instance name) and eu/web-2 keep theirs."""
    _, am = _render(tmp_path / "rules", *FLEET)
    config = yaml.safe_load(am)
    with running_alertmanager(tmp_path / "am", config) as alertmanager:
        sent = [
            _alert("PhpFpmDown", "eu", "web-1:9502"),
            _alert("NginxGatewayErrors", "eu", "web-1:9502"),
            _alert("NginxGatewayErrors", "us", "web-1:9502"),
            _alert("NginxGatewayErrors", "eu", "web-2:9502"),
        ]
        body = json.dumps(sent).encode()
        request = urllib.request.Request(f"{alertmanager.url}/api/v2/alerts", data=body, method="POST",
                                         headers={"Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(request, timeout=5):  # loopback only
            pass
        expected = {("NginxGatewayErrors", "eu", "web-1:9502")}
        deadline = time.monotonic() + 30
        while True:
            got = alertmanager.alerts()
            keys = {(a["labels"]["alertname"], a["labels"]["cluster"], a["labels"]["instance"]) for a in got}
            inhibited = {
                (a["labels"]["alertname"], a["labels"]["cluster"], a["labels"]["instance"])
                for a in got
                if a["status"]["state"] == "suppressed" and a["status"]["inhibitedBy"]
            }
            if len(keys) == len(sent) and inhibited == expected:
                break
            assert time.monotonic() < deadline, f"inhibited {sorted(inhibited)}, expected {sorted(expected)}"
            time.sleep(0.1)
