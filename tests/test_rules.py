"""Alert rules, Alertmanager inhibition and runbooks, as rendered by :mod:`exporter.mixin` from the specs.

``tests/rules/<AlertName>.yml`` are promtool unit tests of one alert each, written against series
shaped like the exporter's output. Before promtool runs them, this module merges the healthy host of
``tests/rules/healthy_host.yml`` into every test (a test's own series replace the healthy one with
the same name and labels), points ``rule_files`` at the committed rules and adds the expected
``runbook_url`` annotations. Each file also runs by itself, with the series it needs and the
committed rules (``promtool test rules tests/rules/*.yml``).

The cause tests feed ``badgateway_cause_info`` as the exporter exports it (the facts of the evidence
and the fix ``diagnose`` prints): their expected descriptions are what the person paged reads.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness import free_port

from exporter.causes import CAUSES, SPECS, Cause, Inhibition
from exporter.mixin import alerts as alert_table
from exporter.mixin import inhibitions, rules, runbooks
from exporter.mixin.alerts import ALERT_NAMES
from exporter.mixin.cli import dashboards_main, rules_main
from exporter.mixin.settings import MixinError, Settings, format_duration, parse_duration

ROOT = Path(__file__).resolve().parents[1]
RULES_DIR = ROOT / "rules"
RULES_PATH = RULES_DIR / rules.RULES_FILE
AM_CONFIG = RULES_DIR / "alertmanager.yml"
CASES_DIR = ROOT / "tests" / "rules"
BASELINE = CASES_DIR / "healthy_host.yml"
RUNBOOKS = ROOT / "docs" / "runbooks"
METRICS_DOC = ROOT / "docs" / "metrics.md"
TIMEOUT = 120

PROMTOOL = shutil.which("promtool")
AMTOOL = shutil.which("amtool")
ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian package prometheus) missing")

_SERIES_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)\{(.*)\}$")
_LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
_METRIC_RE = re.compile(r"(?<![\w:])badgateway_[a-z0-9_]+(?![\w:])")


def _run(args: list[str], timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)


def _rendered() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(RULES_PATH.read_text(encoding="utf-8"))
    return loaded


def _alert_rules() -> list[dict[str, Any]]:
    return [r for g in _rendered()["groups"] for r in g["rules"] if "alert" in r]


def _alert_names() -> list[str]:
    return [r["alert"] for r in _alert_rules()]


def _case_files() -> list[Path]:
    return sorted(p for p in CASES_DIR.glob("*.yml") if p != BASELINE)


def _series_key(selector: str) -> tuple[str, frozenset[tuple[str, str]]]:
    match = _SERIES_RE.match(selector.strip())
    assert match, f"cannot parse series {selector!r}"
    return match.group(1), frozenset(_LABEL_RE.findall(match.group(2)))


def _baseline() -> list[dict[str, str]]:
    (healthy,) = yaml.safe_load(BASELINE.read_text(encoding="utf-8"))["tests"]
    series: list[dict[str, str]] = healthy["input_series"]
    return series


def _prepared(case: Path, tmp_path: Path) -> Path:
    """The promtool test file for ``case``: baseline merged, rule file and runbook URLs filled in."""
    data = yaml.safe_load(case.read_text(encoding="utf-8"))
    data["rule_files"] = [str(RULES_PATH)]
    base = Settings().runbook_base_url
    baseline = _baseline()
    for test in data["tests"]:
        own = test.get("input_series") or []
        keys = {_series_key(s["series"]) for s in own}
        test["input_series"] = [s for s in baseline if _series_key(s["series"]) not in keys] + own
        for check in test.get("alert_rule_test") or []:
            for alert in check.get("exp_alerts") or []:
                annotations = alert.setdefault("exp_annotations", {})
                annotations.setdefault("runbook_url", f"{base}/{check['alertname']}.md")
                annotations.setdefault("runbook_url_ru", f"{base}/ru/{check['alertname']}.md")
    out = tmp_path / case.name
    out.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return out


# ---------------------------------------------------------------- the shipped files


def test_committed_rules_equal_a_fresh_render() -> None:
    rendered = rules.render(Settings())
    assert set(rendered) == {rules.RULES_FILE, inhibitions.ALERTMANAGER_FILE}
    for name, text in rendered.items():
        assert (RULES_DIR / name).read_text(encoding="utf-8") == text, (
            f"rules/{name} is stale: run badgateway-exporter rules render"
        )
    for name, text in runbooks.render(Settings()).items():
        assert (RUNBOOKS / name).read_text(encoding="utf-8") == text, (
            f"docs/runbooks/{name} is stale: run badgateway-exporter rules render"
        )


@needs_promtool
def test_promtool_check_rules() -> None:
    assert PROMTOOL is not None
    proc = _run([PROMTOOL, "check", "rules", str(RULES_PATH)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.skipif(AMTOOL is None, reason="amtool (Debian package prometheus-alertmanager) missing")
def test_amtool_check_config() -> None:
    assert AMTOOL is not None
    proc = _run([AMTOOL, "check-config", str(AM_CONFIG)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_alert_has_labels_annotations_and_scope() -> None:
    for rule in _alert_rules():
        name = rule["alert"]
        labels, annotations = rule["labels"], rule["annotations"]
        assert labels["severity"] in {"critical", "warning"}, name
        assert labels["cause"], name
        assert labels["category"] in {"cause", "symptom", "warning", "exporter"}, name
        assert set(annotations) >= {"summary", "description", "runbook_url", "runbook_url_ru"}, name
        assert "$labels.instance" in annotations["summary"], name
        assert "$labels.instance" in annotations["description"], name
        assert "Fix:" in annotations["description"], name
        assert annotations["runbook_url"].endswith(f"/{name}.md"), name
        assert "by (instance" in rule["expr"], f"{name}: PromQL not scoped by (instance)"
        # The current value: $value, or a query of the detail series.
        assert "$value" in annotations["description"] or "query" in annotations["description"], name


def test_paging_budget_for_a_dead_php_fpm() -> None:
    """A dead PHP-FPM pages within 2 minutes: scrape + evaluation + for: + group_wait."""
    rule = next(r for r in _alert_rules() if r["alert"] == CAUSES[Cause.PHP_FPM_DOWN].alert)
    am = yaml.safe_load(AM_CONFIG.read_text(encoding="utf-8"))
    budget = 15 + 15 + parse_duration(rule["for"]) + parse_duration(am["route"]["group_wait"])
    assert budget <= 120
    assert parse_duration(rule["for"]) >= 60, "a restart blip must not page"


# ---------------------------------------------------------------- one source of truth


def test_causes_alerts_and_runbooks_do_not_drift() -> None:
    cause_rules = {
        r["labels"]["cause"]: r["alert"] for r in _alert_rules() if r["labels"]["category"] == "cause"
    }
    assert cause_rules == {c.value: info.alert for c, info in CAUSES.items()}
    assert set(CAUSES) == set(Cause)
    for info in CAUSES.values():
        rule = next(r for r in _alert_rules() if r["alert"] == info.alert)
        assert rule["expr"] == f'max by (instance) (badgateway_cause{{cause="{info.cause.value}"}}) == 1'
        assert (ROOT / info.runbook_path).is_file(), info.runbook_path
    names = set(_alert_names())
    assert len(names) == len(_alert_names()), "duplicate alert names"
    for name in names:
        assert (RUNBOOKS / f"{name}.md").is_file(), f"docs/runbooks/{name}.md missing"
        assert (RUNBOOKS / "ru" / f"{name}.md").is_file(), f"docs/runbooks/ru/{name}.md missing"
    for folder in (RUNBOOKS, RUNBOOKS / "ru"):
        extra = {p.stem for p in folder.glob("*.md") if p.name != runbooks.INDEX_FILE} - names
        assert not extra, f"runbooks without an alert in {folder}: {sorted(extra)}"
    doc = (ROOT / "docs" / "alerting.md").read_text(encoding="utf-8")
    for name in names:
        assert name in doc, f"docs/alerting.md does not list {name}"


def test_alertmanager_config_names_real_alerts() -> None:
    am = yaml.safe_load(AM_CONFIG.read_text(encoding="utf-8"))
    names = set(_alert_names())
    categories = {r["labels"]["category"] for r in _alert_rules()}
    for rule in am["inhibit_rules"]:
        assert rule["equal"] == ["instance"]
        for matcher in rule["source_matchers"] + rule["target_matchers"]:
            m = re.match(r'^(\w+)(=~|=)"(.*)"$', matcher)
            assert m, matcher
            key, op, value = m.groups()
            values = value.split("|") if op == "=~" else [value]
            if key == "alertname":
                assert set(values) <= names, matcher
            if key == "category":
                assert set(values) <= categories, matcher


def test_inhibitions_are_the_specs_explains() -> None:
    """Rule 1 mutes the symptom under any cause; every other rule is one ``explains`` of a spec."""
    am = yaml.safe_load(AM_CONFIG.read_text(encoding="utf-8"))
    first, *derived = am["inhibit_rules"]
    assert first == {
        "source_matchers": ['category="cause"'],
        "target_matchers": ['alertname="NginxGatewayErrors"'],
        "equal": ["instance"],
    }
    expected = []
    for spec in SPECS:
        for inhibition in spec.explains:
            targets = inhibition.target_alerts
            alertname = (
                f'alertname="{targets[0]}"' if len(targets) == 1 else f'alertname=~"{"|".join(targets)}"'
            )
            expected.append(
                {
                    "source_matchers": [f'alertname="{spec.alert}"'],
                    "target_matchers": [alertname, *(f'{k}="{v}"' for k, v in inhibition.target_labels)],
                    "equal": ["instance"],
                }
            )
    assert derived == expected
    text = AM_CONFIG.read_text(encoding="utf-8")
    for spec in SPECS:
        for inhibition in spec.explains:
            assert " ".join(inhibition.why.split()[:6]) in " ".join(text.replace("#", " ").split()), (
                f"the comment of {spec.alert}'s inhibition does not say why"
            )
    # The routing tree is the fixed part.
    assert am["route"]["group_by"] == ["instance"] and am["route"]["group_wait"] == "15s"
    assert [r["name"] for r in am["receivers"]] == ["oncall", "tickets"]


@pytest.mark.parametrize(
    ("explains", "message"),
    [
        ((Inhibition(("NoSuchAlert",), why="x"),), "MemoryExhausted explains NoSuchAlert: no such alert"),
        ((Inhibition(("BackendDown",), (("oom_kill", "maybe"),)),), "but oom_kill is recent/none"),
        ((Inhibition(("NginxDown",), (("oom_kill", "recent"),)),), "but NginxDown has no oom_kill label"),
    ],
)
def test_a_broken_inhibition_is_one_line(
    explains: tuple[Inhibition, ...], message: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    broken = tuple(
        dataclasses.replace(s, explains=explains) if s.cause is Cause.MEMORY_EXHAUSTED else s for s in SPECS
    )
    monkeypatch.setattr(inhibitions, "SPECS", broken)
    with pytest.raises(MixinError, match=re.escape(message)):
        rules.render(Settings())
    assert rules_main(["render", "--out", str(tmp_path)]) == 2


def test_an_unknown_label_template_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = CAUSES[Cause.BACKEND_DOWN]
    broken = dataclasses.replace(spec, page=dataclasses.replace(spec.page, labels=(("oom_kill", "nope"),)))
    monkeypatch.setattr(alert_table, "SPECS", tuple(broken if s is spec else s for s in SPECS))
    with pytest.raises(MixinError, match="BackendDown: unknown label template 'nope'"):
        rules.render(Settings())


def test_cause_descriptions_say_what_diagnose_says() -> None:
    """No evidence re-derived in templates: the meaning, then badgateway_cause_info's facts and fix."""
    for spec in SPECS:
        rule = next(r for r in _alert_rules() if r["alert"] == spec.alert)
        description = rule["annotations"]["description"]
        assert description.startswith(spec.page.meaning.replace("{instance}", "{{ $labels.instance }}"))
        (metric,) = set(_METRIC_RE.findall(description))
        assert metric == "badgateway_cause_info", spec.alert
        assert f'cause="{spec.cause.value}"' in description
        assert "$f.Labels.fix" in description and "badgateway-exporter diagnose" in description
        assert rule["for"] == format_duration(spec.page.for_seconds)
        assert rule["labels"]["severity"] == spec.page.severity
        assert {k for k in rule["labels"] if k not in {"severity", "cause", "category"}} == {
            label for label, _ in spec.page.labels
        }


