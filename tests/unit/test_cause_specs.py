"""Every cause is one spec, and every spec has what the page, the runbook and the fault matrix need."""

from __future__ import annotations

from pathlib import Path

from exporter.causes import CAUSES, SPECS, Cause
from exporter.demo.catalogue import FAULTS, FAULTS_BY_NAME

ROOT = Path(__file__).resolve().parents[2]


def test_every_cause_has_exactly_one_spec() -> None:
    assert [spec.cause for spec in SPECS] == list(CAUSES)
    assert set(CAUSES) == set(Cause)
    assert len({spec.alert for spec in SPECS}) == len(SPECS)


def test_every_spec_names_faults_of_the_catalogue_that_inject_it() -> None:
    for spec in SPECS:
        assert spec.faults, f"{spec.cause}: no fault in the catalogue"
        for name in spec.faults:
            assert name in FAULTS_BY_NAME, f"{spec.cause}: fault {name!r} is not in the catalogue"
            assert FAULTS_BY_NAME[name].cause is spec.cause, f"{name} injects {FAULTS_BY_NAME[name].cause}"


def test_every_fault_of_the_catalogue_is_listed_by_its_cause() -> None:
    for fault in FAULTS:
        assert fault.name in CAUSES[fault.cause].faults, f"{fault.name} is missing from {fault.cause}'s spec"


def test_every_spec_has_both_runbooks() -> None:
    for spec in SPECS:
        for path in spec.runbooks:
            text = (ROOT / path).read_text(encoding="utf-8")
            assert text.startswith(f"# {spec.alert}"), path
            assert f"`{spec.cause.value}`" in text, f"{path} does not name its cause label"


def test_every_spec_names_the_collectors_it_decides_from() -> None:
    known = {"processes", "units", "sockets", "fastcgi", "http", "resources", "nginx_config", "logs",
             "php_fpm_config", "database"}  # fmt: skip
    for spec in SPECS:
        assert spec.evidence, spec.cause
        assert set(spec.evidence) <= known, spec.cause


def test_an_inhibition_names_only_alerts_that_exist() -> None:
    alerts = {spec.alert for spec in SPECS} | {"NginxGatewayErrors", "DiskWillFillSoon"}
    for spec in SPECS:
        for inhibition in spec.explains:
            assert set(inhibition.target_alerts) <= alerts, spec.cause
            assert spec.alert not in inhibition.target_alerts
