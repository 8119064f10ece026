"""How long the last lines of one unit take to read from a real journal: journalctl vs systemd-python.

Starts the test harness's real systemd + journald (tests/harness/systemd.py, needs root), fills the
journal with NOISE lines of a noisy unit and a few lines of a failed unit, then times, REPEAT times each:
``journalctl -D DIR -u UNIT -n 20 -o json`` (a subprocess) and systemd-python's ``Reader`` (Debian's
python3-systemd, run by /usr/bin/python3 since the venv cannot build it) doing the same (match the unit,
seek to the tail, 20 entries). Run: ``.venv/bin/python benchmarks/journal_bench.py [NOISE]``.
"""

from __future__ import annotations

import contextlib
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from harness.systemd import SystemdHarness

REPEAT = 30
READER = r"""
import sys, time
from systemd import journal
d, unit, repeat = sys.argv[1], sys.argv[2], int(sys.argv[3])
times = []
for _ in range(repeat):
    t = time.perf_counter()
    r = journal.Reader(path=d)
    r.add_match(_SYSTEMD_UNIT=unit)
    r.seek_tail()
    lines = []
    for _ in range(20):
        e = r.get_previous()
        if not e:
            break
        lines.append(e.get("MESSAGE"))
    r.close()
    times.append(time.perf_counter() - t)
times.sort()
print(len(lines), times[len(times) // 2], times[-1])
"""


def main() -> None:
    noise = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    harness = SystemdHarness(with_stack=False)
    harness.start()
    try:
        harness.add_units({
            "noisy.service": f"[Service]\nType=oneshot\nExecStart=/usr/bin/seq {noise}\n",
            "failed.service": "[Service]\nType=oneshot\nExecStart=/bin/sh -c 'echo boom; exit 3'\n",
        })  # fmt: skip
        for unit in ("noisy.service", "failed.service"):
            with contextlib.suppress(RuntimeError):  # the failed unit's start fails: wanted
                harness.start_unit(unit)
        directory = harness.tmp / "run" / "log" / "journal"
        argv = ["journalctl", "-D", str(directory), "-u", "failed.service", "-n", "20", "-o", "json", "-q"]
        deadline = time.monotonic() + 120
        while b"boom" not in subprocess.run(argv, capture_output=True, check=False).stdout:
            if time.monotonic() > deadline:
                raise SystemExit("journal never got the failed unit's line")
            time.sleep(0.2)
        count = subprocess.run(["journalctl", "-D", str(directory), "-u", "noisy.service", "-q", "-o", "cat"],
                               capture_output=True, check=False).stdout.count(b"\n")  # fmt: skip
        size = sum(f.stat().st_size for f in directory.rglob("*.journal"))
        print(f"journal: {count} lines of noisy.service, {size / 2**20:.1f} MiB")
        for unit in ("failed.service", "noisy.service"):
            argv[4] = unit
            times = []
            for _ in range(REPEAT):
                started = time.perf_counter()
                subprocess.run(argv, capture_output=True, check=True, timeout=10)
                times.append(time.perf_counter() - started)
            print(f"journalctl -u {unit} -n 20 -o json: p50 {statistics.median(times) * 1000:.1f} ms,"
                  f" max {max(times) * 1000:.1f} ms")  # fmt: skip
            out = subprocess.run(["/usr/bin/python3", "-c", READER, str(directory), unit, str(REPEAT)],
                                 capture_output=True, text=True, check=False)  # fmt: skip
            if out.returncode == 0:
                n, p50, worst = out.stdout.split()
                print(f"systemd-python Reader, {unit}, {n} entries: p50 {float(p50) * 1000:.1f} ms,"
                      f" max {float(worst) * 1000:.1f} ms")  # fmt: skip
            else:
                print(f"systemd-python not measured: {out.stderr.strip().splitlines()[-1:]}")
    finally:
        harness.stop()


if __name__ == "__main__":
    main()
