"""Every runbook cause injected for real on the real stack, seen by /metrics and by ``diagnose``."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable

import httpx
import pytest
from conftest import StackFactory
from harness import wait_until
from harness.exporters import (
    RunningExporter,
    Scrape,
    diagnose_json,
    diagnosed_causes,
    running_exporter,
    stack_config,
    write_config,
)

from exporter.checks.fastcgi import FailureReason, FastCGICheck
from exporter.config import PhpFpmPool
from exporter.deadline import Deadline
from exporter.demo.stack import Stack
from exporter.mixin import rules

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: nginx workers must run as www-data")


def front_status(stack: Stack) -> int:
    return httpx.get(stack.front_url, timeout=10).status_code


def scrape_and_diagnose(stack: Stack, **overrides: object) -> tuple[Scrape, set[str], int]:
    with running_exporter(stack_config(stack, **overrides)) as exporter:
        scrape = exporter.scrape()
    code, document = diagnose_json(write_config(stack, **overrides))
    return scrape, diagnosed_causes(document), code


def test_healthy_stack_has_no_cause(stack: Stack) -> None:
    scrape, causes, code = scrape_and_diagnose(stack)
    assert scrape.causes() == set()
    assert causes == set()
    assert code == 0
    sock = str(stack.socket_path)
    assert scrape.value("badgateway_socket_exists", socket=sock) == 1
    assert scrape.value("badgateway_socket_connectable", socket=sock) == 1
    assert scrape.value("badgateway_fastcgi_up", socket=sock) == 1
    assert scrape.value("badgateway_phpfpm_total_processes", socket=sock, pool="www") == 2
    assert scrape.value("badgateway_phpfpm_active_processes", socket=sock, pool="www") >= 1
    assert scrape.value("badgateway_http_status_code", target="front") == 200
    assert scrape.value("badgateway_http_up", target="backend") == 1
    assert scrape.value("badgateway_nginx_config_valid") == 1
    assert scrape.value("badgateway_processes", service="php_fpm") == 3  # master + 2 static workers
    assert scrape.value("badgateway_processes", service="nginx") >= 2
    assert scrape.value("badgateway_processes", service="backend") >= 1
    assert (
        scrape.value("badgateway_memory_total_bytes") > scrape.value("badgateway_memory_available_bytes") > 0
    )
    for collector in ("sockets", "fastcgi", "http", "processes", "resources", "nginx_config"):
        assert scrape.value("badgateway_collector_success", collector=collector) == 1
    if stack.worker_user:
        assert scrape.value("badgateway_socket_accessible", socket=sock, user="www-data") == 1
        assert (
            scrape.value(
                "badgateway_socket_info", socket=sock, owner="www-data", group="www-data", mode="0660"
            )
            == 1
        )


def upstream_labels(stack: Stack, kind: str) -> frozenset[tuple[str, str]]:
    return frozenset(
        {("log", str(stack.nginx_error_log)), ("kind", kind), ("upstream", f"unix:{stack.socket_path}")}
    )


def scrape_until(
    exporter: RunningExporter, condition: Callable[[Scrape], bool], timeout: float = 10.0
) -> Scrape:
    """Scrape until ``condition`` holds (the log tailer counts new lines within a second)."""
    found: list[Scrape] = []

    def holds() -> bool:
        found.append(exporter.scrape())
        return condition(found[-1])

    wait_until(holds, timeout, "the scrape to show it", interval=0.2)
    return found[-1]


def test_every_metric_the_rules_read_is_exported(stack: Stack) -> None:
    """Alert rules only read series the real exporter produces (units: without systemd, only availability)."""
    with running_exporter(stack_config(stack)) as exporter:
        healthy = exporter.scrape()
        stack.stop_php_fpm()  # so that error-log series exist too
        assert front_status(stack) == 502
        scrape = scrape_until(
            exporter,
            lambda s: any(n == "badgateway_nginx_upstream_errors_total" for n, _ in s.samples),
        )
    exported = {name for name, _ in scrape.samples} | {name for name, _ in healthy.samples}
    unit_series = {name for name in rules.metric_names() if name.startswith("badgateway_unit_")}
    missing = rules.metric_names() - exported - unit_series
    assert not missing, f"rules read series the exporter does not produce: {sorted(missing)}"
    assert scrape.value("badgateway_systemd_available") in (0, 1)


def test_metrics_pass_promtool(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package prometheus)")
    with running_exporter(stack_config(stack)) as exporter:
        text = exporter.scrape().text
    done = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_php_fpm_stopped(stack: Stack) -> None:
    stack.stop_php_fpm()
    assert front_status(stack) == 502
    with running_exporter(stack_config(stack)) as exporter:
        errors = scrape_until(
            exporter,
            lambda s: (
                s.samples.get(
                    ("badgateway_nginx_upstream_errors_total", upstream_labels(stack, "socket_missing")), 0
                )
                >= 1
            ),
        )
    assert errors.value("badgateway_nginx_error_log_lines_total", log=str(stack.nginx_error_log)) >= 1
    _, document = diagnose_json(write_config(stack))
    logs = next(f for f in document["findings"] if f["step"] == "logs")
    assert logs["verdict"] == "warn" and "socket_missing" in logs["evidence"][0]
    scrape, causes, code = scrape_and_diagnose(stack)
    sock = str(stack.socket_path)
    assert scrape.causes() == {"php_fpm_down"} == causes
    assert code == 1
    assert scrape.value("badgateway_socket_exists", socket=sock) == 0
    assert scrape.value("badgateway_fastcgi_up", socket=sock) == 0
    assert scrape.value("badgateway_fastcgi_probe_failure", socket=sock, reason="socket_missing") == 1
    assert scrape.value("badgateway_processes", service="php_fpm") == 0


def test_php_fpm_killed_leaves_a_stale_socket(stack: Stack) -> None:
    stack.kill_php_fpm()
    assert stack.socket_path.exists()
    assert front_status(stack) == 502
    scrape, causes, _ = scrape_and_diagnose(stack)
    sock = str(stack.socket_path)
    assert scrape.causes() == {"php_fpm_down"} == causes
    assert scrape.value("badgateway_socket_exists", socket=sock) == 1
    assert scrape.value("badgateway_socket_connectable", socket=sock) == 0
    assert scrape.value("badgateway_fastcgi_probe_failure", socket=sock, reason="connection_refused") == 1


@ROOT_ONLY
def test_socket_owned_by_root(stack: Stack) -> None:
    os.chown(stack.socket_path, 0, 0)
    assert front_status(stack) == 502  # nginx's www-data workers really are refused
    wait_until(
        lambda: "(13: Permission denied)" in stack.nginx_error_log.read_text(), 5, "nginx to log EACCES"
    )
    scrape, causes, _ = scrape_and_diagnose(stack)
    sock = str(stack.socket_path)
    assert scrape.causes() == {"socket_permission_denied"} == causes
    assert scrape.value("badgateway_socket_accessible", socket=sock, user="www-data") == 0
    assert scrape.value("badgateway_socket_info", socket=sock, owner="root", group="root", mode="0660") == 1
    assert scrape.value("badgateway_fastcgi_up", socket=sock) == 1  # root itself may still connect
    # ...but diagnose never calls that "ok": nginx's worker user could not have done the same.
    _, document = diagnose_json(write_config(stack))
    about_socket = [f for f in document["findings"] if sock in f["step"]]
    assert about_socket and all(f["verdict"] == "fail" for f in about_socket), about_socket
    fcgi = next(f for f in about_socket if f["step"].startswith("fastcgi:"))
    assert "not nginx's user www-data" in fcgi["title"]


@ROOT_ONLY
def test_parent_folder_without_search_permission(stack: Stack) -> None:
    run_dir = stack.socket_path.parent
    run_dir.chmod(0o700)
    try:
        assert front_status(stack) == 502
        scrape, causes, code = scrape_and_diagnose(stack)
        _, document = diagnose_json(write_config(stack))
    finally:
        run_dir.chmod(0o755)
    assert scrape.causes() == {"socket_permission_denied"} == causes
    assert code == 1
    assert scrape.value("badgateway_socket_accessible", socket=str(stack.socket_path), user="www-data") == 0
    findings = document["findings"]
    assert isinstance(findings, list)
    socket_finding = next(f for f in findings if f["step"] == f"socket:{stack.socket_path}")
    assert any(str(run_dir) in line for line in socket_finding["evidence"])
    assert f"sudo chmod o+x {run_dir}" in socket_finding["fix"]


def test_socket_path_mismatch(stack: Stack) -> None:
    """nginx and the exporter expect php8.3's socket; the running PHP-FPM listens elsewhere."""
    expected = str(stack.socket_path.parent / "php8.3-fpm.sock")
    pool = {"socket": expected, "ping_path": "/ping", "status_path": "/status", "timeout_seconds": 1.0}
    scrape, causes, _ = scrape_and_diagnose(stack, php_fpm=[pool])
    assert scrape.causes() == {"socket_path_mismatch"} == causes
    _, document = diagnose_json(write_config(stack, php_fpm=[pool]))
    fix = next(c["fix"] for c in document["causes"] if c["cause"] == "socket_path_mismatch")
    assert any(str(stack.socket_path) in line for line in fix)


