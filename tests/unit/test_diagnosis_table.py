"""The diagnosis from hand-built rounds: one healthy host, then each cause broken alone.

No process is started: every :class:`RoundResults` is built here, so each row says exactly which
evidence makes which verdict, cause and fix. The real-stack tests prove the checks produce such
evidence; these prove what the runbook makes of it.
"""

from __future__ import annotations

import dataclasses
import errno
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from exporter.causes import CAUSES, Cause, Verdict
from exporter.checks.database import DatabaseResult, DatabaseTarget
from exporter.checks.fastcgi import FailureReason, FastCGIResult, PoolStatus
from exporter.checks.http import HttpResult
from exporter.checks.logs import LogsResult
from exporter.checks.nginx_config import NginxConfigResult
from exporter.checks.php_fpm_config import PhpFpmConfigResult
from exporter.checks.processes import ProcessesResult, ServiceProcesses
from exporter.checks.resources import FilesystemUsage, ResourcesResult
from exporter.checks.sockets import BlockedPath, SocketResult
from exporter.config import Config, config_from_dict
from exporter.diagnosis import EXIT_CAUSE_NOW, EXIT_HEALTHY, EXIT_LATENT_ONLY, diagnose
from exporter.diagnosis.render import diagnosis_json, render_text
from exporter.logs.evidence import Evidence
from exporter.metrics import cause_families
from exporter.rounds import RoundResults

SOCKET = "/run/php/php8.2-fpm.sock"
OTHER_SOCKET = "/run/php/php8.3-fpm.sock"
GiB = 1 << 30


def config() -> Config:
    return config_from_dict(
        {
            "php_fpm": [{"socket": SOCKET}],
            "units": {"enabled": False, "php_fpm": "php8.2-fpm.service", "backend": "shop-api.service"},
            "http": [
                {"name": "backend", "url": "http://127.0.0.1:8000/health", "role": "backend"},
                {"name": "front", "url": "http://127.0.0.1/", "role": "front"},
            ],
            "discovery": {"enabled": False},
            "logs": {"nginx": ["/nonexistent/error.log"], "php_fpm": []},
        }
    )


def healthy() -> RoundResults:
    procs = tuple(
        ServiceProcesses(service, 3, 50 << 20, (100 + i,), (f"{service}: master",), ("root",))
        for i, service in enumerate(("nginx", "php_fpm", "backend"))
    )
    pool = PoolStatus("www", "static", 0.0, 10, 0, 0, 511, 1, 1, 2, 2, 0, 0)
    return RoundResults(
        timeout_seconds=5.0,
        sockets=(
            SocketResult(
                SOCKET,
                True,
                True,
                "www-data",
                "www-data",
                "0660",
                "www-data",
                True,
                True,
                None,
                True,
                None,
                None,
            ),
        ),
        fastcgi=(FastCGIResult(SOCKET, True, None, None, 0.001, pool, None, None),),
        http=(
            HttpResult("backend", "http://127.0.0.1:8000/health", "backend", True, 200, 0.002, None, None),
            HttpResult("front", "http://127.0.0.1/", "front", True, 200, 0.003, None, None),
        ),
        processes=ProcessesResult(procs),
        resources=ResourcesResult(
            16 * GiB,
            8 * GiB,
            0,
            0,
            0,
            (FilesystemUsage("/", ("/run/php",), 100 * GiB, 50 * GiB, 1000, 900),),
            (),
        ),
        nginx_config=NginxConfigResult(("nginx", "-t"), True, None, "ok", None, None, 0.0, 0.01),
        logs=LogsResult(("/var/log/nginx/error.log",), ("/var/log/nginx/error.log",), None, ()),
    )


def _without_process(service: str) -> Callable[[RoundResults], RoundResults]:
    def change(r: RoundResults) -> RoundResults:
        assert r.processes is not None
        kept = tuple(p for p in r.processes.services if p.service != service)
        return dataclasses.replace(r, processes=ProcessesResult(kept))

    return change


def _php_fpm_stopped(r: RoundResults) -> RoundResults:
    r = _without_process("php_fpm")(r)
    missing = dataclasses.replace(
        r.sockets[0], exists=False, is_socket=False, owner=None, group=None, mode=None, accessible=None,
        connectable=False, connect_errno=errno.ENOENT, connect_error="No such file or directory",
    )  # fmt: skip
    fcgi = FastCGIResult(SOCKET, False, FailureReason.SOCKET_MISSING, "No such file", 0.0, None, None, None)
    front = dataclasses.replace(r.http[1], up=False, status_code=502)
    return dataclasses.replace(r, sockets=(missing,), fastcgi=(fcgi,), http=(r.http[0], front))


