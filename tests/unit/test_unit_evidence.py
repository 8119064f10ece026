"""What systemd and a unit's journal say, as the diagnosis reads it (hand-built rounds, no process started).

The real-systemd tests (tests/test_unit_failures.py) prove the check reads these values; these prove
what the runbook makes of them, line by line.
"""

from __future__ import annotations

import dataclasses

from test_diagnosis_table import _php_fpm_stopped, config, healthy

from exporter.causes import Cause, Verdict
from exporter.checks.journal import JournalLine, UnitJournal, parse_json_lines
from exporter.checks.units import UnitsResult, UnitStatus
from exporter.config import Config
from exporter.diagnosis import diagnose
from exporter.rounds import RoundResults

BACKEND = "shop-api.service"
PHP = "php8.2-fpm.service"
TRACEBACK = (
    "Traceback (most recent call last):",
    '  File "/srv/shop/app.py", line 3, in <module>',
    "    engine = connect(settings.DATABASE_URL)",
    "sqlalchemy.exc.OperationalError: (psycopg2.OperationalError) connection to server failed",
)


def _config() -> Config:
    base = config()
    return dataclasses.replace(base, units=dataclasses.replace(base.units, enabled=True))


def _unit(name: str, **values: object) -> UnitStatus:
    fields: dict[str, object] = dict(
        name=name, load_state="loaded", active_state="active", sub_state="running",
        unit_file_state="enabled", n_restarts=0, active_enter_timestamp_seconds=1.0, main_pid=42,
    )  # fmt: skip
    fields.update(values)
    return UnitStatus(**fields)  # type: ignore[arg-type]


def _with_units(r: RoundResults, *units: UnitStatus) -> RoundResults:
    others = [_unit("nginx.service"), _unit(PHP), _unit(BACKEND)]
    by_name = {u.name: u for u in [*others, *units]}
    return dataclasses.replace(r, units=UnitsResult(True, None, tuple(by_name.values())))


def _backend_refused(r: RoundResults) -> RoundResults:
    assert r.processes is not None
    procs = tuple(p for p in r.processes.services if p.service != "backend")
    backend = dataclasses.replace(
        r.http[0], up=False, status_code=None, error="connection_refused", detail="x"
    )
    return dataclasses.replace(r, processes=dataclasses.replace(r.processes, services=procs),
                               http=(backend, r.http[1]))  # fmt: skip


def _journal(name: str, *messages: str) -> UnitJournal:
    return UnitJournal(name, tuple(JournalLine(1.0, m) for m in messages))


def test_a_backend_that_crashed_at_boot_shows_its_exception() -> None:
    crashed = _unit(BACKEND, active_state="failed", sub_state="failed", main_pid=None, result="exit-code",
                    exec_main_code=1, exec_main_status=1, inactive_enter_timestamp_seconds=1764633600.0,
                    journal=_journal(BACKEND, "INFO:     Started server process [1]", *TRACEBACK))  # fmt: skip
    diagnosis = diagnose(_with_units(_backend_refused(healthy()), crashed), _config())
    assert diagnosis.causes == {Cause.BACKEND_DOWN}
    unit = next(f for f in diagnosis.findings if f.step == f"unit:{BACKEND}")
    assert unit.title == f"The Python backend unit {BACKEND} is failed (exit-code, status=1)"
    assert "last exit: Result=exit-code, status=1 at 2025-12-02 00:00:00 UTC" in unit.evidence
    assert f"journal: {TRACEBACK[-1]}" in unit.evidence
    assert not any("Traceback" in line for line in unit.evidence)


def test_a_restart_loop_is_shown_and_its_fix_reads_the_journal() -> None:
    looping = _unit(BACKEND, active_state="activating", sub_state="auto-restart", main_pid=None,
                    result="exit-code", exec_main_code=1, exec_main_status=3, n_restarts=7, restarts_in_window=7,
                    journal=_journal(BACKEND, "[ERROR] Worker failed to boot."))  # fmt: skip
    diagnosis = diagnose(_with_units(_backend_refused(healthy()), looping), _config())
    unit = next(f for f in diagnosis.findings if f.step == f"unit:{BACKEND}")
    assert (unit.verdict, unit.title) == (
        Verdict.FAIL,
        f"The Python backend unit {BACKEND} is in a restart loop",
    )
    assert (
        "restart loop: systemd restarted it 7 times in the last 10 min (7 since it was last started by hand)"
        in (unit.evidence)
    )
    assert "journal: [ERROR] Worker failed to boot." in unit.evidence
    assert diagnosis.fix(Cause.BACKEND_DOWN) == (
        "sudo journalctl -u shop-api -n 50 --no-pager",
        "fix what it says, then: sudo systemctl reset-failed shop-api && sudo systemctl restart shop-api",
    )


def test_php_fpms_journal_names_the_file_when_php_fpm_t_gave_no_verdict() -> None:
    line = "ERROR: [/etc/php/8.2/fpm/pool.d/www.conf:127] unable to parse value for entry 'pm.max_children'"
    failed = _unit(PHP, active_state="failed", sub_state="failed", main_pid=None, result="exit-code",
                   exec_main_code=1, exec_main_status=78,
                   journal=_journal(PHP, line, "ERROR: FPM initialization failed"))  # fmt: skip
    diagnosis = diagnose(_with_units(_php_fpm_stopped(healthy()), failed), _config())
    assert diagnosis.causes == {Cause.PHP_FPM_CONFIG_INVALID}
    assert diagnosis.fix(Cause.PHP_FPM_CONFIG_INVALID)[0].startswith(
        "fix /etc/php/8.2/fpm/pool.d/www.conf:127, then: sudo php-fpm"
    )
    (step,) = [f for f in diagnosis.findings if f.step == "php_fpm_config"]
    assert step.evidence[:2] == ("PHP-FPM's journal (php-fpm -t gave no verdict)", line)


def test_journalctl_json_lines() -> None:
    raw = (
        b'{"__REALTIME_TIMESTAMP":"1764633600000000","PRIORITY":"3","MESSAGE":"boom"}\n'
        b'{"MESSAGE":[104,105,0,255]}\nnot json\n'
    )
    assert parse_json_lines(raw) == (JournalLine(1764633600.0, "boom", 3), JournalLine(None, "hi\x00\ufffd"))


def test_the_restart_window_keeps_only_changes() -> None:
    """Many readings of the same NRestarts keep one entry, and the count still leaves the window."""
    from exporter.checks.units import RestartWindow, UnitStatus

    window = RestartWindow(600)
    unit = UnitStatus("php8.2-fpm.service", "loaded", "active", "running", "enabled", 0, 1.0, 7)
    for tick in range(10_000):
        assert window.observe(unit, tick / 100, 10_000.0) == 0
    restarted = dataclasses.replace(unit, n_restarts=2)
    assert window.observe(restarted, 100.0, 10_000.0) == 2
    for tick in range(10_000):
        assert window.observe(restarted, 100.0 + tick / 100, 10_000.0) == 2
    assert window.observe(restarted, 701.0, 10_000.0) == 0  # the restarts are older than the window
    assert len(window._seen[unit.name]) <= 3
