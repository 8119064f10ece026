"""The server under abuse: stalled and slow clients, and a flood of parallel scrapes.

The real CLI serves a real stack; threads and memory are read from the exporter process with
psutil, and the load on PHP-FPM and the backend is counted where it lands: PHP-FPM's own
``accepted conn`` counter (asked with ``cgi-fcgi``, independent of the exporter's FastCGI client)
and the uvicorn backend's access log.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import psutil
import pytest
from harness import wait_until
from harness.exporters import write_config
from harness.process import ExporterProcess, exporter_process, sampling, serving

from exporter.demo.stack import Stack
from exporter.server import Limits

STALLED_SILENT = 300
STALLED_HALF = 100
FLOOD = 200
MB = 1024 * 1024


def phpfpm_accepted(stack: Stack) -> int:
    """PHP-FPM's ``accepted conn``, read with libfcgi's ``cgi-fcgi`` (this request counts as one)."""
    binary = shutil.which("cgi-fcgi")
    if binary is None:
        pytest.skip("cgi-fcgi not installed (Debian package libfcgi-bin)")
    env = {
        "SCRIPT_NAME": "/status",
        "SCRIPT_FILENAME": "/status",
        "QUERY_STRING": "json",
        "REQUEST_METHOD": "GET",
    }
    done = subprocess.run(
        [binary, "-bind", "-connect", str(stack.socket_path)],
        env=env,
        capture_output=True,
        timeout=10,
        check=True,
    )
    body = done.stdout.split(b"\r\n\r\n", 1)[1]
    value = json.loads(body)["accepted conn"]
    assert isinstance(value, int)
    return value


def backend_health_hits(stack: Stack) -> int:
    """``GET /health`` lines in the uvicorn backend's access log."""
    return stack.backend_log.read_bytes().count(b'"GET /health HTTP/1.1"')


def established(pid: int, port: int) -> int:
    """Connections the exporter process holds open on its listening port."""
    return sum(
        1
        for conn in psutil.Process(pid).net_connections(kind="tcp")
        if conn.status == psutil.CONN_ESTABLISHED and conn.laddr and conn.laddr.port == port
    )


@contextmanager
def running(stack: Stack, log: Path) -> Iterator[ExporterProcess]:
    with exporter_process(["--config", str(write_config(stack))], log) as proc:
        # warm up: concurrent scrapes start every pool thread once, so later growth would be real
        for _ in range(2):
            with ThreadPoolExecutor(16) as pool:
                codes = list(
                    pool.map(lambda _: httpx.get(f"{proc.url()}/metrics", timeout=10).status_code, range(16))
                )
            assert codes == [200] * 16
        yield proc


def test_stalled_clients_cannot_exhaust_the_server(stack: Stack, tmp_path: Path) -> None:
    limits = Limits()
    with running(stack, tmp_path / "exporter.log") as proc:
        process = psutil.Process(proc.pid)
        threads_before, rss_before = process.num_threads(), process.memory_info().rss
        stalled: list[socket.socket] = []
        try:
            with sampling(proc.pid, interval=0.01) as peak:
                for index in range(STALLED_SILENT + STALLED_HALF):
                    sock = socket.create_connection(("127.0.0.1", proc.port), timeout=5)
                    if index >= STALLED_SILENT:  # half a request, never finished
                        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                    stalled.append(sock)
                # the server has taken them all in (and evicted the oldest beyond its limit)
                wait_until(
                    lambda: established(proc.pid, proc.port) <= limits.max_connections,
                    10,
                    "the exporter to cap its connections",
                )
                started = time.monotonic()
                scrape = httpx.get(f"{proc.url()}/metrics", timeout=10)
                seconds = time.monotonic() - started
            assert scrape.status_code == 200
            assert "badgateway_fastcgi_up" in scrape.text
            assert seconds < 2.0, f"a normal scrape took {seconds:.2f}s with {len(stalled)} stalled clients"
            held = established(proc.pid, proc.port)
            assert held <= limits.max_connections
            # the oldest stalled connections were closed by the server to make room
            closed = 0
            for sock in stalled:
                sock.setblocking(False)
                try:
                    closed += sock.recv(1) == b""
                except BlockingIOError:
                    pass
                except ConnectionResetError:
                    closed += 1
            assert closed >= len(stalled) - limits.max_connections
            # no thread per connection, bounded memory
            assert peak["threads"] <= threads_before + 1, (threads_before, peak)
            assert peak["rss"] - rss_before < 20 * MB, (rss_before, peak)
            print(
                f"\n{len(stalled)} stalled clients: scrape {seconds * 1000:.0f} ms, "
                f"server holds {held}, closed {closed}, threads {threads_before}->{peak['threads']}, "
                f"RSS {rss_before / MB:.1f}->{peak['rss'] / MB:.1f} MB"
            )
        finally:
            for sock in stalled:
                sock.close()


