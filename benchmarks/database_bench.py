"""The database probe against a real PostgreSQL 15: the exporter's startup handshake vs pg_isready.

Starts a throwaway cluster on 127.0.0.1 (exporter.demo.postgres; as root it runs as ``postgres``),
then times REPEAT probes of each kind while it accepts, and again once it is stopped (no response).
Run: ``.venv/bin/python benchmarks/database_bench.py``.
"""

from __future__ import annotations

import statistics
import subprocess
import time
from collections.abc import Callable

from exporter.checks.database import DatabaseTarget, probe
from exporter.deadline import Deadline
from exporter.demo.postgres import Postgres

REPEAT = 200


def timed(what: str, run: Callable[[], str]) -> None:
    times, answers = [], set()
    for _ in range(REPEAT):
        started = time.perf_counter()
        answers.add(run())
        times.append(time.perf_counter() - started)
    times.sort()
    print(f"{what}: p50 {statistics.median(times) * 1000:.2f} ms, p99 {times[int(REPEAT * 0.99)] * 1000:.2f} ms,"
          f" answers {sorted(answers)}")  # fmt: skip


def main() -> None:
    started = time.monotonic()
    pg = Postgres()
    try:
        pg.start()
        print(f"PostgreSQL up in {time.monotonic() - started:.2f} s (initdb + pg_ctl start -w)")
        target = DatabaseTarget("127.0.0.1", pg.port, "bench")
        isready = [str(pg.bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(pg.port), "-t", "1"]
        for phase in ("accepting", "stopped"):
            timed(f"handshake ({phase})", lambda: probe(target, Deadline.after(1.0))[0])
            timed(f"pg_isready subprocess ({phase})",
                  lambda: str(subprocess.run(isready, capture_output=True, check=False).returncode))  # fmt: skip
            if phase == "accepting":
                stopping = time.monotonic()
                pg.stop()
                print(f"pg_ctl stop -m fast -w: {time.monotonic() - stopping:.2f} s")
    finally:
        pg.close()


if __name__ == "__main__":
    main()
