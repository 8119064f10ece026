"""The log tailer: start position, partial and long lines, every rotation, restarts with the
state file, permission errors, bounded labels, metrics, and a torture test (counted == written)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import wait_until

from exporter.causes import Cause
from exporter.config import LogSettings
from exporter.exposition import generate_text
from exporter.families import Metric
from exporter.logs import classify
from exporter.logs.metrics import metric_families
from exporter.logs.tailer import LogCounters, LogSnapshot, LogWatcher

SOCK = "unix:/run/php/php8.3-fpm.sock"


@pytest.fixture(autouse=True, params=["native", "python"])
def scan(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs with the native scan (exporter/logs/_scan.c) and without it."""
    if request.param == "python":
        monkeypatch.setattr(classify, "_native_scan", None)
    return str(request.param)


def line(n: int, kind: str = "timeout", upstream: str = "fastcgi://unix:/run/php/php8.3-fpm.sock:") -> bytes:
    """A numbered nginx error line (the number makes every file's first bytes unique)."""
    message = {
        "timeout": "upstream timed out (110: Connection timed out) while reading response header from upstream",
        "refused": "connect() failed (111: Connection refused) while connecting to upstream",
        "notice": "signal process started",
    }[kind]
    return (
        f"2024/05/01 12:00:00 [error] 1#1: *{n} {message}, client: 127.0.0.1, server: x, "
        f'request: "GET /{n} HTTP/1.1", upstream: "{upstream}", host: "x"\n'
    ).encode()


def counters(watcher: LogWatcher, path: Path) -> LogCounters:
    return watcher.snapshot().logs[str(path)]


def timeouts(c: LogCounters) -> int:
    return sum(n for (kind, _), n in c.upstream_errors.items() if kind == "read_timeout")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tmp_path


def settings_for(folder: Path, **kw: object) -> LogSettings:
    base: dict[str, object] = {
        "nginx": [str(folder / "*error.log")],
        "php_fpm": [str(folder / "php-fpm.log")],
        "poll_interval_seconds": 0.02,
        "state_file": str(folder / "state.json"),
    }
    base.update(kw)
    return LogSettings(**base)  # type: ignore[arg-type]


@pytest.fixture
def running() -> Iterator[list[LogWatcher]]:
    started: list[LogWatcher] = []
    yield started
    for watcher in started:
        watcher.stop()


def start(settings: LogSettings, running: list[LogWatcher]) -> LogWatcher:
    watcher = LogWatcher(settings)
    watcher.start()
    running.append(watcher)
    return watcher


def append(path: Path, data: bytes) -> None:
    with open(path, "ab") as handle:
        handle.write(data)


def test_starts_at_end_then_counts_new_lines_within_a_second(folder: Path, running: list[LogWatcher]) -> None:
    log = folder / "error.log"
    log.write_bytes(line(1) + line(2) + b"2024/05/01 partial old line")
    watcher = LogWatcher(settings_for(folder))
    # One round in this thread before the thread starts: the log is found *and opened at its end*
    # before anything is appended (a log is listed when found, and opened a moment later: waiting
    # for the listing let an append under load land before the open, past the end it started at).
    watcher.poll_once()
    assert str(log) in watcher.snapshot().logs
    watcher.start()
    running.append(watcher)
    append(log, b" rest of the old line\n")
    t0 = time.monotonic()
    append(log, line(3) + line(4, "refused", "http://127.0.0.1:8000/x"))
    wait_until(lambda: counters(watcher, log).lines == 2, 5.0, "2 new lines")
    assert time.monotonic() - t0 < 1.0
    c = counters(watcher, log)
    assert dict(c.upstream_errors) == {("read_timeout", SOCK): 1, ("connection_refused", "127.0.0.1:8000"): 1}
    assert c.lag_bytes == 0


