"""Memory, OOM kills and disk from the kernel's own files; a recent OOM kill is memory exhaustion."""

from __future__ import annotations

from pathlib import Path

from exporter.checks.resources import OomKillWindow, ResourcesCheck
from exporter.config import config_from_dict
from exporter.deadline import Deadline
from exporter.diagnosis import Verdict, diagnose
from exporter.rounds import RoundResults

MEMINFO = """MemTotal:        8000000 kB
MemFree:          500000 kB
MemAvailable:    4000000 kB
SwapTotal:       1000000 kB
SwapFree:         900000 kB
"""


def fake_proc(root: Path, oom_kills: int) -> Path:
    """A /proc with meminfo and vmstat in the kernel's format (only what the check reads)."""
    root.mkdir(exist_ok=True)
    (root / "meminfo").write_text(MEMINFO)
    (root / "vmstat").write_text(f"nr_free_pages 125000\noom_kill {oom_kills}\npgfault 1\n")
    return root


def test_reads_the_kernel_files(tmp_path: Path) -> None:
    result = ResourcesCheck([str(tmp_path)], proc_root=str(fake_proc(tmp_path / "proc", 3))).run(
        Deadline.after(1)
    )
    assert result.memory_total_bytes == 8_000_000 * 1024
    assert result.memory_available_bytes == 4_000_000 * 1024
    assert (result.swap_total_bytes, result.swap_free_bytes) == (1_000_000 * 1024, 900_000 * 1024)
    assert result.oom_kills == 3
    assert [fs.paths for fs in result.filesystems] == [(str(tmp_path),)]


def test_oom_kill_window_counts_only_recent_kills() -> None:
    window = OomKillWindow(600)
    assert window.observe(0, 5) == 0  # no history: no claim
    assert window.observe(60, 5) == 0
    assert window.observe(120, 7) == 2
    assert window.observe(650, 7) == 2  # the kills at 120 s are still within 600 s
    assert window.observe(730, 7) == 0  # now they are not
    assert window.observe(740, 1) == 0  # the counter went back (reboot): start again
    assert window.observe(750, None) is None


def test_the_oom_kill_window_keeps_only_changes() -> None:
    """A scrape every 10 ms for the whole window: the readings kept are the counter's changes, not one
    per scrape (they were 60,000 tuples at 100 scrapes a second)."""
    window = OomKillWindow(600)
    for tick in range(60_000):
        assert window.observe(tick / 100, 5 if tick < 30_000 else 6) == (0 if tick < 30_000 else 1)
    assert len(window._readings) == 2


def test_a_recent_oom_kill_is_memory_exhaustion(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    config = config_from_dict(
        {"php_fpm": [], "http": [], "units": {"enabled": False}, "nginx": {"test": False}}
    )
    check = ResourcesCheck([str(tmp_path)], proc_root=str(proc))
    window = OomKillWindow(config.thresholds.oom_kill_window_seconds)
    for now, kills, expected in ((0, 3, set()), (15, 3, set()), (30, 4, {"memory_exhausted"})):
        fake_proc(proc, kills)
        resources = check.run(Deadline.after(1))
        results = RoundResults(
            timeout_seconds=1, resources=resources, recent_oom_kills=window.observe(now, kills)
        )
        diagnosis = diagnose(results, config)
        assert {c.value for c in diagnosis.causes} == expected
    memory = next(f for f in diagnosis.findings if f.step == "memory")
    assert memory.verdict == Verdict.FAIL
    assert any("OOM killer killed 1 process(es) in the last 10 min" in line for line in memory.evidence)


def test_oom_kills_are_read_from_the_kernel_log_records() -> None:
    from exporter.checks.resources import count_recent_kills

    records = [
        b"6,100,1000000,-;eth0: link up",
        b"3,101,5000000,-;Out of memory: Killed process 4242 (php-fpm8.2) total-vm:1234kB, anon-rss:99kB",
        b"3,102,9000000,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),task=php-fpm8.2,pid=4243",
        b"3,103,9000001,-;Memory cgroup out of memory: Killed process 4243 (php-fpm8.2) total-vm:9kB",
        b"garbage without fields",
        b"3,104,notanumber,-;Out of memory: Killed process 1 (x)",
    ]
    assert count_recent_kills(records, since=0.0) == 2  # the oom-kill: summary line is not a second kill
    assert count_recent_kills(records, since=6.0) == 1  # only the one at 9 s after boot
    assert count_recent_kills(records, since=10.0) == 0
