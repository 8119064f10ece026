"""Scrape latency, CPU and memory of the exporter on the real demo stack, against node_exporter.

Prints, from one run on this machine:
- full /metrics scrape p50/p99 of badgateway-exporter and of node_exporter 1.5 (default collectors),
  measured alternately; the ratio ours/theirs (target: p50 <= 10 ms and <= node_exporter's p50);
- the exporter's steady RSS (target <= 40 MB);
- with PHP-FPM SIGSTOPped, p99 of the scrape time against the scrape deadline (target: <= deadline + 50 ms).

Usage: .venv/bin/python benchmarks/scrape_bench.py [--scrapes N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import yaml

from exporter.demo.stack import Stack, free_port, make_root, wait_until

# The exporter as operators install it (benchmarks/run makes a venv with `pip install .`, no dev tools),
# so dev-only packages that some libraries import when present do not count in its memory.
EXPORTER_PYTHON = os.environ.get("BADGATEWAY_EXPORTER_PYTHON", sys.executable)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def start(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def wait_http(url: str, what: str) -> None:
    def ready() -> bool:
        try:
            return httpx.get(url, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(ready, 20, what)


def timed_scrape(client: httpx.Client, url: str, headers: dict[str, str] | None = None) -> float:
    started = time.perf_counter()
    response = client.get(url, headers=headers)
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise SystemExit(f"{url} answered {response.status_code}")
    return elapsed


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scrapes", type=int, default=400, help="scrapes of each exporter (alternating)")
    parser.add_argument("--hung-scrapes", type=int, default=12, help="scrapes with PHP-FPM SIGSTOPped")
    args = parser.parse_args()
    node_exporter = shutil.which("prometheus-node-exporter")
    if node_exporter is None:
        print(
            "prometheus-node-exporter is not installed (apt-get install prometheus-node-exporter)",
            file=sys.stderr,
        )
        return 2
    root = make_root("badgateway-bench-")
    stack = Stack(root)
    stack.start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        settings = stack.exporter_config()
        settings["nginx"]["test_interval_seconds"] = 30.0  # type: ignore[index]
        # The round's deadline, not the pool's own timeout, must bound the hung-PHP-FPM scrapes.
        settings["php_fpm"][0]["timeout_seconds"] = 60.0  # type: ignore[index]
        settings["scrape_timeout_seconds"] = 10.0
        config_path = root / "bench.yml"
        config_path.write_text(yaml.safe_dump(settings), encoding="utf-8")
        ours_port, node_port = free_port(), free_port()
        ours = start(
            [EXPORTER_PYTHON, "-m", "exporter", "--config", str(config_path),
             "--web.listen-address", f"127.0.0.1:{ours_port}", "--log.level", "warning"],
            root / "exporter.log",
        )  # fmt: skip
        procs.append(ours)
        node = start([node_exporter, f"--web.listen-address=127.0.0.1:{node_port}"], root / "node.log")
        procs.append(node)
        ours_url, node_url = f"http://127.0.0.1:{ours_port}/metrics", f"http://127.0.0.1:{node_port}/metrics"
        wait_http(ours_url, "badgateway-exporter")
        wait_http(node_url, "node_exporter")
        node_version = (
            subprocess.run(
                [node_exporter, "--version"], capture_output=True, text=True, timeout=10, check=False
            ).stderr.split("\n", 1)[0]
            or "node_exporter"
        )

        ours_times: list[float] = []
        node_times: list[float] = []
        ours_proc = psutil.Process(ours.pid)
        node_proc = psutil.Process(node.pid)
        with httpx.Client(timeout=30) as client:
            for _ in range(20):  # warm-up
                timed_scrape(client, ours_url)
                timed_scrape(client, node_url)
            cpu_ours_before = sum(ours_proc.cpu_times()[:2])
            cpu_node_before = sum(node_proc.cpu_times()[:2])
            for _ in range(args.scrapes):
                ours_times.append(timed_scrape(client, ours_url))
                node_times.append(timed_scrape(client, node_url))
            cpu_ours = sum(ours_proc.cpu_times()[:2]) - cpu_ours_before
            cpu_node = sum(node_proc.cpu_times()[:2]) - cpu_node_before
            rss_ours = ours_proc.memory_info().rss
            rss_node = node_proc.memory_info().rss

            scrape_timeout = 2.0
            deadline = scrape_timeout - settings_margin(settings)
            stack.pause_php_fpm()
            hung: list[float] = []
            try:
                for _ in range(args.hung_scrapes):
                    hung.append(
                        timed_scrape(
                            client, ours_url, {"X-Prometheus-Scrape-Timeout-Seconds": str(scrape_timeout)}
                        )
                    )
            finally:
                stack.resume_php_fpm()

        ms = 1000.0
        p50_ours, p99_ours = percentile(ours_times, 0.5) * ms, percentile(ours_times, 0.99) * ms
        p50_node, p99_node = percentile(node_times, 0.5) * ms, percentile(node_times, 0.99) * ms
        hung_p99 = percentile(hung, 0.99) * ms
        print(
            f"machine: {psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB; {node_version}"
        )
        print(f"scrapes: {args.scrapes} of each, alternating, keep-alive client, healthy demo stack")
        print(f"{'':28}{'p50 ms':>10}{'p99 ms':>10}{'mean ms':>10}")
        print(
            f"{'badgateway-exporter':28}{p50_ours:10.2f}{p99_ours:10.2f}{statistics.mean(ours_times) * ms:10.2f}"
        )
        print(
            f"{'node_exporter (defaults)':28}{p50_node:10.2f}{p99_node:10.2f}{statistics.mean(node_times) * ms:10.2f}"
        )
        ratio = p50_ours / p50_node
        print(f"p50 ratio ours/node_exporter: {ratio:.2f}   target <= 1.00 and p50 <= 10 ms: "
              f"{'OK' if ratio <= 1.0 and p50_ours <= 10 else 'MISSED'}")  # fmt: skip
        print(f"CPU seconds per 1,000 scrapes: ours {cpu_ours / args.scrapes * 1000:.2f}, "
              f"node_exporter {cpu_node / args.scrapes * 1000:.2f}")  # fmt: skip
        print(f"RSS: ours {rss_ours / 2**20:.1f} MiB (target <= 40 MB: "
              f"{'OK' if rss_ours <= 40e6 else 'MISSED'}), node_exporter {rss_node / 2**20:.1f} MiB")  # fmt: skip
        print(f"PHP-FPM SIGSTOPped: {len(hung)} scrapes with a {scrape_timeout:g} s scrape timeout "
              f"(deadline {deadline * ms:.0f} ms): p99 {hung_p99:.0f} ms, max {max(hung) * ms:.0f} ms; "
              f"target <= deadline + 50 ms: {'OK' if hung_p99 <= deadline * ms + 50 else 'MISSED'}")  # fmt: skip
    finally:
        for proc in procs:
            stop(proc)
        stack.stop()
        shutil.rmtree(root, ignore_errors=True)
    return 0


def settings_margin(settings: dict[str, object]) -> float:
    margin = settings.get("scrape_timeout_margin_seconds", 0.5)
    assert isinstance(margin, float | int)
    return float(margin)


if __name__ == "__main__":
    sys.exit(main())