def test_flood_of_parallel_scrapes_shares_rounds(stack: Stack, tmp_path: Path) -> None:
    with running(stack, tmp_path / "exporter.log") as proc:
        process = psutil.Process(proc.pid)
        threads_before, rss_before = process.num_threads(), process.memory_info().rss
        accepted_before = phpfpm_accepted(stack)
        backend_before = backend_health_hits(stack)

        async def flood() -> list[httpx.Response]:
            limits = httpx.Limits(max_connections=FLOOD, max_keepalive_connections=0)
            async with httpx.AsyncClient(limits=limits, timeout=30) as client:
                return await asyncio.gather(*(client.get(f"{proc.url()}/metrics") for _ in range(FLOOD)))

        with sampling(proc.pid, interval=0.01) as peak:
            started = time.monotonic()
            responses = asyncio.run(flood())
            seconds = time.monotonic() - started
        assert [r.status_code for r in responses] == [200] * FLOOD
        assert all("badgateway_fastcgi_up" in r.text for r in responses)
        accepted = phpfpm_accepted(stack) - accepted_before - 1  # minus the second cgi-fcgi request
        wait_until(lambda: backend_health_hits(stack) >= backend_before + 1, 5, "the backend access log")
        backend = backend_health_hits(stack) - backend_before
        rss_after = process.memory_info().rss
        print(
            f"\n{FLOOD} parallel scrapes in {seconds:.2f}s: PHP-FPM accepted {accepted} connections, "
            f"backend /health hit {backend} times, threads {threads_before}->{peak['threads']}, "
            f"RSS {rss_before / MB:.1f}->{peak['rss'] / MB:.1f} (after {rss_after / MB:.1f}) MB"
        )
        # Each round costs PHP-FPM a handful of connections (connect check, ping, status, the front
        # page through nginx) and the backend one /health: 200 scrapes share a few rounds.
        assert 1 <= backend <= 10, backend
        assert 1 <= accepted <= 40, accepted
        assert peak["threads"] <= threads_before + 1, (threads_before, peak)
        assert peak["rss"] - rss_before < 30 * MB, (rss_before, peak)


def test_slow_drip_client_is_cut_at_the_header_deadline(tmp_path: Path) -> None:
    """A client sending one byte at a time does not reset the clock: the whole head has a deadline."""
    limits = Limits(header_timeout=1.0)
    with serving(tmp_path, None, limits) as url:
        port = int(url.rsplit(":", 1)[1])
        silent = socket.create_connection(("127.0.0.1", port), timeout=5)
        drip = socket.create_connection(("127.0.0.1", port), timeout=5)
        try:
            started = time.monotonic()
            drip.sendall(b"G")
            cut_after: float | None = None
            for byte in b"ET /metrics HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 200:
                time.sleep(0.1)  # the drip itself is what is tested
                try:
                    drip.sendall(bytes([byte]))
                except (BrokenPipeError, ConnectionResetError):
                    cut_after = time.monotonic() - started
                    break
                drip.setblocking(False)
                try:
                    if drip.recv(1) == b"":
                        cut_after = time.monotonic() - started
                        break
                except BlockingIOError:
                    pass
                finally:
                    drip.setblocking(True)
            assert cut_after is not None, "the drip was never cut"
            assert cut_after < limits.header_timeout + 1.0, cut_after
            silent.settimeout(3)
            assert silent.recv(1) == b""  # the silent one is closed too
            # and the server still answers
            assert httpx.get(f"{url}/-/healthy", timeout=5).status_code == 200
        finally:
            silent.close()
            drip.close()


def test_malformed_and_oversized_requests(tmp_path: Path) -> None:
    with serving(tmp_path, None, Limits(max_head_bytes=4096)) as url:
        port = int(url.rsplit(":", 1)[1])

        def raw(data: bytes) -> bytes:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(data)
                chunks = []
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
                return b"".join(chunks)

        assert raw(b"GARBAGE\r\n\r\n").startswith(b"HTTP/1.1 400 ")
        assert raw(b"GET /metrics HTTP/2.0\r\n\r\n").startswith(b"HTTP/1.1 505 ")
        assert raw(b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 8192 + b"\r\n\r\n").startswith(b"HTTP/1.1 431 ")
        assert raw(b"POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello").startswith(b"HTTP/1.1 413 ")
        deleted = raw(b"DELETE /metrics HTTP/1.1\r\nConnection: close\r\n\r\n")
        assert deleted.startswith(b"HTTP/1.1 405 ")
        assert b"Allow: GET, HEAD" in deleted
        head = raw(b"HEAD /-/healthy HTTP/1.1\r\nConnection: close\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ")
        assert head.endswith(b"\r\n\r\n")  # no body
        # keep-alive: two requests on one connection
        two = raw(b"GET /-/healthy HTTP/1.1\r\n\r\nGET /nope HTTP/1.1\r\nConnection: close\r\n\r\n")
        assert two.count(b"HTTP/1.1 200 ") == 1
        assert two.count(b"HTTP/1.1 404 ") == 1
        assert httpx.get(f"{url}/metrics", timeout=10).status_code == 200


def test_no_threads_left_after_shutdown(tmp_path: Path) -> None:
    before = {t.ident for t in threading.enumerate()}
    with serving(tmp_path, None) as url:
        assert httpx.get(f"{url}/metrics", timeout=10).status_code == 200
    wait_until(
        lambda: (
            not [
                t
                for t in threading.enumerate()
                if t.ident not in before and t.name.startswith(("http", "round"))
            ]
        ),
        5,
        "the server's threads to end",
    )
    assert os.getpid() == psutil.Process().pid
