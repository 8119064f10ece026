"""The process check on real processes (a parent with children, a zombie) and on a made-up
``/proc`` tree for what real processes cannot show on demand: a PID reused by another program."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter.checks.processes import ProcessesCheck, ProcessesResult
from exporter.config import ProcessPatterns
from exporter.deadline import Deadline

# A parent that starts two children, then a third that exits at once and is never reaped (a zombie
# for as long as the parent lives); it prints the children's PIDs.
PARENT = """
import subprocess, sys, time
kids = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"]) for _ in range(2)]
doomed = subprocess.Popen([sys.executable, "-c", "import sys, time; sys.stdin.read(); time.sleep(0)"],
                          stdin=subprocess.PIPE)
print(*(k.pid for k in kids), doomed.pid, flush=True)
sys.stdin.readline()
doomed.stdin.close()  # the child exits; nobody waits for it
print("closed", flush=True)
time.sleep(120)
"""


def run(check: ProcessesCheck) -> ProcessesResult:
    return check.run(Deadline.after(5))


def count(check: ProcessesCheck, service: str = "php_fpm") -> int:
    found = run(check).of(service)
    assert found is not None
    return found.count


def state(pid: int) -> str:
    raw = Path(f"/proc/{pid}/stat").read_bytes()
    return raw[raw.rfind(b")") + 2 :].split()[0].decode()


@pytest.fixture
def parent() -> Iterator[tuple[subprocess.Popen[str], str, list[int]]]:
    tag = f"badgw-test-{uuid.uuid4().hex[:8]}"
    proc = subprocess.Popen(
        [sys.executable, "-c", PARENT, tag], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    pids: list[int] = []
    try:
        assert proc.stdout is not None
        pids = [int(p) for p in proc.stdout.readline().split()]
        yield proc, tag, pids
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.kill()
        proc.wait(timeout=10)


def test_children_count_and_a_zombie_child_stops_counting(
    parent: tuple[subprocess.Popen[str], str, list[int]],
) -> None:
    proc, tag, pids = parent
    check = ProcessesCheck(ProcessPatterns(nginx="(?!)", php_fpm=tag, backend="(?!)"))
    assert count(check) == 4  # the parent and its three children
    found = run(check).of("php_fpm")
    assert found is not None and found.main_pids == (proc.pid,)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == "closed"
    doomed = pids[2]
    deadline = time.monotonic() + 10
    while state(doomed) != "Z":
        assert time.monotonic() < deadline, "the child did not become a zombie"
        time.sleep(0.01)
    # The zombie was one of the service's processes, so it is read again and no longer counts.
    assert count(check) == 3
    os.kill(pids[0], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while state(pids[0]) != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert count(check) == 2


def _resident_bytes(pids: list[int]) -> int:
    page = os.sysconf("SC_PAGE_SIZE")
    return sum(int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * page for pid in pids)


def _wait_for_steady_memory(pids: list[int], seconds: float = 10.0) -> None:
    """Until the processes have started (their memory the same at two readings 0.1 s apart)."""
    deadline = time.monotonic() + seconds
    last = -1
    while (now := _resident_bytes(pids)) != last:
        assert time.monotonic() < deadline, "the processes' memory kept changing"
        last = now
        time.sleep(0.1)


def test_memory_and_users_of_a_service_on_its_first_run_and_when_watched(
    parent: tuple[subprocess.Popen[str], str, list[int]],
) -> None:
    """Each run: the members' ``statm`` memory summed, and their owner (looked at once per process
    once it has settled). Sleeping processes keep their memory, so the figures match."""
    proc, tag, pids = parent
    check = ProcessesCheck(ProcessPatterns(nginx="(?!)", php_fpm=tag, backend="(?!)"))
    members = [proc.pid, *pids]
    _wait_for_steady_memory(members)
    for _ in range(3):
        found = run(check).of("php_fpm")
        assert found is not None and found.count == 4
        assert found.resident_memory_bytes == _resident_bytes(members)
        assert found.users == (pwd.getpwuid(os.getuid()).pw_name,)


def fake_process(root: Path, pid: int, ppid: int, command: str, start_ticks: int = 100) -> None:
    """/proc/PID as the check reads it: stat (state, parent, start time), cmdline, statm.

    A new folder replaces an existing one only once it exists, so that it has another inode, as
    a new process's /proc/PID has.
    """
    folder = root / f"{pid}.new"
    folder.mkdir()
    fields = ["S", str(ppid), *["0"] * 17, str(start_ticks), "0", "0"]
    (folder / "stat").write_text(f"{pid} ({command.split(maxsplit=1)[0][:15]}) {' '.join(fields)}\n")
    (folder / "cmdline").write_bytes(command.replace(" ", "\0").encode() + b"\0")
    (folder / "statm").write_text("1000 250 100 1 0 100 0\n")
    if (root / str(pid)).exists():
        shutil.rmtree(root / str(pid))
    folder.rename(root / str(pid))


def test_a_reused_pid_is_read_again_and_a_known_process_is_not(tmp_path: Path) -> None:
    (tmp_path / "uptime").write_text("100000.00 10.00\n")  # every fake process started long ago
    fake_process(tmp_path, 1, 0, "/sbin/init")
    fake_process(tmp_path, 200, 1, "php-fpm: master process (/etc/php/8.2/fpm/php-fpm.conf)")
    fake_process(tmp_path, 201, 200, "php-fpm: pool www")
    fake_process(tmp_path, 300, 1, "/usr/bin/cron -f")
    fake_process(tmp_path, 301, 1, "/usr/sbin/sshd -D")
    check = ProcessesCheck(ProcessPatterns(), proc_root=str(tmp_path))
    assert count(check) == 2

    # PID 300 ends and the number is given to a new php-fpm master: a new /proc/300 inode.
    fake_process(tmp_path, 300, 1, "php-fpm: master process (/etc/php/8.3/fpm/php-fpm.conf)", 200)
    assert count(check) == 3

    # The same /proc/301 (same inode) is not read again: a process that has settled keeps the
    # command line it had (this is what makes a scrape cheap on a host with many processes).
    (tmp_path / "301" / "cmdline").write_bytes(b"php-fpm: master process (x)\0")
    assert count(check) == 3

    # A worker of a service is read every run: a new parent is seen at once.
    fields = (tmp_path / "201" / "stat").read_text().replace(" S 200 ", " S 1 ")
    (tmp_path / "201" / "stat").write_text(fields)
    assert count(check) == 2


def test_the_start_time_from_stat_is_what_psutil_says() -> None:
    """Start times are read from /proc/PID/stat and the boot time, without psutil on the scrape path."""
    import psutil

    from exporter.checks.proctable import ProcTable

    table = ProcTable()
    entry = table.scan()[os.getpid()]
    started = table.started_at(entry)
    assert started is not None and abs(started - psutil.Process().create_time()) < 0.05
    assert table.start_ticks(os.getpid()) == entry.start_ticks
    assert table.start_ticks(2**22 + 1) is None  # above pid_max: no such process
