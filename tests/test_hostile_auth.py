"""Hostile input: a wrong-password flood against TLS + basic auth, on the real exporter CLI.

The flood runs in its own process (so its CPU and its GIL do not slow down the legitimate
scraper's measurements): connections from many loopback addresses (127.0.0.2, 127.0.0.3, ...),
each sending requests with ever-new wrong passwords, abandoning a request that takes more than
2 s and connecting again, as a real attacker would. Meanwhile a legitimate client scrapes with
the right password; its latency, the exporter's RSS and its open file descriptors are measured
and printed (the figures are in docs/security.md).

Run the flood alone: ``python tests/test_hostile_auth.py PORT CA_FILE SECONDS CONNECTIONS``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import socket
import ssl
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import bcrypt
import httpx
import psutil
import yaml
from harness import wait_until
from harness.process import ExporterProcess, exporter_process, offline_config_file, sampling

USER = "prometheus"
PASSWORD = "correct horse battery staple"
COST = 10  # the cost; the flood itself is scaled down (FLOOD_SECONDS)
FLOOD_CONNECTIONS = 200
FLOOD_SECONDS = 10.0
REQUEST_TIMEOUT = 2.0
MB = 1024 * 1024
MAX_CONNECTIONS = 256  # Limits.max_connections, the default the CLI serves with


# -- the flood (its own process) ---------------------------------------------------------------


async def _one_attacker(port: int, source: str, context: ssl.SSLContext | None, until: float) -> Counter[str]:
    """One connection at a time from ``source``: wrong passwords until ``until``, reconnecting."""
    seen: Counter[str] = Counter()
    attempt = 0
    while time.monotonic() < until:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    "127.0.0.1",
                    port,
                    ssl=context,
                    local_addr=(source, 0),
                    server_hostname="localhost" if context else None,
                ),
                REQUEST_TIMEOUT,
            )
        except (OSError, ssl.SSLError, TimeoutError):
            seen["connect_failed"] += 1
            await asyncio.sleep(0.05)
            continue
        try:
            while time.monotonic() < until:
                attempt += 1
                token = base64.b64encode(f"{USER}:wrong-{source}-{attempt}".encode()).decode()
                writer.write(
                    f"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {token}\r\n\r\n".encode()
                )
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
                length = re.search(rb"Content-Length: (\d+)", head)
                await reader.readexactly(int(length.group(1)) if length else 0)
                seen[head.split(b" ", 2)[1].decode()] += 1
                if b"Connection: close" in head:
                    break
        except TimeoutError:
            seen["abandoned"] += 1  # the attacker gives up on this request and connects again
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
            seen["dropped"] += 1
        finally:
            writer.transport.abort()
    return seen


async def flood(port: int, ca: str | None, seconds: float, connections: int) -> dict[str, int]:
    """``connections`` attackers, each from its own loopback address, for ``seconds``."""
    context = ssl.create_default_context(cafile=ca) if ca else None
    until = time.monotonic() + seconds
    results = await asyncio.gather(
        *(
            _one_attacker(port, f"127.0.{(i + 2) // 250}.{(i + 2) % 250 + 1}", context, until)
            for i in range(connections)
        )
    )
    total: Counter[str] = Counter()
    for seen in results:
        total.update(seen)
    return dict(total)


def _flood_main(argv: list[str]) -> int:
    port, ca, seconds, connections = int(argv[0]), argv[1] or None, float(argv[2]), int(argv[3])
    print(json.dumps(asyncio.run(flood(port, ca, seconds, connections))))
    return 0


# -- measuring the exporter --------------------------------------------------------------------


def scrape_times(client: httpx.Client, url: str, until: float, at_least: int) -> list[float]:
    """Scrape ``url`` every 0.1 s until ``until`` (and at least ``at_least`` times); each latency."""
    seconds: list[float] = []
    while time.monotonic() < until or len(seconds) < at_least:
        started = time.monotonic()
        response = client.get(url)
        seconds.append(time.monotonic() - started)
        assert response.status_code == 200, (response.status_code, response.text[:200])
        assert "badgateway_collector_success" in response.text
        time.sleep(0.1)  # the pace of the legitimate scraper, not a wait for a condition
    return seconds


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[98]


def web_config(folder: Path, tls: tuple[Path, Path] | None, cost: int = COST) -> Path:
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=cost)).decode()
    document: dict[str, object] = {"basic_auth_users": {USER: hashed}}
    if tls is not None:
        document["tls_server_config"] = {"cert_file": str(tls[0]), "key_file": str(tls[1])}
    path = folder / "web.yml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


def measure_flood(proc: ExporterProcess, ca: Path, folder: Path) -> dict[str, object]:
    """Idle and flooded scrape latencies, peak RSS and fds: the figures of docs/security.md."""
    context = ssl.create_default_context(cafile=str(ca))
    url = f"{proc.url('https')}/metrics"
    process = psutil.Process(proc.pid)
    with httpx.Client(verify=context, auth=(USER, PASSWORD), timeout=60) as client:
        scrape_times(client, url, time.monotonic() + 2, 10)  # warm up (and cache the credentials)
        idle = scrape_times(client, url, time.monotonic() + 4, 30)
        idle_rss, idle_fds = process.memory_info().rss, process.num_fds()
        attacker = subprocess.Popen(
            [sys.executable, __file__, str(proc.port), str(ca), str(FLOOD_SECONDS), str(FLOOD_CONNECTIONS)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            with sampling(proc.pid) as peak:
                wait_until(
                    lambda: (
                        sum(1 for c in process.net_connections("tcp") if c.raddr) >= FLOOD_CONNECTIONS / 2
                    ),
                    20,
                    "the flood to connect",
                )
                flooded = scrape_times(client, url, time.monotonic() + FLOOD_SECONDS - 2, 30)
                out, _ = attacker.communicate(timeout=FLOOD_SECONDS + 60)
        finally:
            if attacker.poll() is None:
                attacker.kill()
                attacker.wait()
    return {
        "idle_p99": p99(idle),
        "flood_p99": p99(flooded),
        "flood_max": max(flooded),
        "idle_rss": idle_rss,
        "peak_rss": peak["rss"],
        "idle_fds": idle_fds,
        "peak_fds": peak["fds"],
        "attacker": json.loads(out.strip().splitlines()[-1]),
    }


def test_wrong_password_flood_does_not_take_metrics_down(tmp_path: Path) -> None:
    from test_webconfig import make_pki

    pki = make_pki(tmp_path / "pki")
    args = ["--config", str(offline_config_file(tmp_path, scrape_timeout_seconds=5.0))]
    args += ["--web.config.file", str(web_config(tmp_path, (pki.server_cert, pki.server_key)))]
    with exporter_process(args, tmp_path / "exporter.log") as proc:
        figures = measure_flood(proc, pki.ca, tmp_path)
        log = proc.log_text()
    attacker = figures["attacker"]
    assert isinstance(attacker, dict)
    idle_p99, flood_p99 = float(figures["idle_p99"]), float(figures["flood_p99"])  # type: ignore[arg-type]
    idle_rss, peak_rss = int(figures["idle_rss"]), int(figures["peak_rss"])  # type: ignore[call-overload]
    idle_fds, peak_fds = int(figures["idle_fds"]), int(figures["peak_fds"])  # type: ignore[call-overload]
    print(
        f"\nwrong-password flood, {FLOOD_CONNECTIONS} connections, {FLOOD_SECONDS:g} s, bcrypt cost {COST}: "
        f"scrape p99 idle {idle_p99 * 1000:.0f} ms, flooded {flood_p99 * 1000:.0f} ms "
        f"(max {float(figures['flood_max']) * 1000:.0f} ms); "  # type: ignore[arg-type]
        f"RSS {idle_rss / MB:.0f} -> {peak_rss / MB:.0f} MB; fds {idle_fds} -> {peak_fds}; attacker saw {attacker}"
    )
    assert sum(attacker.values()) > FLOOD_CONNECTIONS, attacker  # the flood really ran
    assert attacker.get("429", 0) > 0, attacker  # past its budget, or the queue full: refused without bcrypt
    # a legitimate scrape keeps its pace: within 2x of idle, plus 0.5 s of slack for a 2-core host
    # that other work loads too (before the bounded password queue: 7-30 s, then timeouts)
    assert flood_p99 <= 2 * idle_p99 + 0.5, figures
    assert peak_rss <= 1.5 * idle_rss, figures
    assert peak_fds <= MAX_CONNECTIONS + idle_fds, figures
    assert "Traceback" not in log


def test_password_checks_of_clients_that_left_are_dropped(tmp_path: Path) -> None:
    """Queued password checks whose clients have closed the connection never run bcrypt."""
    args = [
        "--config",
        str(offline_config_file(tmp_path, scrape_timeout_seconds=5.0)),
        "--log.level",
        "debug",
    ]
    args += ["--web.config.file", str(web_config(tmp_path, None, cost=12))]
    with exporter_process(args, tmp_path / "exporter.log") as proc:
        sockets = []
        for index in range(8):  # the queue's size; each from its own address (its own budget)
            sock = socket.socket()
            sock.bind((f"127.0.1.{index + 1}", 0))
            sock.connect(("127.0.0.1", proc.port))
            token = base64.b64encode(f"{USER}:wrong-{index}".encode()).decode()
            sock.sendall(f"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {token}\r\n\r\n".encode())
            sock.shutdown(socket.SHUT_WR)  # the client leaves at once
            sockets.append(sock)
        for sock in sockets:
            sock.close()

        def dropped() -> int:
            return proc.log_text().count("dropped a password check: the client")

        wait_until(lambda: dropped() >= 6, 30, "the checks of the clients that left to be dropped")
        # and a legitimate client still gets in, its password checked
        response = httpx.get(f"{proc.url()}/metrics", auth=(USER, PASSWORD), timeout=30)
        assert response.status_code == 200
        print(f"\n8 clients queued a password check and left: {dropped()} checks dropped before bcrypt")
        assert "Traceback" not in proc.log_text()


if __name__ == "__main__":
    sys.exit(_flood_main(sys.argv[1:]))
