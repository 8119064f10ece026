"""Loopback peers that are not what a probe expects: each connection is served by a function."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

Serve = Callable[[socket.socket], None]


@contextmanager
def peer(serve: Serve) -> Iterator[str]:
    """A loopback TCP peer running ``serve`` on every connection it accepts; yields ``host:port``."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.05)  # so that the accept loop sees ``stop`` (close() does not wake accept())
    stop = threading.Event()
    connections: list[socket.socket] = []

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            connections.append(conn)
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()
        for conn in connections:
            conn.close()


@contextmanager
def hung_and_answering(answer: Serve) -> Iterator[tuple[str, str]]:
    """Two peers: one that accepts and never answers (a SIGSTOPped server), one served by ``answer``."""
    release = threading.Event()

    def hang(conn: socket.socket) -> None:
        release.wait(10)

    with peer(hang) as hung, peer(answer) as good:
        try:
            yield hung, good
        finally:
            release.set()
