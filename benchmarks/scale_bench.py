"""Scrape time and memory of the exporter as the number of PHP-FPM pools grows, and with hung pools.

One real php-fpm master per size runs N pools (``tests/harness/pools.py``: one socket each, ping and
status on, one static worker) behind a real nginx with N server blocks, each ``fastcgi_pass``-ing
to its pool; the exporter is told only where the files are and discovers the pools and sites
itself (every check on but units and the database, which these hosts do not have). All sizes run
at once and are scraped alternately, in an order that rotates every round, so the machine's noise
falls on every size alike. Prints, from one run:

- per size (default 1, 10, 100 pools): full ``/metrics`` scrape p50/p99, CPU per scrape, steady RSS,
  the series count, and the floor: the same two FastCGI requests per pool (ping, ``status?json``)
  sent one after the other by a bare blocking client in this process, timed in the same rounds;
- the cost per pool: (p50 at the largest size - p50 at one pool) / (pools - 1);
- with 10 of the largest size's pools SIGSTOPped (their workers): p99 and max of the scrape time
  against the round's deadline (``X-Prometheus-Scrape-Timeout-Seconds`` minus the margin), and
  that every other pool is still exported (``badgateway_fastcgi_up`` 1 for them, 0 for the hung).

Targets: p50 <= 30 ms and RSS <= 45 MiB at 100 pools; hung p99 <= deadline + 50 ms.

Usage: ``bash benchmarks/scale`` (builds the product as ``benchmarks/run`` does), or
``.venv/bin/python benchmarks/scale_bench.py [--pools 1,10,100] [--scrapes N] [--hung N]
[--hung-scrapes N]`` as root (the workers run as www-data).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE.parent))

from harness.exporters import parse  # noqa: E402
from harness.pools import PoolFarm  # noqa: E402

from exporter.demo.stack import free_port, make_root, wait_until  # noqa: E402

EXPORTER_PYTHON = os.environ.get("BADGATEWAY_EXPORTER_PYTHON", sys.executable)
TARGET_P50_MS = 30.0
TARGET_RSS_MIB = 45.0
TARGET_HUNG_SLACK_MS = 50.0
SCRAPE_TIMEOUT = 2.0  # X-Prometheus-Scrape-Timeout-Seconds of the hung-pool scrapes
# What Prometheus 2.42 sends: OpenMetrics first (``--accept text`` measures the 0.0.4 text format).
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
ACCEPTS = {"prometheus": PROMETHEUS_ACCEPT, "text": "*/*"}
MS = 1000.0
MIB = float(2**20)


def note(message: str) -> None:
    print(f"scale_bench: {message}", file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass
class Size:
    """One farm of ``pools`` pools, its exporter and what was measured of it."""

    pools: int
    farm: PoolFarm
    exporter: subprocess.Popen[bytes] | None = None
    url: str = ""
    times: list[float] = field(default_factory=list)
    floor: list[float] = field(default_factory=list)
    cpu_seconds: float = 0.0
    rss_bytes: int = 0
    series: int = 0

    @property
    def ps(self) -> psutil.Process:
        assert self.exporter is not None
        return psutil.Process(self.exporter.pid)

    def cpu(self) -> float:
        times = self.ps.cpu_times()
        return float(times.user + times.system)


# -- the floor: a bare blocking FastCGI client --------------------------------------------------------


def _record(kind: int, content: bytes) -> bytes:
    padding = -len(content) & 7
    return struct.pack("!BBHHBx", 1, kind, 1, len(content), padding) + content + b"\0" * padding


def _pair(name: str, value: str) -> bytes:
    return bytes([len(name), len(value)]) + name.encode() + value.encode()


def fastcgi_bytes(path: str, query: str) -> bytes:
    params = {"SCRIPT_FILENAME": path, "SCRIPT_NAME": path, "REQUEST_METHOD": "GET", "QUERY_STRING": query}
    body = b"".join(_pair(k, v) for k, v in params.items())
    begin = struct.pack("!HB5x", 1, 0)
    return _record(1, begin) + _record(4, body) + _record(4, b"") + _record(5, b"")


PING = fastcgi_bytes("/ping", "")
STATUS = fastcgi_bytes("/status", "json")


def bare_request(path: str, request: bytes) -> None:
    """One request over a fresh connection, read until PHP-FPM closes it (it ends every request so)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2.0)
        sock.connect(path)
        sock.sendall(request)
        while sock.recv(65536):
            pass


def floor_seconds(size: Size) -> float:
    started = time.perf_counter()
    for name in size.farm.names:
        path = str(size.farm.socket(name))
        bare_request(path, PING)
        bare_request(path, STATUS)
    return time.perf_counter() - started


# -- the exporters -------------------------------------------------------------------------------------


