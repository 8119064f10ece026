"""The exporter's one lifecycle: load, then rounds of checks with their diagnosis, served or run once.

``serve``, ``diagnose``, the demo and the tests all go through :class:`Exporter` and
:func:`serving`: the log tailer, the prober and the HTTP server start and stop the same way
everywhere. The configuration files discovery read are watched here (and only here): when one
changes, the configuration is loaded and discovered again and the prober rebuilt.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from types import FrameType

from exporter import __version__
from exporter.config import Config, ConfigError, printable
from exporter.deadline import MAX_SCRAPE_TIMEOUT_SECONDS
from exporter.diagnosis import Diagnosis, diagnose
from exporter.discovery.merge import keep_previous_targets
from exporter.exposition import choose_encoder
from exporter.families import Metric
from exporter.logs.tailer import LogWatcher
from exporter.metrics import ScrapeFamilies, round_metric_families
from exporter.rounds import Prober, RoundResults
from exporter.server import Limits, MetricsServer, make_server
from exporter.webconfig import WebConfig

log = logging.getLogger(__name__)

MIN_SCRAPE_TIMEOUT_SECONDS = 0.5
"""A scrape's ``X-Prometheus-Scrape-Timeout-Seconds`` is clamped to this floor and that maximum."""
BAD_HEADER_LOG_SECONDS = 60.0
"""A bad timeout header is logged at most once per this many seconds, cut to ``BAD_HEADER_SHOWN`` characters."""
BAD_HEADER_SHOWN = 40
RELOAD_CHECK_SECONDS = 5.0


@dataclass(frozen=True)
class Checked:
    """One round and its diagnosis: what ``/metrics`` and ``diagnose`` both read."""

    results: RoundResults
    diagnosis: Diagnosis


def discovered_file_stamps(config: Config) -> tuple[tuple[str, int], ...]:
    """Modification times of the configuration files discovery read, and of their folders (new files)."""
    found = config.discovered
    if found is None:
        return ()
    paths: set[str] = set()
    if found.nginx is not None:
        paths.update((found.nginx.main_file, *found.nginx.files))
    if found.php_fpm is not None:
        paths.update((*found.php_fpm.config_files, *found.php_fpm.files))
    paths.update({os.path.dirname(path) for path in paths})
    stamps = []
    for path in sorted(paths):
        try:
            stamps.append((path, os.stat(path).st_mtime_ns))
        except OSError:
            stamps.append((path, -1))
    return tuple(stamps)


class Exporter:
    """Rounds of checks and their diagnosis; the log watcher when serving."""

    def __init__(
        self, config: Config, watch_logs: bool = False, reload: Callable[[], Config] | None = None
    ) -> None:
        """``watch_logs``: tail the logs in a thread (serving); otherwise each round reads their ends."""
        self.config = config
        self.watcher = LogWatcher(config.logs) if watch_logs else None
        if self.watcher is not None:
            self.watcher.start()
        self.prober = Prober(config, self.watcher)
        self._reload = reload
        self._stamps = discovered_file_stamps(config)
        self._next_reload_check = time.monotonic() + RELOAD_CHECK_SECONDS
        self._last_lock = threading.Lock()
        self._last: tuple[Checked, float] | None = None  # the last round and when it finished (Unix time)
        self._bad_headers = 0  # bad timeout headers not logged yet
        self._bad_header_logged = -BAD_HEADER_LOG_SECONDS

    def _reload_if_changed(self) -> None:
        """Discover again when nginx's or PHP-FPM's configuration changed on disk (a new fastcgi_pass, a pool)."""
        now = time.monotonic()
        if self._reload is None or now < self._next_reload_check:
            return
        self._next_reload_check = now + RELOAD_CHECK_SECONDS
        stamps = discovered_file_stamps(self.config)
        if stamps == self._stamps:
            return
        self._stamps = stamps
        try:
            # A file that no longer parses: nginx keeps serving the previous configuration, so the
            # probes stay the previous ones (never the defaults); the problem itself still shows.
            config = keep_previous_targets(self._reload(), self.config)
        except ConfigError as exc:
            log.warning("configuration changed but cannot be loaded, keeping the old one: %s", exc)
            return
        found = config.discovered
        broken = found.nginx.syntax_error if found is not None and found.nginx is not None else None
        if broken is not None:
            log.warning("nginx's files changed and do not load (%s): the probes stay as they were", broken)
        if self.watcher is not None and config.logs != self.config.logs:
            self.watcher.stop()
            self.watcher = LogWatcher(config.logs)
            self.watcher.start()
        old, self.prober = self.prober, Prober(config, self.watcher)
        self.config, self._stamps = config, discovered_file_stamps(config)
        old.close()
        log.info("nginx or PHP-FPM configuration changed on disk: discovered the targets again")

    def timeout_for(self, header: str | None) -> float:
        """The round's deadline: Prometheus's scrape timeout (or the configured one) minus the margin."""
        timeout = self.config.scrape_timeout_seconds
        if header:
            try:
                value = float(header)
            except ValueError:
                value = math.nan
            if value >= MIN_SCRAPE_TIMEOUT_SECONDS:  # also rejects NaN
                timeout = min(value, MAX_SCRAPE_TIMEOUT_SECONDS)
            elif value > 0:
                timeout = MIN_SCRAPE_TIMEOUT_SECONDS
                self._bad_header(header, f"below {MIN_SCRAPE_TIMEOUT_SECONDS:g} s, using {timeout:g}")
            else:
                self._bad_header(header, "ignored")
        margin = self.config.scrape_timeout_margin_seconds
        return timeout - margin if timeout > 2 * margin else timeout / 2

    def _bad_header(self, header: str, what: str) -> None:
        """Log a bad ``X-Prometheus-Scrape-Timeout-Seconds`` at most once per interval, cut short."""
        self._bad_headers += 1
        now = time.monotonic()
        if now - self._bad_header_logged < BAD_HEADER_LOG_SECONDS:
            return
        shown = header[:BAD_HEADER_SHOWN] + ("..." if len(header) > BAD_HEADER_SHOWN else "")
        more = f" (and {self._bad_headers - 1} more in the last {BAD_HEADER_LOG_SECONDS:g} s)"
        log.warning(
            "bad X-Prometheus-Scrape-Timeout-Seconds %r: %s%s",
            shown,
            what,
            more if self._bad_headers > 1 else "",
        )
        self._bad_headers, self._bad_header_logged = 0, now

    def check(self, timeout_seconds: float) -> Checked:
        self._reload_if_changed()
        results = self.prober.collect(timeout_seconds)
        checked = Checked(results, diagnose(results, self.config))
        with self._last_lock:
            self._last = (checked, time.time())
        return checked

    def encode(self, checked: Checked, accept: str | None, gzipped: bool = False) -> tuple[bytes, str]:
        """The exposition of one round for an ``Accept`` header.

        ``gzipped``: compressed as well, in the same call (one hand-off to a worker thread, not two).
        """
        registry = ScrapeFamilies(
            lambda: printable_labels(round_metric_families(checked.results, checked.diagnosis, self.config))
        )
        encoder, content_type = choose_encoder(accept or "")
        body = encoder(registry)
        return (gzip.compress(body, 1) if gzipped else body), content_type

    def landing_page(self) -> bytes:
        """``/``: the last round's verdict, causes and steps; never starts a round (no probe)."""
        with self._last_lock:
            last = self._last
        diagnosis, at = (last[0].diagnosis, last[1]) if last is not None else (None, None)
        from exporter.diagnosis.html import render_html  # only when someone opens the page

        page = render_html(diagnosis, at, time.time(), version=__version__, watching=self.watching())
        return page.encode("utf-8")

    def watching(self) -> str:
        return ", ".join(
            [pool.socket for pool in self.config.php_fpm] + [target.url for target in self.config.http]
        )

    def close(self) -> None:
        self.prober.close()
        if self.watcher is not None:
            self.watcher.stop()


