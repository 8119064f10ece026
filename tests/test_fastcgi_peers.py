"""The FastCGI probe against peers no real PHP-FPM is: garbage, a response that never ends, one byte
at a time, more than 1 MiB. Each ends as its own reason, at its deadline at the latest."""

from __future__ import annotations

import selectors
import socket
import struct
import threading
from pathlib import Path

from harness.peers import hung_and_answering, peer

from exporter.checks.fastcgi import FailureReason, FastCGICheck, FastCGIPoolsCheck
from exporter.checks.nonblocking import MAX_IN_FLIGHT
from exporter.config import PhpFpmPool
from exporter.deadline import Deadline

STDOUT, END = 6, 3


def record(kind: int, content: bytes, request_id: int = 1) -> bytes:
    padding = -len(content) & 7
    return struct.pack("!BBHHBx", 1, kind, request_id, len(content), padding) + content + b"\0" * padding


def answer(body: bytes, request_id: int = 1) -> bytes:
    return record(STDOUT, b"Content-Type: text/plain\r\n\r\n" + body, request_id) + record(
        END, b"\0" * 8, request_id
    )


def read_request(conn: socket.socket) -> None:
    """Read until the empty FCGI_STDIN record that ends a request."""
    data = b""
    while not data.endswith(record(5, b"")):
        chunk = conn.recv(4096)
        if not chunk:
            return
        data += chunk


def probe(
    address: str, timeout: float = 0.5, status_path: str | None = "/status"
) -> tuple[FailureReason | None, str | None, bool]:
    pool = PhpFpmPool(socket=address, timeout_seconds=timeout, status_path=status_path)
    result = FastCGICheck(pool).run(Deadline.after(5.0))
    return result.failure, result.detail, result.up


def test_garbage_then_close_is_a_bad_response() -> None:
    def serve(conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\n\r\n")  # an HTTP server where FastCGI was expected
        conn.close()

    with peer(serve) as address:
        failure, detail, up = probe(address)
    assert (failure, up) == (FailureReason.BAD_RESPONSE, False)
    assert detail == "connection closed before the end of the response"


def test_a_response_that_never_ends_times_out_at_the_pool_deadline() -> None:
    release = threading.Event()

    def serve(conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(record(STDOUT, b"Content-Type: text/plain\r\n\r\npo"))  # and never the rest
        release.wait(10)

    with peer(serve) as address:
        failure, detail, up = probe(address, timeout=0.3)
        release.set()
    assert (failure, up) == (FailureReason.TIMEOUT, False)
    assert detail == "no answer before the deadline"


def test_one_byte_at_a_time_and_other_request_ids_still_answer() -> None:
    def serve(conn: socket.socket) -> None:
        read_request(conn)
        data = answer(b"stray", request_id=7) + answer(b"pong")
        for index in range(len(data)):
            conn.sendall(data[index : index + 1])
        conn.close()

    with peer(serve) as address:
        failure, detail, up = probe(address, timeout=5.0, status_path=None)
    assert (failure, detail, up) == (None, None, True)


def test_more_than_a_mebibyte_is_a_bad_response() -> None:
    def serve(conn: socket.socket) -> None:
        read_request(conn)
        chunk = record(STDOUT, b"x" * 65000)
        try:
            for _ in range(20):
                conn.sendall(chunk)
        except OSError:
            pass  # the probe closed the connection: it had read enough
        conn.close()

    with peer(serve) as address:
        failure, detail, up = probe(address, timeout=5.0)
    assert (failure, detail, up) == (FailureReason.BAD_RESPONSE, "response larger than 1 MiB", False)


def test_a_hung_peer_does_not_hold_back_the_others() -> None:
    def pong(conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(answer(b"pong"))
        conn.close()

    with hung_and_answering(pong) as (hung, good):
        pools = [PhpFpmPool(socket=hung, status_path=None, timeout_seconds=0.3)]
        pools += [PhpFpmPool(socket=good, status_path=None, timeout_seconds=5.0) for _ in range(5)]
        results = FastCGIPoolsCheck(pools).run(Deadline.after(5.0))
    assert [(r.socket, r.up, r.failure) for r in results] == [
        (hung, False, FailureReason.TIMEOUT),
        *[(good, True, None)] * 5,
    ]


def test_more_pools_than_connections_at_once_each_get_their_own_answer(tmp_path: Path) -> None:
    """More pools than MAX_IN_FLIGHT, each on a socket of its own that answers its own name: every
    pool ends up, with its own answer (descriptors are reused as connections end; none gets another's)."""
    count = MAX_IN_FLIGHT + 44
    listeners = {}
    for index in range(count):
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(tmp_path / f"p{index}.sock"))
        listener.listen(4)
        listeners[listener] = f"p{index}".encode()
    stop = threading.Event()

    def serve() -> None:
        with selectors.DefaultSelector() as selector:
            for listener in listeners:
                selector.register(listener, selectors.EVENT_READ)
            while not stop.is_set():
                for key, _ in selector.select(0.05):
                    ready = key.fileobj
                    assert isinstance(ready, socket.socket)
                    conn, _ = ready.accept()
                    with conn:
                        read_request(conn)
                        conn.sendall(answer(listeners[ready]))

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        pools = [
            PhpFpmPool(socket=str(tmp_path / f"p{index}.sock"), ping_response=f"p{index}", status_path=None)
            for index in range(count)
        ]
        results = FastCGIPoolsCheck(pools).run(Deadline.after(10.0))
    finally:
        stop.set()
        server.join(timeout=5)
        for listener in listeners:
            listener.close()
    assert [(r.up, r.failure, r.detail) for r in results] == [(True, None, None)] * count
    assert [r.connect_errno for r in results] == [0] * count