def start_exporter(size: Size, root: Path) -> None:
    settings = size.farm.exporter_settings()
    settings["scrape_timeout_seconds"] = 10.0
    path = root / f"exporter-{size.pools}.yml"
    path.write_text(yaml.safe_dump(settings), encoding="utf-8")
    port = free_port()
    size.url = f"http://127.0.0.1:{port}/metrics"
    with (root / f"exporter-{size.pools}.log").open("wb") as out:
        size.exporter = subprocess.Popen(
            [EXPORTER_PYTHON, "-m", "exporter", "--config", str(path),
             "--web.listen-address", f"127.0.0.1:{port}", "--log.level", "warning"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=root,
        )  # fmt: skip


def all_up(client: httpx.Client, size: Size) -> bool:
    try:
        response = client.get(size.url)
    except httpx.HTTPError:
        return False
    if response.status_code != 200:
        return False
    text = response.text.removesuffix("# EOF\n")  # the parser reads the text format
    ups = [v for (name, _), v in parse(text).samples.items() if name == "badgateway_fastcgi_up"]
    return len(ups) == size.pools and all(v == 1 for v in ups)


def timed(client: httpx.Client, url: str, headers: dict[str, str] | None = None) -> tuple[float, str]:
    started = time.perf_counter()
    response = client.get(url, headers=headers)
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise SystemExit(f"{url} answered {response.status_code}")
    return elapsed, response.text


def start_profiler(output: Path, size: Size) -> subprocess.Popen[bytes] | None:
    """py-spy recording the largest size's exporter (``--gil``: the thread holding the GIL)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists() or size.exporter is None:
        note("py-spy not installed (.venv/bin/pip install py-spy); no profile")
        return None
    fmt = {".json": "speedscope", ".txt": "raw"}.get(output.suffix, "flamegraph")
    return subprocess.Popen(
        [spy, "record", "--pid", str(size.exporter.pid), "--rate", "500", "--threads", "--gil",
         "--format", fmt, "--output", str(output), "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def measure(client: httpx.Client, sizes: list[Size], rounds: int, profile: Path | None = None) -> None:
    """``rounds`` rounds, each scraping every size once and timing every size's floor once, rotating."""
    for _ in range(20):  # warm-up
        for size in sizes:
            timed(client, size.url)
    spy = start_profiler(profile, sizes[-1]) if profile else None
    before = [size.cpu() for size in sizes]
    for index in range(rounds):
        order = sizes[index % len(sizes) :] + sizes[: index % len(sizes)]
        for size in order:
            seconds, _ = timed(client, size.url)
            size.times.append(seconds)
        for size in order:
            size.floor.append(floor_seconds(size))
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=60)
    for size, cpu in zip(sizes, before, strict=True):
        size.cpu_seconds = size.cpu() - cpu
        size.rss_bytes = int(size.ps.memory_info().rss)
        _, text = timed(client, size.url)
        size.series = sum(1 for line in text.splitlines() if line and not line.startswith("#"))


@dataclass
class Hung:
    paused: list[str]
    times: list[float]
    up_ok: bool
    up_summary: str
    deadline: float


