"""Many logs: the tailer's CPU with 300 error logs, idle and with 10 lines/s arriving in each.

Prints, from one run: the CPU (percent of one core) of a process running only the ``LogWatcher``
over 300 ``*-error.log`` files, first idle, then while a second process appends 10 nginx upstream
error lines per second to every file; and whether every line was counted. Targets: idle <= 0.5 %,
busy <= 3 %. Usage: ``.venv/bin/python benchmarks/logs_scale_bench.py [--files N] [--seconds S]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_IDLE_PERCENT = 0.5
TARGET_BUSY_PERCENT = 3.0
RATE_PER_FILE = 10
LINE = (
    "{stamp} [error] 7#7: *{n} upstream timed out (110: Connection timed out) while reading response header"
    ' from upstream, client: 127.0.0.1, server: site{i}.test, request: "GET / HTTP/1.1", upstream:'
    ' "fastcgi://unix:/run/php/site{i}.sock:", host: "site{i}.test"\n'
)


def worker(folder: str, files: int) -> None:
    """Child: tail the files; on "measure S", report the CPU used over S seconds; on "count", the lines."""
    from exporter.config import LogSettings
    from exporter.logs.tailer import LogWatcher

    watcher = LogWatcher(LogSettings(nginx=[f"{folder}/*-error.log"], php_fpm=[], max_files=files))
    watcher.start()
    print("ready", flush=True)
    while command := sys.stdin.readline():  # readline, not iteration: a pipe's lines as they come
        word, _, arg = command.strip().partition(" ")
        if word == "measure":
            before, t0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
            time.sleep(float(arg))  # the measured interval itself: the watcher's thread runs meanwhile
            after, wall = resource.getrusage(resource.RUSAGE_SELF), time.monotonic() - t0
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            print(json.dumps({"cpu_percent": 100.0 * cpu / wall}), flush=True)
        elif word == "count":
            snapshot = watcher.snapshot()
            print(json.dumps({"lines": sum(c.lines for c in snapshot.logs.values()),
                              "files": len(snapshot.logs)}), flush=True)  # fmt: skip
    watcher.stop()


def write_for(folder: Path, files: int, seconds: float) -> int:
    """Append RATE_PER_FILE lines a second to every file for ``seconds``; how many lines were written."""
    handles = [open(folder / f"site{i:03d}-error.log", "a", encoding="ascii") for i in range(files)]  # noqa: SIM115
    written, start = 0, time.monotonic()
    try:
        tick = 0
        while time.monotonic() - start < seconds:
            stamp = time.strftime("%Y/%m/%d %H:%M:%S")
            for i, handle in enumerate(handles):
                handle.write(LINE.format(stamp=stamp, n=written, i=i))
                handle.flush()
                written += 1
            tick += 1
            time.sleep(max(0.0, start + tick / RATE_PER_FILE - time.monotonic()))
    finally:
        for handle in handles:
            handle.close()
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.files)
        return 0
    folder = Path(tempfile.mkdtemp(prefix="bgw-logs-scale-"))
    try:
        for i in range(args.files):
            (folder / f"site{i:03d}-error.log").write_text("", encoding="ascii")
        child = subprocess.Popen([sys.executable, __file__, "--worker", str(folder), "--files", str(args.files)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
        assert child.stdin is not None and child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        time.sleep(2.0)  # the first polls open every file

        def ask(command: str) -> dict[str, float]:
            assert child.stdin is not None and child.stdout is not None
            child.stdin.write(command + "\n")
            child.stdin.flush()
            answer: dict[str, float] = json.loads(child.stdout.readline())
            return answer

        idle = ask(f"measure {args.seconds}")["cpu_percent"]
        child.stdin.write(f"measure {args.seconds}\n")
        child.stdin.flush()
        written = write_for(folder, args.files, args.seconds)
        busy = json.loads(child.stdout.readline())["cpu_percent"]
        deadline = time.monotonic() + 10
        counted = ask("count")
        while counted["lines"] < written and time.monotonic() < deadline:
            time.sleep(0.2)
            counted = ask("count")
        child.stdin.close()
        child.wait(timeout=30)
        print(f"{args.files} logs tailed ({counted['files']:.0f} open), idle for {args.seconds:g} s: CPU"
              f" {idle:.2f}% of a core (target <= {TARGET_IDLE_PERCENT}%)"
              f"  {'OK' if idle <= TARGET_IDLE_PERCENT else 'MISSED'}")  # fmt: skip
        print(f"{args.files} logs x {RATE_PER_FILE} lines/s for {args.seconds:g} s: CPU {busy:.2f}% of a core"
              f" (target <= {TARGET_BUSY_PERCENT}%)  {'OK' if busy <= TARGET_BUSY_PERCENT else 'MISSED'};"
              f" counted {counted['lines']:,.0f} of {written:,} lines")  # fmt: skip
        return 0
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
