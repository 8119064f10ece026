"""The FastCGI probe against peers no real PHP-FPM is: garbage, a response that never ends, one byte
at a time, more than 1 MiB. Each ends as its own reason, at its deadline at the latest."""

from __future__ import annotations

import socket
import struct
import threading

from harness.peers import hung_and_answering, peer

from exporter.checks.fastcgi import FailureReason, FastCGICheck, FastCGIPoolsCheck
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