def _socket_stale(r: RoundResults) -> RoundResults:
    r = _without_process("php_fpm")(r)
    stale = dataclasses.replace(r.sockets[0], connectable=False, connect_errno=errno.ECONNREFUSED,
                                connect_error="Connection refused")  # fmt: skip
    fcgi = FastCGIResult(SOCKET, False, FailureReason.CONNECTION_REFUSED, "refused", 0.0, None, None, None)
    return dataclasses.replace(r, sockets=(stale,), fastcgi=(fcgi,))


def _socket_moved(r: RoundResults) -> RoundResults:
    r = _php_fpm_stopped(r)
    assert r.processes is not None
    php = ServiceProcesses("php_fpm", 3, 1, (200,), ("php-fpm: master",), ("root",))
    return dataclasses.replace(
        r,
        processes=ProcessesResult((*r.processes.services, php)),
        socket_alternatives=((SOCKET, (OTHER_SOCKET,)),),
    )


def _socket_chowned(r: RoundResults) -> RoundResults:
    denied = dataclasses.replace(r.sockets[0], owner="root", group="root", accessible=False)
    return dataclasses.replace(r, sockets=(denied,))


def _folder_closed(r: RoundResults) -> RoundResults:
    blocked = BlockedPath("/run/php", "search", "root", "root", "0700")
    return dataclasses.replace(
        r, sockets=(dataclasses.replace(r.sockets[0], accessible=False, blocked_by=blocked),)
    )


def _pool_busy(r: RoundResults) -> RoundResults:
    fcgi = FastCGIResult(SOCKET, False, FailureReason.TIMEOUT, "no answer in 2 s", 2.0, None, None, None)
    front = dataclasses.replace(r.http[1], up=False, status_code=504)
    return dataclasses.replace(r, fastcgi=(fcgi,), http=(r.http[0], front))


def _backend_refused(r: RoundResults) -> RoundResults:
    r = _without_process("backend")(r)
    backend = dataclasses.replace(
        r.http[0], up=False, status_code=None, error="connection_refused", detail="refused"
    )
    return dataclasses.replace(r, http=(backend, r.http[1]))


def _backend_500(r: RoundResults) -> RoundResults:
    return dataclasses.replace(r, http=(dataclasses.replace(r.http[0], up=False, status_code=500), r.http[1]))


def _front_504(r: RoundResults) -> RoundResults:
    return dataclasses.replace(r, http=(r.http[0], dataclasses.replace(r.http[1], up=False, status_code=504)))


