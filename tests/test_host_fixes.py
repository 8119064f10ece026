"""Fixes follow how the services really run, and the right process is the one its pid file names.

On this machine (no systemd as PID 1, Debian's init scripts installed) the real stack runs as plain
processes: the exporter finds no systemd on the bus and no ``/run/systemd/system``, so its fixes say
``service`` (an init script exists) or signal the pid file (none exists) — never ``systemctl``.
Two real stacks on one host have PHP-FPM masters with the same title: the pid file tells them apart.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Iterator

import pytest
from harness.exporters import stack_config

from exporter.causes import Cause
from exporter.causes.commands import Host, Service, on_host
from exporter.config import ProcessPatterns
from exporter.demo.stack import Stack, make_root
from exporter.diagnosis import diagnose
from exporter.rounds import Prober


def test_on_host_says_each_command_the_way_the_service_is_run() -> None:
    fix = (
        "sudo systemctl start php8.2-fpm",
        "sudo systemctl enable php8.2-fpm",
        "sudo journalctl -u php8.2-fpm -n 50 --no-pager",
        "then: sudo nginx -t && sudo systemctl reload nginx",
        "fix what it says, then: sudo systemctl reset-failed shop-api && sudo systemctl restart shop-api",
    )
    assert on_host(fix, Host()) == fix  # systemd: as written
    sysv = Host(
        (Service("php8.2-fpm", "sysv", log="/var/log/php8.2-fpm.log"), Service("nginx", "sysv")),
        default="sysv",
    )
    assert on_host(fix, sysv) == (
        "sudo service php8.2-fpm start",
        "sudo update-rc.d php8.2-fpm enable",
        "sudo tail -50 /var/log/php8.2-fpm.log",
        "then: sudo nginx -t && sudo service nginx reload",
        "fix what it says, then: sudo service shop-api restart",  # not listed: the host's default, sysv
    )
    plain = Host(
        (
            Service("nginx", "process", "/run/nginx.pid", "sudo nginx -t && sudo nginx", stop_signal="QUIT"),
            Service("shop-api", "process", "/run/shop-api.pid", log="/var/log/shop-api.log"),
        ),
        default="process",
    )
    assert on_host(fix[3:], plain) == (
        "then: sudo nginx -t && sudo kill -HUP $(cat /run/nginx.pid)",
        "fix what it says, then: sudo kill -TERM $(cat /run/shop-api.pid);"
        " start shop-api the way this host starts it (no unit, no init script)",
    )


@pytest.fixture
def stacks() -> Iterator[tuple[Stack, Stack]]:
    made = []
    try:
        for _ in range(2):
            stack = Stack(make_root())
            made.append(stack)
            stack.start()
        yield made[0], made[1]
    finally:
        for stack in made:
            stack.stop()
            shutil.rmtree(stack.root, ignore_errors=True)


def test_without_systemd_php_fpm_down_says_service_or_its_own_command(stacks: tuple[Stack, Stack]) -> None:
    ours, other = stacks
    # Titles alone cannot tell the two PHP-FPM masters apart: the default pattern matches both.
    config = dataclasses.replace(stack_config(ours), processes=ProcessPatterns())
    prober = Prober(config)
    try:
        running = prober.run_round(5.0)
        assert running.processes is not None
        php = running.processes.of("php_fpm")
        assert php is not None and php.main_pids == (ours.php_fpm_pid,)  # its pid file's, not the other's
        assert php.count == 3  # master + 2 workers of this stack only

        ours.stop_php_fpm()
        assert other.php_fpm_pid is not None  # the other stack's master still runs, same title
        diagnosis = diagnose(prober.run_round(5.0), config)
        assert diagnosis.causes == {Cause.PHP_FPM_DOWN}
        fixes = [line for finding in diagnosis.findings for line in finding.fix]
        assert not [line for line in fixes if "systemctl" in line or "journalctl" in line]
        init_script = os.path.isfile("/etc/init.d/php8.2-fpm")
        first = diagnosis.fix(Cause.PHP_FPM_DOWN)[0]
        if init_script:
            assert first == "sudo service php8.2-fpm start"
        else:
            assert first == f"sudo {os.path.basename(ours.php_fpm_binary)} --fpm-config {ours.php_fpm_conf}"

        as_process = dataclasses.replace(config, units=dataclasses.replace(config.units, manager="process"))
        plain = diagnose(prober.run_round(5.0), as_process)
        assert plain.fix(Cause.PHP_FPM_DOWN) == (
            f"sudo {os.path.basename(ours.php_fpm_binary)} --fpm-config {ours.php_fpm_conf}",
            "# make php8.2-fpm start at boot the way this host starts services (no systemd, no init script)",
            f"sudo tail -50 {ours.php_fpm_log}",
        )
    finally:
        prober.close()
