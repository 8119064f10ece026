"""Bounded HTTP clients: paced request loops through nginx, limited in count and in time."""

from __future__ import annotations

import threading
import time

from exporter.demo.stack import Stack, http_status


class RequestLoop:
    """``threads`` threads each sending GETs of ``paths`` in turn, paced, bounded in count and time."""

    def __init__(
        self,
        port: int,
        paths: tuple[str, ...],
        *,
        threads: int = 1,
        interval: float = 0.2,
        timeout: float = 10.0,
        max_seconds: float = 900.0,
        max_requests: int = 50_000,
        name: str = "load",
    ) -> None:
        self.port = port
        self.paths = paths
        self.interval = interval
        self.timeout = timeout
        self.max_seconds = max_seconds
        self.max_requests = max_requests
        self.statuses: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sent = 0
        self._threads = [
            threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True) for i in range(threads)
        ]

    def start(self) -> RequestLoop:
        for thread in self._threads:
            thread.start()
        return self

    def _take(self) -> bool:
        with self._lock:
            if self._sent >= self.max_requests:
                return False
            self._sent += 1
            return True

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        index = 0
        while not self._stop.is_set() and time.monotonic() < deadline and self._take():
            path = self.paths[index % len(self.paths)]
            index += 1
            status = http_status(self.port, path, self.timeout)
            key = str(status) if status is not None else "error"
            with self._lock:
                self.statuses[key] = self.statuses.get(key, 0) + 1
            self._stop.wait(self.interval)

    @property
    def sent(self) -> int:
        with self._lock:
            return self._sent

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self.statuses)

    def halt(self) -> None:
        """Send no more requests (those under way finish); :meth:`stop` also waits for the threads."""
        self._stop.set()

    def stop(self, timeout: float = 15.0) -> None:
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))


class LoadGenerator(RequestLoop):
    """Steady traffic through nginx: the PHP site and the backend behind ``/api/``."""

    def __init__(self, stack: Stack, *, rate: float = 10.0, max_seconds: float = 900.0) -> None:
        super().__init__(
            stack.nginx_port,
            ("/", "/api/health"),
            threads=2,
            interval=2.0 / rate,
            timeout=5.0,
            max_seconds=max_seconds,
            max_requests=int(rate * max_seconds) + 10,
            name="load",
        )
