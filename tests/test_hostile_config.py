"""Hostile input in the files and flags: each is refused by the real CLI with exit 2 and one line.

A "billion laughs" YAML bomb, 100k nested brackets, duplicate keys, numbers that load and then
break the exporter (``.inf``, ``.nan``, out of range), bcrypt hashes that never finish or never
match, and numbers on the command line that overflow. The peak memory of each refusing process is
read from the kernel (``VmHWM``), and the bomb is also timed in-process.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
import typing
from pathlib import Path

import bcrypt
import pytest
from harness.process import vm_hwm

from exporter.config import MAX_YAML_BYTES, NUMBER_RANGES, Config, ConfigError
from exporter.discovery.merge import load_config
from exporter.webconfig import MAX_BCRYPT_COST, load_web_config

BOMB = "\n".join(
    [
        'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]',
        *(
            f"{name}: &{name} [{', '.join([f'*{previous}'] * 9)}]"
            for previous, name in zip("abcdefgh", "bcdefghi", strict=True)
        ),
    ]
)
"""Nine lines, 9**9 (387 million) strings once the aliases are followed."""

MB = 1024 * 1024


def refused(*args: str) -> tuple[str, float]:
    """Run the real CLI, which must refuse (exit 2, one line, no traceback): (that line, seconds)."""
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError(f"{args}: still running after 60 s") from None
    seconds = time.monotonic() - started
    assert proc.returncode == 2, (proc.returncode, err)
    assert out == ""
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0], seconds


def peak_rss(*args: str) -> int:
    """The peak RSS (bytes) of the real CLI run with ``args`` (its high-water mark, read until it exits)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    peak, deadline = 0, time.monotonic() + 60
    while proc.poll() is None:
        peak = max(peak, vm_hwm(proc.pid))
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise AssertionError(f"{args}: still running after 60 s")
        time.sleep(0.01)  # polling the child's high-water mark until it exits, under a deadline
    return peak


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def test_yaml_bomb_in_config_is_refused_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, "bomb.yml", BOMB)
    started = time.monotonic()
    with pytest.raises(ConfigError):
        load_config(str(path))
    in_process = time.monotonic() - started
    line, seconds = refused("--config", str(path), "diagnose")
    rss = peak_rss("--config", str(path), "diagnose")
    print(
        f"\nYAML bomb in --config: refused in {in_process * 1000:.0f} ms ({seconds:.2f} s with the CLI's start), peak RSS {rss / MB:.0f} MB: {line}"
    )
    assert in_process < 1.0
    assert str(path) in line and "line " in line and "aliases" in line
    assert rss < 200 * MB
    # the web config file reads YAML the same way
    web_line, _ = refused("--web.config.file", str(path))
    assert "aliases" in web_line


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("nested", "filesystems: " + "[" * 100_000 + "]" * 100_000 + "\n", "line 1: nested deeper than 32 levels"),
        ("duplicate", "logs:\n  start: end\nscrape_timeout_seconds: 5\nlogs:\n  start: beginning\n", "line 4: duplicate key 'logs' (first at line 1)"),
        ("inner duplicate", "logs:\n  poll_interval_seconds: 1\n  poll_interval_seconds: 2\n", "line 3: duplicate key 'poll_interval_seconds' (first at line 2)"),
        ("poll inf", "logs:\n  poll_interval_seconds: .inf\n", "logs.poll_interval_seconds: expected a finite number, got inf"),
        ("poll nan", "logs:\n  poll_interval_seconds: .nan\n", "logs.poll_interval_seconds: expected a finite number, got nan"),
        ("poll zero", "logs:\n  poll_interval_seconds: 0\n", "logs.poll_interval_seconds: must be a number from 0.01 to 60, got 0.0"),
        ("scrape inf", "scrape_timeout_seconds: .inf\n", "scrape_timeout_seconds: expected a finite number, got inf"),
        ("scrape huge", "scrape_timeout_seconds: 1.0e+308\n", "scrape_timeout_seconds: must be a number from 0.1 to 120"),
        ("upstreams", "logs:\n  max_upstreams: 100000000\n", "logs.max_upstreams: must be a number from 1 to 10000"),
        ("ratio", "thresholds:\n  memory_available_ratio: -1\n", "thresholds.memory_available_ratio: must be a number from 0 to 1"),
        ("escapes in a key", '"a\\e]0;pwned\\a\\e[2J": 1\n', "'a\\x1b]0;pwned\\x07\\x1b[2J': unknown key"),
        ("long value", "nginx_user: [" + ", ".join(["x" * 1000] * 100) + "]\n", "nginx_user: expected a string, got ['xxxxxxxx"),
    ],
)  # fmt: skip
def test_bad_config_is_one_line_and_exit_2(tmp_path: Path, name: str, text: str, expected: str) -> None:
    path = write(tmp_path, "bad.yml", text)
    line, _ = refused("--config", str(path), "diagnose")
    assert line.startswith(f"badgateway-exporter: {path}: "), line
    assert expected in line, line
    assert len(line) < 400, line