def test_backend_stopped(stack: Stack) -> None:
    stack.stop_backend()
    scrape, causes, _ = scrape_and_diagnose(stack)
    assert scrape.causes() == {"backend_down"} == causes
    assert scrape.value("badgateway_http_up", target="backend") == 0
    assert scrape.value("badgateway_http_status_code", target="backend") == 0
    assert scrape.value("badgateway_processes", service="backend") == 0


def test_backend_unhealthy(stack: Stack) -> None:
    stack.set_backend_health(500)
    scrape, causes, _ = scrape_and_diagnose(stack)
    assert scrape.causes() == {"backend_unhealthy"} == causes
    assert scrape.value("badgateway_http_status_code", target="backend") == 500


def test_backend_slower_than_the_probe_deadline(stack: Stack) -> None:
    stack.set_backend_delay(3.0)
    scrape, causes, _ = scrape_and_diagnose(stack)
    assert scrape.causes() == {"upstream_timeout"} == causes
    assert scrape.value("badgateway_http_up", target="backend") == 0
    assert 0.9 <= scrape.value("badgateway_http_probe_duration_seconds", target="backend") < 2.0
    assert scrape.value("badgateway_http_up", target="front") == 1  # the php site still works


def test_php_fpm_stopped_by_sigstop_never_stalls_a_scrape(stack: Stack) -> None:
    stack.pause_php_fpm()
    try:
        with running_exporter(stack_config(stack)) as exporter:
            started = time.monotonic()
            scrape = exporter.scrape(scrape_timeout=3.0)
            elapsed = time.monotonic() - started
    finally:
        stack.resume_php_fpm()
    sock = str(stack.socket_path)
    assert elapsed < 3.0
    assert scrape.value("badgateway_scrape_timeout_seconds") == pytest.approx(2.5)
    assert scrape.value("badgateway_fastcgi_probe_failure", socket=sock, reason="timeout") == 1
    assert "php_fpm_pool_exhausted" in scrape.causes()
    # Everything else is still there.
    assert scrape.value("badgateway_http_up", target="backend") == 1
    assert scrape.value("badgateway_memory_total_bytes") > 0
    assert scrape.value("badgateway_collector_success", collector="resources") == 1