# Site-specific names may appear in examples/ and tests/, never in what is rendered or generates it.
SITE_NAMES = ("iiko", "vezuroll", "php8.3", "sites-available")


def test_every_spec_is_covered() -> None:
    """Each spec has its alert, a promtool test, both runbooks and a dashboard panel."""
    alerts = set(_alert_names())
    dashboard = json.loads((ROOT / "grafana" / "dashboards" / "badgateway-overview.json").read_text("utf-8"))
    titles = {p["title"] for p in dashboard["panels"]}
    index = (RUNBOOKS / runbooks.INDEX_FILE).read_text(encoding="utf-8")
    problems = []
    for spec in SPECS:
        if spec.alert not in alerts or spec.alert not in ALERT_NAMES:
            problems.append(f"{spec.alert}: no alert in rules/")
        case = CASES_DIR / f"{spec.alert}.yml"
        if not case.is_file() or "badgateway_cause_info" not in case.read_text(encoding="utf-8"):
            problems.append(
                f"{spec.alert}: no promtool test tests/rules/{case.name} fed badgateway_cause_info"
            )
        for runbook in spec.runbooks:
            if not (ROOT / runbook).is_file():
                problems.append(f"{spec.alert}: no runbook {runbook}")
        if spec.alert not in titles:
            problems.append(f"{spec.alert}: no panel in grafana/dashboards/badgateway-overview.json")
        if f"| {spec.alert} | `{spec.cause.value}` |" not in index:
            problems.append(f"{spec.alert}: not in docs/runbooks/{runbooks.INDEX_FILE}")
    assert not problems, problems


