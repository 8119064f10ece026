"""Why a unit is down, from a real systemd: Result, the main process's exit, the time, a restart loop.

A backend that crashes at boot (uvicorn cannot import its app), the same one under ``Restart=always``
(a restart loop), a unit SIGKILLed, one that hits its start limit: each run for real as units of the
harness's system-mode systemd, read by the units check over D-Bus, shown by ``diagnose`` and /metrics.
"""

from __future__ import annotations

import dataclasses
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import free_port, wait_until
from harness.exporters import running_exporter
from harness.systemd import BACKEND, NGINX, PHP_FPM, SystemdHarness, require_systemd

from exporter.causes import Cause
from exporter.checks.processes import ProcessesCheck
from exporter.checks.units import UnitsCheck, UnitStatus
from exporter.config import Config, ProcessPatterns, config_from_dict
from exporter.deadline import Deadline
from exporter.diagnosis import Verdict, diagnose
from exporter.rounds import Prober

CRASH = "crash-at-boot.service"
LOOP = "crash-loop.service"
LIMIT = "start-limit.service"
EXCEPTION = "RuntimeError: could not connect to the database at 127.0.0.1:5432"
CRASH_APP = 'raise RuntimeError("could not connect to the database at 127.0.0.1:5432")\n'


@pytest.fixture(scope="module")
def systemd() -> Iterator[SystemdHarness]:
    require_systemd()
    harness = SystemdHarness()
    harness.start()
    try:
        harness.add_units(crash_units(harness))
        yield harness
    finally:
        harness.stop()


def crash_units(harness: SystemdHarness) -> dict[str, str]:
    """A uvicorn backend whose app raises at import, once plain and once under Restart=always."""
    stack = harness.stack
    (stack / "crashapp.py").write_text(CRASH_APP, encoding="utf-8")
    port = free_port()
    command = f"{sys.executable} -m uvicorn --app-dir {stack} crashapp:app --host 127.0.0.1 --port {port}"
    service = f"[Service]\nType=simple\nExecStart={command}\n"  # its output goes to the journal
    return {
        CRASH: f"[Unit]\nDescription=backend that crashes at boot (test)\n\n{service}",
        LOOP: "[Unit]\nDescription=backend in a restart loop (test)\nStartLimitIntervalSec=0\n\n"
        f"{service}Restart=always\nRestartSec=200ms\n",
        LIMIT: "[Unit]\nDescription=hits its start limit (test)\nStartLimitIntervalSec=60\nStartLimitBurst=3\n\n"
        "[Service]\nType=simple\nExecStart=/bin/false\nRestart=always\nRestartSec=50ms\n",
    }


def backend_config(harness: SystemdHarness, unit: str) -> Config:
    """The exporter aimed at the harness, with ``unit`` as the backend's unit (nothing else checked)."""
    port = free_port()
    return config_from_dict(
        {
            "php_fpm": [],
            "http": [{"name": "backend", "url": f"http://127.0.0.1:{port}/health", "timeout_seconds": 0.5}],
            "nginx": {"test": False},
            "php_fpm_test": {"test": False},
            "thresholds": {"oom_kill_window_seconds": 1.0},
            "processes": {"backend": r"uvicorn .*--port " + str(port) + r"\b",
                          "nginx": "^nginx: master process .*" + re.escape(str(harness.stack)),
                          "php_fpm": r"^php-fpm: master process \(" + re.escape(str(harness.stack))},
            "filesystems": [str(harness.stack)],
            "units": {"nginx": NGINX, "php_fpm": PHP_FPM, "backend": unit, "bus_address": harness.bus_address,
                      "journal_directory": str(harness.journal_directory)},
        }
    )  # fmt: skip


def read(check: UnitsCheck, unit: str) -> UnitStatus:
    result = check.run(Deadline.after(5.0))
    assert result.available, result.error
    return next(u for u in result.units if u.name == unit)