def hung_scrapes(client: httpx.Client, size: Size, hung: int, count: int, margin: float) -> Hung:
    step = max(1, size.pools // hung)
    paused = size.farm.names[::step][:hung]
    size.farm.pause_pools(paused)
    times: list[float] = []
    text = ""
    headers = {"X-Prometheus-Scrape-Timeout-Seconds": str(SCRAPE_TIMEOUT)}
    try:
        for _ in range(count):
            seconds, text = timed(client, size.url, headers)
            times.append(seconds)
    finally:
        size.farm.resume_pools()
    scrape = parse(text.removesuffix("# EOF\n"))
    up = {
        name: scrape.value("badgateway_fastcgi_up", socket=str(size.farm.socket(name)))
        for name in size.farm.names
    }
    ups = sum(1 for n, v in up.items() if v == 1 and n not in paused)
    downs = sum(1 for n, v in up.items() if v == 0 and n in paused)
    ok = ups == size.pools - len(paused) and downs == len(paused)
    summary = f"fastcgi_up 1 for {ups} of {size.pools - len(paused)} running pools, 0 for {downs} of {len(paused)} hung"
    return Hung(paused, times, ok, summary, SCRAPE_TIMEOUT - margin)


# -- the run -------------------------------------------------------------------------------------------


@contextlib.contextmanager
def farms(counts: list[int]) -> Iterator[tuple[Path, list[Size]]]:
    root = make_root("badgateway-scale-")
    sizes: list[Size] = []
    try:
        for count in counts:
            folder = root / f"pools-{count}"
            folder.mkdir()
            folder.chmod(0o755)
            size = Size(count, PoolFarm(folder, count))
            sizes.append(size)
            note(f"starting php-fpm with {count} pools and nginx with {count} server blocks")
            size.farm.start()
        yield root, sizes
    finally:
        for size in sizes:
            if size.exporter is not None and size.exporter.poll() is None:
                size.exporter.send_signal(signal.SIGTERM)
                try:
                    size.exporter.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    size.exporter.kill()
                    size.exporter.wait(timeout=10)
            size.farm.stop()
        shutil.rmtree(root, ignore_errors=True)


def report(sizes: list[Size], hung: Hung, args: argparse.Namespace) -> None:
    print(f"badgateway-exporter with many PHP-FPM pools - one run, {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"machine: {platform.node() or 'host'}, {psutil.cpu_count()} cores, Linux {platform.release()}; "
          f"load avg {os.getloadavg()[0]:.2f} (shared machine: compare the rows of one run)")  # fmt: skip
    print(
        f"ours: {EXPORTER_PYTHON} -m exporter (discovery of the tree; every check on but units and database)"
    )
    print(
        f"{args.scrapes} rounds, sizes scraped alternately in a rotating order, Accept: {args.accept} "
        f"({ACCEPTS[args.accept].split(',', maxsplit=1)[0]}); floor = ping + status of every pool, one after the other, bare blocking client"
    )
    print()
    header = f"{'pools':>5} | {'p50 ms':>7} | {'p99 ms':>7} | {'CPU ms/scrape':>13} | {'RSS MiB':>7} | {'series':>6} | {'floor p50 ms':>12} |"
    print(header)
    print("-" * len(header))
    for size in sizes:
        print(f"{size.pools:>5} | {percentile(size.times, 0.5) * MS:7.2f} | {percentile(size.times, 0.99) * MS:7.2f} | "
              f"{size.cpu_seconds / len(size.times) * MS:13.2f} | {size.rss_bytes / MIB:7.1f} | {size.series:>6} | "
              f"{percentile(size.floor, 0.5) * MS:12.2f} |")  # fmt: skip
    first, last = sizes[0], sizes[-1]
    if last.pools > first.pools:
        per_pool = (percentile(last.times, 0.5) - percentile(first.times, 0.5)) / (last.pools - first.pools)
        floor = (percentile(last.floor, 0.5) - percentile(first.floor, 0.5)) / (last.pools - first.pools)
        print(
            f"\ncost per pool: {per_pool * MS:.3f} ms of scrape p50 ({floor * MS:.3f} ms floor: two round trips)"
        )
    p50, rss = percentile(last.times, 0.5) * MS, last.rss_bytes / MIB
    print(f"{last.pools} pools: p50 {p50:.2f} ms (target <= {TARGET_P50_MS:g}: {'OK' if p50 <= TARGET_P50_MS else 'MISSED'}), "
          f"RSS {rss:.1f} MiB (target <= {TARGET_RSS_MIB:g}: {'OK' if rss <= TARGET_RSS_MIB else 'MISSED'})")  # fmt: skip
    p99, worst = percentile(hung.times, 0.99) * MS, max(hung.times) * MS
    bound = hung.deadline * MS + TARGET_HUNG_SLACK_MS
    print(f"{len(hung.paused)} of {last.pools} pools SIGSTOPped: {len(hung.times)} scrapes with "
          f"X-Prometheus-Scrape-Timeout-Seconds: {SCRAPE_TIMEOUT:g} (deadline {hung.deadline * MS:.0f} ms): "
          f"p99 {p99:.0f} ms, max {worst:.0f} ms (target <= {bound:.0f}: {'OK' if p99 <= bound else 'MISSED'}); "
          f"{hung.up_summary} ({'OK' if hung.up_ok else 'MISSED'})")  # fmt: skip


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 1 or more, got {text}")
    return value


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pools", default="1,10,100", help="comma-separated pool counts (default 1,10,100)")
    parser.add_argument("--scrapes", type=int, default=300, help="measured rounds (one scrape of each size)")
    parser.add_argument(
        "--hung", type=_positive, default=10, help="pools of the largest size to SIGSTOP (1 or more)"
    )
    parser.add_argument("--hung-scrapes", type=int, default=20, help="scrapes with those pools SIGSTOPped")
    parser.add_argument("--accept", choices=sorted(ACCEPTS), default="prometheus",
                        help="Accept header: prometheus (OpenMetrics first, as Prometheus asks) or text")  # fmt: skip
    parser.add_argument(
        "--profile", type=Path, help="py-spy record the largest size's exporter during the rounds"
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        note("run as root: the pools' workers and nginx's run as www-data")
        return 2
    counts = sorted({int(part) for part in args.pools.split(",") if part.strip()})
    with (
        farms(counts) as (root, sizes),
        httpx.Client(timeout=30, trust_env=False, headers={"Accept": ACCEPTS[args.accept]}) as client,
    ):
        for size in sizes:
            start_exporter(size, root)
        for size in sizes:
            wait_until(lambda size=size: all_up(client, size), 30.0, f"the exporter of {size.pools} pools")  # type: ignore[misc]
        note(f"measuring {args.scrapes} rounds")
        measure(client, sizes, args.scrapes, args.profile)
        note(f"SIGSTOPping {args.hung} of {sizes[-1].pools} pools")
        hung = hung_scrapes(client, sizes[-1], min(args.hung, sizes[-1].pools), args.hung_scrapes, 0.5)
        report(sizes, hung, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