# Runtime files that still name the reference site (defaults and docstrings outside the mixin): the
# list may only shrink, and the test fails when a file on it no longer needs to be.


def test_no_site_names_in_the_exporter_or_the_rules() -> None:
    found: dict[str, list[str]] = {}
    for folder in (ROOT / "exporter", RULES_DIR, RUNBOOKS / runbooks.INDEX_FILE):
        for path in sorted(folder.rglob("*")) if folder.is_dir() else [folder]:
            if not path.is_file() or "__pycache__" in path.parts or path.suffix in {".so", ".pyc"}:
                continue
            text = path.read_text(encoding="utf-8", errors="replace").lower()
            names = [name for name in SITE_NAMES if name in text]
            if names:
                found[str(path.relative_to(ROOT))] = names
    assert not found, found


def test_the_mixin_imports_nothing_of_the_runtime() -> None:
    """Rendering needs no host: exporter.mixin imports exporter.causes and no check, round or server."""
    code = (
        "import sys; import exporter.mixin.cli; "
        "print('\\n'.join(m for m in sys.modules if m.startswith('exporter')))"
    )
    proc = _run([sys.executable, "-c", code])
    assert proc.returncode == 0, proc.stderr
    loaded = set(proc.stdout.split())
    runtime = {
        m for m in loaded if not m.startswith(("exporter.mixin", "exporter.causes")) and m != "exporter"
    }
    assert not runtime, sorted(runtime)


