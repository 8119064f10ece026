"""Unit states from a real systemd drive the diagnosis: stopped units are causes, disabled ones warnings."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from harness import wait_until
from harness.exporters import parse, running_exporter
from harness.systemd import BACKEND, NGINX, PHP_FPM, SystemdHarness, require_systemd

from exporter.config import Config, config_from_dict
from exporter.diagnosis import Verdict, diagnose
from exporter.rounds import Prober


@pytest.fixture(scope="module")
def systemd() -> Iterator[SystemdHarness]:
    require_systemd()
    harness = SystemdHarness()
    harness.start()
    try:
        for unit in (PHP_FPM, BACKEND, NGINX):
            harness.start_unit(unit)
        for unit in (PHP_FPM, BACKEND, NGINX):
            harness.wait_state(unit, "active")
        wait_backend(harness)
        yield harness
    finally:
        harness.stop()


def wait_backend(harness: SystemdHarness) -> None:
    """systemd calls a simple service active at exec; uvicorn listens a moment later."""

    def answers() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{harness.backend_port}/", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(answers, 15, "the backend to answer")


def harness_config(harness: SystemdHarness) -> Config:
    stack = harness.stack
    return config_from_dict(
        {
            "php_fpm": [{"socket": f"{stack}/run/php.sock", "timeout_seconds": 1.0}],
            "http": [
                {
                    "name": "backend",
                    "url": f"http://127.0.0.1:{harness.backend_port}/",
                    "timeout_seconds": 1.0,
                },
                {"name": "front", "url": f"http://127.0.0.1:{harness.nginx_port}/", "role": "front"},
            ],
            "nginx": {"test": False},
            "thresholds": {"oom_kill_window_seconds": 60.0},  # the host's own OOM kills are not this stack's
            "processes": {
                "nginx": r"^nginx: master process .*" + re.escape(str(stack)),
                "php_fpm": r"^php-fpm: master process \(" + re.escape(str(stack)),
                "backend": r"uvicorn .*--port " + str(harness.backend_port),
            },
            "filesystems": [str(stack)],
            "units": {
                "nginx": NGINX,
                "php_fpm": PHP_FPM,
                "backend": BACKEND,
                "bus_address": harness.bus_address,
            },
        }
    )


def test_units_feed_the_diagnosis(systemd: SystemdHarness) -> None:
    config = harness_config(systemd)
    prober = Prober(config)
    try:
        healthy = diagnose(prober.run_round(5.0), config)
        assert healthy.causes == frozenset()
        not_enabled = [
            f for f in healthy.findings if f.step.startswith("unit:") and f.verdict == Verdict.WARN
        ]
        assert {f.step for f in not_enabled} == {f"unit:{u}" for u in (PHP_FPM, BACKEND, NGINX)}
        assert "sudo systemctl enable php8.2-fpm" in next(f for f in not_enabled if PHP_FPM in f.step).fix

        systemd.enable([PHP_FPM])
        enabled = diagnose(prober.run_round(5.0), config)
        php = next(f for f in enabled.findings if f.step == f"unit:{PHP_FPM}")
        assert php.verdict == Verdict.OK

        systemd.stop_unit(PHP_FPM)
        systemd.wait_state(PHP_FPM, "inactive")
        stopped = diagnose(prober.run_round(5.0), config)
        assert stopped.causes == frozenset({"php_fpm_down"})
        php = next(f for f in stopped.findings if f.step == f"unit:{PHP_FPM}")
        assert php.verdict == Verdict.FAIL
        assert php.fix[0] == "sudo systemctl start php8.2-fpm"
        systemd.start_unit(PHP_FPM)
        systemd.wait_state(PHP_FPM, "active")

        systemd.stop_unit(BACKEND)
        systemd.wait_state(BACKEND, "inactive")
        assert diagnose(prober.run_round(5.0), config).causes == frozenset({"backend_down"})
        systemd.start_unit(BACKEND)
        systemd.wait_state(BACKEND, "active")
        wait_backend(systemd)
    finally:
        prober.close()


def test_unit_metrics_on_the_scrape(systemd: SystemdHarness) -> None:
    with running_exporter(harness_config(systemd)) as exporter:
        scrape = exporter.scrape()
    assert scrape.value("badgateway_systemd_available") == 1
    assert scrape.value("badgateway_unit_state", unit=PHP_FPM, state="active") == 1
    assert scrape.value("badgateway_unit_loaded", unit=NGINX) == 1
    assert scrape.value("badgateway_collector_success", collector="units") == 1
    assert parse(scrape.text).causes() == set()


def test_no_systemd_leaves_the_process_view_in_charge(tmp_path: object) -> None:
    config = config_from_dict(
        {"units": {"bus_address": "unix:path=/nonexistent/bus"}, "http": [], "php_fpm": []}
    )
    prober = Prober(config)
    try:
        results = prober.run_round(2.0)
    finally:
        prober.close()
    assert results.units is not None and not results.units.available
    units_finding = next(f for f in diagnose(results, config).findings if f.step == "units")
    assert units_finding.verdict == Verdict.SKIP
