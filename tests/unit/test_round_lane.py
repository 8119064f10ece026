"""The local checks run one after the other on one thread (the lane), once the FastCGI probes are back
or have had their head start; a stuck one costs only itself and the checks behind it in that round,
and later rounds run the others again."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from exporter.config import config_from_dict
from exporter.deadline import Deadline
from exporter.rounds import LANE_HEAD_START_SECONDS, LOCAL_COLLECTORS, Prober, _Task


class Local:
    """A stand-in check that records the thread it ran on, and blocks while ``hold`` is clear."""

    def __init__(self, collector: str, hold: threading.Event | None = None) -> None:
        self.collector = collector
        self.hold = hold
        self.threads: list[str] = []
        self.started: list[float] = []
        self.ended: list[float] = []

    def run(self, deadline: Deadline) -> Any:
        self.threads.append(threading.current_thread().name)
        self.started.append(time.monotonic())
        if self.hold is not None:
            self.hold.wait(10)
        self.ended.append(time.monotonic())
        return () if self.collector in ("sockets", "fastcgi") else None


def prober(*checks: Local) -> Prober:
    config = config_from_dict(
        {"php_fpm": [], "http": [], "units": {"enabled": False}, "nginx": {"test": False}}
    )
    made = Prober(config)
    made._executor.shutdown()
    made._executor = ThreadPoolExecutor(max_workers=len(checks) + 1, thread_name_prefix="check")
    made._tasks = [_Task(check) for check in checks]
    return made


def outcomes(results: Any) -> dict[str, tuple[bool, str | None]]:
    return {o.collector: (o.success, o.error) for o in results.collectors}


def test_the_local_checks_share_one_thread_in_order() -> None:
    checks = [Local(name) for name in ("sockets", "processes", "logs", "resources")]
    assert {c.collector for c in checks} == LOCAL_COLLECTORS
    made = prober(*checks)
    try:
        results = made.run_round(2.0)
    finally:
        made.close()
    assert all(ok for ok, _ in outcomes(results).values())
    (thread,) = {name for check in checks for name in check.threads}
    assert [len(check.threads) for check in checks] == [1, 1, 1, 1]
    assert thread.startswith("check")


def test_a_stuck_local_check_costs_itself_and_what_is_behind_it_then_only_itself() -> None:
    hold = threading.Event()
    sockets, processes, logs = Local("sockets"), Local("processes", hold), Local("logs")
    made = prober(sockets, processes, logs)
    try:
        started = time.monotonic()
        first = made.run_round(0.5)
        assert time.monotonic() - started < 0.8
        assert outcomes(first) == {
            "sockets": (True, None),
            "processes": (False, "did not finish before the deadline"),
            "logs": (False, "did not finish before the deadline"),  # behind the stuck one: never started
        }
        second = made.run_round(0.5)
        assert outcomes(second) == {
            "sockets": (True, None),
            "processes": (False, "still running from an earlier round"),
            "logs": (True, None),  # a new lane runs it
        }
        assert (len(sockets.threads), len(processes.threads), len(logs.threads)) == (2, 1, 1)
    finally:
        hold.set()
        made.close()


def test_the_lane_starts_once_the_fastcgi_probes_are_back() -> None:
    fastcgi, sockets = Local("fastcgi"), Local("sockets")
    made = prober(fastcgi, sockets)
    try:
        results = made.run_round(2.0)
    finally:
        made.close()
    assert all(ok for ok, _ in outcomes(results).values())
    assert sockets.started[0] >= fastcgi.ended[0]


def test_a_hung_fastcgi_probe_holds_the_lane_back_only_for_its_head_start() -> None:
    hold = threading.Event()
    fastcgi, sockets = Local("fastcgi", hold), Local("sockets")
    made = prober(fastcgi, sockets)
    try:
        results = made.run_round(0.5)
        assert outcomes(results) == {
            "fastcgi": (False, "did not finish before the deadline"),
            "sockets": (True, None),
        }
        assert LANE_HEAD_START_SECONDS <= sockets.started[0] - fastcgi.started[0] < 0.25
    finally:
        hold.set()
        made.close()
