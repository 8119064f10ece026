"""One selector loop over non-blocking sockets: many exchanges with peers at once, each under its own
deadline, without a thread per peer (see docs/performance.md, "Many pools"). The FastCGI and HTTP
probes each drive their exchanges through it."""

from __future__ import annotations

import heapq
import logging
import selectors
import socket
import time
from collections import deque
from collections.abc import Iterable
from typing import Generic, Protocol, TypeVar

from exporter.deadline import Deadline

log = logging.getLogger(__name__)

MAX_IN_FLIGHT = 256
"""Connections open at once; further jobs wait for a free one (descriptors stay far below ulimit -n)."""


class Exchange(Protocol):
    """One request on its own connection: :meth:`start`, then :meth:`handle` whenever its socket is
    ready for :attr:`events`, or :meth:`expire` once :attr:`deadline` passes, until :attr:`done`."""

    @property
    def deadline(self) -> Deadline: ...

    @property
    def sock(self) -> socket.socket | None: ...

    @property
    def done(self) -> bool: ...

    @property
    def events(self) -> int: ...

    def start(self) -> None: ...

    def handle(self, mask: int) -> None: ...

    def expire(self) -> None: ...

    def crash(self, exc: Exception) -> None:
        """A bug in :meth:`handle`: end with a failure that says so (it costs this peer its probe)."""
        ...

    def close(self) -> None: ...


E = TypeVar("E", bound=Exchange)


class Job(Protocol[E]):
    """A sequence of exchanges: the first, then each next one from how the previous one ended."""

    def first(self) -> E | None: ...

    def advance(self, finished: E) -> E | None: ...


class Loop(Generic[E]):
    """Every job's exchanges at once, at most :data:`MAX_IN_FLIGHT` connections open."""

    def __init__(self, selector: selectors.BaseSelector) -> None:
        self._selector = selector
        self._active: dict[E, Job[E]] = {}
        self._expiries: list[tuple[float, int, E]] = []
        self._started = 0

    def run(self, jobs: Iterable[Job[E]]) -> None:
        pending = deque(jobs)
        while pending or self._active:
            while pending and len(self._active) < MAX_IN_FLIGHT:
                job = pending.popleft()
                self._launch(job, job.first())
            if self._active:
                self._step()

    def _launch(self, job: Job[E], exchange: E | None) -> None:
        while exchange is not None:
            exchange.start()
            if not exchange.done:
                assert exchange.sock is not None
                self._selector.register(exchange.sock, exchange.events, exchange)
                self._active[exchange] = job
                self._started += 1
                heapq.heappush(self._expiries, (exchange.deadline.at, self._started, exchange))
                return
            exchange.close()
            exchange = job.advance(exchange)

    def _step(self) -> None:
        timeout = max(0.0, self._expiries[0][0] - time.monotonic())
        for key, mask in self._selector.select(timeout):
            exchange: E = key.data
            events = exchange.events
            try:
                exchange.handle(mask)
            except Exception as exc:  # a bug costs this peer its probe, not the round
                log.warning("probe %r failed: %r", exchange, exc, exc_info=exc)
                exchange.crash(exc)
            self._settle(exchange, events)
        now = time.monotonic()
        while self._expiries and self._expiries[0][0] <= now:
            exchange = heapq.heappop(self._expiries)[2]
            if exchange in self._active:
                exchange.expire()
                self._settle(exchange, exchange.events)

    def _settle(self, exchange: E, events: int) -> None:
        """After a step of ``exchange``: once done, forget and close it and start what follows."""
        sock = exchange.sock
        assert sock is not None
        if exchange.done:
            self._selector.unregister(sock)
            exchange.close()
            job = self._active.pop(exchange)
            self._launch(job, job.advance(exchange))
        elif exchange.events != events:
            self._selector.modify(sock, exchange.events, exchange)


def drive(jobs: Iterable[Job[E]]) -> None:
    """Run ``jobs`` to the end: each exchange ends by its answer, its failure or its deadline."""
    with selectors.DefaultSelector() as selector:
        Loop[E](selector).run(jobs)


class Single(Generic[E]):
    """A job of one exchange."""

    def __init__(self, exchange: E) -> None:
        self._exchange = exchange

    def first(self) -> E:
        return self._exchange

    def advance(self, finished: E) -> None:
        del finished


__all__ = ["MAX_IN_FLIGHT", "Exchange", "Job", "Loop", "Single", "drive"]
