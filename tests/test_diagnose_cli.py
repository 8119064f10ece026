"""``diagnose`` on the command line: bad seconds, ``--wait`` on a real stack, and what the log says."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from harness import wait_until
from harness.exporters import cli, write_config
from harness.process import exporter_process

from exporter.cli import MAX_WAIT_SECONDS, main
from exporter.demo.stack import Stack


@pytest.mark.parametrize(
    "args",
    [
        ["--timeout", "inf"], ["--timeout", "nan"], ["--timeout", "0"], ["--timeout", "-1"],
        ["--timeout", "121"], ["--timeout", "soon"], ["--wait", "inf"], ["--wait=-inf"],
        ["--wait", "nan"], ["--wait", "-1"], ["--wait", str(MAX_WAIT_SECONDS + 1)], ["--wait", "later"],
    ],
)  # fmt: skip
def test_bad_seconds_are_one_line_and_exit_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diagnose", *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    option = args[0].split("=")[0]
    assert lines[0].startswith(
        f"badgateway-exporter diagnose: argument {option}: must be a number of seconds"
    )


def test_bad_seconds_from_the_real_command_line() -> None:
    done = cli("diagnose", "--timeout", "inf")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_diagnose_help_explains_wait_bundle_and_exit_codes() -> None:
    done = cli("diagnose", "--help")
    assert done.returncode == 0
    for text in ("--wait SECONDS", "--bundle FILE.tar.gz", "exit codes:", "redacted", "3600"):
        assert text in done.stdout


def _diagnose(config: Path, *args: str, folder: Path) -> tuple[subprocess.Popen[bytes], Path, Path]:
    out, err = folder / "diagnose.out", folder / "diagnose.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "exporter", "--config", str(config), "diagnose", *args],
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
        )
    return proc, out, err


def _rounds(err: Path) -> list[str]:
    return [line for line in err.read_text(encoding="utf-8").splitlines() if "diagnose --wait: round" in line]


def test_wait_returns_as_soon_as_php_fpm_is_back(stack: Stack) -> None:
    config = write_config(stack)
    stack.stop_php_fpm()
    started = time.monotonic()
    proc, out, err = _diagnose(config, "--wait", "30", "--format", "json", folder=stack.root)
    try:
        wait_until(lambda: bool(_rounds(err)) or proc.poll() is not None, 20, "the first round")
        assert proc.poll() is None, err.read_text(encoding="utf-8")
        stack.start_php_fpm()  # after the first round saw the fault
        healed = time.monotonic() - started
        code = proc.wait(timeout=40)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    elapsed = time.monotonic() - started
    rounds = _rounds(err)
    print(f"--wait 30: healed at {healed:.1f}s, returned at {elapsed:.1f}s after {len(rounds)} rounds")
    assert code == 0, err.read_text(encoding="utf-8")
    assert elapsed < healed + 10 < 30
    assert "php_fpm_down remains" in rounds[0]
    assert rounds[-1].endswith("no cause of 502/504 left")
    document = json.loads(out.read_text(encoding="utf-8"))
    assert document["exit_code"] == 0 and document["causes"] == []


def test_wait_with_the_fault_kept_ends_with_it_when_the_time_is_up(stack: Stack) -> None:
    config = write_config(stack)
    stack.stop_php_fpm()
    started = time.monotonic()
    proc, out, err = _diagnose(config, "--wait", "3", folder=stack.root)
    try:
        code = proc.wait(timeout=40)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    elapsed = time.monotonic() - started
    rounds = _rounds(err)
    print(f"--wait 3 with the fault kept: exit {code} after {elapsed:.1f}s, {len(rounds)} rounds")
    assert code == 1, err.read_text(encoding="utf-8")
    assert 3 <= elapsed < 10
    assert len(rounds) >= 2 and all("php_fpm_down remains" in line for line in rounds)
    text = out.read_text(encoding="utf-8")
    assert text.count("Verdict:") == 1 and "php_fpm_down" in text  # the full diagnosis once, at the end


def _httpx_lines(text: str) -> list[str]:
    """A line per probe: the exporter's own at debug level, or httpx's, which must never show at info."""
    return [
        line
        for line in text.splitlines()
        if "HTTP probe " in line or " httpx:" in line or "HTTP Request:" in line
    ]


@pytest.mark.parametrize("level", ["info", "debug"])
def test_probe_chatter_only_at_debug(stack: Stack, tmp_path: Path, level: str) -> None:
    config = write_config(stack)
    with exporter_process(
        ["--config", str(config), f"--log.level={level}"], tmp_path / "serve.log"
    ) as running:
        for _ in range(3):
            assert httpx.get(f"{running.url()}/metrics", timeout=30).status_code == 200
    diagnosed = cli("--config", str(config), f"--log.level={level}", "diagnose", timeout=60)
    assert diagnosed.returncode == 0, diagnosed.stderr
    served = running.log_text()
    if level == "info":
        assert _httpx_lines(served) == [], served
        assert _httpx_lines(diagnosed.stderr) == [], diagnosed.stderr
        assert "listening on" in served
    else:
        assert _httpx_lines(served), served
        assert _httpx_lines(diagnosed.stderr), diagnosed.stderr
