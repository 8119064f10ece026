"""Benchmark of the log classifier against mtail, on the same generated 1,000,000-line error.log.

Prints, in one run: lines/s for our tailer's code path and for Debian's mtail (one-shot, a
program counting the same kinds), the ratio (target >= 8x), our peak RSS (target <= 50 MB, from
a child's ru_maxrss) and the live tailer's CPU at 1,000 lines/s for ~10 s (target <= 3 % of a
core). Usage: ``.venv/bin/python benchmarks/logs_bench.py [--lines N] [--keep]``.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TARGET_RATIO = 8.0
TARGET_RSS_MB = 50.0
TARGET_CPU_PERCENT = 3.0
LIVE_RATE = 1000
LIVE_SECONDS = 10.0

MESSAGES: list[tuple[str, int, str]] = [
    # (kind, weight, message)
    (
        "read_timeout",
        30,
        "upstream timed out (110: Connection timed out) while reading response header from upstream",
    ),
    ("connect_timeout", 5, "upstream timed out (110: Connection timed out) while connecting to upstream"),
    (
        "socket_missing",
        10,
        "connect() to {sock} failed (2: No such file or directory) while connecting to upstream",
    ),
    (
        "permission_denied",
        3,
        "connect() to {sock} failed (13: Permission denied) while connecting to upstream",
    ),
    (
        "backlog_full",
        3,
        "connect() to {sock} failed (11: Resource temporarily unavailable) while connecting to upstream",
    ),
    ("connection_refused", 15, "connect() failed (111: Connection refused) while connecting to upstream"),
    (
        "premature_close",
        10,
        "upstream prematurely closed connection while reading response header from upstream",
    ),
    (
        "connection_reset",
        10,
        "recv() failed (104: Connection reset by peer) while reading response header from upstream",
    ),
    ("no_live_upstreams", 5, "no live upstreams while connecting to upstream"),
    ("header_too_big", 3, "upstream sent too big header while reading response header from upstream"),
    ("invalid_header", 2, "upstream sent invalid header while reading response header from upstream"),
    (
        "ssl_handshake_failed",
        2,
        "SSL_do_handshake() failed (SSL: error:0A00010B:SSL routines::wrong version number) "
        "while SSL handshaking to upstream",
    ),
    ("other_upstream", 2, "writev() failed (32: Broken pipe) while sending request to upstream"),
]
SOCKETS = ["unix:/run/php/php8.3-fpm.sock", "unix:/run/php/php8.3-fpm-api.sock"]
TCP = ["http://127.0.0.1:8000", "http://[::1]:8080", "http://10.0.0.12:8000", "http://backend"]

MTAIL_PROGRAM = r"""
counter badgateway_upstream_errors by kind

