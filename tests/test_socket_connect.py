"""A pool socket's ``connect()`` is the FastCGI probe's own (one connection per pool less for PHP-FPM
to take); the sockets check connects only to the sockets no probe reaches, or when the probe gave no
outcome. Real unix sockets on a temporary folder: listening, stale, missing, with a full backlog."""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from exporter.checks.fastcgi import FailureReason, FastCGICheck
from exporter.checks.sockets import SocketsCheck, try_connect, with_connect
from exporter.config import PhpFpmPool, config_from_dict
from exporter.deadline import Deadline
from exporter.rounds import Prober


@contextmanager
def listening(path: Path, backlog: int = 8) -> Iterator[socket.socket]:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(backlog)
    try:
        yield server
    finally:
        server.close()


def stale(path: Path) -> None:
    """A socket file nothing listens on: what a killed PHP-FPM master leaves behind."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.close()


def pending_connections(server: socket.socket) -> int:
    """Connections waiting in the backlog (taken off it)."""
    server.setblocking(False)
    count = 0
    while True:
        try:
            conn, _ = server.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


def test_the_sockets_check_leaves_probed_sockets_to_the_probe(tmp_path: Path) -> None:
    probed, other = tmp_path / "pool.sock", tmp_path / "backend.sock"
    with listening(probed), listening(other):
        results = SocketsCheck([str(probed), str(other)], "root", probed=[str(probed)]).run(Deadline.after(1))
    by_path = {r.path: r for r in results}
    assert (by_path[str(probed)].exists, by_path[str(probed)].connectable) == (True, None)
    assert (by_path[str(other)].connectable, by_path[str(other)].connect_errno) == (True, None)


def test_with_connect_takes_the_probe_outcome_or_connects_itself(tmp_path: Path) -> None:
    path = tmp_path / "pool.sock"
    with listening(path):
        (left,) = SocketsCheck([str(path)], "root", probed=[str(path)]).run(Deadline.after(1))
        connected = with_connect(left, 0)
        refused = with_connect(left, errno.ECONNREFUSED)
        itself = with_connect(left, None)  # the probe gave no outcome: the check's own connect()
    assert (connected.connectable, connected.connect_errno, connected.connect_error) == (True, None, None)
    assert (refused.connectable, refused.connect_errno, refused.connect_error) == (
        False, errno.ECONNREFUSED, "Connection refused",
    )  # fmt: skip
    assert (itself.connectable, itself.connect_errno) == (True, None)
    assert with_connect(connected, errno.ECONNREFUSED) is connected  # an outcome already there stays


def test_the_probe_reports_how_its_connect_ended(tmp_path: Path) -> None:
    live, dead, missing = tmp_path / "live.sock", tmp_path / "stale.sock", tmp_path / "missing.sock"
    stale(dead)

    def connect_errno(path: Path) -> tuple[int | None, FailureReason | None]:
        pool = PhpFpmPool(socket=str(path), timeout_seconds=0.3)
        result = FastCGICheck(pool).run(Deadline.after(2))
        return result.connect_errno, result.failure

    with listening(live):
        # Connected, then no answer: the connect() itself succeeded.
        assert connect_errno(live) == (0, FailureReason.TIMEOUT)
    assert connect_errno(dead) == (errno.ECONNREFUSED, FailureReason.CONNECTION_REFUSED)
    assert connect_errno(missing) == (errno.ENOENT, FailureReason.SOCKET_MISSING)


def test_a_full_backlog_answers_at_once(tmp_path: Path) -> None:
    path = tmp_path / "full.sock"
    clients: list[socket.socket] = []
    with listening(path, backlog=0):
        try:
            for _ in range(64):  # fill the backlog (never accepted) until connect() would block
                client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
                clients.append(client)
                client.connect(str(path))
        except BlockingIOError:
            pass
        assert try_connect(str(path)) == errno.EAGAIN
        (result,) = SocketsCheck([str(path)], "root").run(Deadline.after(1))
    for client in clients:
        client.close()
    assert (result.connectable, result.connect_errno) == (False, errno.EAGAIN)
    assert result.connect_error == "Resource temporarily unavailable"


def test_a_round_gives_each_pool_socket_its_probe_connect(tmp_path: Path) -> None:
    live, dead = tmp_path / "live.sock", tmp_path / "stale.sock"
    stale(dead)
    config = config_from_dict(
        {
            "php_fpm": [
                {"socket": f"unix:{live}", "timeout_seconds": 0.3},
                {"socket": str(dead), "timeout_seconds": 0.3},
            ],
            "http": [],
            "units": {"enabled": False},
            "nginx": {"test": False},
            "php_fpm_test": {"test": False},
        }
    )
    prober = Prober(config)
    try:
        with listening(live) as server:
            results = prober.run_round(3.0)
            connections = pending_connections(server)
    finally:
        prober.close()
    assert connections == 1  # the probe's ping; the sockets check did not connect a second time
    sockets = {r.path: r for r in results.sockets}
    assert (sockets[str(live)].connectable, sockets[str(live)].connect_errno) == (True, None)
    assert (sockets[str(dead)].connectable, sockets[str(dead)].connect_errno) == (False, errno.ECONNREFUSED)
    assert sockets[str(dead)].connect_error == "Connection refused"