def test_every_metric_in_rules_is_documented() -> None:
    used = rules.metric_names()
    assert used == set(_METRIC_RE.findall(RULES_PATH.read_text(encoding="utf-8")))
    assert "badgateway_cause" in used and "badgateway_nginx_upstream_errors_total" in used
    if not METRICS_DOC.exists():
        pytest.fail("docs/metrics.md does not exist yet")
    documented = set(_METRIC_RE.findall(METRICS_DOC.read_text(encoding="utf-8")))
    missing = sorted(used - documented)
    assert not missing, f"metrics used in rules/ but not in docs/metrics.md: {missing}"


def test_metrics_in_test_series_are_used_consistently() -> None:
    """The series the tests feed promtool are names the rules read (no typo silently passes)."""
    rule_metrics = set(_METRIC_RE.findall(RULES_PATH.read_text(encoding="utf-8")))
    fed = {_series_key(s["series"])[0] for s in _baseline()}
    for case in _case_files():
        for test in yaml.safe_load(case.read_text(encoding="utf-8"))["tests"]:
            fed |= {_series_key(s["series"])[0] for s in test.get("input_series") or []}
    assert rule_metrics <= fed, f"rules read metrics no test feeds: {sorted(rule_metrics - fed)}"


# ---------------------------------------------------------------- promtool test rules


def test_every_alert_has_a_firing_and_a_for_test() -> None:
    """Each alert: a test where it fires, and in the same test an earlier evaluation where it does not."""
    covered: set[str] = set()
    for case in _case_files():
        for test in yaml.safe_load(case.read_text(encoding="utf-8"))["tests"]:
            checks = test.get("alert_rule_test") or []
            for check in checks:
                if not check.get("exp_alerts"):
                    continue
                name = check["alertname"]
                fire_at = parse_duration(check["eval_time"])
                if any(
                    c["alertname"] == name
                    and not c.get("exp_alerts")
                    and 0 < parse_duration(c["eval_time"]) < fire_at
                    for c in checks
                ):
                    covered.add(name)
    missing = sorted(set(_alert_names()) - covered)
    assert not missing, f"alerts without a promtool test (firing + not before for:): {missing}"


