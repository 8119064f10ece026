"""Run every check once, concurrently, under one deadline; share a round among concurrent callers."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from exporter.checks import Check
from exporter.checks.analysis import socket_alternatives
from exporter.checks.database import DatabaseCheck, DatabaseResult
from exporter.checks.fastcgi import FastCGIPoolsCheck, FastCGIResult
from exporter.checks.http import HttpProbesCheck, HttpResult
from exporter.checks.journal import JournalReader
from exporter.checks.logs import LogsCheck, LogsResult
from exporter.checks.nginx_config import NginxConfigCheck, NginxConfigResult
from exporter.checks.php_fpm_config import PhpFpmConfigCheck, PhpFpmConfigResult
from exporter.checks.processes import ProcessesCheck, ProcessesResult
from exporter.checks.resources import OomKillWindow, ResourcesCheck, ResourcesResult, oom_kills_in_kernel_log
from exporter.checks.sockets import SocketResult, SocketsCheck, with_connect
from exporter.checks.units import UnitsCheck, UnitsResult
from exporter.config import Config, backend_sockets
from exporter.deadline import Deadline
from exporter.discovery.units import default_php_fpm_unit
from exporter.logs.tailer import LogWatcher

log = logging.getLogger(__name__)

SLOWEST_WINDOW_SECONDS = 600.0  # how long a slow probe is remembered for the nginx timeout hint
LOCAL_COLLECTORS = frozenset(
    (SocketsCheck.collector, ProcessesCheck.collector, LogsCheck.collector, ResourcesCheck.collector)
)
"""Checks that wait for no peer: run in this order on one thread, the rest each on its own (resources
last: a hung network mount stalls statvfs, and then only that check)."""
LANE_WAITS_FOR = frozenset((FastCGIPoolsCheck.collector,))
LANE_HEAD_START_SECONDS = 0.02
"""The lane starts once these checks are back, or this long after they started (then they wait for
a peer, and the lane need not wait for them). With many pools the FastCGI loop is busy decoding
answers, not waiting: run beside it, the lane fought it for the GIL (100 pools: ~250 thread
hand-offs, 2-4 ms more CPU and wall a round)."""


@dataclass(frozen=True)
class CollectorOutcome:
    """Whether a collector produced its results in time, and how long it took."""

    collector: str
    success: bool
    duration_seconds: float
    error: str | None = None


@dataclass(frozen=True)
class RoundResults:
    """Everything one round of checks found; read by both the metrics and the diagnosis views."""

    timeout_seconds: float
    sockets: tuple[SocketResult, ...] = ()
    fastcgi: tuple[FastCGIResult, ...] = ()
    http: tuple[HttpResult, ...] = ()
    processes: ProcessesResult | None = None
    resources: ResourcesResult | None = None
    nginx_config: NginxConfigResult | None = None
    php_fpm_config: PhpFpmConfigResult | None = None
    database: DatabaseResult | None = None
    units: UnitsResult | None = None
    logs: LogsResult | None = None
    collectors: tuple[CollectorOutcome, ...] = field(default=())
    # OOM kills the kernel counted within thresholds.oom_kill_window_seconds (None: not counted).
    recent_oom_kills: int | None = None
    # Missing socket -> the live sockets of discovered pools listening instead (computed once a round).
    socket_alternatives: tuple[tuple[str, tuple[str, ...]], ...] = ()
    # Slowest duration of each probe ("http:<target>", "fastcgi:<socket>") over the last rounds.
    slowest_probe_seconds: tuple[tuple[str, float], ...] = ()

    def alternatives_of(self, socket: str) -> tuple[str, ...]:
        """The live sockets discovered pools listen on instead of the missing ``socket``."""
        return next((found for path, found in self.socket_alternatives if path == socket), ())

    def slowest(self, key: str) -> float | None:
        """The slowest observed duration of probe ``key``, if any."""
        return self._slowest_by_probe.get(key)

    @cached_property
    def _slowest_by_probe(self) -> dict[str, float]:
        # The diagnosis asks once per probe: a scan each time was quadratic in the pools.
        return dict(self.slowest_probe_seconds)


@dataclass
class _Task:
    check: Check[Any]
    running: threading.Event = field(default_factory=threading.Event)

    @property
    def collector(self) -> str:
        return self.check.collector


class NginxTestOrParse:
    """``nginx -t``; when it gives no verdict (not root, no binary), what discovery's parse says.

    Discovery runs again whenever the files change (the app watches them), so its syntax error is
    that of the files on disk.
    """

    collector = NginxConfigCheck.collector

    def __init__(self, config: Config) -> None:
        self._check = NginxConfigCheck(config.nginx)
        self._discovered = config.discovered

    def run(self, deadline: Deadline) -> NginxConfigResult:
        result = self._check.run(deadline)
        nginx = self._discovered.nginx if self._discovered is not None else None
        problem = nginx.syntax_error if nginx is not None else None
        if result.valid is not None or problem is None:
            return result
        return dataclasses.replace(
            result,
            valid=False,
            message=f"{problem.message} in {problem.file}:{problem.line} (parsed by the exporter;"
            f" nginx -t could not run: {result.message})",
            file=problem.file,
            line=problem.line,
        )


def build_checks(config: Config, watcher: LogWatcher | None) -> list[Check[Any]]:
    """Every check the configuration asks for, those that wait for a peer first.

    The backend, PHP-FPM and systemd are asked first, so their answers are on the way while the
    local checks, which only need the CPU, run.
    """
    # One check for every HTTP target and one for every pool: a selector loop each, not a thread per peer.
    checks: list[Check[Any]] = [HttpProbesCheck(config.http)] if config.http else []
    checks += [FastCGIPoolsCheck(config.php_fpm)] if config.php_fpm else []
    if config.units.enabled:
        names = [config.units.nginx, config.units.php_fpm or default_php_fpm_unit()]
        names += [config.units.backend] if config.units.backend else []
        units = config.units
        journal = JournalReader(units.journal_lines, units.journalctl, units.journal_directory)
        checks.append(UnitsCheck(names, units.bus_address, units.restart_window_seconds, journal))
    pool_sockets = [pool.socket.removeprefix("unix:") for pool in config.php_fpm if _is_unix(pool.socket)]
    unix_sockets = pool_sockets + [path for path in backend_sockets(config) if path not in pool_sockets]
    checks += [
        SocketsCheck(unix_sockets, config.nginx_user, probed=pool_sockets),
        ProcessesCheck(
            config.processes,
            pid_files=config.pid_files,
            units=_service_units(config),
            discovered_pid_files=_discovered_pid_files(config),
        ),
        LogsCheck(config.logs, watcher),
        ResourcesCheck(config.filesystems),
    ]
    if config.nginx.test:
        checks.append(NginxTestOrParse(config))
    if config.php_fpm_test.test:
        checks.append(PhpFpmConfigCheck.of(config))
    if config.database.enabled:
        checks.append(DatabaseCheck(config.database, config.processes.backend, config.units.backend))
    return checks


class Prober:
    """Owns the checks built from the configuration and runs them in rounds."""

    def __init__(self, config: Config, watcher: LogWatcher | None = None) -> None:
        """``watcher``: the log tailer of a serving exporter; without it the logs' ends are read each round."""
        self.config = config
        self._checks = build_checks(config, watcher)
        self._tasks = [_Task(check) for check in self._checks]
        # Per probe: (minute, slowest duration in that minute), oldest first; at most a window's worth.
        self._slowest_by_minute: dict[str, deque[tuple[int, float]]] = {}
        self._oom_kills = OomKillWindow(config.thresholds.oom_kill_window_seconds)
        self._oom_seeded = False
        # One thread per task is enough: a task still running from an earlier round is not started again.
        self._executor = ThreadPoolExecutor(max_workers=len(self._tasks), thread_name_prefix="check")
        self._lock = threading.Lock()
        self._inflight: Future[RoundResults] | None = None

    def _recent_oom_kills(self, resources: ResourcesResult | None, deadline: Deadline) -> int | None:
        """OOM kills within the window: the counter's growth across rounds, the kernel log on the first."""
        if resources is None:
            return None
        with self._lock:
            first = not self._oom_seeded
            self._oom_seeded = True
            counted = self._oom_kills.observe(time.monotonic(), resources.oom_kills)
        if not first:
            return counted
        logged = oom_kills_in_kernel_log(self.config.thresholds.oom_kill_window_seconds, deadline.capped(0.2))
        return logged if logged is not None else counted

    def _slowest(
        self, http_results: tuple[HttpResult, ...], fastcgi_results: tuple[FastCGIResult, ...]
    ) -> tuple[tuple[str, float], ...]:
        minute = int(time.monotonic() // 60)
        oldest = minute - int(SLOWEST_WINDOW_SECONDS // 60)
        observed = [(f"http:{r.target}", r.duration_seconds) for r in http_results]
        observed += [(f"fastcgi:{p.socket}", p.duration_seconds) for p in fastcgi_results]
        with self._lock:
            for key, seconds in observed:
                buckets = self._slowest_by_minute.setdefault(key, deque())
                if buckets and buckets[-1][0] == minute:
                    buckets[-1] = (minute, max(buckets[-1][1], seconds))
                else:
                    buckets.append((minute, seconds))
            slowest: dict[str, float] = {}
            for key, buckets in self._slowest_by_minute.items():
                while buckets and buckets[0][0] < oldest:
                    buckets.popleft()
                if buckets:
                    slowest[key] = max(seconds for _, seconds in buckets)
        return tuple(sorted(slowest.items()))

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        for check in self._checks:
            if isinstance(check, UnitsCheck):
                check.close()

    def collect(self, timeout_seconds: float) -> RoundResults:
        """Results of a round started now, or of the round already in flight."""
        with self._lock:
            inflight = self._inflight
            if inflight is None or inflight.done():
                inflight = Future()
                self._inflight = inflight
                owner = True
            else:
                owner = False
        if not owner:
            return inflight.result()
        try:
            results = self.run_round(timeout_seconds)
        except BaseException as exc:
            inflight.set_exception(exc)
            raise
        inflight.set_result(results)
        return results

    def run_round(self, timeout_seconds: float) -> RoundResults:
        """Run every check concurrently; whatever is not back by the deadline counts as failed."""
        deadline = Deadline.after(timeout_seconds)
        # Checks stop a little before the round does, so a slow peer is reported as the check's own
        # timeout rather than as a collector that never came back.
        check_deadline = Deadline(deadline.at - min(0.1, timeout_seconds * 0.1))
        started = time.monotonic()
        futures: dict[Future[Any], _Task] = {}
        outcomes: list[CollectorOutcome] = []
        lane: list[tuple[_Task, Future[Any]]] = []
        for task in self._tasks:
            if task.running.is_set():
                outcomes.append(
                    CollectorOutcome(task.collector, False, 0.0, "still running from an earlier round")
                )
                continue
            task.running.set()
            if task.collector in LOCAL_COLLECTORS:
                future: Future[Any] = Future()
                lane.append((task, future))
                futures[future] = task
            else:
                futures[self._executor.submit(self._timed, task, check_deadline)] = task
        if lane:
            first = [future for future, task in futures.items() if task.collector in LANE_WAITS_FOR]
            self._executor.submit(self._run_lane, lane, check_deadline, first)
        done, not_done = wait(futures, timeout=deadline.remaining())
        for task, future in lane:
            if future.cancel():  # behind a stuck check in the lane, never started: free for the next round
                task.running.clear()
        values: dict[str, list[Any]] = {}
        for future in done:
            task = futures[future]
            try:
                value, duration = future.result()
            except Exception as exc:
                log.warning("check %s failed: %s", task.collector, exc, exc_info=exc)
                outcomes.append(
                    CollectorOutcome(task.collector, False, time.monotonic() - started, repr(exc))
                )
                continue
            values.setdefault(task.collector, []).append(value)
            outcomes.append(CollectorOutcome(task.collector, True, duration))
        for future in not_done:
            task = futures[future]
            outcomes.append(
                CollectorOutcome(
                    task.collector, False, time.monotonic() - started, "did not finish before the deadline"
                )
            )
        http_results: tuple[HttpResult, ...] = _first(values, HttpProbesCheck.collector) or ()
        fastcgi_results = tuple(r for batch in values.get(FastCGIPoolsCheck.collector, ()) for r in batch)
        socket_results = _with_probe_connects(_first(values, SocketsCheck.collector) or (), fastcgi_results)
        backend_paths = set(backend_sockets(self.config))
        php_sockets = tuple(s for s in socket_results if s.path not in backend_paths)
        alternatives = socket_alternatives(self.config.discovered, php_sockets)
        return RoundResults(
            timeout_seconds=timeout_seconds,
            sockets=socket_results,
            fastcgi=fastcgi_results,
            http=http_results,
            processes=_first(values, ProcessesCheck.collector),
            resources=_first(values, ResourcesCheck.collector),
            nginx_config=_first(values, NginxConfigCheck.collector),
            php_fpm_config=_first(values, PhpFpmConfigCheck.collector),
            database=_first(values, DatabaseCheck.collector),
            units=_first(values, UnitsCheck.collector),
            logs=_first(values, LogsCheck.collector),
            collectors=_merge_outcomes(outcomes),
            # Each missing socket's alternatives in socket_alternatives' order: the likeliest first.
            socket_alternatives=tuple((path, tuple(found)) for path, found in sorted(alternatives.items())),
            slowest_probe_seconds=self._slowest(http_results, fastcgi_results),
            recent_oom_kills=self._recent_oom_kills(_first(values, ResourcesCheck.collector), deadline),
        )

    @classmethod
    def _run_lane(
        cls, lane: list[tuple[_Task, Future[Any]]], deadline: Deadline, first: list[Future[Any]]
    ) -> None:
        """The local checks one after the other on one thread, once ``first`` are back (at most
        :data:`LANE_HEAD_START_SECONDS`): they only need the CPU, and run at once they fought over
        the GIL (100 pools: 2 ms more CPU and 1 ms more wall a round). One not started by the deadline
        is not run (the round cancels it); one stuck is skipped by later rounds like any other, and
        the checks behind it run on the next round's lane."""
        if first:
            wait(first, timeout=min(LANE_HEAD_START_SECONDS, max(0.0, deadline.at - time.monotonic())))
        for task, future in lane:
            if deadline.expired() and future.cancel():
                task.running.clear()
            if not future.set_running_or_notify_cancel():
                continue  # cancelled: by the deadline here, or by the round that gave up on the lane
            try:
                future.set_result(cls._timed(task, deadline))
            except BaseException as exc:
                future.set_exception(exc)

    @staticmethod
    def _timed(task: _Task, deadline: Deadline) -> tuple[Any, float]:
        started = time.monotonic()
        try:
            return task.check.run(deadline), time.monotonic() - started
        finally:
            task.running.clear()


def _merge_outcomes(outcomes: list[CollectorOutcome]) -> tuple[CollectorOutcome, ...]:
    """One outcome per collector: failed if any of its tasks failed, duration of the slowest."""
    merged: dict[str, CollectorOutcome] = {}
    for outcome in outcomes:
        previous = merged.get(outcome.collector)
        if previous is None:
            merged[outcome.collector] = outcome
            continue
        merged[outcome.collector] = CollectorOutcome(
            outcome.collector,
            previous.success and outcome.success,
            max(previous.duration_seconds, outcome.duration_seconds),
            previous.error or outcome.error,
        )
    return tuple(merged[name] for name in sorted(merged))


def _with_probe_connects(
    sockets: tuple[SocketResult, ...], fastcgi: tuple[FastCGIResult, ...]
) -> tuple[SocketResult, ...]:
    """Each pool socket's ``connect()``: the one its FastCGI probe made this round (one of the socket
    check's own where the probe gave none)."""
    made = {r.socket.removeprefix("unix:"): r.connect_errno for r in fastcgi}
    return tuple(with_connect(s, made.get(s.path)) for s in sockets)


def _first(values: dict[str, list[Any]], collector: str) -> Any:
    found = values.get(collector)
    return found[0] if found else None


def _is_unix(address: str) -> bool:
    return address.startswith(("/", "unix:"))


def _service_units(config: Config) -> dict[str, str]:
    """Service -> its systemd unit, when the units check is on (the processes check keeps its cgroup's)."""
    if not config.units.enabled:
        return {}
    units = {"nginx": config.units.nginx, "php_fpm": config.units.php_fpm or default_php_fpm_unit()}
    if config.units.backend:
        units["backend"] = config.units.backend
    return units


def _discovered_pid_files(config: Config) -> frozenset[str]:
    """Services whose pid file comes from discovery (a config file), not from the exporter's own config."""
    origins = config.discovered.origins if config.discovered is not None else {}
    found = (name for name in ("nginx", "php_fpm", "backend") if f"pid_files.{name}" in origins)
    return frozenset(n for n in found if origins[f"pid_files.{n}"].kind not in ("config", "flag"))
