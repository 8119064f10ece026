"""The shared test harness (imported as ``harness.…``; ``tests/`` is on the path).

- :mod:`harness.exporters`: the exporter in-process over real HTTP, the real CLI, scrape parsing.
- :mod:`harness.process`: the exporter CLI as a child process; the server in-process with a web config.
- :mod:`harness.alerting`: a real Prometheus and Alertmanager on loopback (the demo's own launchers).
- :mod:`harness.systemd`: a real system-mode systemd with a real D-Bus, in namespaces.
- :mod:`harness.faults`: the fault matrix's pipeline and the run of one fault.
- :mod:`harness.logs_stack`: a minimal real nginx + PHP-FPM making real error-log lines.
- :mod:`harness.pools`: one php-fpm master with many pools behind nginx (``running_farm``).
- :mod:`harness.tree`: folders, files and servers of a stack built under a temporary root.
- :mod:`harness.peers`: loopback peers that are not what a probe expects.

Every test finds a port and waits for a condition with the one :func:`free_port` and the one
:func:`wait_until` (deadline and polling, a :class:`~exporter.demo.stack.StackError` naming what was
awaited on timeout). They live in :mod:`exporter.demo.stack`, because the demo needs them too and the
runtime package may not import from the tests; they are re-exported here. :func:`poll` is the
wait whose timeout is an outcome, not a failure.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from exporter.demo.stack import free_port, wait_until


def poll(predicate: Callable[[], bool], timeout: float, interval: float = 0.25) -> bool:
    """True as soon as ``predicate`` holds, False after ``timeout`` seconds: :func:`wait_until` for a
    wait whose end is an outcome (an alert that must not fire), not a failure."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


__all__ = ["free_port", "poll", "wait_until"]