def test_symptom_fires_on_gateway_errors_alone() -> None:
    case = CASES_DIR / "NginxGatewayErrors.yml"
    alone = 0
    for test in yaml.safe_load(case.read_text(encoding="utf-8"))["tests"]:
        own = {_series_key(s["series"])[0] for s in test.get("input_series") or []}
        fires = any(c.get("exp_alerts") for c in test.get("alert_rule_test") or [])
        if fires and "badgateway_cause" not in own:
            alone += 1
    assert alone >= 2, "the symptom must fire with every badgateway_cause at 0 (log errors, front status)"


@needs_promtool
@pytest.mark.parametrize("case", _case_files(), ids=lambda p: p.stem)
def test_promtool_test_rules(case: Path, tmp_path: Path) -> None:
    assert PROMTOOL is not None
    proc = _run([PROMTOOL, "test", "rules", str(_prepared(case, tmp_path))])
    assert proc.returncode == 0, proc.stdout + proc.stderr


@needs_promtool
def test_promtool_test_rules_on_the_files_as_they_are() -> None:
    """``promtool test rules tests/rules/*.yml`` from a checkout, without the baseline merge."""
    assert PROMTOOL is not None
    proc = _run([PROMTOOL, "test", "rules", *map(str, sorted(CASES_DIR.glob("*.yml")))])
    assert proc.returncode == 0, proc.stdout + proc.stderr


@needs_promtool
def test_healthy_host_is_silent(tmp_path: Path) -> None:
    checks: list[dict[str, object]] = [
        {"eval_time": t, "alertname": name, "exp_alerts": []}
        for name in _alert_names()
        for t in ("1m", "10m", "30m", "2h", "7h")
    ]
    # The file runs by itself too (promtool test rules tests/rules/healthy_host.yml): the same checks.
    (healthy,) = yaml.safe_load(BASELINE.read_text(encoding="utf-8"))["tests"]
    assert sorted(healthy["alert_rule_test"], key=str) == sorted(checks, key=str), (
        "tests/rules/healthy_host.yml does not check every alert at 1m, 10m, 30m, 2h and 7h"
    )
    for interval in ("15s", "5m"):
        case = tmp_path / f"healthy-{interval}.yml"
        data = {
            "rule_files": [str(RULES_PATH)],
            "evaluation_interval": interval,
            "tests": [{"interval": interval, "input_series": _baseline(), "alert_rule_test": checks}],
        }
        case.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        assert PROMTOOL is not None
        proc = _run([PROMTOOL, "test", "rules", str(case)])
        assert proc.returncode == 0, proc.stdout + proc.stderr


# ---------------------------------------------------------------- the rules command


