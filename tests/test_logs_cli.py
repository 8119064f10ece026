"""``logs classify`` / ``logs analyze`` / ``recent()``, and lines from a real nginx + PHP-FPM."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import wait_until
from harness.logs_stack import LogStack, available

from exporter.config import LogSettings
from exporter.logs.analyze import recent, recent_from_settings
from exporter.logs.classify import classify_nginx, classify_phpfpm
from exporter.logs.tailer import LogWatcher

CLI = [sys.executable, "-c", "import sys; from exporter.logs.cli import main; sys.exit(main(sys.argv[1:]))"]

SOCKET_MISSING = (
    b"2024/05/01 12:00:01 [crit] 9#9: *1 connect() to unix:/run/php/php8.3-fpm.sock failed (2: No such file or "
    b'directory) while connecting to upstream, client: 10.0.0.1, server: _, request: "GET / HTTP/1.1", '
    b'upstream: "fastcgi://unix:/run/php/php8.3-fpm.sock:", host: "x"'
)
TIMEOUT = (
    b"2024/05/01 12:00:{s:02d} [error] 9#9: *2 upstream timed out (110: Connection timed out) while reading "
    b'response header from upstream, client: 10.0.0.1, server: _, request: "GET /api HTTP/1.1", '
    b'upstream: "http://127.0.0.1:8000/api", host: "x"'
)


def run(args: list[str], stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*CLI, *args], input=stdin, capture_output=True, timeout=60)


def test_classify_nginx_stdin_one_json_per_line() -> None:
    done = run(
        ["classify"], SOCKET_MISSING + b"\n\xff\xfe not utf-8\n" + TIMEOUT.replace(b"{s:02d}", b"05") + b"\n"
    )
    assert done.returncode == 0
    assert [json.loads(x) for x in done.stdout.decode().splitlines()] == [
        {
            "source": "nginx",
            "cause": None,
            "kind": "socket_missing",
            "upstream": "unix:/run/php/php8.3-fpm.sock",
        },
        {"source": "nginx", "cause": None, "kind": "none", "upstream": None},
        {
            "source": "nginx",
            "cause": "upstream_timeout",
            "kind": "read_timeout",
            "upstream": "127.0.0.1:8000",
        },
    ]


def test_classify_phpfpm() -> None:
    stdin = (
        b"[27-Nov-2026 02:01:58] WARNING: [pool www] child 1 exited on signal 15 (SIGTERM) after 2.6 seconds from start\n"
        b"[27-Nov-2026 02:01:57] WARNING: [pool api] server reached max_children setting (1), consider raising it\n"
    )
    done = run(["classify", "--source", "php-fpm"], stdin)
    assert done.returncode == 0
    assert [json.loads(x) for x in done.stdout.decode().splitlines()] == [
        {"source": "php-fpm", "cause": None, "event": "child_killed", "pool": "www", "signal": "SIGTERM"},
        {
            "source": "php-fpm",
            "cause": "php_fpm_pool_exhausted",
            "event": "max_children_reached",
            "pool": "api",
        },
    ]


MIXED = [
    # (line as a source writes it, possibly behind a Docker/compose/journald/syslog prefix; expected record)
    (b"web-1  | 2026/12/01 10:00:00 [error] 7#7: *1 upstream sent too big header while reading response header"
     b' from upstream, client: 1.2.3.4, server: x, request: "GET / HTTP/1.1", upstream:'
     b' "fastcgi://unix:/run/php/php8.2-fpm.sock:", host: "x"',
     {"source": "nginx", "cause": "upstream_header_too_big", "kind": "header_too_big",
      "upstream": "unix:/run/php/php8.2-fpm.sock"}),
    (b"Dec  1 10:00:00 web php-fpm8.2[123]: [01-Dec-2026 10:00:00] WARNING: [pool www] child 77 exited on"
     b" signal 11 (SIGSEGV - core dumped) after 1.2 seconds from start",
     {"source": "php-fpm", "cause": "php_fpm_workers_crashing", "event": "child_killed", "pool": "www",
      "signal": "SIGSEGV"}),
    (b"[01-Dec-2026 10:00:00] WARNING: [pool www] child 78, script '/x.php' (request: \"GET /x.php\")"
     b" execution timed out (3.001 sec), terminating",
     {"source": "php-fpm", "cause": "upstream_request_killed", "event": "execution_timeout", "pool": "www"}),
    (b"[2026-12-01 10:00:00 +0000] [123] [CRITICAL] WORKER TIMEOUT (pid:456)",
     {"source": "app", "cause": "upstream_request_killed", "event": "worker_timeout"}),
    (b"ERROR:    Error loading ASGI app. Could not import module \"main\".",
     {"source": "app", "cause": "backend_down", "event": "boot_failed"}),
    (b"ZeroDivisionError: division by zero", {"source": "app", "cause": None, "event": "exception"}),
    (b"[12345.678901] Out of memory: Killed process 1234 (php-fpm8.2) total-vm:1000kB, anon-rss:900kB",
     {"source": "kernel", "cause": "memory_exhausted", "event": "oom_kill"}),
    (b"type=AVC msg=audit(1700000000.123:456): avc:  denied  { name_connect } for  pid=1234 comm=\"nginx\""
     b" dest=8000 scontext=system_u:system_r:httpd_t:s0 tcontext=system_u:object_r:http_port_t:s0"
     b" tclass=tcp_socket permissive=0",
     {"source": "selinux", "cause": "selinux_denied", "event": "avc_denied"}),
]  # fmt: skip


def test_classify_auto_recognises_each_source_in_order() -> None:
    done = run(["classify", "--source", "auto"], b"\n".join(line for line, _ in MIXED) + b"\n")
    assert done.returncode == 0, done.stderr
    assert [json.loads(x) for x in done.stdout.decode().splitlines()] == [record for _, record in MIXED]


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    lines = [SOCKET_MISSING] * 3 + [TIMEOUT.replace(b"{s:02d}", f"{s:02d}".encode()) for s in range(10)]
    lines += [b"2024/05/01 12:03:00 [notice] 1#1: signal process started"]
    (tmp_path / "error.log").write_bytes(b"\n".join(lines) + b"\n")
    with gzip.open(tmp_path / "error.log.2.gz", "wb") as handle:
        handle.write(SOCKET_MISSING.replace(b"12:00:01", b"11:59:00") + b"\n")
    (tmp_path / "php-fpm.log").write_bytes(
        b"[01-May-2024 12:00:30] WARNING: [pool www] server reached pm.max_children setting (5), consider raising it\n"
        b"[01-May-2024 12:00:31] NOTICE: fpm is running, pid 1\n"
    )
    return tmp_path


def test_analyze_json(logs: Path) -> None:
    done = run(
        [
            "analyze",
            "--format",
            "json",
            str(logs / "error.log"),
            str(logs / "error.log.2.gz"),
            str(logs / "php-fpm.log"),
        ]
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert [f["source"] for f in report["files"]] == ["nginx", "nginx", "php-fpm"]
    assert [f["lines"] for f in report["files"]] == [14, 1, 2]
    nginx = report["nginx"]
    assert nginx["total"] == {"count": 14, "first": "2024-05-01 11:59:00", "last": "2024-05-01 12:00:09"}
    assert nginx["by_kind"]["read_timeout"] == {
        "count": 10,
        "first": "2024-05-01 12:00:00",
        "last": "2024-05-01 12:00:09",
    }
    assert nginx["by_kind"]["socket_missing"]["count"] == 4
    assert nginx["by_upstream"]["unix:/run/php/php8.3-fpm.sock"]["count"] == 4
    assert nginx["busiest_minutes"][0] == {
        "minute": "2024-05-01 12:00",
        "count": 13,
        "by_kind": {"read_timeout": 10, "socket_missing": 3},
    }
    assert report["php_fpm"]["by_event"] == {
        "max_children_reached": {"count": 1, "first": "2024-05-01 12:00:30", "last": "2024-05-01 12:00:30"}
    }


def test_analyze_text(logs: Path) -> None:
    done = run(["analyze", str(logs / "error.log")])
    assert done.returncode == 0
    text = done.stdout.decode()
    assert "nginx upstream errors: 13 in 14 lines from 2024-05-01 12:00:00 to 2024-05-01 12:00:09" in text
    assert "most: read_timeout (upstream 127.0.0.1:8000), 10 = 77%" in text
    assert "2024-05-01 12:00        13  (read_timeout 10, socket_missing 3)" in text


@pytest.mark.parametrize("bad", ["missing.log", "a-directory"])
def test_analyze_unreadable_file_is_one_line_and_exit_2(logs: Path, bad: str) -> None:
    (logs / "a-directory").mkdir()
    done = run(["analyze", str(logs / "error.log"), str(logs / bad)])
    assert done.returncode == 2
    err = done.stderr.decode().strip()
    assert err.count("\n") == 0 and str(logs / bad) in err and "Traceback" not in err
    assert done.stdout == b""


def test_analyze_corrupt_gzip_is_one_line_and_exit_2(tmp_path: Path) -> None:
    (tmp_path / "x.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    done = run(["analyze", str(tmp_path / "x.gz")])
    assert done.returncode == 2
    assert done.stderr.decode().count("\n") == 1 and "x.gz" in done.stderr.decode()


def test_usage_errors_exit_2_without_traceback() -> None:
    done = run(["analyze"])
    assert done.returncode == 2 and b"Traceback" not in done.stderr
    assert run(["--help"]).returncode == 0


def test_recent_reads_only_the_tail(tmp_path: Path) -> None:
    log = tmp_path / "error.log"
    log.write_bytes(
        b"x" * 100_000 + b"\n" + SOCKET_MISSING + b"\n" + TIMEOUT.replace(b"{s:02d}", b"07") + b"\n"
    )
    found = recent(str(log), max_bytes=1000)
    assert [(e.kind, e.upstream, e.time) for e in found] == [
        ("socket_missing", "unix:/run/php/php8.3-fpm.sock", "2024-05-01 12:00:01"),
        ("read_timeout", "127.0.0.1:8000", "2024-05-01 12:00:07"),
    ]
    assert found[0].line.startswith("2024/05/01 12:00:01 [crit]")
    with pytest.raises(OSError):
        recent(str(tmp_path / "missing.log"))
    merged = recent_from_settings(LogSettings(nginx=[str(tmp_path / "*.log")], php_fpm=[]), limit=1)
    assert [e.kind for e in merged] == ["read_timeout"]


# -- a real nginx and PHP-FPM ---------------------------------------------------------------------


@pytest.fixture
def stack() -> Iterator[LogStack]:
    if not available():
        pytest.skip("nginx or php-fpm not installed")
    s = LogStack()
    try:
        yield s
    finally:
        s.close()


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines() if path.exists() else []


def test_real_nginx_and_phpfpm_lines_are_classified(stack: LogStack) -> None:
    stack.start_fpm()
    stack.start_nginx()
    watcher = LogWatcher(
        LogSettings(
            nginx=[str(stack.error_log)],
            php_fpm=[str(stack.fpm_log)],
            start="beginning",
            poll_interval_seconds=0.05,
        )
    )
    watcher.start()
    try:
        assert stack.get("/index.php") == 200
        # connection refused: the proxy upstream port has nothing listening
        assert stack.get("/backend/x") == 502
        # read timeout (504) and, 2 s in, request_terminate_timeout kills the child; a second
        # concurrent request with max_children=1 makes the pool warn
        statuses: list[int] = []
        threads = [
            threading.Thread(target=lambda: statuses.append(stack.get("/slow.php?s=5"))) for _ in range(2)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert sorted(statuses) == [504, 504]
        wait_until(
            lambda: any(b"exited on signal" in x for x in _lines(stack.fpm_log)), 15, "the child to be killed"
        )
        # socket missing: PHP-FPM stopped, its socket removed
        stack.stop_fpm()
        assert stack.get("/index.php") == 502

        nginx = [classify_nginx(x) for x in _lines(stack.error_log)]
        sock = f"unix:{stack.socket}"
        assert ("connection_refused", f"127.0.0.1:{stack.dead_port}") in nginx
        assert nginx.count(("read_timeout", sock)) == 2
        assert ("socket_missing", sock) in nginx
        fpm = [classify_phpfpm(x) for x in _lines(stack.fpm_log)]
        assert ("max_children_reached", "www", None) in fpm
        assert ("execution_timeout", "www", None) in fpm
        assert ("child_killed", "www", "SIGTERM") in fpm

        # the live tailer saw the same within a second
        def tailer_caught_up() -> bool:
            logs = watcher.snapshot().logs
            errors = logs[str(stack.error_log)].upstream_errors
            events = logs[str(stack.fpm_log)].phpfpm_events
            return (
                errors.get(("read_timeout", sock)) == 2
                and errors.get(("socket_missing", sock)) == 1
                and errors.get(("connection_refused", f"127.0.0.1:{stack.dead_port}")) == 1
                and events.get(("www", "child_killed"), 0) >= 1
                and events.get(("www", "execution_timeout"), 0) >= 1
                and events.get(("www", "max_children_reached"), 0) >= 1
            )

        wait_until(tailer_caught_up, 2, "the tailer")
    finally:
        watcher.stop()


def test_real_permission_denied_line(stack: LogStack) -> None:
    """nginx workers as nobody cannot connect to the www-data 0660 socket: a real ``13:``."""
    stack.nginx_user = "nobody nogroup"
    stack._write_configs()
    stack.start_fpm()
    stack.start_nginx()
    assert stack.get("/index.php") == 502
    kinds = [classify_nginx(x) for x in _lines(stack.error_log)]
    assert ("permission_denied", f"unix:{stack.socket}") in kinds


def test_analyze_tells_the_morning_after_as_incidents_with_their_causes(tmp_path: Path) -> None:
    fpm = "fastcgi://unix:/run/php/php8.2-fpm.sock:"
    nginx = (
        [
            f"2026/12/01 03:00:{s:02d} [error] 7#7: *{s} recv() failed (104: Connection reset by peer) while reading"
            f' response header from upstream, client: 1.1.1.1, server: x, request: "GET /a.php HTTP/1.1",'
            f' upstream: "{fpm}", host: "x"'
            for s in range(10)
        ]
        + [
            f"2026/12/01 04:10:{s:02d} [error] 7#7: *{s} upstream sent too big header while reading response header"
            f' from upstream, client: 1.1.1.1, server: x, request: "GET /b.php HTTP/1.1", upstream: "{fpm}", host: "x"'
            for s in range(5)
        ]
        + [
            "2026/12/01 05:00:00 [error] 7#7: *9 writev() failed (32: Broken pipe) while sending request to upstream,"
            ' client: 1.1.1.1, server: x, request: "GET /c HTTP/1.1", upstream: "http://127.0.0.1:8000/c", host: "x"'
        ]
    )
    (tmp_path / "error.log").write_text("\n".join(nginx) + "\n", encoding="utf-8")
    crashes = [
        f"[01-Dec-2026 03:00:{s:02d}] WARNING: [pool www] child {100 + s} exited on signal 11 (SIGSEGV) after 0.5"
        " seconds from start"
        for s in range(10)
    ]
    (tmp_path / "php-fpm.log").write_text("\n".join(crashes) + "\n", encoding="utf-8")
    done = run(["analyze", "--format", "json", str(tmp_path / "error.log"), str(tmp_path / "php-fpm.log")])
    assert done.returncode == 0, done.stderr
    found = [
        (i["kind"], i["cause"], i["explained_by"], i["start"], i["end"], i["count"])
        for i in json.loads(done.stdout)["incidents"]
    ]
    assert found == [
        (
            "connection_reset",
            "php_fpm_workers_crashing",
            "overlap",
            "2026-12-01 03:00:00",
            "2026-12-01 03:00:09",
            10,
        ),
        (
            "child_killed",
            "php_fpm_workers_crashing",
            "line",
            "2026-12-01 03:00:00",
            "2026-12-01 03:00:09",
            10,
        ),
        (
            "header_too_big",
            "upstream_header_too_big",
            "line",
            "2026-12-01 04:10:00",
            "2026-12-01 04:10:04",
            5,
        ),
        ("other_upstream", "unexplained", None, "2026-12-01 05:00:00", "2026-12-01 05:00:00", 1),
    ]


def test_analyze_native_and_pure_python_agree_to_the_second(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from exporter.logs import analyze as analyze_module

    if analyze_module._timed_scan is None:
        pytest.skip("built without a C compiler: only the pure-Python path exists")
    kinds = [SOCKET_MISSING, TIMEOUT.replace(b"{s:02d}", b"00")]
    lines = []
    for n in range(3000):  # 3000 lines over 50 minutes, two kinds, some behind a syslog prefix
        stamp = f"2024/05/01 12:{n // 60:02d}:{n % 60:02d}".encode()
        line = stamp + kinds[n % 2][19:]
        lines.append(b"May  1 12:00:00 web nginx: " + line if n % 7 == 0 else line)
    (tmp_path / "error.log").write_bytes(b"\n".join(lines) + b"\n")
    native = analyze_module.analyze([str(tmp_path / "error.log")]).as_dict(10)
    monkeypatch.setattr(analyze_module, "_timed_scan", None)
    pure = analyze_module.analyze([str(tmp_path / "error.log")]).as_dict(10)
    for report in (native, pure):  # the incidents' sample lines differ in shape, not in what they count
        for incident in report["incidents"]:
            incident.pop("line")
    assert native == pure
    assert native["nginx"]["total"] == {
        "count": 3000,
        "first": "2024-05-01 12:00:00",
        "last": "2024-05-01 12:49:59",
    }