def _memory_low(r: RoundResults) -> RoundResults:
    assert r.resources is not None
    return dataclasses.replace(
        r, resources=dataclasses.replace(r.resources, memory_available_bytes=GiB // 100)
    )


def _oom_kill(r: RoundResults) -> RoundResults:
    return dataclasses.replace(r, recent_oom_kills=1)


def _disk_full(r: RoundResults) -> RoundResults:
    assert r.resources is not None
    full = dataclasses.replace(r.resources.filesystems[0], avail_bytes=0)
    return dataclasses.replace(r, resources=dataclasses.replace(r.resources, filesystems=(full,)))


def _nginx_t_fails(r: RoundResults) -> RoundResults:
    broken = NginxConfigResult(("nginx", "-t"), False, None, 'unexpected "}" in /etc/nginx/sites-enabled/shop:12',
                               "/etc/nginx/sites-enabled/shop", 12, 0.0, 0.01)  # fmt: skip
    return dataclasses.replace(r, nginx_config=broken)


POOL_FILE = "/etc/php/8.2/fpm/pool.d/www.conf"


def _php_fpm_t_fails(r: RoundResults) -> RoundResults:
    message = f"ERROR: [{POOL_FILE}:127] unable to parse value for entry 'pm.max_children'"
    broken = PhpFpmConfigResult(("/usr/sbin/php-fpm8.2", "-t", "-y", "/etc/php/8.2/fpm/php-fpm.conf"), False,
                                None, message, POOL_FILE, 127, 0.0, 0.1, "/usr/sbin/php-fpm8.2")  # fmt: skip
    return dataclasses.replace(r, php_fpm_config=broken)


DB = DatabaseTarget("127.0.0.1", 5432, "environment of PID 4242 (DATABASE_URL)")


def _database_stopped(r: RoundResults) -> RoundResults:
    down = DatabaseResult(DB, "no_response", "connect to 127.0.0.1:5432: Connection refused", 0.001)
    return dataclasses.replace(_backend_503(r), database=down)


def _backend_503(r: RoundResults) -> RoundResults:
    return dataclasses.replace(r, http=(dataclasses.replace(r.http[0], up=False, status_code=503), r.http[1]))


def _php_fpm_t_fails_down(r: RoundResults) -> RoundResults:
    return _php_fpm_t_fails(_php_fpm_stopped(r))


def _nginx_stopped(r: RoundResults) -> RoundResults:
    r = _without_process("nginx")(r)
    front = dataclasses.replace(
        r.http[1], up=False, status_code=None, error="connection_refused", detail="refused"
    )
    return dataclasses.replace(r, http=(r.http[0], front))


def _ago(seconds: float) -> str:
    return (datetime.now() - timedelta(seconds=seconds)).strftime("%Y-%m-%d %H:%M:%S")


NGINX_LOG = "/var/log/nginx/error.log"
PHP_LOG = "/var/log/php8.2-fpm.log"


LogLine = Callable[[], Evidence]
"""A log line written some seconds before the moment it is made: rows are built at import, run later."""


def _lines(*lines: LogLine) -> Callable[[RoundResults], RoundResults]:
    """The round with these log lines (each ``seconds_ago`` in its time, when the row runs) as evidence."""

    def change(r: RoundResults) -> RoundResults:
        logs = LogsResult((NGINX_LOG, PHP_LOG), (NGINX_LOG, PHP_LOG), None, tuple(make() for make in lines))
        return dataclasses.replace(r, logs=logs)

    return change


def _nginx(kind: str, upstream: str, message: str, seconds_ago: float = 10) -> LogLine:
    from exporter.logs.lines import nginx_cause

    def make() -> Evidence:
        line = f"{_ago(seconds_ago).replace('-', '/')} [error] 7#7: *1 {message}, client: 127.0.0.1"
        return Evidence(NGINX_LOG, "nginx", _ago(seconds_ago), kind, upstream=upstream, line=line,
                        cause=nginx_cause(kind, upstream))  # fmt: skip

    return make


def _php(event: str, message: str, cause: Cause | None, seconds_ago: float = 10) -> LogLine:
    def make() -> Evidence:
        return Evidence(PHP_LOG, "php-fpm", _ago(seconds_ago), event, pool="www",
                        line=f"WARNING: [pool www] {message}", cause=cause)  # fmt: skip

    return make


FPM = f"unix:{SOCKET}"
RESET = "recv() failed (104: Connection reset by peer) while reading response header from upstream"

# (name, change to the healthy round, the causes diagnose must find, a line its fix must hold)
CASES: list[tuple[str, Callable[[RoundResults], RoundResults], set[Cause], str]] = [
    ("php_fpm_stopped", _php_fpm_stopped, {Cause.PHP_FPM_DOWN}, "sudo systemctl start php8.2-fpm"),
    ("php_fpm_killed", _socket_stale, {Cause.PHP_FPM_DOWN}, "sudo systemctl restart php8.2-fpm"),
    ("database_stopped", _database_stopped, {Cause.DATABASE_DOWN}, "pg_isready -h 127.0.0.1 -p 5432"),
    ("php_fpm_config_broken", _php_fpm_t_fails_down, {Cause.PHP_FPM_CONFIG_INVALID}, f"fix {POOL_FILE}:127, then: sudo php-fpm8.2 -t"),
    ("socket_moved", _socket_moved, {Cause.SOCKET_PATH_MISMATCH}, f"nginx expects {SOCKET} but PHP-FPM listens on {OTHER_SOCKET}"),
    ("socket_chowned", _socket_chowned, {Cause.SOCKET_PERMISSION_DENIED}, "listen.owner = www-data, listen.group = www-data"),
    ("folder_closed", _folder_closed, {Cause.SOCKET_PERMISSION_DENIED}, "sudo chmod o+x /run/php"),
    ("pool_busy", _pool_busy, {Cause.PHP_FPM_POOL_EXHAUSTED}, "sudo systemctl restart php8.2-fpm   # frees hung workers now"),
    ("backend_refused", _backend_refused, {Cause.BACKEND_DOWN}, "sudo systemctl start shop-api"),
    ("backend_500", _backend_500, {Cause.BACKEND_UNHEALTHY}, "sudo journalctl -u shop-api -n 50 --no-pager"),
    ("front_504", _front_504, {Cause.UPSTREAM_TIMEOUT}, "sudo tail -50 /nonexistent/error.log | grep 'timed out'"),
    ("memory_low", _memory_low, {Cause.MEMORY_EXHAUSTED}, "free -h; ps aux --sort=-rss | head -15"),
    ("oom_kill", _oom_kill, {Cause.MEMORY_EXHAUSTED}, "free -h; ps aux --sort=-rss | head -15"),
    ("disk_full", _disk_full, {Cause.DISK_FULL}, "df -h /; sudo du -xh / 2>/dev/null | sort -h | tail -20"),
    ("nginx_t_fails", _nginx_t_fails, {Cause.NGINX_CONFIG_INVALID}, "fix /etc/nginx/sites-enabled/shop:12, then: sudo nginx -t"),
    ("nginx_stopped", _nginx_stopped, {Cause.NGINX_DOWN}, "sudo nginx -t && sudo systemctl start nginx"),
    # From the logs alone, the probes all healthy: the line proves the cause while it keeps arriving.
    ("header_too_big", _lines(_nginx("header_too_big", FPM, "upstream sent too big header while reading response header from upstream")),
     {Cause.UPSTREAM_HEADER_TOO_BIG}, "fastcgi_buffer_size 32k; fastcgi_buffers 8 32k;"),
    ("worker_segfault", _lines(_php("child_killed", "child 12 exited on signal 11 (SIGSEGV - core dumped) after 1.2 seconds", Cause.PHP_FPM_WORKERS_CRASHING),
                               _nginx("connection_reset", FPM, RESET)),
     {Cause.PHP_FPM_WORKERS_CRASHING}, "sudo coredumpctl list php-fpm8.2"),
    ("request_terminated", _lines(_php("execution_timeout", "child 12, script '/x.php' execution timed out (1.0 sec), terminating", Cause.UPSTREAM_REQUEST_KILLED),
                                  _nginx("connection_reset", FPM, RESET)),
     {Cause.UPSTREAM_REQUEST_KILLED}, f"sudo grep 'execution timed out' {PHP_LOG} | tail"),
    ("backlog_full", _lines(_nginx("backlog_full", FPM, f"connect() to {FPM} failed (11: Resource temporarily unavailable) while connecting to upstream")),
     {Cause.LISTEN_BACKLOG_FULL}, "listen.backlog = 4096"),
    ("fastcgi_to_http", _lines(_nginx("protocol_mismatch", "127.0.0.1:8000", "upstream sent unsupported FastCGI protocol version: 72 while reading response header from upstream")),
     {Cause.UPSTREAM_PROTOCOL_MISMATCH}, "fastcgi_pass 127.0.0.1:8000 reaches an HTTP server"),
    ("https_to_plain", _lines(_nginx("ssl_handshake_failed", "127.0.0.1:8443", "SSL_do_handshake() failed (SSL: error:0A00010B:SSL routines::wrong version number) while SSL handshaking to upstream")),
     {Cause.UPSTREAM_TLS_FAILED}, "proxy_pass http://127.0.0.1:8443 (not https://)"),
    ("worker_connections", _lines(_nginx("connections_exhausted", "127.0.0.1:8000", "8 worker_connections are not enough while connecting to upstream")),
     {Cause.NGINX_CONNECTIONS_EXHAUSTED}, "worker_connections 4096;"),
    ("tcp_connect_denied", _lines(_nginx("permission_denied", "127.0.0.1:8000", "connect() to 127.0.0.1:8000 failed (13: Permission denied) while connecting to upstream")),
     {Cause.SELINUX_DENIED}, "which security module refuses it"),
    ("name_unresolvable", _lines(_nginx("host_not_found", "", "app could not be resolved (3: Host not found)")),
     {Cause.UPSTREAM_HOST_NOT_FOUND}, "getent hosts <the upstream's name>"),
    ("log_504_storm", _lines(_nginx("read_timeout", "127.0.0.1:8000", "upstream timed out (110: Connection timed out) while reading response header from upstream")),
     {Cause.UPSTREAM_TIMEOUT}, f"sudo tail -50 {NGINX_LOG} | grep 'timed out'"),
]  # fmt: skip


def test_a_cause_from_the_logs_clears_when_its_lines_stop() -> None:
    old = _nginx("header_too_big", FPM, "upstream sent too big header while reading response header", 400)
    diagnosis = diagnose(_lines(old)(healthy()), config())
    assert diagnosis.healthy and diagnosis.exit_code == EXIT_HEALTHY


def test_the_log_cause_says_how_many_lines_since_when_and_the_last_one() -> None:
    lines = [
        _nginx("header_too_big", FPM, f"upstream sent too big header #{i}", 100 - i * 10) for i in range(3)
    ]
    diagnosis = diagnose(_lines(*lines)(healthy()), config())
    (finding,) = diagnosis.evidence[Cause.UPSTREAM_HEADER_TOO_BIG]
    assert finding.evidence[0].startswith(
        f"3 line(s) of header_too_big (upstream {FPM}) from {_ago(100)} to "
    )
    assert finding.evidence[1].endswith("upstream sent too big header #2, client: 127.0.0.1")


def test_errors_no_cause_explains_are_unexplained_with_their_kinds() -> None:
    line = _nginx(
        "other_upstream",
        "127.0.0.1:8000",
        "writev() failed (32: Broken pipe) while sending request to upstream",
    )
    diagnosis = diagnose(_lines(line)(healthy()), config())
    assert diagnosis.causes == frozenset() and diagnosis.exit_code == EXIT_CAUSE_NOW
    assert [e.key.kind for e in diagnosis.unexplained] == ["other_upstream"]
    (finding,) = [f for f in diagnosis.findings if f.step == "gateway_errors"]
    assert "nginx logged, and no cause explains: 1 x other_upstream (127.0.0.1:8000)" in finding.evidence
    verdict = next(iter(cause_families(diagnosis)))
    assert {s.labels["cause"]: s.value for s in verdict.samples}["unexplained"] == 1.0


def test_refused_lines_are_php_fpm_downs_while_it_is_down_and_history_once_it_answers() -> None:
    refused = _nginx("connection_refused", FPM, f"connect() to {FPM} failed (111: Connection refused)", 60)
    down = diagnose(_lines(refused)(_socket_stale(healthy())), config())
    assert down.causes == {Cause.PHP_FPM_DOWN} and down.unexplained == ()
    again = diagnose(_lines(refused)(healthy()), config())
    assert again.healthy, [f.evidence for f in again.findings if f.step == "gateway_errors"]


def test_timeouts_to_an_exhausted_pool_are_the_exhaustion() -> None:
    timeout = _nginx(
        "read_timeout", FPM, "upstream timed out (110: Connection timed out) while reading response header"
    )
    diagnosis = diagnose(_lines(timeout)(_pool_busy(healthy())), config())
    assert diagnosis.causes == {Cause.PHP_FPM_POOL_EXHAUSTED} and diagnosis.unexplained == ()


def test_a_denied_tcp_connect_with_selinux_enforcing_is_the_boolean(tmp_path: Path) -> None:
    # SELinux cannot run here: only its /sys/fs/selinux tree is faked, the way the kernel shows it.
    (tmp_path / "booleans").mkdir()
    (tmp_path / "enforce").write_text("1", encoding="ascii")
    (tmp_path / "booleans" / "httpd_can_network_connect").write_text("0 0", encoding="ascii")
    denied = _nginx(
        "permission_denied", "127.0.0.1:8000", "connect() to 127.0.0.1:8000 failed (13: Permission denied)"
    )
    settings = dataclasses.replace(config(), selinux_root=str(tmp_path))
    diagnosis = diagnose(_lines(denied)(healthy()), settings)
    assert diagnosis.fix(Cause.SELINUX_DENIED)[0] == "sudo setsebool -P httpd_can_network_connect 1"


def test_a_healthy_round_has_no_cause_and_no_failing_step() -> None:
    diagnosis = diagnose(healthy(), config())
    assert diagnosis.healthy
    assert diagnosis.causes == frozenset()
    assert [f.step for f in diagnosis.findings if f.verdict in (Verdict.FAIL, Verdict.WARN)] == []
    assert {f.step for f in diagnosis.findings} >= {
        "process:php_fpm",
        "logs",
        "nginx_config",
        f"socket:{SOCKET}",
        "memory",
    }


@pytest.mark.parametrize(("name", "change", "causes", "fix_line"), CASES, ids=[c[0] for c in CASES])
def test_each_fault_gives_exactly_its_cause_and_fix(
    name: str, change: Callable[[RoundResults], RoundResults], causes: set[Cause], fix_line: str
) -> None:
    diagnosis = diagnose(change(healthy()), config())
    assert diagnosis.causes == causes, name
    (cause,) = causes
    deciding = diagnosis.evidence[cause]
    assert all(f.verdict is Verdict.FAIL and f.cause is cause for f in deciding)
    assert diagnosis.fix(cause) == deciding[0].fix
    assert any(fix_line in line for finding in deciding for line in finding.fix), [f.fix for f in deciding]


def test_every_cause_has_a_row_here() -> None:
    covered = {cause for _, _, causes, _ in CASES for cause in causes}
    assert covered == set(CAUSES)


def test_the_info_metric_carries_the_facts_and_the_fix_diagnose_prints() -> None:
    diagnosis = diagnose(_php_fpm_stopped(healthy()), config())
    cause, info = list(cause_families(diagnosis))
    assert {s.labels["cause"]: s.value for s in cause.samples}[Cause.PHP_FPM_DOWN] == 1.0
    assert sum(s.value for s in cause.samples) == 1.0
    (sample,) = [s for s in info.samples if s.labels["cause"] == "php_fpm_down"]  # one per distinct fix
    assert len(diagnosis.evidence[Cause.PHP_FPM_DOWN]) == 2  # the process and the socket step
    assert sample.labels["unit"] == "php8.2-fpm"
    assert sample.labels["socket"] == SOCKET  # from the socket step, merged into the process step's fix
    assert sample.labels["fix"] == "\n".join(diagnosis.fix(Cause.PHP_FPM_DOWN))
    assert all(s.labels["cause"] in {c.value for c in diagnosis.causes} for s in info.samples)


def test_a_pool_exhausted_504_is_not_also_an_upstream_timeout() -> None:
    diagnosis = diagnose(_pool_busy(healthy()), config())
    assert Cause.UPSTREAM_TIMEOUT not in diagnosis.causes


def test_a_502_no_cause_explains_is_its_own_failing_finding() -> None:
    r = healthy()
    diagnosis = diagnose(
        dataclasses.replace(r, http=(r.http[0], dataclasses.replace(r.http[1], up=False, status_code=502))),
        config(),
    )
    assert diagnosis.causes == frozenset()
    assert not diagnosis.healthy
    (unexplained,) = [f for f in diagnosis.findings if f.step == "gateway_errors"]
    assert unexplained.verdict is Verdict.FAIL
    assert "http://127.0.0.1/ answered 502" in unexplained.evidence


def test_log_lines_in_the_round_are_the_log_steps_evidence() -> None:
    line = "connect() to unix:/run/php/php8.2-fpm.sock failed (2: No such file or directory) while connecting to upstream"
    logs = LogsResult(("/var/log/nginx/error.log",), ("/var/log/nginx/error.log",), None,
                      (Evidence("/var/log/nginx/error.log", "nginx", _ago(30), "socket_missing",
                                upstream=f"unix:{SOCKET}", line=line),))  # fmt: skip
    diagnosis = diagnose(dataclasses.replace(healthy(), logs=logs), config())
    (step,) = [f for f in diagnosis.findings if f.step == "logs"]
    assert step.verdict is Verdict.WARN
    assert f"1 x socket_missing (unix:{SOCKET})" in step.evidence[0]
    assert step.title == (
        "The nginx and PHP-FPM logs show 1 upstream error(s) or PHP-FPM event(s) in the last 5 min"
    )


def test_a_collector_that_did_not_deliver_is_a_skipped_step_not_a_cause() -> None:
    diagnosis = diagnose(dataclasses.replace(healthy(), processes=None, resources=None), config())
    skipped = {f.step for f in diagnosis.findings if f.verdict is Verdict.SKIP}
    assert {"processes", "resources"} <= skipped
    assert diagnosis.causes == frozenset()


def test_a_broken_config_while_nginx_serves_is_latent_not_a_502_now() -> None:
    diagnosis = diagnose(_nginx_t_fails(healthy()), config())
    assert diagnosis.causes == {Cause.NGINX_CONFIG_INVALID}
    assert diagnosis.latent == {Cause.NGINX_CONFIG_INVALID} and diagnosis.now == frozenset()
    assert diagnosis.exit_code == EXIT_LATENT_ONLY
    text = render_text(diagnosis)
    assert "Verdict: nothing answers 502/504 now." in text
    assert "Will cause 502/504 on the next reload, restart or reboot:" in text
    assert diagnosis_json(diagnosis)["exit_code"] == EXIT_LATENT_ONLY


def test_a_broken_config_with_nginx_down_is_a_cause_now() -> None:
    diagnosis = diagnose(_nginx_t_fails(_nginx_stopped(healthy())), config())
    assert diagnosis.now == {Cause.NGINX_CONFIG_INVALID, Cause.NGINX_DOWN}
    assert diagnosis.exit_code == EXIT_CAUSE_NOW
    assert "Verdict: 2 causes of 502/504 happening now:" in render_text(diagnosis)


def test_exit_codes() -> None:
    assert diagnose(healthy(), config()).exit_code == EXIT_HEALTHY
    assert diagnose(_php_fpm_stopped(healthy()), config()).exit_code == EXIT_CAUSE_NOW


def test_a_ping_as_root_is_not_ok_when_nginx_user_is_locked_out() -> None:
    diagnosis = diagnose(_socket_chowned(healthy()), config())
    (fcgi,) = [f for f in diagnosis.findings if f.step.startswith("fastcgi:")]
    assert fcgi.verdict is Verdict.FAIL and fcgi.cause is None  # the socket step names the cause
    assert "not nginx's user www-data" in fcgi.title
    assert not [f for f in diagnosis.findings if f.verdict is Verdict.OK and SOCKET in f.title]


def test_ping_answered_only_when_a_ping_was_sent() -> None:
    r = healthy()
    connect_only = dataclasses.replace(r.fastcgi[0], probe="connect", pool_status=None)
    diagnosis = diagnose(dataclasses.replace(r, fastcgi=(connect_only,)), config())
    (fcgi,) = [f for f in diagnosis.findings if f.step.startswith("fastcgi:")]
    assert "ping answered" not in " ".join(fcgi.evidence)
    assert "nothing was asked" in fcgi.evidence[0]
    (pinged,) = [f for f in diagnose(r, config()).findings if f.step.startswith("fastcgi:")]
    assert pinged.evidence[0].startswith("ping answered pong in ")


def test_evidence_says_what_was_found_in_words() -> None:
    diagnosis = diagnose(_php_fpm_stopped(healthy()), config())
    process = next(f for f in diagnosis.findings if f.step == "process:php_fpm")
    assert process.title == "PHP-FPM is not running"
    assert process.evidence == ("no php-fpm master process",)
    sock = next(f for f in diagnosis.findings if f.step == f"socket:{SOCKET}")
    assert sock.title == f"PHP-FPM socket {SOCKET} does not exist"
    front = next(f for f in diagnosis.findings if f.step == "http:front")
    assert front.title == "nginx answers http://127.0.0.1/ with HTTP 502"
    assert not any("\\\\" in line for f in diagnosis.findings for line in (f.title, *f.evidence))


def test_the_curl_shown_sends_the_host_the_probe_sent() -> None:
    r = healthy()
    front = dataclasses.replace(
        r.http[1], target="front:shop.test", up=False, status_code=502, host="shop.test"
    )
    diagnosis = diagnose(dataclasses.replace(r, http=(r.http[0], front)), config())
    (step,) = [f for f in diagnosis.findings if f.step == "http:front:shop.test"]
    assert step.evidence[0] == "curl -H 'Host: shop.test' http://127.0.0.1/: HTTP 502"


def _log_line(seconds_ago: float, kind: str = "socket_missing") -> Evidence:
    return Evidence("/var/log/nginx/error.log", "nginx", _ago(seconds_ago), kind, upstream=f"unix:{SOCKET}",
                    line=f"{kind} line")  # fmt: skip


def test_errors_before_the_window_are_history_not_evidence_of_now() -> None:
    old = (_log_line(3600), _log_line(1800, "read_timeout"))
    logs = LogsResult(("/var/log/nginx/error.log",), ("/var/log/nginx/error.log",), None, old)
    diagnosis = diagnose(dataclasses.replace(healthy(), logs=logs), config())
    (step,) = [f for f in diagnosis.findings if f.step == "logs"]
    assert step.verdict is Verdict.OK
    assert step.title == "The nginx and PHP-FPM logs show no upstream error in the last 5 min"
    assert step.evidence[-1].startswith(
        "history, before the last 5 min: 2 line(s) (read_timeout, socket_missing)"
    )
    assert diagnosis.healthy


def test_recent_errors_are_counted_apart_from_history() -> None:
    lines = (_log_line(3600), _log_line(60), _log_line(10))
    logs = LogsResult(("/var/log/nginx/error.log",), ("/var/log/nginx/error.log",), None, lines)
    (step,) = [
        f for f in diagnose(dataclasses.replace(healthy(), logs=logs), config()).findings if f.step == "logs"
    ]
    assert step.verdict is Verdict.WARN
    assert step.evidence[0] == f"last 2 error(s): 2 x socket_missing (unix:{SOCKET})"
    assert step.evidence[-1].startswith("history, before the last 5 min: 1 line(s)")


def test_php_fpm_down_with_a_broken_pool_is_the_config_not_a_start() -> None:
    diagnosis = diagnose(_php_fpm_t_fails_down(healthy()), config())
    assert diagnosis.now == {Cause.PHP_FPM_CONFIG_INVALID} and diagnosis.exit_code == EXIT_CAUSE_NOW
    assert diagnosis.fix(Cause.PHP_FPM_CONFIG_INVALID) == (
        f"fix {POOL_FILE}:127, then: sudo php-fpm8.2 -t", "sudo systemctl start php8.2-fpm",
    )  # fmt: skip
    # The "PHP-FPM is not running" finding no longer says only "systemctl start": that fails again.
    process = next(f for f in diagnosis.findings if f.step == "process:php_fpm")
    assert process.fix[0] == f"fix {POOL_FILE}:127, then: sudo php-fpm8.2 -t"
    (sample,) = [s for s in list(cause_families(diagnosis))[1].samples]
    assert (sample.labels["file"], sample.labels["line"]) == (POOL_FILE, "127")


def test_a_broken_pool_while_php_fpm_serves_is_latent() -> None:
    diagnosis = diagnose(_php_fpm_t_fails(healthy()), config())
    assert diagnosis.causes == {Cause.PHP_FPM_CONFIG_INVALID}
    assert diagnosis.latent == {Cause.PHP_FPM_CONFIG_INVALID} and diagnosis.exit_code == EXIT_LATENT_ONLY
    assert diagnosis.fix(Cause.PHP_FPM_CONFIG_INVALID)[-1] == "sudo systemctl restart php8.2-fpm"


def test_a_database_down_behind_an_unhealthy_backend_is_database_down_not_backend_unhealthy() -> None:
    diagnosis = diagnose(_database_stopped(healthy()), config())
    assert diagnosis.causes == {Cause.DATABASE_DOWN}  # backend_unhealthy is explained by it
    assert diagnosis.fix(Cause.DATABASE_DOWN) == (
        "pg_isready -h 127.0.0.1 -p 5432", "sudo systemctl start postgresql   # the database on this host",
        "sudo journalctl -u shop-api -n 50 --no-pager",
    )  # fmt: skip
    (step,) = [f for f in diagnosis.findings if f.step == "database"]
    assert step.facts.socket == "127.0.0.1:5432" and step.facts.unit == "shop-api"
    assert "found at 127.0.0.1:5432 (from environment of PID 4242 (DATABASE_URL))" in step.evidence


def test_a_database_down_behind_a_healthy_backend_is_a_warning_only() -> None:
    down = DatabaseResult(DB, "no_response", "refused", 0.001)
    diagnosis = diagnose(dataclasses.replace(healthy(), database=down), config())
    assert diagnosis.causes == frozenset()
    (step,) = [f for f in diagnosis.findings if f.step == "database"]
    assert step.verdict is Verdict.WARN
    unhealthy = diagnose(_backend_503(healthy()), config())
    assert unhealthy.causes == {Cause.BACKEND_UNHEALTHY}  # no database known: the backend's own fault


def test_nginx_t_refusing_an_unresolvable_upstream_name_says_which_name_to_check() -> None:
    message = 'host not found in upstream "app:8000" in /etc/nginx/conf.d/shop.conf:12'
    broken = NginxConfigResult(
        ("nginx", "-t"), False, None, message, "/etc/nginx/conf.d/shop.conf", 12, 0.0, 0.01
    )
    diagnosis = diagnose(dataclasses.replace(healthy(), nginx_config=broken), config())
    assert diagnosis.causes == {Cause.NGINX_CONFIG_INVALID}
    fix = diagnosis.fix(Cause.NGINX_CONFIG_INVALID)
    assert fix[0].startswith("getent hosts app; dig @127.0.0.53 app")
    assert "in /etc/nginx/conf.d/shop.conf:12: fix the name" in fix[1]


def test_a_php_only_site_without_any_backend_is_not_backend_down() -> None:
    base = config()
    settings = dataclasses.replace(base, http=[h for h in base.http if h.role != "backend"],
                                   units=dataclasses.replace(base.units, backend=None))  # fmt: skip
    r = _without_process("backend")(healthy())
    diagnosis = diagnose(
        dataclasses.replace(r, http=tuple(h for h in r.http if h.role != "backend")), settings
    )
    assert diagnosis.healthy, [f.title for f in diagnosis.findings if f.verdict is Verdict.FAIL]
    (step,) = [f for f in diagnosis.findings if f.step == "process:backend"]
    assert step.verdict is Verdict.SKIP and "none is expected" in step.evidence[0]


def test_a_full_backlog_in_front_of_busy_workers_is_the_backlog_alone() -> None:
    # The ping gets EAGAIN too (a timeout of the probe): the exhaustion is what the full queue explains.
    full = _nginx("backlog_full", FPM, f"connect() to {FPM} failed (11: Resource temporarily unavailable)")
    diagnosis = diagnose(_lines(full)(_pool_busy(healthy())), config())
    assert diagnosis.causes == {Cause.LISTEN_BACKLOG_FULL}
    assert any(f.failing_cause is Cause.PHP_FPM_POOL_EXHAUSTED for f in diagnosis.findings)  # still shown


def test_a_missing_socket_exports_its_three_likeliest_alternatives() -> None:
    """With 100 pools one mistyped path would make 99 series: three are exported, the likeliest first;
    the diagnosis keeps them all."""
    from exporter.metrics import MAX_EXPORTED_ALTERNATIVES, discovery_families

    alternatives = tuple(f"/run/php/site{i:03d}.sock" for i in range(99))
    results = dataclasses.replace(healthy(), socket_alternatives=((SOCKET, alternatives),))
    (family, *_) = discovery_families(results, config())
    assert family.name == "badgateway_fastcgi_socket_alternative"
    assert [s.labels["alternative"] for s in family.samples] == list(alternatives[:MAX_EXPORTED_ALTERNATIVES])
    assert MAX_EXPORTED_ALTERNATIVES == 3
    assert results.alternatives_of(SOCKET) == alternatives