def test_render_with_other_settings(tmp_path: Path) -> None:
    code = rules_main(
        [
            "render",
            "--out",
            str(tmp_path),
            "--runbook-base-url",
            "https://wiki.example.net/rb/",
            "--for-scale",
            "0.1",
            "--set",
            "gateway_error_rate=0.5",
            "--set",
            "for.PhpFpmDown=3m",
            "--set",
            "oom_window=1h",
        ]
    )
    assert code == 0
    assert not (tmp_path / runbooks.INDEX_FILE).exists(), "--out without --runbooks writes no index"
    text = (tmp_path / rules.RULES_FILE).read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    alerts = {r["alert"]: r for g in data["groups"] for r in g["rules"] if "alert" in r}
    assert alerts["PhpFpmDown"]["for"] == "18s"
    assert alerts["BackendDown"]["for"] == "6s"
    assert alerts["DiskWillFillSoon"]["for"] == "6m"
    assert "> 0.5\n" in alerts["NginxGatewayErrors"]["expr"]
    assert alerts["PhpFpmDown"]["annotations"]["runbook_url"] == "https://wiki.example.net/rb/PhpFpmDown.md"
    assert "[1h]) > 0" in alerts["BackendDown"]["labels"]["oom_kill"]
    assert "gateway_error_rate=0.5" in text.splitlines()[2]
    am = (tmp_path / inhibitions.ALERTMANAGER_FILE).read_text(encoding="utf-8")
    assert "+ for: 18s + group_wait 15s = at most 1m3s." in am  # the budget follows for.PhpFpmDown
    assert "increased in the last 1h" in am
    if AMTOOL is not None:
        proc = _run([AMTOOL, "check-config", str(tmp_path / inhibitions.ALERTMANAGER_FILE)])
        assert proc.returncode == 0, proc.stdout + proc.stderr
    if PROMTOOL is not None:
        proc = _run([PROMTOOL, "check", "rules", str(tmp_path / rules.RULES_FILE)])
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_for_scale_zero_drops_for(tmp_path: Path) -> None:
    assert rules_main(["render", "--out", str(tmp_path), "--for-scale", "0"]) == 0
    data = yaml.safe_load((tmp_path / rules.RULES_FILE).read_text(encoding="utf-8"))
    assert all("for" not in r for g in data["groups"] for r in g["rules"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["render", "--set", "nope=1"], "--set nope: unknown key"),
        (["render", "--set", "gateway_error_rate=abc"], "expected a number"),
        (["render", "--set", "for.NoSuchAlert=1m"], "no alert named"),
        (["render", "--set", "for.PhpFpmDown=soon"], "not a Prometheus duration"),
        (["render", "--set", "disk_fill_window=6 hours"], "disk_fill_window"),
        (["render", "--set", "novalue"], "expected KEY=VALUE"),
        (["render", "--for-scale", "-1"], "--for-scale"),
        (["render", "--for-scale", "fast"], "--for-scale"),
        (["render", "--runbook-base-url", "runbooks/"], "absolute URL"),
        (["render", "--set", "front_target=(["], "invalid regular expression"),
        # Site names are no settings any more: they come with badgateway_cause_info.
        (["render", "--set", "php_fpm_unit=php-fpm"], "--set php_fpm_unit: unknown key"),
        (["render", "--set", "nginx_site_config=/etc/nginx/x"], "--set nginx_site_config: unknown key"),
        (["explode"], "invalid choice"),
        ([], "required"),
    ],
)
@pytest.mark.parametrize("command", ["rules", "dashboards"])
def test_bad_input_is_one_line_and_exit_2(
    command: str, argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One error path for both commands: one line naming the command, exit 2."""
    if argv and argv[0] == "render":
        argv = [*argv, "--out", str(tmp_path / "out")]
    main = rules_main if command == "rules" else dashboards_main
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"badgateway-exporter {command}: ")
    assert message in err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_unwritable_out_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x", encoding="utf-8")
    assert rules_main(["render", "--out", str(blocker / "sub")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_check_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert rules_main(["check", "--out", str(RULES_DIR), "--runbooks", str(RUNBOOKS)]) == 0
    stale = tmp_path / "stale"
    stale.mkdir()
    (stale / rules.RULES_FILE).write_text("groups: []\n", encoding="utf-8")
    capsys.readouterr()
    assert rules_main(["check", "--out", str(stale)]) == 1
    err = capsys.readouterr().err
    assert f"{stale / rules.RULES_FILE}: differs from a fresh render" in err
    assert f"{stale / inhibitions.ALERTMANAGER_FILE}: cannot read" in err
    # The runbook index is checked too: a stale one is drift.
    index = tmp_path / "runbooks"
    index.mkdir()
    (index / runbooks.INDEX_FILE).write_text("# old\n", encoding="utf-8")
    assert rules_main(["check", "--out", str(RULES_DIR), "--runbooks", str(index)]) == 1
    assert f"{index / runbooks.INDEX_FILE}: differs" in capsys.readouterr().err


def test_durations() -> None:
    assert parse_duration("1m30s") == 90
    assert format_duration(90) == "1m30s"
    assert format_duration(3600) == "1h"
    assert format_duration(0.4) == "0s"


# ---------------------------------------------------------------- real Alertmanager inhibition


def _http(method: str, url: str, body: object | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:  # loopback only
        raw = response.read()
    return json.loads(raw) if raw else None


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[str]:
    if ALERTMANAGER is None:
        pytest.skip("prometheus-alertmanager missing")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "alertmanager.log").open("w")
    proc = subprocess.Popen(
        [
            ALERTMANAGER,
            f"--config.file={AM_CONFIG}",
            f"--storage.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=5):
                    break
            except (urllib.error.URLError, OSError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    pytest.fail("alertmanager did not start: " + (tmp_path / "alertmanager.log").read_text())
                time.sleep(0.05)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def _alert(name: str, instance: str, **labels: str) -> dict[str, Any]:
    rule = next(r for r in _alert_rules() if r["alert"] == name)
    now = datetime.now(UTC)
    static = {k: v for k, v in rule["labels"].items() if "{{" not in v}
    return {
        "labels": {"alertname": name, "instance": instance, "job": "badgateway", **static, **labels},
        "annotations": {"summary": f"{name} on {instance}"},
        "startsAt": now.isoformat(),
        "endsAt": (now + timedelta(minutes=10)).isoformat(),
    }


def test_alertmanager_inhibits_consequences(alertmanager: str) -> None:
    sent = [
        # web-1: a cause and the symptom -> the symptom is inhibited
        _alert("PhpFpmDown", "web-1:9502"),
        _alert("NginxGatewayErrors", "web-1:9502"),
        _alert("PhpFpmSocketPermissionDenied", "web-1:9502"),
        _alert("PhpFpmSocketPathMismatch", "web-1:9502"),
        _alert("PhpFpmPoolExhausted", "web-1:9502"),
        # web-2: the symptom alone -> it pages
        _alert("NginxGatewayErrors", "web-2:9502"),
        # web-7: a socket finding without PHP-FPM down -> it pages
        _alert("PhpFpmSocketPermissionDenied", "web-7:9502"),
        # web-3: nginx down mutes the upstream-side symptoms
        _alert("NginxDown", "web-3:9502"),
        _alert("UpstreamTimeout", "web-3:9502"),
        # web-4: memory exhausted + a backend the OOM killer stopped -> only memory pages
        _alert("MemoryExhausted", "web-4:9502"),
        _alert("BackendDown", "web-4:9502", oom_kill="recent"),
        # web-5: memory exhausted but the backend died without an OOM kill -> both page
        _alert("MemoryExhausted", "web-5:9502"),
        _alert("BackendDown", "web-5:9502", oom_kill="none"),
        # web-6: disk full mutes the will-fill-soon warning
        _alert("DiskFull", "web-6:9502"),
        _alert("DiskWillFillSoon", "web-6:9502", mountpoint="/"),
    ]
    _http("POST", f"{alertmanager}/api/v2/alerts", sent)
    expected_inhibited = {
        ("NginxGatewayErrors", "web-1:9502"),
        ("PhpFpmSocketPermissionDenied", "web-1:9502"),
        ("PhpFpmSocketPathMismatch", "web-1:9502"),
        ("PhpFpmPoolExhausted", "web-1:9502"),
        ("UpstreamTimeout", "web-3:9502"),
        ("BackendDown", "web-4:9502"),
        ("DiskWillFillSoon", "web-6:9502"),
    }
    expected = {(a["labels"]["alertname"], a["labels"]["instance"]): a for a in sent}
    deadline = time.monotonic() + 30
    while True:
        got = _http("GET", f"{alertmanager}/api/v2/alerts")
        states = {
            (a["labels"]["alertname"], a["labels"]["instance"]): (
                a["status"]["state"],
                a["status"]["inhibitedBy"],
            )
            for a in got
        }
        inhibited = {k for k, (state, by) in states.items() if state == "suppressed" and by}
        if set(states) == set(expected) and inhibited == expected_inhibited:
            break
        if time.monotonic() > deadline:
            pytest.fail(
                f"inhibited {sorted(inhibited)}, expected {sorted(expected_inhibited)}; states {states}"
            )
        time.sleep(0.1)
    # The same answer through amtool, as an operator would ask.
    if AMTOOL is not None:
        proc = _run(
            [AMTOOL, "alert", "query", "--inhibited", "-o", "json", f"--alertmanager.url={alertmanager}"], 30
        )
        assert proc.returncode == 0, proc.stderr
        listed = {(a["labels"]["alertname"], a["labels"]["instance"]) for a in json.loads(proc.stdout)}
        assert expected_inhibited <= listed
        proc = _run([AMTOOL, "alert", "query", "-o", "json", f"--alertmanager.url={alertmanager}"], 30)
        assert proc.returncode == 0, proc.stderr
        active = {(a["labels"]["alertname"], a["labels"]["instance"]) for a in json.loads(proc.stdout)}
        assert active == set(expected) - expected_inhibited
        assert ("NginxGatewayErrors", "web-2:9502") in active
        assert ("BackendDown", "web-5:9502") in active
        assert ("PhpFpmSocketPermissionDenied", "web-7:9502") in active
