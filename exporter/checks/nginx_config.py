"""``nginx -t``: does the configuration on disk load?"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from exporter.config import NginxSettings
from exporter.deadline import Deadline
from exporter.discovery.nginx import TEST_WHERE as _WHERE
from exporter.discovery.nginx import parse_test_output
from exporter.families import GaugeMetricFamily, Metric

# parse_test_output lives with discovery (which runs nginx -t too) and is exported from here as well.
__all__ = ["TEST_ERRORS", "NginxConfigCheck", "NginxConfigResult", "metric_families", "parse_test_output"]

TEST_ERRORS = ("binary_missing", "permission_denied", "timeout", "failed_to_run")


@dataclass(frozen=True)
class NginxConfigResult:
    """The verdict of ``nginx -t``, or why there is none."""

    command: tuple[str, ...]
    valid: bool | None
    test_error: str | None  # one of TEST_ERRORS when no verdict could be had
    message: str | None  # the [emerg]/[crit] line that made the test fail, or the reason it could not run
    file: str | None
    line: int | None
    checked_at_seconds: float
    duration_seconds: float


class NginxConfigCheck:
    """Runs ``nginx -t`` at most once every ``test_interval_seconds``; results in between are reused."""

    collector = "nginx_config"

    def __init__(self, settings: NginxSettings) -> None:
        self.settings = settings
        command = [settings.binary, "-t"]
        if settings.config:
            command += ["-c", settings.config]
        if settings.prefix:
            command += ["-p", settings.prefix]
        if settings.error_log:
            command += ["-e", settings.error_log]
        self.command = tuple(command)
        self._lock = threading.Lock()
        self._last: NginxConfigResult | None = None
        self._last_monotonic = 0.0

    def run(self, deadline: Deadline) -> NginxConfigResult:
        with self._lock:
            now = time.monotonic()
            if self._last is not None and now - self._last_monotonic < self.settings.test_interval_seconds:
                return self._last
            result = self._test(deadline.capped(self.settings.test_timeout_seconds))
            if result.test_error != "timeout":
                self._last, self._last_monotonic = result, now
            return result

    def _test(self, deadline: Deadline) -> NginxConfigResult:
        started = time.monotonic()
        valid: bool | None = None
        test_error: str | None = None
        message: str | None = None
        try:
            completed = subprocess.run(
                self.command,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=deadline.remaining(),
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except FileNotFoundError:
            test_error, message = "binary_missing", f"{self.settings.binary}: not found"
        except PermissionError:
            test_error, message = "permission_denied", f"{self.settings.binary}: permission denied"
        except subprocess.TimeoutExpired:
            test_error, message = "timeout", "nginx -t did not finish before the deadline"
        except OSError as exc:
            test_error, message = "failed_to_run", f"{self.settings.binary}: {exc}"
        else:
            valid, test_error, message = parse_test_output(
                completed.stderr + completed.stdout, completed.returncode, os.geteuid() == 0
            )
        where = _WHERE.search(message) if message and valid is False else None
        return NginxConfigResult(
            command=self.command,
            valid=valid,
            test_error=test_error,
            message=message,
            file=where.group("file") if where else None,
            line=int(where.group("line")) if where else None,
            checked_at_seconds=time.time(),
            duration_seconds=time.monotonic() - started,
        )


def metric_families(result: NginxConfigResult) -> Iterable[Metric]:
    """``nginx_config_valid`` (absent without a verdict) and why ``nginx -t`` could not run."""
    return config_test_families(
        "nginx", "nginx -t", "the configuration", TEST_ERRORS, result.valid, result.test_error,
        result.checked_at_seconds,
    )  # fmt: skip


def config_test_families(
    name: str,
    command: str,
    what: str,
    reasons: Sequence[str],
    valid: bool | None,
    test_error: str | None,
    checked_at: float,
) -> list[Metric]:
    """``badgateway_NAME_config_valid`` (absent without a verdict), ``…_test_error{reason}`` and
    ``…_last_test_timestamp_seconds`` of a ``COMMAND`` (``nginx -t``, ``php-fpm -t``) that tests ``what``."""
    families: list[Metric] = []
    if valid is not None:
        families.append(GaugeMetricFamily(f"badgateway_{name}_config_valid",
                                          f"1 if {command} accepts {what} on disk.", value=float(valid)))  # fmt: skip
    error = GaugeMetricFamily(
        f"badgateway_{name}_config_test_error",
        f"1 for the reason {command} could not give a verdict (e.g. it needs root), 0 for the others.",
        labels=["reason"],
    )
    for reason in reasons:
        error.add_metric([reason], float(test_error == reason))
    families.append(error)
    families.append(GaugeMetricFamily(f"badgateway_{name}_config_last_test_timestamp_seconds",
                                      f"Unix time {command} last ran.", value=checked_at))  # fmt: skip
    return families