/upstream timed out \(\d+: [^)]*\) while connecting to upstream/ {
  badgateway_upstream_errors["connect_timeout"]++
}
/upstream timed out \(\d+: [^)]*\) while (reading|sending)/ {
  badgateway_upstream_errors["read_timeout"]++
}
/connect\(\) to unix:\S+ failed \(2: / {
  badgateway_upstream_errors["socket_missing"]++
}
/connect\(\) (to \S+ )?failed \(13: / {
  badgateway_upstream_errors["permission_denied"]++
}
/connect\(\) (to \S+ )?failed \(11: / {
  badgateway_upstream_errors["backlog_full"]++
}
/connect\(\) (to \S+ )?failed \(111: / {
  badgateway_upstream_errors["connection_refused"]++
}
/\(104: Connection reset by peer\) while [a-z ]+ upstream/ {
  badgateway_upstream_errors["connection_reset"]++
}
/upstream prematurely closed connection/ {
  badgateway_upstream_errors["premature_close"]++
}
/no live upstreams/ {
  badgateway_upstream_errors["no_live_upstreams"]++
}
/upstream sent too big header/ {
  badgateway_upstream_errors["header_too_big"]++
}
/upstream sent (no valid HTTP|unsupported FastCGI protocol)/ {
  badgateway_upstream_errors["protocol_mismatch"]++
}
/upstream sent invalid/ {
  badgateway_upstream_errors["invalid_header"]++
}
/worker_connections are not enough/ {
  badgateway_upstream_errors["connections_exhausted"]++
}
/failed \(24: Too many open files\)/ {
  badgateway_upstream_errors["connections_exhausted"]++
}
/failed \(99: Cannot assign requested address\)/ {
  badgateway_upstream_errors["connections_exhausted"]++
}
/ could not be resolved \(/ {
  badgateway_upstream_errors["host_not_found"]++
}
/host not found in upstream/ {
  badgateway_upstream_errors["host_not_found"]++
}
/SSL handshaking to upstream/ {
  badgateway_upstream_errors["ssl_handshake_failed"]++
}
/\(32: Broken pipe\) while sending request to upstream/ {
  badgateway_upstream_errors["other_upstream"]++
}
"""


def generate(path: Path, lines: int, seed: int = 3) -> dict[str, int]:
    """Write ``lines`` realistic nginx upstream-error lines; return the count per kind."""
    rng = random.Random(seed)
    kinds = [m for m in MESSAGES]
    weights = [w for _, w, _ in MESSAGES]
    expected: dict[str, int] = {}
    with open(path, "w", encoding="ascii") as out:
        batch: list[str] = []
        for n in range(lines):
            kind, _, message = rng.choices(kinds, weights)[0]
            expected[kind] = expected.get(kind, 0) + 1
            sock = rng.choice(SOCKETS)
            if "{sock}" in message:
                upstream = f"fastcgi://{sock}:"
                uri = f"/index.php?id={n % 9973}"
            else:
                base = rng.choice([*TCP, f"fastcgi://{rng.choice(SOCKETS)}:"])
                uri = f"/api/v1/orders/{n % 100003}?page={n % 7}"
                upstream = base + uri if base.startswith("http") else base
            secs = n // 200
            batch.append(
                f"2024/05/01 {secs // 3600 % 24:02d}:{secs // 60 % 60:02d}:{secs % 60:02d} [error] 3120#3120: "
                f"*{n + 100000} {message.format(sock=sock)}, client: 203.0.113.{n % 250}, server: shop.example.com, "
                f'request: "GET {uri} HTTP/1.1", upstream: "{upstream}", host: "shop.example.com", '
                f'referrer: "https://shop.example.com/catalog?ref={n % 977}"\n'
            )
            if len(batch) >= 10000:
                out.write("".join(batch))
                batch.clear()
        out.write("".join(batch))
    return expected


def worker_classify(path: str, pure: bool = False) -> None:
    """Child process: count the whole file through the tailer's own read/classify path.

    ``pure``: without the native scan, as when the package was installed without a C compiler.
    """
    from exporter.config import LogSettings
    from exporter.logs import classify
    from exporter.logs.tailer import LogWatcher

    if pure:
        classify._native_scan = None

    watcher = LogWatcher(LogSettings(nginx=[path], php_fpm=[], start="beginning"))
    t0 = time.perf_counter()
    while True:  # each poll reads at most POLL_BUDGET_BYTES of one file
        watcher.poll_once()
        counters = watcher.snapshot().logs[path]
        if counters.lag_bytes == 0:
            break
    seconds = time.perf_counter() - t0
    kinds: dict[str, int] = {}
    for (kind, _upstream), n in counters.upstream_errors.items():
        kinds[kind] = kinds.get(kind, 0) + n
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    native = classify._native_scan is not None
    print(
        json.dumps(
            {"lines": counters.lines, "seconds": seconds, "kinds": kinds, "rss_kb": rss_kb, "native": native}
        )
    )


def worker_analyze(path: str) -> None:
    """Child process: ``logs analyze`` of the whole file (plain or .gz), as the command runs it."""
    from exporter.logs.analyze import analyze

    t0 = time.perf_counter()
    result = analyze([path])
    seconds = time.perf_counter() - t0
    kinds = {kind: seen.count for kind, seen in result.nginx.by_what.items()}
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    incidents = len(result.as_dict()["incidents"])
    print(json.dumps({"lines": result.nginx.lines, "seconds": seconds, "kinds": kinds, "rss_kb": rss_kb,
                      "incidents": incidents}))  # fmt: skip


def worker_live(path: str) -> None:
    """Child process: a live LogWatcher; report its CPU between "ready" and "stop" on stdin."""
    from exporter.config import LogSettings
    from exporter.logs.tailer import LogWatcher

    watcher = LogWatcher(LogSettings(nginx=[path], php_fpm=[]))
    watcher.poll_once()  # opens the file at its end before "ready": no line is written before that
    watcher.start()
    before = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    print("ready", flush=True)
    written = int(sys.stdin.readline().split()[1])  # "stop N"
    after = resource.getrusage(resource.RUSAGE_SELF)
    wall = time.monotonic() - t0
    deadline = time.monotonic() + 5
    while watcher.snapshot().logs[path].lines < written and time.monotonic() < deadline:
        time.sleep(0.01)
    lines = watcher.snapshot().logs[path].lines
    watcher.stop()
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(json.dumps({"cpu_seconds": cpu, "wall_seconds": wall, "lines": lines}), flush=True)


def run_mtail(log: Path, folder: Path) -> tuple[float, dict[str, int]]:
    progs = folder / "progs"
    progs.mkdir()
    (progs / "upstream.mtail").write_text(MTAIL_PROGRAM)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = [
        "mtail", "--one_shot", "--one_shot_format", "prometheus", "--logs", str(log), "--progs", str(progs),
        "--address", "127.0.0.1", "--port", str(port), "--emit_prog_label=false", "--logtostderr",
    ]  # fmt: skip
    t0 = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, timeout=900, check=False)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"mtail failed ({done.returncode}): {done.stderr[-2000:]}")
    kinds = {
        m.group(1): int(float(m.group(2)))
        for m in re.finditer(r'badgateway_upstream_errors\{kind="([a-z_]+)"[^}]*\} ([0-9.e+]+)', done.stdout)
    }
    return seconds, kinds


def run_ours(
    log: Path, pure: bool = False, python: str = sys.executable, worker: str = "--worker-classify"
) -> dict[str, Any]:
    """Classify ``log`` in a child process of ``python`` (the interpreter of the exporter measured)."""
    done = subprocess.run(
        [python, __file__, worker, str(log), *(["--pure"] if pure else [])],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"worker failed: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def print_analyze(log: Path, folder: Path, expected: dict[str, int], mtail_rate: float) -> None:
    """``logs analyze`` (offline) of the same file, plain and gzip-compressed, against mtail's rate."""
    packed = folder / "error.log.gz"
    with packed.open("wb") as out:
        subprocess.run(["gzip", "-1", "-c", str(log)], stdout=out, timeout=600, check=True)
    for name, path in (("logs analyze (plain)", log), ("logs analyze (.gz)", packed)):
        result = run_ours(path, worker="--worker-analyze")
        rate = result["lines"] / result["seconds"]
        rss_mb = result["rss_kb"] / 1024
        agree = "==" if result["kinds"] == expected else "!="
        print(f"{name:<28}: {result['seconds']:6.2f} s  {rate:>10,.0f} lines/s  {rate / mtail_rate:5.1f}x mtail"
              f" (target >= {TARGET_RATIO:.0f}x) {'OK' if rate / mtail_rate >= TARGET_RATIO else 'MISSED'};"
              f" RSS {rss_mb:.1f} MB (target <= {TARGET_RSS_MB:.0f}) {'OK' if rss_mb <= TARGET_RSS_MB else 'MISSED'};"
              f" counts {agree} generated; {result['incidents']} incidents")  # fmt: skip


def run_live(folder: Path) -> dict[str, Any]:
    log = folder / "live-error.log"
    log.write_bytes(b"")
    sample = (folder / "error.log").read_bytes()[:400_000].splitlines(keepends=True)[:LIVE_RATE]
    child = subprocess.Popen(
        [sys.executable, __file__, "--worker-live", str(log)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdin is not None and child.stdout is not None
        if child.stdout.readline().strip() != "ready":
            raise RuntimeError("live worker did not start")
        per_tick = LIVE_RATE // 10
        ticks = int(LIVE_SECONDS * 10)
        start = time.monotonic()
        with open(log, "ab", buffering=0) as out:
            for tick in range(ticks):
                chunk = sample[(tick * per_tick) % len(sample) :][:per_tick]
                out.write(b"".join(chunk))
                delay = start + (tick + 1) * 0.1 - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
        child.stdin.write(f"stop {ticks * per_tick}\n")
        child.stdin.flush()
        line = child.stdout.readline()
        child.wait(timeout=30)
        result: dict[str, Any] = json.loads(line)
        result["written"] = ticks * per_tick
        return result
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)


def main(argv: list[str] | None = None) -> int:
    """Run the whole benchmark and print the figures with their targets."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--keep", action="store_true", help="keep the generated folder")
    parser.add_argument("--worker-classify", help=argparse.SUPPRESS)
    parser.add_argument("--worker-live", help=argparse.SUPPRESS)
    parser.add_argument("--worker-analyze", help=argparse.SUPPRESS)
    parser.add_argument("--pure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker_classify:
        worker_classify(args.worker_classify, args.pure)
        return 0
    if args.worker_live:
        worker_live(args.worker_live)
        return 0
    if args.worker_analyze:
        worker_analyze(args.worker_analyze)
        return 0
    if shutil.which("mtail") is None:
        print("mtail is not installed (apt-get install mtail)", file=sys.stderr)
        return 2

    folder = Path(tempfile.mkdtemp(prefix="bgw-logs-bench-"))
    try:
        log = folder / "error.log"
        t0 = time.perf_counter()
        expected = generate(log, args.lines)
        size_mb = log.stat().st_size / 1e6
        print(f"generated {args.lines:,} lines ({size_mb:.0f} MB) in {time.perf_counter() - t0:.1f} s: {log}")
        subprocess.run(
            ["cat", str(log)], stdout=subprocess.DEVNULL, timeout=300, check=True
        )  # warm the page cache

        ours = run_ours(log)
        pure = run_ours(log, pure=True)
        mtail_seconds, mtail_kinds = run_mtail(log, folder)
        ours_rate = args.lines / ours["seconds"]
        mtail_rate = args.lines / mtail_seconds
        ratio = ours_rate / mtail_rate
        rss_mb = ours["rss_kb"] / 1024
        scan = "native scan" if ours["native"] else "NO native scan: pure Python"
        print(f"ours  (LogWatcher.poll_once): {ours['seconds']:6.2f} s  {ours_rate:>10,.0f} lines/s"
              f"  ({scan})")  # fmt: skip
        pure_rate = args.lines / pure["seconds"]
        print(f"ours, pure Python (no C)    : {pure['seconds']:6.2f} s  {pure_rate:>10,.0f} lines/s"
              f"  ({pure_rate / mtail_rate:.1f}x mtail; what an install without a C compiler gets)")  # fmt: skip
        print(f"mtail (--one_shot)          : {mtail_seconds:6.2f} s  {mtail_rate:>10,.0f} lines/s")
        print(f"ratio                       : {ratio:6.1f}x       (target >= {TARGET_RATIO:.0f}x)"
              f"  {'OK' if ratio >= TARGET_RATIO else 'MISSED'}")  # fmt: skip
        print(f"our peak RSS                : {rss_mb:6.1f} MB     (target <= {TARGET_RSS_MB:.0f} MB)"
              f"  {'OK' if rss_mb <= TARGET_RSS_MB else 'MISSED'}")  # fmt: skip
        agree = ours["kinds"] == expected == pure["kinds"]
        print(f"counts by kind: ours (native and pure) {'==' if agree else '!='} generated; mtail "
              f"{'==' if mtail_kinds == expected else '!='} generated")  # fmt: skip
        if not agree or mtail_kinds != expected:
            print(f"  generated {expected}\n  ours      {ours['kinds']}\n  pure      {pure['kinds']}\n"
                  f"  mtail     {mtail_kinds}")  # fmt: skip

        print_analyze(log, folder, expected, mtail_rate)
        live = run_live(folder)
        cpu_percent = 100.0 * live["cpu_seconds"] / live["wall_seconds"]
        print(f"live tailer at {LIVE_RATE:,} lines/s for {live['wall_seconds']:.1f} s: CPU {cpu_percent:.2f}% of a core"
              f" (target <= {TARGET_CPU_PERCENT:.0f}%)  {'OK' if cpu_percent <= TARGET_CPU_PERCENT else 'MISSED'};"
              f" counted {live['lines']:,} of {live['written']:,} lines")  # fmt: skip
        return 0
    finally:
        if args.keep:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
