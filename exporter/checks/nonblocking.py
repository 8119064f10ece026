"""One epoll loop over non-blocking sockets: many exchanges with peers at once, each under its own
deadline, without a thread per peer (see docs/performance.md, "Many pools"). The FastCGI and HTTP
probes each drive their exchanges through it.

``select.epoll`` itself, not ``selectors``: its key objects and the unregister before each close were
a sixth of the FastCGI probe's time with 100 pools (closing a socket takes it out of the epoll set).
Exchanges speak ``selectors.EVENT_READ``/``EVENT_WRITE``, as ``selectors`` would hand them."""

from __future__ import annotations

import heapq
import logging
import select
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


_TO_EPOLL = (
    0,
    select.EPOLLIN,
    select.EPOLLOUT,
    select.EPOLLIN | select.EPOLLOUT,
)  # indexed by selectors' events
_READY_READ = select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP
_READY_WRITE = select.EPOLLOUT | select.EPOLLERR | select.EPOLLHUP


def _ready(events: int) -> int:
    """epoll's events as selectors' mask: an error or hang-up wakes a reader and a writer alike."""
    return (selectors.EVENT_READ if events & _READY_READ else 0) | (
        selectors.EVENT_WRITE if events & _READY_WRITE else 0
    )


class Loop(Generic[E]):
    """Every job's exchanges at once, at most :data:`MAX_IN_FLIGHT` connections open."""

    def __init__(self, poller: select.epoll) -> None:
        self._poller = poller
        self._active: dict[int, tuple[E, Job[E]]] = {}  # by the socket's descriptor
        self._expiries: list[tuple[float, int, int, E]] = []
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
                fd = exchange.sock.fileno()
                self._poller.register(fd, _TO_EPOLL[exchange.events])
                self._active[fd] = (exchange, job)
                self._started += 1
                heapq.heappush(self._expiries, (exchange.deadline.at, self._started, fd, exchange))
                return
            exchange.close()
            exchange = job.advance(exchange)

    def _step(self) -> None:
        timeout = max(0.0, self._expiries[0][0] - time.monotonic())
        for fd, events in self._poller.poll(timeout):
            exchange = self._active[fd][0]
            before = exchange.events
            try:
                exchange.handle(_ready(events))
            except Exception as exc:  # a bug costs this peer its probe, not the round
                log.warning("probe %r failed: %r", exchange, exc, exc_info=exc)
                exchange.crash(exc)
            self._settle(fd, exchange, before)
        now = time.monotonic()
        while self._expiries and self._expiries[0][0] <= now:
            _, _, fd, exchange = heapq.heappop(self._expiries)
            active = self._active.get(fd)
            if active is not None and active[0] is exchange:
                exchange.expire()
                self._settle(fd, exchange, exchange.events)

    def _settle(self, fd: int, exchange: E, events: int) -> None:
        """After a step of ``exchange``: once done, close it (which takes it out of the epoll set),
        forget it and start what follows."""
        if exchange.done:
            exchange.close()
            job = self._active.pop(fd)[1]
            self._launch(job, job.advance(exchange))
        elif exchange.events != events:
            self._poller.modify(fd, _TO_EPOLL[exchange.events])


def drive(jobs: Iterable[Job[E]]) -> None:
    """Run ``jobs`` to the end: each exchange ends by its answer, its failure or its deadline."""
    with select.epoll() as poller:
        Loop[E](poller).run(jobs)


class Single(Generic[E]):
    """A job of one exchange."""

    def __init__(self, exchange: E) -> None:
        self._exchange = exchange

    def first(self) -> E:
        return self._exchange

    def advance(self, finished: E) -> None:
        del finished


__all__ = ["MAX_IN_FLIGHT", "Exchange", "Job", "Loop", "Single", "drive"]