def test_a_backend_that_crashes_at_boot_is_failed_with_its_exit(systemd: SystemdHarness) -> None:
    started = time.time()
    systemd.start_unit(CRASH)
    systemd.wait_state(CRASH, "failed", timeout=20)
    check = UnitsCheck([CRASH], systemd.bus_address)
    try:
        unit = read(check, CRASH)
    finally:
        check.close()
    assert (unit.result, unit.exit_code_name, unit.exec_main_status) == ("exit-code", "exited", 1)
    assert unit.how_it_ended() == "exit-code, status=1"
    assert unit.inactive_enter_timestamp_seconds is not None
    assert started - 1 <= unit.inactive_enter_timestamp_seconds <= time.time() + 1

    config = backend_config(systemd, CRASH)
    prober = Prober(config)
    try:
        diagnosis = diagnose(prober.run_round(5.0), config)
    finally:
        prober.close()
    assert Cause.BACKEND_DOWN in diagnosis.causes
    finding = next(f for f in diagnosis.findings if f.step == f"unit:{CRASH}")
    assert finding.verdict is Verdict.FAIL
    assert finding.title == f"The Python backend unit {CRASH} is failed (exit-code, status=1)"
    assert any(line.startswith("last exit: Result=exit-code, status=1 at ") for line in finding.evidence)
    assert f"journal: {EXCEPTION}" in finding.evidence  # why, from the backend's own output

    with running_exporter(config) as exporter:
        scrape = exporter.scrape()
    assert scrape.value("badgateway_unit_result", unit=CRASH, result="exit-code") == 1
    assert scrape.value("badgateway_unit_result", unit=CRASH, result="success") == 0
    assert scrape.value("badgateway_unit_main_exit_status", unit=CRASH, code="exited") == 1
    assert scrape.value("badgateway_unit_inactive_since_seconds", unit=CRASH) == pytest.approx(
        unit.inactive_enter_timestamp_seconds
    )
    systemd.reset_failed(CRASH)


def test_a_backend_in_a_restart_loop_is_shown_as_such(systemd: SystemdHarness) -> None:
    config = backend_config(systemd, LOOP)
    prober = Prober(config)
    check = UnitsCheck([LOOP], systemd.bus_address, restart_window_seconds=600)
    seen: list[UnitStatus] = []
    try:
        systemd.start_unit(LOOP)

        def looping() -> bool:
            seen[:] = [read(check, LOOP)]
            return (seen[0].restarts_in_window or 0) >= 3

        wait_until(looping, 30, f"{LOOP} to be restarted 3 times", interval=0.2, detail=lambda: str(seen))
        assert seen[0].n_restarts is not None and seen[0].n_restarts >= 3
        diagnosis = diagnose(prober.run_round(5.0), config)
    finally:
        check.close()
        prober.close()
        systemd.stop_unit(LOOP)
    assert Cause.BACKEND_DOWN in diagnosis.causes
    finding = next(f for f in diagnosis.findings if f.step == f"unit:{LOOP}")
    assert (finding.verdict, finding.title) == (
        Verdict.FAIL,
        f"The Python backend unit {LOOP} is in a restart loop",
    )
    assert any(line.startswith("restart loop: systemd restarted it ") for line in finding.evidence)
    # Starting it again is not the fix: its own log says why it fails.
    assert (
        diagnosis.fix(Cause.BACKEND_DOWN)[0]
        == f"sudo journalctl -u {LOOP.removesuffix('.service')} -n 50 --no-pager"
    )


def test_a_sigkilled_backend_ended_on_a_signal(systemd: SystemdHarness) -> None:
    systemd.start_unit(BACKEND)
    systemd.wait_state(BACKEND, "active")
    systemd.kill_unit(BACKEND, signal.SIGKILL)
    systemd.wait_state(BACKEND, "failed")
    check = UnitsCheck([BACKEND], systemd.bus_address)
    try:
        unit = read(check, BACKEND)
    finally:
        check.close()
    assert (unit.result, unit.exit_code_name, unit.exec_main_status) == ("signal", "killed", signal.SIGKILL)
    assert unit.how_it_ended() == "signal, SIGKILL"
    systemd.reset_failed(BACKEND)


def test_a_unit_that_hits_its_start_limit(systemd: SystemdHarness) -> None:
    systemd.start_unit(LIMIT)
    systemd.wait_for(LIMIT, lambda v: v["ActiveState"] == "failed" and v["NRestarts"] == 3, timeout=20,
                     props=("ActiveState", "NRestarts"))  # fmt: skip
    # systemd 252 keeps the first failure's Result (exit-code) when the start limit then stops the
    # restarts ("Start request repeated too quickly"): the restarts are what tell.
    check = UnitsCheck([LIMIT], systemd.bus_address)
    try:
        unit = read(check, LIMIT)
    finally:
        check.close()
    assert (unit.active_state, unit.result, unit.n_restarts, unit.restarts_in_window) == (
        "failed",
        "exit-code",
        3,
        3,
    )
    config = backend_config(systemd, LIMIT)
    prober = Prober(config)
    try:
        diagnosis = diagnose(prober.run_round(5.0), config)
    finally:
        prober.close()
    finding = next(f for f in diagnosis.findings if f.step == f"unit:{LIMIT}")
    assert finding.title == f"The Python backend unit {LIMIT} is failed (exit-code, status=1)"
    assert any(line.startswith("restart loop: systemd restarted it 3 times") for line in finding.evidence)
    assert diagnosis.fix(Cause.BACKEND_DOWN) == (
        "sudo journalctl -u start-limit -n 50 --no-pager",
        "fix what it says, then: sudo systemctl reset-failed start-limit && sudo systemctl restart start-limit",
    )
    systemd.reset_failed(LIMIT)


