"""``php-fpm -t -y CONF``: does PHP-FPM's configuration on disk load?

PHP-FPM names the file and line of a value it cannot parse (``ERROR: [/etc/php/8.2/fpm/pool.d/www.conf:127]
unable to parse value for entry 'pm.max_children'``); for a value it parses but refuses
(``ALERT: [pool www] pm.max_children must be a positive value``) the file and line come from
discovery's reading of the pool. The test runs at most every ``test_interval_seconds`` and again as
soon as a tested file changes; each run is bounded by ``test_timeout_seconds`` and the round's deadline.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from exporter.checks.nginx_config import config_test_families
from exporter.config import Config, PhpFpmTestSettings
from exporter.deadline import Deadline
from exporter.discovery.model import PoolFacts
from exporter.discovery.units import default_php_fpm_unit
from exporter.families import Metric

TEST_ERRORS = ("binary_missing", "permission_denied", "timeout", "failed_to_run", "no_config")
_SEARCH = ("/usr/sbin", "/usr/local/sbin", "/sbin")
_MAX_OUTPUT = 8192

# ERROR: [/etc/php/8.2/fpm/pool.d/www.conf:127] unable to parse value for entry 'pm.max_children': ...
_AT_LINE = re.compile(r"\b(?:ERROR|ALERT): \[(?P<file>/[^\]]+?):(?P<line>\d+)\] (?P<text>.+)")
# ALERT: [pool www] pm.max_children must be a positive value
_POOL_KEY = re.compile(r"\[pool (?P<pool>[^\]]+)\] '?(?P<key>[a-z][a-z0-9_.]*)'? ")
_PROBLEM = re.compile(r"\b(?P<level>ERROR|ALERT): (?P<text>.+)")
_GENERIC = ("FPM initialization failed", "failed to post process the configuration",
            "failed to load configuration file", "Unable to include")  # fmt: skip


@dataclass(frozen=True)
class PhpFpmConfigResult:
    """The verdict of ``php-fpm -t`` on every tested file, or why there is none."""

    command: tuple[str, ...]
    valid: bool | None
    test_error: str | None  # one of TEST_ERRORS when no verdict could be had
    message: str | None  # the line that says what is wrong, or why the test could not run
    file: str | None
    line: int | None
    checked_at_seconds: float
    duration_seconds: float
    binary: str = "php-fpm"


def php_fpm_binary(config: Config) -> str:
    """``php-fpm8.2`` for ``php8.2-fpm.service`` (or a pool under ``/etc/php/8.2``) when installed."""
    if config.php_fpm_test.binary:
        return config.php_fpm_test.binary
    candidates: list[str] = []
    unit = config.units.php_fpm or default_php_fpm_unit()
    version = unit.removesuffix(".service").removeprefix("php").removesuffix("-fpm")
    if version[:1].isdigit():
        candidates.append(f"php-fpm{version}")
    php = config.discovered.php_fpm if config.discovered is not None else None
    for pool in php.pools if php is not None else ():
        if pool.version:
            candidates.append(f"php-fpm{pool.version}")
    candidates.append("php-fpm")
    path = os.pathsep.join([os.environ.get("PATH", ""), *_SEARCH])
    for name in candidates:
        found = shutil.which(name, path=path)
        if found:
            return found
    return candidates[0]


def tested_configs(config: Config) -> tuple[str, ...]:
    """The ``php-fpm.conf`` files to test: configured, else those discovery read."""
    if config.php_fpm_test.configs is not None:
        return tuple(config.php_fpm_test.configs)
    php = config.discovered.php_fpm if config.discovered is not None else None
    if php is None:
        return ()
    return tuple(f for f in php.config_files if os.path.exists(f))


def parse_test_output(
    output: str, returncode: int, is_root: bool, pools: Sequence[PoolFacts] = ()
) -> tuple[bool | None, str | None, str | None, str | None, int | None]:
    """``(valid, test_error, message, file, line)`` from what ``php-fpm -t`` printed."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    if returncode == 0:
        return True, None, next((line for line in lines if "test is successful" in line), "ok"), None, None
    for line in lines:
        where = _AT_LINE.search(line)
        if where is not None:
            return False, None, where.group(0), where.group("file"), int(where.group("line"))
    return _unlocated(lines, returncode, is_root, pools)


def _unlocated(
    lines: list[str], returncode: int, is_root: bool, pools: Sequence[PoolFacts]
) -> tuple[bool | None, str | None, str | None, str | None, int | None]:
    """A failure PHP-FPM gave no ``[FILE:LINE]`` for: the line that says why, located through discovery."""
    problems = [m for m in (_PROBLEM.search(line) for line in lines) if m is not None]
    denied = [m.group(0) for m in problems if "Permission denied" in m.group("text")]
    if not is_root and denied:
        return None, "permission_denied", f"{denied[0]} (php-fpm -t needs root here)", None, None
    specific = [m for m in problems if not m.group("text").startswith(_GENERIC)]
    chosen = (specific or problems)[:1]
    message = chosen[0].group(0) if chosen else (lines[-1] if lines else f"exit {returncode}")
    file, line_number = _locate(message, pools)
    return False, None, message, file, line_number


