"""A real Prometheus and a real Alertmanager for tests, on loopback, stopped by PID afterwards.

The one way tests launch them: the demo's own :class:`~exporter.demo.alerting.Prometheus` and
:class:`~exporter.demo.alerting.Alertmanager`, in context managers that skip the test when Debian's
packages are missing.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from exporter.demo.alerting import Alertmanager, Prometheus, find_program, stopping
from exporter.demo.stack import StackError, find_binary

__all__ = ["Alertmanager", "Prometheus", "running_alertmanager", "running_prometheus"]


def paging_refusal() -> str | None:
    """None when the whole paging path can run here (Prometheus, promtool, Alertmanager, nginx and
    PHP-FPM are installed), else what is missing."""
    for program in ("prometheus", "promtool"):
        if find_program(program) is None:
            return f"{program} not installed (Debian package prometheus)"
    if find_program("prometheus-alertmanager", "alertmanager") is None:
        return "prometheus-alertmanager not installed"
    try:
        find_binary("BADGATEWAY_NGINX", ["nginx"])
        find_binary("BADGATEWAY_PHP_FPM", ["php-fpm8.2", "php-fpm8.3", "php-fpm"])
    except StackError as exc:
        return str(exc)
    return None


@contextmanager
def running_prometheus(
    workdir: Path,
    targets: list[str],
    rule_files: Path | Sequence[Path] = (),
    *,
    alertmanager: str | None = None,
    scrape: Mapping[str, Any] | None = None,
) -> Iterator[Prometheus]:
    """A started Prometheus scraping ``targets`` every second (see :class:`Prometheus`); skip without one."""
    if find_program("prometheus") is None:
        pytest.skip("prometheus not installed (Debian package prometheus)")
    prometheus = Prometheus(workdir, targets, rule_files, alertmanager, scrape=scrape)
    with stopping(prometheus):
        prometheus.start()
        yield prometheus


@contextmanager
def running_alertmanager(workdir: Path, config: dict[str, Any]) -> Iterator[Alertmanager]:
    """A started Alertmanager with ``config`` (e.g. :func:`~exporter.demo.alerting.alertmanager_config`)."""
    if find_program("prometheus-alertmanager", "alertmanager") is None:
        pytest.skip("prometheus-alertmanager not installed (Debian package prometheus-alertmanager)")
    alertmanager = Alertmanager(workdir, config)
    with stopping(alertmanager):
        alertmanager.start()
        yield alertmanager
