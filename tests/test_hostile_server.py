"""Hostile input against the real exporter CLI on loopback: connection churn and the shared round.

- The listen backlog really is the documented 4,096 (capped by ``net.core.somaxconn``), read from
  the kernel with ``ss -ltn`` (for a listening socket, Send-Q is the backlog); under churn of
  hundreds of concurrent clients opening and closing connections (in their own process), at least
  99 % of legitimate scrapes are answered.
- Clients asking for a near-zero or short deadline (``X-Prometheus-Scrape-Timeout-Seconds: 1e-308``,
  ``0.3``) do not spoil the round of a legitimate scrape asking for 10 s: a backend that answers in 1 s is
  still seen up by every legitimate scrape; bad header values are logged once per interval, cut.

Run the churn alone: ``python tests/test_hostile_server.py PORT SECONDS CLIENTS``.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from harness import wait_until
from harness.exporters import parse
from harness.process import ExporterProcess, exporter_process, offline_config_file

from exporter.server import Limits

CHURN_CLIENTS = 400
CHURN_SECONDS = 8.0
LEGIT_SCRAPES = 100


# -- churn (its own process) -------------------------------------------------------------------


async def _churner(port: int, until: float) -> Counter[str]:
    seen: Counter[str] = Counter()
    while time.monotonic() < until:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
        except (OSError, TimeoutError):
            seen["connect_failed"] += 1
            await asyncio.sleep(0.01)
            continue
        try:
            writer.write(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            seen[(await asyncio.wait_for(reader.read(12), 5)).decode()[9:12] or "closed"] += 1
        except (OSError, TimeoutError):
            seen["dropped"] += 1
        finally:
            writer.transport.abort()
    return seen


async def churn(port: int, seconds: float, clients: int) -> dict[str, int]:
    until = time.monotonic() + seconds
    total: Counter[str] = Counter()
    for seen in await asyncio.gather(*(_churner(port, until) for _ in range(clients))):
        total.update(seen)
    return dict(total)


def _churn_main(argv: list[str]) -> int:
    print(json.dumps(asyncio.run(churn(int(argv[0]), float(argv[1]), int(argv[2])))))
    return 0


# -- the backlog and churn ---------------------------------------------------------------------


def listen_backlog(port: int) -> int:
    """The backlog of the socket listening on ``port``, as the kernel reports it (ss's Send-Q)."""
    ss = shutil.which("ss")
    if ss is None:
        pytest.skip("ss (iproute2) not installed")
    out = subprocess.run([ss, "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
    rows = [line.split() for line in out.splitlines() if line.strip()]
    assert len(rows) == 1, out
    return int(rows[0][2])  # State Recv-Q Send-Q Local Peer


def test_backlog_is_applied_and_scrapes_survive_churn(tmp_path: Path) -> None:
    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    with exporter_process(
        ["--config", str(offline_config_file(tmp_path))], tmp_path / "exporter.log"
    ) as proc:
        backlog = listen_backlog(proc.port)
        churner = subprocess.Popen(
            [sys.executable, __file__, str(proc.port), str(CHURN_SECONDS), str(CHURN_CLIENTS)],
            stdout=subprocess.PIPE,
            text=True,
        )
        codes: Counter[str] = Counter()
        try:
            time.sleep(1.0)  # let the churn reach full speed (its pace, not a wait for a condition)
            for _ in range(LEGIT_SCRAPES):
                try:
                    codes[str(httpx.get(f"{proc.url()}/metrics", timeout=10).status_code)] += 1
                except httpx.HTTPError as exc:
                    codes[type(exc).__name__] += 1
                time.sleep(0.05)
            out, _ = churner.communicate(timeout=CHURN_SECONDS + 60)
        finally:
            if churner.poll() is None:
                churner.kill()
                churner.wait()
        churned = json.loads(out.strip().splitlines()[-1])
        print(
            f"\nlisten backlog {backlog} (somaxconn {somaxconn}); {CHURN_CLIENTS} churning clients for "
            f"{CHURN_SECONDS:g} s saw {churned}; legitimate scrapes: {dict(codes)}"
        )
        assert backlog == min(Limits().backlog, somaxconn), (backlog, somaxconn)
        assert sum(churned.values()) > CHURN_CLIENTS * 5, churned  # the churn really ran
        assert codes["200"] >= 0.99 * LEGIT_SCRAPES, codes
        assert "Traceback" not in proc.log_text()


# -- the shared round --------------------------------------------------------------------------


class _SlowHealth(http.server.BaseHTTPRequestHandler):
    delay = 1.0

    def do_GET(self) -> None:
        time.sleep(self.delay)  # the slow backend under test
        body = b"ok\n"
        try:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            return  # a probe that gave up at its deadline

    def log_message(self, format: str, *args: object) -> None:
        return


@contextmanager
def slow_backend() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SlowHealth)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def _spoil(proc: ExporterProcess, header: str, stop: threading.Event, sent: Counter[str]) -> None:
    with httpx.Client(timeout=30) as client:
        while not stop.is_set():
            try:
                client.get(f"{proc.url()}/metrics", headers={"X-Prometheus-Scrape-Timeout-Seconds": header})
                sent["spoilers"] += 1
            except httpx.HTTPError:
                sent["failed"] += 1


def test_a_tiny_deadline_does_not_spoil_the_shared_round(tmp_path: Path) -> None:
    with slow_backend() as port:
        target = {"name": "slow", "url": f"http://127.0.0.1:{port}/health", "timeout_seconds": 5}
        config = offline_config_file(tmp_path, http=[target], scrape_timeout_seconds=10)
        with exporter_process(["--config", str(config)], tmp_path / "exporter.log") as proc:
            stop = threading.Event()
            sent: Counter[str] = Counter()
            spoilers = [
                threading.Thread(target=_spoil, args=(proc, header, stop, sent), daemon=True)
                for header in ("1e-308", "0.3", "0.3", "0.3", "x" * 8000)
            ]
            for thread in spoilers:
                thread.start()
            up = []
            try:
                wait_until(lambda: sent["spoilers"] >= 8, 30, "the spoilers to scrape")
                for _ in range(8):
                    started = time.monotonic()
                    response = httpx.get(
                        f"{proc.url()}/metrics",
                        headers={"X-Prometheus-Scrape-Timeout-Seconds": "10"},
                        timeout=30,
                    )
                    assert response.status_code == 200
                    up.append(
                        (
                            parse(response.text).value("badgateway_http_up", target="slow"),
                            time.monotonic() - started,
                        )
                    )
            finally:
                stop.set()
                for thread in spoilers:
                    thread.join(timeout=30)
            log = proc.log_text()
    bad_lines = [line for line in log.splitlines() if "X-Prometheus-Scrape-Timeout-Seconds" in line]
    print(
        f"\nwith {sent['spoilers']} spoiling scrapes (1e-308, 0.3, 8 KB of garbage): legitimate scrapes saw "
        f"the 1 s backend up {sum(u for u, _ in up):.0f}/{len(up)} times, in "
        f"{min(s for _, s in up):.1f}-{max(s for _, s in up):.1f} s; "
        f"{len(bad_lines)} log lines about bad headers, the longest {max(map(len, bad_lines), default=0)} chars"
    )
    assert [u for u, _ in up] == [1.0] * len(up), up
    assert 1 <= len(bad_lines) <= 2, bad_lines  # once per 60 s: the test runs well under 2 minutes
    assert all(len(line) < 300 for line in bad_lines), bad_lines
    assert not re.search("x{100}", log)
    assert "Traceback" not in log


if __name__ == "__main__":
    sys.exit(_churn_main(sys.argv[1:]))