def _locate(message: str, pools: Sequence[PoolFacts]) -> tuple[str | None, int | None]:
    """The file and line of ``[pool NAME] KEY ...`` as discovery read the pool."""
    found = _POOL_KEY.search(message)
    if found is None:
        return None, None
    for pool in pools:
        if pool.name == found.group("pool"):
            setting = pool.settings.get(found.group("key"))
            if setting is not None and setting.origin.file:
                return setting.origin.file, setting.origin.line
            return pool.file, pool.line
    return None, None


def _stamps(paths: Iterable[str]) -> tuple[tuple[str, int, int], ...]:
    stamps = []
    for path in paths:
        try:
            info = os.stat(path)
        except OSError:
            stamps.append((path, -1, -1))
            continue
        stamps.append((path, info.st_mtime_ns, info.st_size))
    return tuple(stamps)


class PhpFpmConfigCheck:
    """Runs ``php-fpm -t -y CONF`` for each file, at most once per interval unless a file changed."""

    collector = "php_fpm_config"

    def __init__(
        self,
        settings: PhpFpmTestSettings,
        binary: str,
        configs: Sequence[str],
        pools: Sequence[PoolFacts] = (),
        watched: Sequence[str] = (),
    ) -> None:
        self.settings = settings
        self.binary = binary
        self.configs = tuple(configs)
        self.pools = tuple(pools)
        self.watched = tuple(dict.fromkeys((*self.configs, *watched)))
        self._lock = threading.Lock()
        self._last: PhpFpmConfigResult | None = None
        self._last_monotonic = 0.0
        self._last_stamps: tuple[tuple[str, int, int], ...] = ()

    @classmethod
    def of(cls, config: Config) -> PhpFpmConfigCheck:
        php = config.discovered.php_fpm if config.discovered is not None else None
        return cls(
            config.php_fpm_test,
            php_fpm_binary(config),
            tested_configs(config),
            php.pools if php is not None else (),
            php.files if php is not None else (),
        )

    def run(self, deadline: Deadline) -> PhpFpmConfigResult:
        if not self._lock.acquire(timeout=deadline.remaining()):
            return self._result((), None, "timeout", "an earlier php-fpm -t is still running", 0.0)
        try:
            now = time.monotonic()
            stamps = _stamps(self.watched)
            fresh = now - self._last_monotonic < self.settings.test_interval_seconds
            if self._last is not None and fresh and stamps == self._last_stamps:
                return self._last
            result = self._test_all(deadline.capped(self.settings.test_timeout_seconds))
            if result.test_error != "timeout":
                self._last, self._last_monotonic, self._last_stamps = result, now, stamps
            return result
        finally:
            self._lock.release()

    def _test_all(self, deadline: Deadline) -> PhpFpmConfigResult:
        started = time.monotonic()
        if not self.configs:
            return self._result((self.binary, "-t"), None, "no_config", "no php-fpm.conf found to test", 0.0)
        result: PhpFpmConfigResult | None = None
        for conf in self.configs:
            result = self._test(conf, deadline, started)
            if result.valid is not True:
                return result
        assert result is not None
        return result

    def _result(
        self, command: tuple[str, ...], valid: bool | None, error: str | None, message: str | None,
        started: float, file: str | None = None, line: int | None = None,
    ) -> PhpFpmConfigResult:  # fmt: skip
        duration = time.monotonic() - started if started else 0.0
        return PhpFpmConfigResult(
            command, valid, error, message, file, line, time.time(), duration, self.binary
        )

    def _test(self, conf: str, deadline: Deadline, started: float) -> PhpFpmConfigResult:
        command = (self.binary, "-t", "-y", conf)
        try:
            completed = subprocess.run(
                command, capture_output=True, text=True, errors="replace", timeout=deadline.remaining(),
                check=False, stdin=subprocess.DEVNULL, cwd=os.path.dirname(conf) or "/",
            )  # fmt: skip
        except FileNotFoundError:
            return self._result(command, None, "binary_missing", f"{self.binary}: not found", started)
        except PermissionError:
            return self._result(
                command, None, "permission_denied", f"{self.binary}: permission denied", started
            )
        except subprocess.TimeoutExpired:
            return self._result(
                command, None, "timeout", "php-fpm -t did not finish before the deadline", started
            )
        except OSError as exc:
            return self._result(command, None, "failed_to_run", f"{self.binary}: {exc}", started)
        output = (completed.stderr + completed.stdout)[-_MAX_OUTPUT:]
        valid, error, message, file, line = parse_test_output(
            output, completed.returncode, os.geteuid() == 0, self.pools
        )
        return self._result(command, valid, error, message, started, file, line)


def metric_families(result: PhpFpmConfigResult) -> Iterable[Metric]:
    """``php_fpm_config_valid`` (absent without a verdict) and why ``php-fpm -t`` could not run."""
    return config_test_families(
        "php_fpm", "php-fpm -t", "PHP-FPM's configuration", TEST_ERRORS, result.valid, result.test_error,
        result.checked_at_seconds,
    )  # fmt: skip