def test_nginx_config_broken_on_disk(stack: Stack) -> None:
    stack.break_nginx_config()
    try:
        assert front_status(stack) == 200  # nginx still serves the old config
        scrape, causes, _ = scrape_and_diagnose(stack)
        code, document = diagnose_json(write_config(stack))
    finally:
        stack.restore_nginx_config()
    assert scrape.causes() == {"nginx_config_invalid"} == causes
    assert code == 3  # only latent: nothing answers 502 until the next reload
    assert [c["now"] for c in document["causes"]] == [False]
    assert scrape.value("badgateway_nginx_config_valid") == 0
    fix = next(c["fix"] for c in document["causes"] if c["cause"] == "nginx_config_invalid")
    assert any(str(stack.nginx_conf) in line for line in fix)


def test_nginx_stopped(stack: Stack) -> None:
    stack.stop_nginx()
    scrape, causes, _ = scrape_and_diagnose(stack)
    assert scrape.causes() == {"nginx_down"} == causes
    assert scrape.value("badgateway_processes", service="nginx") == 0
    assert scrape.value("badgateway_http_status_code", target="front") == 0


def test_memory_threshold_uses_real_figures(stack: Stack) -> None:
    """The threshold decides, the figures are the host's own: above the real ratio is exhaustion."""
    with running_exporter(stack_config(stack)) as exporter:
        real = exporter.scrape()
    ratio = real.value("badgateway_memory_available_bytes") / real.value("badgateway_memory_total_bytes")
    scrape, causes, _ = scrape_and_diagnose(
        stack, thresholds={"memory_available_ratio": min(ratio + 0.01, 1.0)}
    )
    assert scrape.causes() == {"memory_exhausted"} == causes