def test_oversized_config_is_refused_unread(tmp_path: Path) -> None:
    path = write(tmp_path, "big.yml", "# " + "x" * MAX_YAML_BYTES + "\n")
    line, _ = refused("--config", str(path))
    assert "larger than 1024 KiB" in line


def _numbers(tp: type) -> list[str]:
    """``Class.field`` of every int and float of the configuration, nested dataclasses included
    (also inside lists and optionals)."""
    found = []
    hints = typing.get_type_hints(tp)
    for field in dataclasses.fields(tp):
        if field.metadata.get("internal"):
            continue
        hint: object = hints[field.name]
        candidates: list[object] = [hint, *typing.get_args(hint)]
        if int in candidates or float in candidates:
            found.append(f"{tp.__name__}.{field.name}")
        for candidate in candidates:
            if isinstance(candidate, type) and dataclasses.is_dataclass(candidate):
                found += _numbers(candidate)
    return found


def test_every_number_of_the_configuration_has_a_range() -> None:
    numbers = set(_numbers(Config))
    assert "LogSettings.poll_interval_seconds" in numbers and "HttpTarget.timeout_seconds" in numbers
    assert numbers <= set(NUMBER_RANGES), sorted(numbers - set(NUMBER_RANGES))


def _hash(cost: int = 4, prefix: str = "2b") -> str:
    hashed = bcrypt.hashpw(b"secret", bcrypt.gensalt(rounds=4)).decode()
    return f"${prefix}${cost:02d}${hashed[7:]}"


@pytest.mark.parametrize(
    ("hashed", "expected"),
    [
        (_hash(31), f"basic_auth_users.u: bcrypt cost 31 outside 4..{MAX_BCRYPT_COST}"),
        (_hash(MAX_BCRYPT_COST + 1), f"bcrypt cost {MAX_BCRYPT_COST + 1} outside"),
        (_hash(prefix="2"), "basic_auth_users.u: bcrypt variant $2$ is not supported"),
        (_hash(prefix="2x"), "basic_auth_users.u: bcrypt variant $2x$ is not supported"),
    ],
)
def test_unusable_bcrypt_hashes_are_refused_at_load(tmp_path: Path, hashed: str, expected: str) -> None:
    path = write(tmp_path, "web.yml", f"basic_auth_users:\n  u: '{hashed}'\n")
    line, seconds = refused("--web.config.file", str(path), "--web.listen-address", "127.0.0.1:0")
    print(f"\n{hashed[:7]}...: refused in {seconds:.2f} s: {line}")
    assert expected in line, line


def test_supported_bcrypt_hashes_load(tmp_path: Path) -> None:
    for prefix in ("2a", "2b", "2y"):
        path = write(tmp_path, "web.yml", f"basic_auth_users:\n  u: '{_hash(prefix=prefix)}'\n")
        assert load_web_config(str(path)).basic_auth_users


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("diagnose", "--timeout", "inf"), "--timeout: must be a number of seconds above 0 and at most 120, got 'inf'"),
        (("diagnose", "--timeout", "nan"), "--timeout: must be a number of seconds"),
        (("diagnose", "--wait", "1e308"), "--wait: must be a number of seconds from 0 to 3600"),
        (("rules", "render", "--for-scale", "1e308"), "--for-scale: must be a number from 0 to 100, got '1e308'"),
        (("rules", "render", "--for-scale", "nan"), "--for-scale: must be a number from 0 to 100"),
        (("dashboards", "render", "--for-scale", "-1"), "--for-scale: must be a number from 0 to 100"),
        (("logs", "analyze", "--top", "1e9", "x.log"), "--top: must be a whole number from 0 to 1000"),
    ],
)  # fmt: skip
def test_bad_numbers_on_the_command_line(tmp_path: Path, args: tuple[str, ...], expected: str) -> None:
    line, _ = refused(*args)
    assert expected in line, line