_PRINTABLE_ROWS: set[tuple[str, ...]] = set()
"""Label-value rows already found printable: the same each scrape (a row's hash is cheaper than
searching its text again). Past ``_PRINTABLE_ROWS_LIMIT`` it starts again (values from hostile files)."""
_PRINTABLE_ROWS_LIMIT = 50_000


def printable_labels(families: Iterable[Metric]) -> Iterator[Metric]:
    """``families`` with control characters in label values escaped (``\\x1b``): a log line or a
    file name cannot put raw control bytes (NUL, ESC) into a scrape or a dashboard."""
    known = _PRINTABLE_ROWS
    for family in families:
        replaced: dict[tuple[str, ...], tuple[str, ...]] = {}
        for row, _ in family.rows:
            if row in known or row in replaced:
                continue
            cleaned = _printable_row(family.label_names, row)
            if cleaned != row:
                replaced[row] = cleaned
            elif len(known) < _PRINTABLE_ROWS_LIMIT:
                known.add(row)
            else:
                known.clear()
        if replaced:
            family.rows = [(replaced.get(row, row), number) for row, number in family.rows]
        yield family


def _printable_row(names: tuple[str, ...], row: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(_printable_label(name, value) for name, value in zip(names, row, strict=True))


def _printable_label(name: str, value: str) -> str:
    """A label value made printable; ``fix`` keeps the newlines that separate its commands (the alert
    templates split on them), each command made printable on its own."""
    if name == "fix":
        return "\n".join(printable(line) for line in value.split("\n"))
    return printable(value)


def check_once(config: Config, timeout_seconds: float | None = None) -> Checked:
    """Run every check once, the logs' ends included: the round's results and its diagnosis."""
    exporter = Exporter(config)
    try:
        return exporter.check(timeout_seconds or config.scrape_timeout_seconds)
    finally:
        exporter.close()


@dataclass(frozen=True)
class Serving:
    """A running exporter: its rounds and its bound server."""

    exporter: Exporter
    server: MetricsServer

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])


@contextlib.contextmanager
def serving(
    config: Config,
    web_config: WebConfig | None = None,
    reload: Callable[[], Config] | None = None,
    listen_address: str | None = None,
    limits: Limits | None = None,
) -> Iterator[Serving]:
    """Tail the logs, bind ``/metrics`` and serve it in a thread; everything stops on exit.

    Raises OSError when the address cannot be bound, ValueError when it is malformed.
    """
    exporter = Exporter(config, watch_logs=True, reload=reload)
    try:
        server = make_server(exporter, listen_address or config.listen_address, web_config, limits)
    except BaseException:
        exporter.close()
        raise
    thread = threading.Thread(target=server.serve_forever, name="http", daemon=True)
    thread.start()
    try:
        yield Serving(exporter, server)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        exporter.close()


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT (installed in the main thread)."""
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        del signum, frame
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    return stop