@ROOT_ONLY
def test_full_disk_under_the_logs(stack: Stack) -> None:
    mount_dir = stack.root / "small"
    mount_dir.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_dir)],
        capture_output=True,
        text=True,
        timeout=10,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        with open(mount_dir / "fill", "wb") as fill:
            try:
                while True:
                    fill.write(b"\0" * 65536)
                    fill.flush()
            except OSError:
                pass
        scrape, causes, _ = scrape_and_diagnose(stack, filesystems=[str(mount_dir)])
    finally:
        subprocess.run(["umount", str(mount_dir)], capture_output=True, timeout=10, check=True)
    assert scrape.causes() == {"disk_full"} == causes
    assert scrape.value("badgateway_filesystem_avail_bytes", mountpoint=str(mount_dir)) < 65536


def test_tcp_fastcgi_listener_that_never_answers(stack: Stack) -> None:
    """A FastCGI peer that accepts and never answers is a timeout, bounded by the pool's deadline."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        pool = {"socket": address, "ping_path": "/ping", "status_path": "/status", "timeout_seconds": 0.5}
        with running_exporter(stack_config(stack, php_fpm=[pool])) as exporter:
            scrape = exporter.scrape()
    assert scrape.value("badgateway_fastcgi_probe_failure", socket=address, reason="timeout") == 1
    assert 0.5 <= scrape.value("badgateway_fastcgi_probe_duration_seconds", socket=address) < 1.0


def test_php_fpm_pool_exhausted_is_one_cause(make_stack: StackFactory) -> None:
    """Every worker busy with a slow script: the ping and the page both wait; one cause, not two."""
    stack = make_stack(max_children=1)
    busy = [
        threading.Thread(target=lambda: httpx.get(f"{stack.front_url}slow.php?s=12", timeout=20))
        for _ in range(2)
    ]
    for thread in busy:
        thread.start()
    try:
        wait_until(lambda: _ping_times_out(stack), 10, "the only worker to be busy")
        scrape, causes, code = scrape_and_diagnose(stack)
    finally:
        for thread in busy:
            thread.join(timeout=30)
    sock = str(stack.socket_path)
    assert scrape.causes() == {"php_fpm_pool_exhausted"} == causes
    assert code == 1
    assert scrape.value("badgateway_fastcgi_probe_failure", socket=sock, reason="timeout") == 1


def _ping_times_out(stack: Stack) -> bool:
    probe = FastCGICheck(PhpFpmPool(socket=str(stack.socket_path), status_path=None, timeout_seconds=0.3))
    return probe.run(Deadline.after(0.3)).failure == FailureReason.TIMEOUT
