"""A soak: the real exporter for N minutes (30 by default) under faults, rotation, scrapes and attacks.

On the bundled demo stack (real nginx, PHP-FPM and uvicorn) watched by the exporter's CLI in its own
process: 10 scrapes a second; every 2 minutes a fault of the catalogue injected for 40 s and healed,
in turn; a synthetic error log written at 50 lines/s and rotated every 45 s (rename and create,
copytruncate, truncation to a smaller size, delete and create, in turn); and, in turn, an attack every
30 s (slowloris: 200 idle connections for 10 s; 2,000 requests with hostile
X-Prometheus-Scrape-Timeout-Seconds headers; a churn of 3,000 short connections; 200 requests whose
paths hold the text of an upstream error). The exporter's RSS, threads and open descriptors are
sampled every 5 s. Printed at the end: RSS after the warm-up (the first 20 % of the run) and at the
end, its growth (target <= 5 MiB), threads and descriptors after the warm-up (flat), the lines
written to the synthetic log against the lines counted (target: equal, none lost or doubled), and the
scrapes answered. Usage (as root): ``.venv/bin/python benchmarks/soak.py [--minutes 30]``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import itertools
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path
from typing import TextIO

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from exporter.demo.catalogue import FAULTS_BY_NAME
from exporter.demo.fault import FaultContext
from exporter.demo.load import LoadGenerator
from exporter.demo.services import ProcessServices
from exporter.demo.stack import Stack, free_port, make_root, wait_until

FAULTS = ("php_fpm_stopped", "backend_unhealthy", "php_header_too_big", "backend_slow", "php_worker_segfault")
LINE = (
    "{stamp} [error] 7#7: *{n} upstream timed out (110: Connection timed out) while reading response header"
    ' from upstream, client: 127.0.0.1, server: soak, request: "GET / HTTP/1.1", upstream:'
    ' "http://127.0.0.1:9/", host: "soak"\n'
)
TARGET_RSS_GROWTH_MIB = 5.0


class Soak:
    def __init__(self, stack: Stack, exporter: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.stack, self.exporter, self.port, self.log = stack, exporter, port, log
        self.url = f"http://127.0.0.1:{port}"
        self.stop = threading.Event()
        self.samples: list[tuple[float, float, int, int]] = []  # (t, rss MiB, threads, fds)
        self.scrapes: dict[str, int] = {"ok": 0, "failed": 0}
        self.durations: list[float] = []
        self.written = 0
        self.rotations = 0
        self.lock = threading.Lock()

    # -- the exporter's own figures ------------------------------------------------------------
    def sample(self) -> None:
        pid = self.exporter.pid
        status = Path(f"/proc/{pid}/status").read_text(encoding="ascii")
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        rss = int(fields["VmRSS"].split()[0]) / 1024
        threads = int(fields["Threads"])
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        self.samples.append((time.monotonic(), rss, threads, fds))

    def scraper(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self.stop.is_set():
                started = time.monotonic()
                try:
                    ok = client.get(f"{self.url}/metrics").status_code == 200
                except httpx.HTTPError:
                    ok = False
                with self.lock:
                    self.scrapes["ok" if ok else "failed"] += 1
                    self.durations.append(time.monotonic() - started)
                self.stop.wait(max(0.0, 0.1 - (time.monotonic() - started)))

    # -- the synthetic log and its rotations --------------------------------------------------------
    def writer(self) -> None:
        handle: TextIO = self.log.open("a", encoding="ascii")
        next_rotation = time.monotonic() + 45
        methods = itertools.cycle(("rename", "copytruncate", "shrink", "delete"))
        try:
            while not self.stop.is_set():
                stamp = time.strftime("%Y/%m/%d %H:%M:%S")
                handle.write("".join(LINE.format(stamp=stamp, n=self.written + i) for i in range(5)))
                handle.flush()
                self.written += 5
                if time.monotonic() >= next_rotation:
                    handle = self.rotate(handle, next(methods))
                    next_rotation = time.monotonic() + 45
                self.stop.wait(0.1)
        finally:
            handle.close()

    def rotate(self, handle: TextIO, method: str) -> TextIO:
        self.rotations += 1
        if method == "rename":
            handle.close()
            self.log.rename(self.log.with_name(self.log.name + ".1"))
        elif method == "copytruncate":
            time.sleep(1.5)  # the tailer reads to the end first, as logrotate's delaycompress allows
            shutil.copyfile(self.log, self.log.with_name(self.log.name + ".1"))
            os.truncate(self.log, 0)
        elif method == "shrink":
            time.sleep(1.5)  # read to its end, then cut to a line boundary at about a third
            data = self.log.read_bytes()
            os.truncate(self.log, data.rfind(b"\n", 0, len(data) // 3) + 1)
            time.sleep(
                2.5
            )  # lines appended before the tailer's next poll are not told apart: let it see the cut
        else:
            time.sleep(1.5)
            handle.close()
            self.log.unlink()
        if method in ("rename", "delete"):
            return self.log.open("a", encoding="ascii")
        return handle

    # -- attacks, in turn -----------------------------------------------------------------------
    def attacks(self) -> None:
        for attack in itertools.cycle((self.slowloris, self.bad_headers, self.churn, self.forged_paths)):
            if self.stop.wait(30):
                return
            attack()

    def slowloris(self) -> None:
        held = []
        for _ in range(200):
            with contextlib.suppress(OSError):
                held.append(socket.create_connection(("127.0.0.1", self.port), timeout=2))
        self.stop.wait(10)
        for sock in held:
            sock.close()

    def bad_headers(self) -> None:
        values = ("1e-308", "0", "-5", "nan", "inf", "x" * 8000, "0.3")
        with httpx.Client(timeout=5) as client:
            for i in range(2000):
                with contextlib.suppress(httpx.HTTPError):
                    client.get(
                        f"{self.url}/metrics", headers={"X-Prometheus-Scrape-Timeout-Seconds": values[i % 7]}
                    )

    def churn(self) -> None:
        def one(_: int) -> None:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=2) as s,
            ):
                s.sendall(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                s.recv(100)

        with concurrent.futures.ThreadPoolExecutor(50) as pool:
            list(pool.map(one, range(3000)))

    def forged_paths(self) -> None:
        forged = (
            "upstream timed out (110: Connection timed out) while reading response header from upstream,"
            ' client: 1.2.3.4, server: x, request: "GET / HTTP/1.1", upstream: "fastcgi://unix:/run/php/X.sock:"'
        )
        with httpx.Client(timeout=5) as client:
            for i in range(200):
                with contextlib.suppress(httpx.HTTPError):
                    client.get(
                        f"http://127.0.0.1:{self.stack.nginx_port}/static/"
                        + urllib.parse.quote(f"{forged} {i}")
                    )

    # -- faults, in turn ---------------------------------------------------------------------------
    def faults(self, ctx: FaultContext) -> None:
        for name in itertools.cycle(FAULTS):
            if self.stop.wait(80):
                return
            fault = FAULTS_BY_NAME[name]
            fault.inject(ctx)
            self.stop.wait(40)
            fault.heal(ctx)

    def counted(self) -> int:
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        for family in text_string_to_metric_families(text):
            if family.name == "badgateway_nginx_error_log_lines":
                return int(sum(s.value for s in family.samples if s.labels.get("log") == str(self.log)))
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=30.0)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("benchmarks/soak.py: run as root (the stack's workers run as www-data)", file=sys.stderr)
        return 2
    root = make_root("badgateway-soak-")
    stack = Stack(root)
    stack.start()
    load = LoadGenerator(stack, rate=10.0, max_seconds=args.minutes * 60 + 120)
    load.start()
    soak_log = root / "log" / "soak-error.log"
    soak_log.write_text("", encoding="ascii")
    settings = stack.exporter_config()
    logs = settings["logs"]
    assert isinstance(logs, dict)
    settings["logs"] = {**logs, "nginx": [str(stack.nginx_error_log), str(soak_log)],
                        "state_file": str(root / "logs.state")}  # fmt: skip
    config = root / "exporter.yml"
    config.write_text(yaml.safe_dump(settings), encoding="utf-8")
    port = free_port()
    exporter_log = (root / "log" / "exporter.log").open("wb")
    exporter = subprocess.Popen([sys.executable, "-m", "exporter", "--config", str(config), "--web.listen-address",
                                 f"127.0.0.1:{port}"], stdout=exporter_log, stderr=subprocess.STDOUT)  # fmt: skip
    soak = Soak(stack, exporter, port, soak_log)
    try:
        wait_until(lambda: _answers(soak.url), 20.0, "the exporter to answer")
        threads = [threading.Thread(target=t, daemon=True) for t in (soak.scraper, soak.writer, soak.attacks)]
        threads.append(threading.Thread(target=soak.faults, args=(FaultContext(stack, ProcessServices(stack)),),
                                        daemon=True))  # fmt: skip
        for thread in threads:
            thread.start()
        end = time.monotonic() + args.minutes * 60
        while time.monotonic() < end:
            soak.sample()
            time.sleep(5)
        soak.stop.set()
        for thread in threads:
            thread.join(timeout=120)
        wait_until(lambda: soak.counted() >= soak.written, 30.0, "the last lines to be counted")
        time.sleep(2)
        soak.sample()
        report(soak, args.minutes)
        return 0
    finally:
        soak.stop.set()
        with contextlib.suppress(ProcessLookupError):
            exporter.send_signal(signal.SIGTERM)
        exporter.wait(timeout=30)
        load.stop()
        stack.stop()
        shutil.rmtree(root, ignore_errors=True)


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/-/healthy", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def report(soak: Soak, minutes: float) -> None:
    start = soak.samples[0][0]
    warm = [s for s in soak.samples if s[0] - start >= minutes * 60 * 0.2]
    first, last = warm[: max(1, len(warm) // 10)], warm[-max(1, len(warm) // 10) :]
    rss_warm, rss_end = statistics.median(s[1] for s in first), statistics.median(s[1] for s in last)
    growth = rss_end - rss_warm
    counted = soak.counted()
    durations = sorted(soak.durations)
    p99 = durations[int(len(durations) * 0.99)] if durations else float("nan")
    print(
        f"soak of {minutes:g} min: {soak.scrapes['ok']:,} scrapes answered, {soak.scrapes['failed']:,} failed,"
        f" p99 {p99 * 1000:.0f} ms; {soak.rotations} rotations"
    )
    print(
        f"RSS after the warm-up {rss_warm:.1f} MiB, at the end {rss_end:.1f} MiB: growth {growth:+.1f} MiB"
        f" (target <= {TARGET_RSS_GROWTH_MIB:g})  {'OK' if growth <= TARGET_RSS_GROWTH_MIB else 'MISSED'}"
    )
    print(
        f"threads after the warm-up {min(s[2] for s in warm)}..{max(s[2] for s in warm)} (median"
        f" {statistics.median(s[2] for s in first):g} then {statistics.median(s[2] for s in last):g}),"
        f" open descriptors {min(s[3] for s in warm)}..{max(s[3] for s in warm)} (median"
        f" {statistics.median(s[3] for s in first):g} then {statistics.median(s[3] for s in last):g};"
        " the highs are the slowloris' 200 connections)"
    )
    print(
        f"synthetic log: {soak.written:,} lines written, {counted:,} counted"
        f"  {'OK (none lost or doubled)' if counted == soak.written else 'MISSED'}"
    )


if __name__ == "__main__":
    sys.exit(main())