def test_start_beginning_counts_existing_lines(folder: Path, running: list[LogWatcher]) -> None:
    log = folder / "error.log"
    log.write_bytes(line(1) + line(2) + line(3, "notice"))
    watcher = start(settings_for(folder, start="beginning"), running)
    wait_until(
        lambda: str(log) in watcher.snapshot().logs and counters(watcher, log).lines == 3, 5.0, "3 lines"
    )
    assert dict(counters(watcher, log).upstream_errors) == {("read_timeout", SOCK): 2}


def test_partial_line_waits_for_its_newline_and_bad_bytes_are_fine(folder: Path) -> None:
    log = folder / "error.log"
    log.write_bytes(b"")
    watcher = LogWatcher(settings_for(folder))
    watcher.poll_once()
    whole = line(1).replace(b"server: x", b"server: \xff\xfe\xc3(")
    append(log, whole[:50])
    watcher.poll_once()
    assert counters(watcher, log).lines == 0
    append(log, whole[50:])
    watcher.poll_once()
    assert counters(watcher, log).lines == 1
    assert timeouts(counters(watcher, log)) == 1
    watcher.stop()


def test_long_line_is_cut_and_counted_once_even_across_a_restart(folder: Path) -> None:
    log = folder / "error.log"
    log.write_bytes(b"")
    settings = settings_for(folder)
    watcher = LogWatcher(settings)
    watcher.poll_once()
    append(log, line(1)[:-1] + b"x" * 100_000)  # 100 KB and no newline yet
    watcher.poll_once()
    assert counters(watcher, log).lines == 1
    watcher.stop()
    append(log, b"y" * 50_000 + b"\n" + line(2))
    again = LogWatcher(settings)
    again.poll_once()
    assert counters(again, log).lines == 1  # line 2 only: the rest of the long line is not a line
    assert timeouts(counters(again, log)) == 1
    again.stop()


def test_rotations_by_every_method_and_a_late_file(folder: Path) -> None:
    log = folder / "error.log"
    log.write_bytes(line(0))
    watcher = LogWatcher(settings_for(folder))
    watcher.poll_once()
    n = 1
    # rename and create, with lines written to the old file after the rename (nginx before USR1)
    append(log, line(n))
    n += 1
    watcher.poll_once()
    os.rename(log, folder / "error.log.1")
    append(folder / "error.log.1", line(n))
    n += 1
    log.write_bytes(line(n))
    n += 1
    watcher.poll_once()
    assert counters(watcher, log).rotations == 1
    # copytruncate with lines the tailer had not read yet: finished from the copy
    append(log, line(n) + line(n + 1))
    n += 2
    shutil.copyfile(log, folder / "error.log.2")
    os.truncate(log, 0)
    append(log, line(n))
    n += 1
    watcher.poll_once()
    assert counters(watcher, log).rotations == 2
    # delete and recreate
    append(log, line(n))
    n += 1
    os.unlink(log)
    watcher.poll_once()
    log.write_bytes(line(n))
    n += 1
    watcher.poll_once()
    assert counters(watcher, log).rotations == 3
    # a file that appears only later, matched by the glob
    late = folder / "site-error.log"
    late.write_bytes(line(n) + line(n + 1))
    watcher._next_glob = 0  # the glob is re-read at most once a second: force it
    watcher.poll_once()
    assert timeouts(counters(watcher, late)) == 2
    assert timeouts(counters(watcher, log)) == n - 1  # line 0 was there before the start
    watcher.stop()


def test_restart_neither_loses_nor_recounts(folder: Path) -> None:
    log = folder / "error.log"
    log.write_bytes(b"")
    settings = settings_for(folder)
    first = LogWatcher(settings)
    first.poll_once()
    append(log, line(1) + line(2))
    first.poll_once()
    first.stop()
    state = json.loads((folder / "state.json").read_text())
    assert state["files"][str(log)]["offset"] == len(line(1) + line(2))
    append(log, line(3))
    second = LogWatcher(settings)
    second.poll_once()
    assert timeouts(counters(second, log)) == 1
    second.stop()
    # rotated by rename while stopped: the rest of the old file is read, then the new one
    append(log, line(4))
    os.rename(log, folder / "error.log.1")
    log.write_bytes(line(5) + line(6))
    third = LogWatcher(settings)
    third.poll_once()
    assert timeouts(counters(third, log)) == 3
    assert counters(third, log).rotations == 1
    third.stop()