def test_a_broken_pool_under_systemd_names_the_file_and_line(systemd: SystemdHarness) -> None:
    """php8.2-fpm.service with ``pm.max_children = abc``: failed with status 78; php-fpm -t and its
    journal both name the file and line; the fix is the file, not ``systemctl start``."""
    conf = systemd.stack / "php-fpm.conf"
    good = conf.read_text(encoding="utf-8")
    systemd.add_units({PHP_FPM: f"[Service]\nType=simple\nExecStart=/usr/sbin/php-fpm8.2 -F -y {conf}\n"})
    conf.write_text(good.replace("pm.max_children = 1", "pm.max_children = abc"), encoding="utf-8")
    line = next(i for i, text in enumerate(good.splitlines(), 1) if text.startswith("pm.max_children"))
    where = f"{conf}:{line}"
    try:
        systemd.start_unit(PHP_FPM)
        systemd.wait_state(PHP_FPM, "failed")
        for tested in (True, False):  # php-fpm -t, then (as when it cannot run) the journal alone
            base = backend_config(systemd, BACKEND)
            settings = {"test": tested, "configs": [str(conf)]}
            config = dataclasses.replace(
                base, php_fpm_test=config_from_dict({"php_fpm_test": settings}).php_fpm_test
            )
            prober = Prober(config)
            try:
                diagnosis = diagnose(prober.run_round(5.0), config)
            finally:
                prober.close()
            shown = [f for f in diagnosis.findings if f.step in ("php_fpm_config", f"unit:{PHP_FPM}")]
            assert Cause.PHP_FPM_CONFIG_INVALID in diagnosis.now, (tested, shown)
            assert Cause.PHP_FPM_DOWN not in diagnosis.causes
            assert diagnosis.fix(Cause.PHP_FPM_CONFIG_INVALID) == (
                f"fix {where}, then: sudo php-fpm8.2 -t",
                "sudo systemctl start php8.2-fpm",
            )
            unit = next(f for f in diagnosis.findings if f.step == f"unit:{PHP_FPM}")
            assert unit.title == f"PHP-FPM unit {PHP_FPM} is failed (exit-code, status=78)"
            assert any(f"journal: ERROR: [{where}] unable to parse value" in e for e in unit.evidence)
            assert unit.fix[0] == f"fix {where}, then: sudo php-fpm8.2 -t"
    finally:
        conf.write_text(good, encoding="utf-8")
        systemd.reset_failed(PHP_FPM)


def test_a_stuck_journal_reader_does_not_stall_the_scrape(systemd: SystemdHarness, tmp_path: Path) -> None:
    stuck = tmp_path / "journalctl"
    stuck.write_text("#!/bin/sh\nexec sleep 30\n", encoding="ascii")
    stuck.chmod(0o755)
    systemd.start_unit(CRASH)
    systemd.wait_state(CRASH, "failed", timeout=20)
    base = backend_config(systemd, CRASH)
    config = dataclasses.replace(base, units=dataclasses.replace(base.units, journalctl=str(stuck)))
    prober = Prober(config)
    try:
        started = time.monotonic()
        results = prober.run_round(2.0)
        took = time.monotonic() - started
    finally:
        prober.close()
        systemd.reset_failed(CRASH)
    assert took < 2.5
    assert results.units is not None and results.units.available  # the states came back in time
    crash = next(u for u in results.units.units if u.name == CRASH)
    assert crash.active_state == "failed" and crash.journal is not None and crash.journal.error == "timeout"
    units = next(o for o in results.collectors if o.collector == "units")
    assert units.success
    finding = next(f for f in diagnose(results, config).findings if f.step == f"unit:{CRASH}")
    assert f"journal of {CRASH} not read: timeout" in finding.evidence


def test_the_backend_is_its_units_process_not_any_with_its_title(systemd: SystemdHarness) -> None:
    """A decoy whose command line matches the backend's pattern runs outside the unit: not counted."""
    systemd.start_unit(BACKEND)
    systemd.wait_state(BACKEND, "active")
    pattern = r"uvicorn .*--port " + str(systemd.backend_port) + r"\b"
    decoy = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "uvicorn", "--port", str(systemd.backend_port)]
    )
    try:
        patterns = ProcessPatterns(nginx="(?!)", php_fpm="(?!)", backend=pattern)
        by_title = ProcessesCheck(patterns).run(Deadline.after(5)).of("backend")
        assert by_title is not None and decoy.pid in by_title.main_pids and len(by_title.main_pids) == 2
        (unit_main,) = set(by_title.main_pids) - {decoy.pid}  # the unit's MainPID, as the host numbers it
        by_unit = ProcessesCheck(patterns, units={"backend": BACKEND}).run(Deadline.after(5)).of("backend")
        assert by_unit is not None and by_unit.main_pids == (unit_main,)
    finally:
        decoy.kill()
        decoy.wait()
