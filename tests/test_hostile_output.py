"""Hostile input in the logs: terminal escapes and unbounded lines, through the real CLI.

- A log line carrying terminal escapes (set the window title, clear the screen) reaches the text
  output of ``diagnose`` and ``logs analyze`` and the label values of ``/metrics`` only escaped.
- ``logs classify`` reading a line that never ends (zeros, no newline) stays within the 64 KiB line
  cap; ``logs analyze`` of errors spread over many distinct minutes keeps a bounded summary; a
  truncated ``.gz`` is reported with what was read. Peak memory is the kernel's high-water mark (``VmHWM``).
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import httpx
from harness import wait_until
from harness.process import exporter_process, offline_config_file, vm_hwm

from exporter.logs.analyze import MAX_MINUTES, analyze

ESCAPES = "\x1b]0;pwned\x07\x1b[2J\x00\x01"
RAW = ("\x1b", "\x07", "\x00", "\x01")
MB = 1024 * 1024


def nginx_line(when: datetime, upstream: str, request: str = "GET / HTTP/1.1") -> str:
    return (
        f"{when:%Y/%m/%d %H:%M:%S} [error] 4242#4242: *1 connect() failed (111: Connection refused) while "
        f'connecting to upstream, client: 127.0.0.1, server: shop, request: "{request}", '
        f'upstream: "{upstream}", host: "shop"'
    )


def run(*args: str, stdin: bytes | None = None, timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "exporter", *args],
        input=stdin,
        capture_output=True,
        timeout=timeout,
        check=False,
    )


def peak_rss_of(args: list[str], feed: bytes = b"", feed_times: int = 0) -> tuple[int, int]:
    """Run the real CLI, writing ``feed`` ``feed_times`` times to its stdin: (exit status, peak RSS bytes)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdin is not None

    def write() -> None:
        assert proc.stdin is not None
        try:
            for _ in range(feed_times):
                proc.stdin.write(feed)
        except BrokenPipeError:
            pass
        finally:
            proc.stdin.close()

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    peak, deadline = 0, time.monotonic() + 300
    while proc.poll() is None:
        peak = max(peak, vm_hwm(proc.pid))
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise AssertionError(f"{args}: still running after 300 s")
        time.sleep(0.01)  # polling the child's high-water mark until it exits, under a deadline
    writer.join(timeout=10)
    return proc.returncode, peak


# -- terminal escapes --------------------------------------------------------------------------


def hostile_log(folder: Path) -> Path:
    log = folder / "error.log"
    now = datetime.now()
    lines = [
        nginx_line(now, f"unix:/run/php/{ESCAPES}.sock:", f"GET /{ESCAPES} HTTP/1.1"),
        nginx_line(now, f"http://127.0.0.1:8000/{ESCAPES}"),
    ]
    log.write_bytes(("\n".join(lines) + "\n").encode("utf-8"))
    return log


def test_diagnose_and_analyze_show_terminal_escapes_escaped(tmp_path: Path) -> None:
    log = hostile_log(tmp_path)
    diagnosed = run(
        "--config",
        str(offline_config_file(tmp_path, logs={"nginx": [str(log)], "php_fpm": [], "start": "beginning"})),
        "diagnose",
    )
    analyzed = run("logs", "analyze", str(log))
    assert analyzed.returncode == 0, analyzed.stderr
    for done in (diagnosed, analyzed):
        text = done.stdout.decode("utf-8")
        assert "Traceback" not in done.stderr.decode()
        assert not [c for c in RAW if c in text], repr(text)
    assert "\\x1b]0;pwned\\x07\\x1b[2J" in analyzed.stdout.decode()
    assert "\\x1b" in diagnosed.stdout.decode(), diagnosed.stdout.decode()
    print(
        f"\ndiagnose and logs analyze print: {next(ln for ln in analyzed.stdout.decode().splitlines() if 'pwned' in ln).strip()}"
    )


def test_label_values_show_control_characters_escaped(tmp_path: Path) -> None:
    log = hostile_log(tmp_path)
    with exporter_process(
        [
            "--config",
            str(
                offline_config_file(tmp_path, logs={"nginx": [str(log)], "php_fpm": [], "start": "beginning"})
            ),
        ],
        tmp_path / "exporter.log",
    ) as proc:

        def scraped() -> str:
            return httpx.get(f"{proc.url()}/metrics", timeout=10).text

        wait_until(lambda: "pwned" in scraped(), 20, "the log's upstreams in /metrics")
        body = scraped()
    labelled = [line for line in body.splitlines() if "pwned" in line]
    print(f"\n/metrics: {labelled[0]}")
    assert not [c for c in RAW if c in body], [
        line for line in body.splitlines() if any(c in line for c in RAW)
    ]
    assert all("\\\\x1b]0;pwned" in line for line in labelled), labelled  # \x1b, its backslash escaped


# -- unbounded input ---------------------------------------------------------------------------


def test_classify_of_a_line_that_never_ends_is_bounded() -> None:
    chunk = b"\0" * MB
    status, rss = peak_rss_of(["logs", "classify"], chunk, 512)
    print(f"\nlogs classify of 512 MiB without a newline: exit {status}, peak RSS {rss / MB:.0f} MB")
    assert status == 0
    assert rss < 150 * MB


def test_analyze_of_many_distinct_minutes_keeps_a_bounded_summary(tmp_path: Path) -> None:
    log = tmp_path / "error.log"
    start = datetime(2024, 1, 1)
    minutes = 4 * MAX_MINUTES
    with log.open("w", encoding="utf-8") as handle:
        for minute in range(minutes):
            count = 5 if minute == 12345 else 1  # one busy minute among many quiet ones
            for _ in range(count):
                handle.write(nginx_line(start + timedelta(minutes=minute), "127.0.0.1:8000") + "\n")
    analysis = analyze([str(log)])
    assert len(analysis.nginx.minutes) <= MAX_MINUTES
    busiest = analysis.as_dict(1)["nginx"]["busiest_minutes"][0]
    assert busiest["minute"] == f"{start + timedelta(minutes=12345):%Y-%m-%d %H:%M}"
    status, rss = peak_rss_of(["logs", "analyze", "--format", "json", str(log)])
    print(
        f"\nlogs analyze of {minutes:,} distinct minutes: {len(analysis.nginx.minutes):,} kept, peak RSS {rss / MB:.0f} MB"
    )
    assert status == 0
    assert rss < 150 * MB


def test_truncated_gzip_reports_what_was_read(tmp_path: Path) -> None:
    start = datetime(2024, 1, 1)
    text = "".join(nginx_line(start + timedelta(seconds=i), "127.0.0.1:8000") + "\n" for i in range(20_000))
    whole = gzip.compress(text.encode(), 6)
    cut = tmp_path / "error.log.1.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    done = run("logs", "analyze", str(cut))
    assert done.returncode == 0, done.stderr
    out = done.stdout.decode()
    print(f"\nlogs analyze of a .gz cut in half: {out.splitlines()[:2]}")
    assert "incomplete: Compressed file ended before the end-of-stream marker was reached" in out
    assert "nginx upstream errors:" in out
    report = json.loads(run("logs", "analyze", "--format", "json", str(cut)).stdout)
    read = report["files"][0]["lines"]
    assert 1000 < read < 20_000 and report["nginx"]["total"]["count"] == read
    assert "error" in report["files"][0]