def test_directory_where_a_log_should_be_is_a_read_error(folder: Path) -> None:
    (folder / "bad-error.log").mkdir()
    watcher = LogWatcher(settings_for(folder))
    watcher.poll_once()
    assert counters(watcher, folder / "bad-error.log").read_errors == 1
    watcher.stop()


PERMISSION_SCRIPT = r"""
import json, os, sys, time
from exporter.causes import Cause
from exporter.config import LogSettings
from exporter.exposition import generate_text
from exporter.logs.tailer import LogWatcher
from exporter.logs.metrics import metric_families
from exporter.exposition import generate_text
folder = sys.argv[1]
watcher = LogWatcher(LogSettings(nginx=[folder + "/*error.log"], php_fpm=[], start="beginning",
                                 poll_interval_seconds=0.05))
os.setegid(65534)   # nobody/nogroup: from here on the kernel checks file modes for us
os.seteuid(65534)
watcher.start()
deadline = time.monotonic() + 10
while time.monotonic() < deadline:
    snap = watcher.snapshot()
    if snap.logs.get(folder + "/secret-error.log") and snap.logs[folder + "/secret-error.log"].read_errors >= 2:
        break
    time.sleep(0.05)
watcher.stop()
class C:
    def collect(self):
        return metric_families(snap)
print(json.dumps({k: [v.lines, v.read_errors] for k, v in snap.logs.items()}))
print(generate_text(C()).decode())
"""


