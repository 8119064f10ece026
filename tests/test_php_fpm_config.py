"""``php-fpm -t`` on a real PHP-FPM's files: the file and line of a broken pool, in diagnose and /metrics."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
from harness.exporters import running_exporter, stack_config

from exporter.causes import Cause
from exporter.checks.php_fpm_config import PhpFpmConfigCheck
from exporter.config import PhpFpmTestSettings
from exporter.deadline import Deadline
from exporter.demo.stack import Stack
from exporter.diagnosis import EXIT_CAUSE_NOW, EXIT_LATENT_ONLY, diagnose
from exporter.discovery.phpfpm import discover_php_fpm
from exporter.rounds import Prober

ROOT_ONLY = pytest.mark.skipif(
    os.geteuid() != 0, reason="php-fpm -t of a pool with user = www-data needs root"
)


def _break(stack: Stack, value: str) -> int:
    """Write ``pm.max_children = value`` into the pool; the line number it is on."""
    text = stack.php_fpm_conf.read_text(encoding="utf-8")
    broken, count = re.subn(r"(?m)^pm\.max_children = \d+$", f"pm.max_children = {value}", text)
    assert count == 1
    stack.php_fpm_conf.write_text(broken, encoding="utf-8")
    return next(i for i, line in enumerate(broken.splitlines(), 1) if line.startswith("pm.max_children"))


def _check(stack: Stack, **settings: object) -> PhpFpmConfigCheck:
    php = discover_php_fpm([str(stack.php_fpm_conf)])
    return PhpFpmConfigCheck(
        PhpFpmTestSettings(**settings),  # type: ignore[arg-type]
        stack.php_fpm_binary,
        [str(stack.php_fpm_conf)],
        php.pools,
        php.files,
    )


@ROOT_ONLY
def test_a_value_php_fpm_cannot_parse_names_its_file_and_line(stack: Stack) -> None:
    check = _check(stack)
    good = check.run(Deadline.after(10))
    assert good.valid is True and good.test_error is None
    assert good.command == (stack.php_fpm_binary, "-t", "-y", str(stack.php_fpm_conf))
    line = _break(stack, "abc")
    bad = check.run(Deadline.after(10))  # the file changed: tested again at once, not after 30 s
    assert bad.valid is False
    assert (bad.file, bad.line) == (str(stack.php_fpm_conf), line)
    assert "unable to parse value for entry 'pm.max_children'" in (bad.message or "")
    assert check.run(Deadline.after(10)) is bad  # unchanged file, within the interval: not run again


@ROOT_ONLY
def test_a_value_php_fpm_refuses_is_located_by_discovery(stack: Stack) -> None:
    line = _break(stack, "0")
    bad = _check(stack).run(Deadline.after(10))
    assert bad.valid is False
    assert "[pool www] pm.max_children must be a positive value" in (bad.message or "")
    assert (bad.file, bad.line) == (str(stack.php_fpm_conf), line)


def test_a_hanging_php_fpm_t_is_cut_at_the_deadline(tmp_path: Path, stack: Stack) -> None:
    hanging = tmp_path / "php-fpm-hangs"
    hanging.write_text("#!/bin/sh\nexec sleep 30\n", encoding="ascii")
    hanging.chmod(0o755)
    check = _check(stack)
    check.binary = str(hanging)
    started = time.monotonic()
    result = check.run(Deadline.after(0.5))
    assert time.monotonic() - started < 1.5
    assert result.valid is None and result.test_error == "timeout"


@ROOT_ONLY
def test_broken_pool_running_is_latent_then_down_is_the_cause_with_file_and_line(stack: Stack) -> None:
    config = stack_config(stack)
    line = _break(stack, "abc")
    where = f"{stack.php_fpm_conf}:{line}"
    prober = Prober(config)
    try:
        running = diagnose(prober.run_round(5.0), config)
        assert running.causes == {Cause.PHP_FPM_CONFIG_INVALID}
        assert running.latent == {Cause.PHP_FPM_CONFIG_INVALID} and running.exit_code == EXIT_LATENT_ONLY
        stack.stop_php_fpm()
        down = diagnose(prober.run_round(5.0), config)
    finally:
        prober.close()
    assert down.now == {Cause.PHP_FPM_CONFIG_INVALID} and down.exit_code == EXIT_CAUSE_NOW
    binary = os.path.basename(stack.php_fpm_binary)
    assert down.fix(Cause.PHP_FPM_CONFIG_INVALID)[0] == f"fix {where}, then: sudo {binary} -t"
    process = next(f for f in down.findings if f.step == "process:php_fpm")
    assert process.fix[0] == f"fix {where}, then: sudo {binary} -t"  # no more a bare "systemctl start"


@ROOT_ONLY
def test_metrics_carry_the_verdict_and_the_file(stack: Stack) -> None:
    line = _break(stack, "abc")
    stack.stop_php_fpm()
    with running_exporter(stack_config(stack)) as exporter:
        scrape = exporter.scrape()
    assert scrape.value("badgateway_php_fpm_config_valid") == 0
    assert scrape.value("badgateway_collector_success", collector="php_fpm_config") == 1
    assert scrape.value("badgateway_cause", cause="php_fpm_config_invalid") == 1
    assert scrape.value("badgateway_cause", cause="php_fpm_down") == 0
    assert (
        scrape.value("badgateway_cause_info", cause="php_fpm_config_invalid", file=str(stack.php_fpm_conf),
                     line=str(line))
        == 1
    )  # fmt: skip
