"""The HTTP probe against peers no real backend or nginx is: refused, garbage, an answer that never
ends, a head too large, a hung peer among answering ones, a unix socket. Each ends as its own error,
at its deadline at the latest."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path

from harness.peers import hung_and_answering, peer

from exporter.checks.http import HttpProbesCheck, HttpResult
from exporter.config import HttpTarget
from exporter.deadline import Deadline


def read_head(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def probe(url: str, timeout: float = 0.5, unix_socket: str | None = None) -> HttpResult:
    target = HttpTarget(name="t", url=url, timeout_seconds=timeout, unix_socket=unix_socket)
    (result,) = HttpProbesCheck([target]).run(Deadline.after(5.0))
    return result


def test_an_answer_is_its_status_and_the_request_is_what_curl_sends() -> None:
    heads: list[bytes] = []

    def serve(conn: socket.socket) -> None:
        heads.append(read_head(conn))
        conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\ndown")
        conn.close()

    with peer(serve) as address:
        result = probe(f"http://{address}/health?deep=1")
    assert (result.up, result.status_code, result.error, result.detail) == (False, 503, None, "HTTP 503")
    request = heads[0].decode()
    assert request.startswith("GET /health?deep=1 HTTP/1.1\r\n")
    assert f"host: {address}\r\n" in request.lower() and "connection: close\r\n" in request.lower()


def test_a_closed_port_is_connection_refused() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    result = probe(f"http://127.0.0.1:{port}/")
    assert (result.up, result.error, result.detail) == (
        False,
        "connection_refused",
        "[Errno 111] Connection refused",
    )


def test_garbage_is_a_protocol_error() -> None:
    def serve(conn: socket.socket) -> None:
        read_head(conn)
        conn.sendall(b"\x01\x06\x00\x01 not http at all\r\n\r\n")  # a FastCGI record where HTTP was expected
        conn.close()

    with peer(serve) as address:
        result = probe(f"http://{address}/")
    assert (result.up, result.status_code, result.error) == (False, None, "protocol_error")


def test_a_close_before_any_answer_is_a_protocol_error() -> None:
    def serve(conn: socket.socket) -> None:
        read_head(conn)
        conn.close()

    with peer(serve) as address:
        result = probe(f"http://{address}/")
    assert (result.error, result.detail) == (
        "protocol_error",
        "Server disconnected without sending a response.",
    )


def test_an_answer_that_never_ends_times_out_at_the_targets_deadline() -> None:
    release = threading.Event()

    def serve(conn: socket.socket) -> None:
        read_head(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-")  # and never the rest of the head
        release.wait(10)

    with peer(serve) as address:
        started = time.monotonic()
        result = probe(f"http://{address}/", timeout=0.3)
        took = time.monotonic() - started
        release.set()
    assert (result.up, result.status_code, result.error) == (False, None, "timeout")
    assert result.detail == "no answer within 0.3 s (read timed out)"
    assert 0.3 <= took < 0.6


def test_a_head_without_end_is_cut_at_64_kib() -> None:
    def serve(conn: socket.socket) -> None:
        read_head(conn)
        with contextlib.suppress(OSError):  # the probe closed the connection: it had read enough
            conn.sendall(b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"a" * (1 << 20))
        conn.close()

    with peer(serve) as address:
        result = probe(f"http://{address}/", timeout=5.0)
    assert (result.status_code, result.error) == (None, "protocol_error")


def test_a_body_that_never_ends_is_up_after_its_first_bytes() -> None:
    release = threading.Event()

    def serve(conn: socket.socket) -> None:
        read_head(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n<html>")
        release.wait(10)

    with peer(serve) as address:
        result = probe(f"http://{address}/", timeout=5.0)
        release.set()
    assert (result.up, result.status_code, result.error) == (True, 200, None)
    assert result.duration_seconds < 1.0


def test_a_hung_peer_does_not_hold_back_the_others() -> None:
    def ok(conn: socket.socket) -> None:
        read_head(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        conn.close()

    with hung_and_answering(ok) as (hung, good):
        targets = [HttpTarget(name="hung", url=f"http://{hung}/", timeout_seconds=0.3)]
        targets += [HttpTarget(name=f"good{i}", url=f"http://{good}/", timeout_seconds=5.0) for i in range(5)]
        started = time.monotonic()
        results = HttpProbesCheck(targets).run(Deadline.after(5.0))
        took = time.monotonic() - started
    assert [(r.target, r.up, r.error) for r in results] == [
        ("hung", False, "timeout"),
        *[(f"good{i}", True, None) for i in range(5)],
    ]
    assert all(r.duration_seconds < 0.2 for r in results[1:])
    assert took < 0.6


def test_over_a_unix_socket_with_the_urls_host(tmp_path: Path) -> None:
    path = str(tmp_path / "app.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(4)
    heads: list[bytes] = []

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            heads.append(read_head(conn))
            conn.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        result = probe("http://localhost/health", unix_socket=path)
    finally:
        thread.join(5)
        listener.close()
    assert (result.up, result.status_code, result.error) == (True, 204, None)
    assert b"host: localhost\r\n" in heads[0].lower()


def test_a_name_that_does_not_resolve_is_a_connect_error() -> None:
    result = probe("http://no-such-host.invalid/")
    assert (result.up, result.error) == (False, "connect_error")
    assert result.detail is not None and result.detail.startswith("no-such-host.invalid: ")
