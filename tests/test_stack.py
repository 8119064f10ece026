"""The demo stack is real: each fault injection produces the nginx answer and log line it claims."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import httpx
import psutil
import pytest
from harness import wait_until

from exporter.checks.nginx_config import NginxConfigCheck
from exporter.config import config_from_dict
from exporter.demo.stack import Stack, StackError

if TYPE_CHECKING:
    from conftest import StackFactory

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    """An HTTP client that ignores proxy settings (loopback only)."""
    with httpx.Client(trust_env=False, timeout=10.0) as http:
        yield http


def api(stack: Stack, path: str) -> str:
    return f"{stack.front_url}api/{path}"


def wait_for_log(path: os.PathLike[str], pattern: str, timeout: float = 5.0) -> str:
    """Poll ``path`` until a line matches ``pattern``; return that line."""
    found: list[str] = []

    def matched() -> bool:
        try:
            text = open(path, encoding="utf-8", errors="replace").read()  # noqa: SIM115
        except FileNotFoundError:
            return False
        found[:] = [line for line in text.splitlines() if re.search(pattern, line)]
        return bool(found)

    wait_until(matched, timeout, f"{pattern!r} in {path}")
    return found[-1]


def zombie_children(among: list[int]) -> list[int]:
    """Zombies among this process's children that were processes of a stack.

    Restricted to ``among`` so that other tests' leftovers cannot make these tests flaky.
    """
    zombies = []
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.NoSuchProcess):
            if child.pid in among and child.status() == psutil.STATUS_ZOMBIE:
                zombies.append(child.pid)
    return zombies


def test_healthy_stack_answers(stack: Stack, client: httpx.Client) -> None:
    front = client.get(stack.front_url)
    assert front.status_code == 200
    assert "hello from php" in front.text
    backend = client.get(stack.backend_url)
    assert backend.status_code == 200
    assert backend.json() == {"status": "ok"}
    proxied = client.get(api(stack, "health"))
    assert proxied.status_code == 200
    assert proxied.json() == {"status": "ok"}
    slow = client.get(f"{stack.front_url}slow.php?s=0.05")
    assert slow.status_code == 200
    assert "slept" in slow.text


def test_layout_is_reachable_by_workers(stack: Stack) -> None:
    assert stack.root.stat().st_mode & 0o777 == 0o755
    for parent in stack.root.parents:
        assert parent.stat().st_mode & 0o001, parent
    assert stack.socket_path.is_socket()
    if stack.worker_user is not None:
        workers = {p.username() for p in map(psutil.Process, stack.pids()) if p.ppid() != os.getpid()}
        assert workers == {stack.worker_user}


def test_stop_php_fpm_removes_socket_and_front_is_502(stack: Stack, client: httpx.Client) -> None:
    stack.stop_php_fpm()
    assert not stack.socket_path.exists()
    assert client.get(stack.front_url).status_code == 502
    line = wait_for_log(
        stack.nginx_error_log, r"\(2: No such file or directory\) while connecting to upstream"
    )
    assert "[crit]" in line
    assert f"unix:{stack.socket_path}" in line


def test_kill_php_fpm_leaves_stale_socket(stack: Stack, client: httpx.Client) -> None:
    assert stack.php_fpm_pid is not None
    master = psutil.Process(stack.php_fpm_pid)
    workers = [child.pid for child in master.children()]
    assert workers
    stack.kill_php_fpm()
    assert stack.socket_path.exists()
    with (
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock,
        pytest.raises(ConnectionRefusedError) as err,
    ):
        sock.connect(str(stack.socket_path))
    assert err.value.errno == errno.ECONNREFUSED
    assert client.get(stack.front_url).status_code == 502
    wait_for_log(
        stack.nginx_error_log, r"\(111: Connection refused\) while connecting to upstream.*fastcgi://"
    )
    for pid in [master.pid, *workers]:
        assert not psutil.pid_exists(pid), pid
    assert zombie_children([master.pid, *workers]) == []
    # PHP-FPM replaces a stale socket file when it starts again.
    stack.start_php_fpm()
    assert client.get(stack.front_url).status_code == 200


def test_socket_owned_by_root_is_permission_denied(stack: Stack, client: httpx.Client) -> None:
    if stack.worker_user is None:
        pytest.skip("needs root: nginx workers and the socket owner must be different users")
    os.chown(stack.socket_path, 0, 0)
    assert client.get(stack.front_url).status_code == 502
    line = wait_for_log(stack.nginx_error_log, r"\(13: Permission denied\) while connecting to upstream")
    assert "[crit]" in line


def test_backend_faults(stack: Stack, client: httpx.Client) -> None:
    stack.set_backend_health(500)
    assert client.get(stack.backend_url).status_code == 500
    assert client.get(api(stack, "health")).status_code == 500  # passed through, not a gateway error
    stack.set_backend_health(200)
    assert client.get(stack.backend_url).status_code == 200

    stack.set_backend_delay(3)
    started = time.monotonic()
    assert client.get(api(stack, "health")).status_code == 504
    assert 1.5 < time.monotonic() - started < 3.0
    wait_for_log(
        stack.nginx_error_log, r"upstream timed out \(110: Connection timed out\).*http://127\.0\.0\.1"
    )
    stack.set_backend_delay(0)

    stack.stop_backend()
    with pytest.raises(httpx.ConnectError):
        client.get(stack.backend_url)
    assert client.get(api(stack, "health")).status_code == 502
    wait_for_log(
        stack.nginx_error_log,
        rf"\(111: Connection refused\) while connecting to upstream.*http://127\.0\.0\.1:{stack.backend_port}/",
    )
    stack.start_backend()
    assert client.get(api(stack, "health")).status_code == 200


def test_paused_php_fpm_times_out_then_recovers(stack: Stack, client: httpx.Client) -> None:
    stack.pause_php_fpm()
    started = time.monotonic()
    assert client.get(stack.front_url).status_code == 504
    assert 2.5 < time.monotonic() - started < 5.0
    wait_for_log(stack.nginx_error_log, r"upstream timed out \(110: Connection timed out\).*fastcgi://")
    stack.resume_php_fpm()
    answer = client.get(stack.front_url)
    assert answer.status_code == 200
    assert "hello from php" in answer.text


def test_broken_nginx_config_fails_the_test_but_keeps_serving(stack: Stack, client: httpx.Client) -> None:
    def nginx_t() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            stack.nginx_test_command(), capture_output=True, text=True, timeout=10, check=False
        )

    assert nginx_t().returncode == 0
    stack.break_nginx_config()
    failed = nginx_t()
    assert failed.returncode != 0
    assert "[emerg]" in failed.stderr
    assert "test failed" in failed.stderr
    assert client.get(stack.front_url).status_code == 200
    with pytest.raises(StackError, match="rejected"):
        stack.reload_nginx()
    assert client.get(stack.front_url).status_code == 200  # old workers still serve
    stack.restore_nginx_config()
    assert nginx_t().returncode == 0


def test_reload_replaces_workers(stack: Stack, client: httpx.Client) -> None:
    assert stack.nginx_pid is not None
    nginx_master = psutil.Process(stack.nginx_pid)
    before = {child.pid for child in nginx_master.children()}
    stack.reload_nginx()
    after = {child.pid for child in nginx_master.children()}
    assert after
    assert not before & after
    assert client.get(stack.front_url).status_code == 200


def test_stop_leaves_no_process_and_no_zombie(stack: Stack) -> None:
    pids = stack.pids()
    assert len(pids) >= 5  # php master + 2 workers, nginx master + worker, uvicorn
    stack.pause_php_fpm()  # stop must cope with a stopped pool
    stack.stop()
    for pid in pids:
        assert not psutil.pid_exists(pid), pid
    assert zombie_children(pids) == []
    assert not stack.socket_path.exists()
    leftovers = [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if str(stack.root) in " ".join(p.info["cmdline"] or [])
    ]
    assert leftovers == []
    stack.stop()  # idempotent


def test_exporter_config_validates_and_targets_only_this_stack(make_stack: StackFactory) -> None:
    first, second = make_stack(), make_stack()
    config = config_from_dict(first.exporter_config())
    assert sorted(NginxConfigCheck(config.nginx).command) == sorted(first.nginx_test_command())
    assert config.php_fpm[0].socket == str(first.socket_path)
    assert [t.url for t in config.http] == [first.backend_url, first.front_url]
    patterns = {
        "nginx": config.processes.nginx,
        "php_fpm": config.processes.php_fpm,
        "backend": config.processes.backend,
    }
    lines = {p.pid: " ".join(p.info["cmdline"] or []).strip() for p in psutil.process_iter(["cmdline"])}
    ours = set(first.pids())
    for name, pattern in patterns.items():
        matches = [pid for pid, line in lines.items() if re.search(pattern, line)]
        assert len(matches) == 1, (name, pattern, matches)
        assert matches[0] in ours
        assert matches[0] not in second.pids()


@pytest.mark.parametrize("pm", ["dynamic", "ondemand"])
def test_other_pm_modes_serve(make_stack: StackFactory, client: httpx.Client, pm: str) -> None:
    stack = make_stack(pm=pm, max_children=1)
    assert f"pm = {pm}" in stack.php_fpm_conf.read_text()
    assert client.get(stack.front_url).status_code == 200


def test_request_terminate_timeout_resets_the_connection(
    make_stack: StackFactory, client: httpx.Client
) -> None:
    stack = make_stack(request_terminate_timeout=1)
    assert client.get(f"{stack.front_url}slow.php?s=2.5").status_code == 502
    wait_for_log(stack.nginx_error_log, r"\(104: Connection reset by peer\) while reading response header")
    wait_for_log(stack.php_fpm_log, r"execution timed out")


def test_stop_cleans_up_after_a_master_that_died_alone(stack: Stack) -> None:
    master = stack.php_fpm_pid
    assert master is not None
    workers = [child.pid for child in psutil.Process(master).children()]
    os.kill(master, signal.SIGKILL)  # the workers are orphaned and keep running
    wait_until(lambda: stack.php_fpm_pid is None, 5.0, "php-fpm master to die")
    assert any(psutil.pid_exists(pid) for pid in workers)
    stack.stop()
    for pid in [master, *workers]:
        assert not psutil.pid_exists(pid), pid