def test_permission_denied_is_counted_not_a_crash(folder: Path) -> None:
    """Root reads every file, so the check runs in a child that drops its effective uid/gid to
    nobody after importing (seteuid): the open() of a 0600 root file then really fails with
    EACCES, exactly as for an exporter running as an unprivileged user."""
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to nobody")
    shared = Path(f"/tmp/bgw-perm-{os.getpid()}")
    shared.mkdir(mode=0o755, exist_ok=True)
    try:
        os.chmod(shared, 0o755)
        secret = shared / "secret-error.log"
        secret.write_bytes(line(1))
        os.chmod(secret, 0o600)
        public = shared / "public-error.log"
        public.write_bytes(line(1) + line(2))
        os.chmod(public, 0o644)
        done = subprocess.run(
            [sys.executable, "-c", PERMISSION_SCRIPT, str(shared)], capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 0, done.stderr
        first, metrics = done.stdout.split("\n", 1)
        result = json.loads(first)
        assert result[str(public)] == [2, 0]
        assert result[str(secret)][0] == 0
        assert result[str(secret)][1] >= 2  # retried about once a second, counted each time
        assert f'badgateway_log_read_errors_total{{log="{secret}"}}' in metrics
        assert "Permission denied" in done.stderr  # logged once as a warning
        assert "Traceback" not in done.stderr
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_upstream_labels_are_bounded(folder: Path) -> None:
    log = folder / "error.log"
    log.write_bytes(b"")
    watcher = LogWatcher(settings_for(folder, max_upstreams=3))
    watcher.poll_once()
    append(log, b"".join(line(i, upstream=f"http://10.0.0.{i}:80/") for i in range(50)))
    watcher.poll_once()
    c = counters(watcher, log)
    labels = {upstream for _, upstream in c.upstream_errors}
    assert labels == {"10.0.0.0:80", "10.0.0.1:80", "10.0.0.2:80", "other"}
    assert c.upstream_errors[("read_timeout", "other")] == 47
    watcher.stop()


def test_metric_families_exact_output() -> None:
    snap = LogSnapshot(
        {
            "/var/log/nginx/error.log": LogCounters(
                source="nginx",
                lines=10,
                upstream_errors={("socket_missing", SOCK): 3},
                rotations=1,
                lag_bytes=5,
            ),
            "/var/log/php8.3-fpm.log": LogCounters(
                source="php-fpm", lines=4, phpfpm_events={("www", "max_children_reached"): 2, ("", "none"): 2}
            ),
        }
    )

    class Collector:
        def collect(self) -> list[Metric]:
            return list(metric_families(snap))

    text = generate_text(Collector()).decode()
    samples = [s for s in text.splitlines() if not s.startswith("#")]
    assert samples == [
        'badgateway_nginx_upstream_errors_total{kind="socket_missing",log="/var/log/nginx/error.log",'
        'upstream="unix:/run/php/php8.3-fpm.sock"} 3.0',
        'badgateway_nginx_error_log_lines_total{log="/var/log/nginx/error.log"} 10.0',
        'badgateway_phpfpm_log_events_total{event="none",log="/var/log/php8.3-fpm.log",pool=""} 2.0',
        'badgateway_phpfpm_log_events_total{event="max_children_reached",log="/var/log/php8.3-fpm.log",pool="www"} 2.0',
        'badgateway_log_rotations_total{log="/var/log/nginx/error.log"} 1.0',
        'badgateway_log_rotations_total{log="/var/log/php8.3-fpm.log"} 0.0',
        'badgateway_log_read_errors_total{log="/var/log/nginx/error.log"} 0.0',
        'badgateway_log_read_errors_total{log="/var/log/php8.3-fpm.log"} 0.0',
        'badgateway_log_lag_bytes{log="/var/log/nginx/error.log"} 5.0',
        'badgateway_log_lag_bytes{log="/var/log/php8.3-fpm.log"} 0.0',
        "badgateway_log_files_skipped 0.0",
    ]
    assert "# TYPE badgateway_log_lag_bytes gauge" in text
    assert "# TYPE badgateway_nginx_upstream_errors_total counter" in text


def test_phpfpm_log_is_tailed(folder: Path) -> None:
    log = folder / "php-fpm.log"
    log.write_bytes(b"")
    watcher = LogWatcher(settings_for(folder))
    watcher.poll_once()
    append(
        log,
        b"[27-Nov-2026 02:01:57] WARNING: [pool www] server reached pm.max_children setting (1), consider raising it\n"
        b"[27-Nov-2026 02:01:58] NOTICE: fpm is running, pid 1\n",
    )
    watcher.poll_once()
    assert dict(counters(watcher, log).phpfpm_events) == {("www", "max_children_reached"): 1, ("", "none"): 1}
    watcher.stop()


# -- torture ------------------------------------------------------------------------------------

METHODS = ("rename", "copytruncate", "delete")


def test_torture_counted_equals_written(folder: Path) -> None:
    """A writer thread appends lines nonstop while the file is rotated by every method many times
    and the watcher is stopped and restarted (state file) in between.

    Limits every polling reader shares, which the schedule respects: each rotation waits until
    the watcher has noticed the previous one and read some of the current file (two rotations
    within one poll would hide the middle file; a file truncated before its first byte was read
    cannot be recognised in its copy); while the watcher is stopped only rename and
    copytruncate happen, since a deleted file's unread lines are gone for any reader."""
    log = folder / "error.log"
    log.write_bytes(b"")
    # "beginning": the writer may append its first lines before the watcher first opens the file.
    settings = settings_for(folder, poll_interval_seconds=0.01, start="beginning")
    lock = threading.Lock()  # the writer's own file handling vs. the rotations
    written = [0]
    stop = threading.Event()

    def writer() -> None:
        n = 0
        while not stop.is_set():
            with lock, open(log, "ab") as handle:
                handle.write(b"".join(line(n + i) for i in range(7)))
                n += 7
                written[0] = n
            time.sleep(0.001)

    totals: list[int] = []
    rotations = 0
    watcher = LogWatcher(settings)
    watcher.start()
    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for cycle in range(12):
            for index in range(3):
                method = METHODS[(cycle + index) % 3]
                _wait_for_progress(watcher, log)
                seen = counters(watcher, log).rotations
                with lock:
                    _rotate(log, method, f"{cycle}.{index}")
                rotations += 1
                _wait_for_rotation(watcher, log, seen)
            _wait_for_progress(watcher, log)
            watcher.stop()
            totals.append(timeouts(counters(watcher, log)))
            with lock:  # rotated while nobody is watching
                _rotate(log, METHODS[cycle % 2], f"{cycle}.stopped")
            rotations += 1
            watcher = LogWatcher(settings)
            watcher.start()
            _wait_for_progress(watcher, log)
    finally:
        stop.set()
        thread.join(timeout=10)
    try:
        wait_until(
            lambda: timeouts(counters(watcher, log)) + sum(totals) == written[0],
            20,
            "the watcher to catch up",
        )
    finally:
        watcher.stop()
    assert sum(totals) + timeouts(counters(watcher, log)) == written[0], (totals, written[0])
    assert written[0] > 1000
    assert rotations == 48


def _wait_for_rotation(watcher: LogWatcher, log: Path, seen: int) -> None:
    wait_until(lambda: counters(watcher, log).rotations > seen, 15, "the rotation to be noticed")


def _wait_for_progress(watcher: LogWatcher, log: Path) -> None:
    """Until the watcher has read at least one more line (of the current file)."""
    before = counters(watcher, log).lines if str(log) in watcher.snapshot().logs else 0
    wait_until(
        lambda: str(log) in watcher.snapshot().logs and counters(watcher, log).lines > before, 15, "progress"
    )


def _rotate(log: Path, method: str, suffix: str) -> None:
    rotated = log.with_name(f"error.log.{suffix}")
    if method == "rename":
        os.rename(log, rotated)
        log.write_bytes(b"")
    elif method == "copytruncate":
        shutil.copyfile(log, rotated)
        os.truncate(log, 0)
    else:
        os.unlink(log)
        log.write_bytes(b"")


def test_recent_keeps_the_last_error_lines_of_each_block_in_order(folder: Path) -> None:
    """What the round shows of the logs: the newest error of each kind and upstream among a block's
    last lines, oldest first, never a notice."""
    log = folder / "site-error.log"
    log.write_bytes(b"")
    watcher = LogWatcher(settings_for(folder, start="beginning"))
    try:
        watcher.poll_once()
        with log.open("ab") as out:
            out.write(b"".join(line(n, "refused" if n % 2 else "timeout") for n in range(1, 41)))
            out.write(line(41, "notice"))
        watcher.poll_once()
        recent = watcher.recent()
        assert [e.line.split("*")[1].split(" ")[0] for e in recent] == ["39", "40"]
        assert {e.kind for e in recent} == {"read_timeout", "connection_refused"}
        assert all(e.path == str(log) and e.source == "nginx" for e in recent)
        assert timeouts(counters(watcher, log)) == 20  # the counts still cover every line
        with log.open("ab") as out:
            out.write(line(42, "notice") + line(43))

        def newest_is_43() -> bool:  # a block read within 0.2 s of the last kept one waits for the next poll
            watcher.poll_once()
            return watcher.recent()[-1].line.startswith(
                "2024/05/01 12:00:00 [error] 1#1: *43 upstream timed out"
            )

        wait_until(newest_is_43, 5.0, "the last line of the burst to be kept", interval=0.05)
        assert timeouts(counters(watcher, log)) == 21
    finally:
        watcher.stop()


def test_the_backends_own_log_and_every_source_become_episodes_with_their_causes(folder: Path) -> None:
    app_log = folder / "gunicorn.log"
    app_log.write_bytes(
        b"[2026-12-01 10:00:00 +0000] [1] [INFO] Booting worker with pid: 7\n"
        b"[2026-12-01 10:00:05 +0000] [1] [CRITICAL] WORKER TIMEOUT (pid:7)\n"
        b"[2026-12-01 10:00:06 +0000] [1] [CRITICAL] WORKER TIMEOUT (pid:8)\n"
    )
    (folder / "php-fpm.log").write_bytes(
        b"[01-Dec-2026 10:00:01] WARNING: [pool www] child 9 exited on signal 11 (SIGSEGV) after 1.0 seconds\n"
        b"[01-Dec-2026 10:00:02] WARNING: [pool www] child 10 exited on signal 15 (SIGTERM) after 1.0 seconds\n"
    )
    (folder / "error.log").write_bytes(
        line(1, "timeout") + b"\n"
        + b"2026/12/01 10:00:03 [error] 7#7: *5 app could not be resolved (3: Host not found), client: 1.1.1.1,"
        b' server: x, request: "GET / HTTP/1.1", host: "x"\n'
    )  # fmt: skip
    watcher = LogWatcher(settings_for(folder, app=[str(app_log)], start="beginning"))
    watcher.poll_once()
    found = {(e.key.source, e.key.kind, e.key.where, e.key.cause, e.count) for e in watcher.episodes()}
    assert found == {
        ("app", "worker_timeout", "", Cause.UPSTREAM_REQUEST_KILLED, 2),
        ("php-fpm", "child_killed", "www", Cause.PHP_FPM_WORKERS_CRASHING, 1),
        ("php-fpm", "child_killed", "www", None, 1),
        ("nginx", "read_timeout", "unix:/run/php/php8.3-fpm.sock", Cause.UPSTREAM_TIMEOUT, 1),
        ("nginx", "host_not_found", "", Cause.UPSTREAM_HOST_NOT_FOUND, 1),
    }
    resolved = next(e for e in watcher.episodes() if e.key.kind == "host_not_found")
    assert "app could not be resolved" in resolved.line
    events = counters(watcher, app_log).phpfpm_events
    assert events == {("", "none"): 1, ("", "worker_timeout"): 2}
    samples = {
        (s.name, s.labels.get("event")): s.value
        for family in metric_families(watcher.snapshot())
        if family.name == "badgateway_backend_log_events"
        for s in family.samples
    }
    assert samples[("badgateway_backend_log_events_total", "worker_timeout")] == 2


@pytest.mark.parametrize("cut", ["at_a_line_end", "mid_line"])
def test_truncation_to_a_smaller_size_counts_every_line_once(folder: Path, cut: str) -> None:
    log = folder / "error.log"
    lines = [line(n) for n in range(40)]
    log.write_bytes(b"\n".join(lines) + b"\n")
    watcher = LogWatcher(settings_for(folder, start="beginning"))
    watcher.poll_once()
    assert timeouts(counters(watcher, log)) == 40
    keep = sum(len(x) + 1 for x in lines[:10]) - (0 if cut == "at_a_line_end" else 7)
    os.truncate(log, keep)  # `truncate -s`: smaller, not zero; the rest of the file is what was read
    watcher.poll_once()
    append(log, b"\n".join(line(100 + n) for n in range(5)) + b"\n")
    watcher.poll_once()
    # mid-line: the cut line's start and the first new line are one line, counted once as such
    assert timeouts(counters(watcher, log)) == 45
    assert counters(watcher, log).rotations == 1
    watcher.stop()


def test_a_glob_of_thousands_of_files_tails_at_most_max_files_and_counts_the_rest(folder: Path) -> None:
    for n in range(300):
        (folder / f"site{n:03d}-error.log").write_bytes(line(n) + b"\n")
    watcher = LogWatcher(settings_for(folder, start="beginning", max_files=50, php_fpm=[]))
    watcher.poll_once()
    snapshot = watcher.snapshot()
    assert len(snapshot.logs) == 50 and snapshot.skipped_files == 250
    open_fds = len(os.listdir("/proc/self/fd"))
    watcher.poll_once()
    assert len(os.listdir("/proc/self/fd")) == open_fds  # no descriptor for the skipped ones
    watcher.stop()
