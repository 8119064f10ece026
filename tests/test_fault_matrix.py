"""The fault matrix (issue 8): each 502/504 cause injected for real, one right page each.

On a real stack (units of a real systemd where the kernel allows, on a small tmpfs), watched by the
real exporter, a real Prometheus with the bundled rules (``for:`` x0.05 through ``rules render
--for-scale``, 1 s scrape and evaluation) and a real Alertmanager with the bundled inhibition rules,
each fault of :data:`exporter.demo.catalogue.FAULTS` is injected and healed while a load generator sends
requests through nginx. For each: exactly the expected cause alert is notified (no other, never the
gateway-errors symptom), ``diagnose --format json`` and the dashboard's cause query name the same
cause, and healing brings a resolved notification.

The full matrix (3 minutes of healthy traffic first, then every fault) runs with
``BADGATEWAY_FAULT_MATRIX=1``; by default a fast subset runs. See docs/fault-matrix.md.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from harness import wait_until
from harness.alerting import paging_refusal
from harness.exporters import diagnose_json, diagnosed_causes
from harness.faults import (
    FaultResult,
    Pipeline,
    healthy_window,
    leftovers,
    mount_refusal,
    pipeline,
    run_fault,
    systemd_refusal,
    table,
)

from exporter.demo.alerting import find_program
from exporter.demo.catalogue import FAULTS
from exporter.demo.stack import make_root
from exporter.demo.webhook import Notification

FULL = os.environ.get("BADGATEWAY_FAULT_MATRIX") == "1"
HEALTHY_SECONDS = float(os.environ.get("BADGATEWAY_FAULT_MATRIX_HEALTHY", "180" if FULL else "20"))
# The default (CI) subset: a unit stopped for real, a permission fault, a backend fault, a full disk.
DEFAULT_FAULTS = ("php_fpm_stopped", "socket_chowned_root", "backend_unhealthy", "disk_full")
ONLY = [n.strip() for n in os.environ.get("BADGATEWAY_FAULT_MATRIX_FAULTS", "").split(",") if n.strip()]
SELECTED = [f for f in FAULTS if (f.name in ONLY if ONLY else FULL or f.name in DEFAULT_FAULTS)]
SECONDS_PER_FAULT = 45.0  # inject, page, hold, heal, resolve, quiet: about 25 s each on this machine
REPORT_ENV = "BADGATEWAY_FAULT_MATRIX_REPORT"
MATRIX_TIMEOUT = int(HEALTHY_SECONDS + 420 + 2 * SECONDS_PER_FAULT * len(SELECTED))
"""pytest's own limit (the matrix runs in the first test's fixture): twice the budget, so that a slow
run fails on the wall-time assertion, with its table, not on a timeout without one."""  # write the table to this file too


@dataclass
class MatrixRun:
    systemd: str  # "systemd units" or why not
    healthy: list[Notification]
    healthy_seconds: float
    results: dict[str, FaultResult] = field(default_factory=dict)
    load: dict[str, int] = field(default_factory=dict)
    wall_seconds: float = 0.0
    leftovers: list[str] = field(default_factory=list)


def _requirements() -> str | None:
    return mount_refusal() or paging_refusal()


def _run() -> MatrixRun:
    started = time.monotonic()
    refusal = systemd_refusal()
    use_systemd = refusal is None
    lines: list[str] = []

    def log(text: str) -> None:
        lines.append(text)
        print(text, flush=True)

    run: MatrixRun
    with pipeline(use_systemd, log) as pipe:
        log(f"healthy traffic for {HEALTHY_SECONDS:g}s ...")
        healthy = healthy_window(pipe, HEALTHY_SECONDS)
        run = MatrixRun("systemd units" if use_systemd else f"plain processes ({refusal})", healthy,
                        HEALTHY_SECONDS)  # fmt: skip
        for fault in SELECTED:
            run.results[fault.name] = run_fault(pipe, fault)
        run.load = _load_counts(pipe)
    run.wall_seconds = time.monotonic() - started
    run.leftovers = leftovers()
    report = (
        f"fault matrix ({'full' if FULL else 'default subset'}), stack as {run.systemd}, healthy window"
        f" {run.healthy_seconds:g}s with {len(run.healthy)} notification(s), load {run.load},"
        f" wall time {run.wall_seconds:.0f}s\n\n{table(list(run.results.values()))}\n"
    )
    print("\n" + report, flush=True)
    target = os.environ.get(REPORT_ENV)
    if target:
        with open(target, "w", encoding="utf-8") as handle:
            handle.write(report + "\n" + "\n".join(lines) + "\n")
    return run


def _load_counts(pipe: Pipeline) -> dict[str, int]:
    pipe.load.stop()
    return pipe.load.counts()


@pytest.fixture(scope="module")
def matrix() -> Iterator[MatrixRun]:
    reason = _requirements()
    if reason is not None:
        pytest.skip(f"fault matrix needs a real stack and alerting: {reason}")
    assert shutil.which("umount"), "umount missing"
    yield _run()


@pytest.mark.timeout(MATRIX_TIMEOUT)
def test_healthy_traffic_pages_nobody(matrix: MatrixRun) -> None:
    assert matrix.healthy == [], [n.payload for n in matrix.healthy]
    assert matrix.load.get("200", 0) > 0, matrix.load


@pytest.mark.timeout(MATRIX_TIMEOUT)
@pytest.mark.parametrize("name", [f.name for f in SELECTED])
def test_fault_pages_its_cause_once(matrix: MatrixRun, name: str) -> None:
    result = matrix.results[name]
    if result.skipped is not None:
        pytest.skip(result.skipped)
    assert result.ok, f"{name}: {'; '.join(result.problems)}"


@pytest.mark.timeout(MATRIX_TIMEOUT)
def test_matrix_is_fast_and_leaves_the_host_as_found(matrix: MatrixRun) -> None:
    assert matrix.leftovers == []
    limit = HEALTHY_SECONDS + 120 + SECONDS_PER_FAULT * len(SELECTED)
    assert matrix.wall_seconds < limit, f"the matrix took {matrix.wall_seconds:.0f}s (limit {limit:.0f}s)"


@pytest.mark.timeout(120)
def test_demo_break_and_heal_from_another_terminal() -> None:
    """``demo`` runs; ``demo break`` and ``demo heal`` (other processes) inject and heal through it."""
    if find_program("nginx") is None and shutil.which("nginx", path="/usr/sbin") is None:
        pytest.skip("nginx not installed")
    root = make_root("badgateway-demo-test-")
    log = root.parent / f"{root.name}.log"
    try:
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "exporter", "demo", "--dir", str(root), "--no-alerting",
                 "--web.listen-address", "127.0.0.1:0", "--duration", "240"],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        try:
            wait_until(
                lambda: (root / "exporter.yml").exists() and (root / "control.sock").exists(),
                60,
                "the demo to start",
                interval=0.2,
                detail=lambda: log.read_text(errors="replace"),
            )

            def demo(*args: str) -> subprocess.CompletedProcess[str]:
                return subprocess.run(
                    [sys.executable, "-m", "exporter", "demo", *args, "--dir", str(root)],
                    capture_output=True, text=True, timeout=60, check=False,
                )  # fmt: skip

            # The host's own state counts: right after the matrix's OOM fault, memory_exhausted holds
            # for the stack's one-minute OOM window. Start from a healthy baseline.
            wait_until(
                lambda: diagnosed_causes(diagnose_json(root / "exporter.yml")[1]) == set(),
                90,
                "a healthy baseline (an OOM kill on this host is memory_exhausted for a minute)",
                interval=2.0,
            )
            broke = demo("break", "backend_unhealthy")
            assert broke.returncode == 0, broke.stdout + broke.stderr
            assert "BackendUnhealthy" in broke.stdout
            _, document = diagnose_json(root / "exporter.yml")
            assert diagnosed_causes(document) == {"backend_unhealthy"}
            again = demo("break", "backend_unhealthy")
            assert again.returncode == 1 and "already injected" in again.stdout
            unknown = demo("break", "no_such_fault")
            assert unknown.returncode == 1 and "unknown fault" in unknown.stdout
            healed = demo("heal")
            assert healed.returncode == 0 and "backend_unhealthy" in healed.stdout, healed.stdout
            _, document = diagnose_json(root / "exporter.yml")
            assert diagnosed_causes(document) == set()
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)
        text = log.read_text(errors="replace")
        assert "stopped; nothing left running" in text, text
        assert not (root / "control.sock").exists()
        assert leftovers(str(root)) == []
    finally:
        shutil.rmtree(root, ignore_errors=True)
        log.unlink(missing_ok=True)
