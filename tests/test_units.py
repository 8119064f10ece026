"""The units check against a real system-mode systemd (see tests/harness/systemd.py) and fake buses."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import wait_until
from harness.systemd import (
    BACKEND,
    BROKEN,
    FLAKY,
    MISSING,
    NGINX,
    PHP_FPM,
    SystemdHarness,
    host_differences,
    host_snapshot,
    remove_stale,
    require_systemd,
)

from exporter.checks import units as units_module
from exporter.checks.units import UnitsCheck, UnitsResult, UnitStatus, metric_families
from exporter.deadline import Deadline
from exporter.discovery import units as unit_files
from exporter.discovery.units import default_php_fpm_unit
from exporter.exposition import generate_text
from exporter.families import Metric

ALL = (PHP_FPM, NGINX, BACKEND, BROKEN, FLAKY, MISSING)


# -- helpers --------------------------------------------------------------------------------------------
class _Collector:
    def __init__(self, result: UnitsResult) -> None:
        self.result = result

    def collect(self) -> Iterator[Metric]:
        yield from metric_families(self.result)


def exposition(result: UnitsResult) -> str:
    return generate_text(_Collector(result)).decode()


def samples(result: UnitsResult) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in metric_families(result):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(result: UnitsResult, name: str, **labels: str) -> float | None:
    return samples(result).get((name, tuple(sorted(labels.items()))))


def by_name(result: UnitsResult) -> dict[str, UnitStatus]:
    return {unit.name: unit for unit in result.units}


def read(harness: SystemdHarness, units: tuple[str, ...] = ALL) -> UnitsResult:
    check = UnitsCheck(units, bus_address=harness.bus_address)
    try:
        result = check.run(Deadline.after(5.0))
    finally:
        check.close()
    assert result.available, result.error
    return result


def poll(condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """:func:`wait_until` ``condition`` is truthy; return its value."""
    got: list[Any] = []

    def holds() -> bool:
        got[:] = [condition()]
        return bool(got[0])

    wait_until(holds, timeout, what)
    return got[0]


def http_get(port: int, path: str) -> tuple[int, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        return int(response.status), response.read().decode()


# -- fixtures -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def systemd(
    request: pytest.FixtureRequest, record_testsuite_property: Callable[[str, object], None]
) -> Iterator[SystemdHarness]:
    """One real systemd for the module; teardown verifies the host was left as found."""
    require_systemd()
    harness = SystemdHarness()  # first removes leftovers of an earlier killed run
    before = host_snapshot()
    harness.start()
    version = subprocess.run(
        ["/lib/systemd/systemd", "--version"], capture_output=True, text=True, timeout=5, check=False
    ).stdout.split("\n", 1)[0]
    line = (
        f"[systemd harness] ran: real {version or 'systemd'} as PID 1 of a PID namespace "
        f"({harness.mode} cgroups, sub-cgroup {harness.id}), bus {harness.bus_path}"
    )
    record_testsuite_property("systemd_harness", line)  # lands in --junitxml reports
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line("")
            reporter.write_line(line)
    try:
        yield harness
    finally:
        tmp = str(harness.tmp)
        harness.stop()
        problems = host_differences(before, host_snapshot(), [tmp])
        assert not problems, "systemd harness left the host changed:\n" + "\n".join(problems)


@pytest.fixture(scope="module")
def stack(systemd: SystemdHarness) -> SystemdHarness:
    """The harness with php-fpm, nginx, the uvicorn backend and the flaky unit started."""
    for unit in (PHP_FPM, BACKEND, NGINX, FLAKY):
        systemd.start_unit(unit)
    for unit in (PHP_FPM, BACKEND, NGINX, FLAKY):
        systemd.wait_for(unit, lambda v: v["ActiveState"] == "active" and v["SubState"] == "running")
    systemd.start_unit(BROKEN)
    systemd.wait_state(BROKEN, "failed")
    return systemd


# -- against the real systemd ---------------------------------------------------------------------------
def test_running_stack_is_reported(stack: SystemdHarness) -> None:
    # The units really serve: nginx -> uvicorn, nginx -> php-fpm ping.
    assert poll(lambda: _try_get(stack.nginx_port, "/"), what="nginx -> backend") == (200, "backend ok")
    assert poll(lambda: _try_get(stack.nginx_port, "/ping"), what="nginx -> php-fpm") == (200, "pong")

    started = time.time()
    result = read(stack)
    units = by_name(result)
    assert [u.name for u in result.units] == list(ALL)
    for name in (PHP_FPM, NGINX, BACKEND, FLAKY):
        unit = units[name]
        assert (unit.load_state, unit.active_state, unit.sub_state) == ("loaded", "active", "running"), unit
        assert unit.unit_file_state == "disabled"
        assert unit.main_pid is not None and unit.main_pid > 1
        assert unit.n_restarts == 0
        assert unit.active_enter_timestamp_seconds is not None
        assert started - 120 < unit.active_enter_timestamp_seconds <= started + 1
        assert value(result, "badgateway_unit_state", unit=name, state="active") == 1
        assert value(result, "badgateway_unit_state", unit=name, state="failed") == 0
        assert value(result, "badgateway_unit_loaded", unit=name) == 1
        assert value(result, "badgateway_unit_enabled", unit=name) == 0
        assert value(result, "badgateway_unit_restarts_total", unit=name) == 0
        assert value(result, "badgateway_unit_active_since_seconds", unit=name) == pytest.approx(
            unit.active_enter_timestamp_seconds
        )
    broken = units[BROKEN]
    assert (broken.active_state, broken.sub_state, broken.main_pid) == ("failed", "failed", None)
    assert value(result, "badgateway_unit_state", unit=BROKEN, state="failed") == 1
    assert value(result, "badgateway_unit_active_since_seconds", unit=BROKEN) is None
    assert value(result, "badgateway_systemd_available") == 1
    text = exposition(result)
    assert f'badgateway_unit_restarts_total{{unit="{NGINX}"}} 0.0' in text
    assert "# TYPE badgateway_unit_restarts_total counter" in text


def _try_get(port: int, path: str) -> tuple[int, str] | None:
    try:
        return http_get(port, path)
    except OSError:
        return None


def http_status(port: int, path: str) -> int | None:
    try:
        return http_get(port, path)[0]
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return None


def test_missing_unit_is_a_finding_not_an_error(stack: SystemdHarness) -> None:
    result = read(stack, (MISSING, NGINX))
    missing = by_name(result)[MISSING]
    assert result.error is None
    assert (missing.load_state, missing.active_state, missing.sub_state) == ("not-found", "inactive", "dead")
    assert missing.main_pid is None and missing.active_enter_timestamp_seconds is None
    assert value(result, "badgateway_unit_loaded", unit=MISSING) == 0
    assert value(result, "badgateway_unit_enabled", unit=MISSING) == 0
    assert value(result, "badgateway_unit_state", unit=MISSING, state="inactive") == 1
    assert (
        sum(
            v
            for (n, lbl), v in samples(result).items()
            if n == "badgateway_unit_state" and dict(lbl)["unit"] == MISSING
        )
        == 1
    )


def test_invalid_unit_name_is_not_found(stack: SystemdHarness) -> None:
    result = read(stack, ("no suffix", NGINX))
    invalid = by_name(result)["no suffix"]
    assert invalid.load_state == "not-found" and invalid.error is not None
    assert "InvalidArgs" in invalid.error
    assert by_name(result)[NGINX].load_state == "loaded"


def test_stop_and_start(stack: SystemdHarness) -> None:
    stack.stop_unit(NGINX)
    stack.wait_state(NGINX, "inactive")
    nginx = by_name(read(stack, (NGINX,)))[NGINX]
    assert (nginx.active_state, nginx.sub_state, nginx.main_pid) == ("inactive", "dead", None)
    result = read(stack, (NGINX,))
    assert value(result, "badgateway_unit_state", unit=NGINX, state="inactive") == 1
    assert value(result, "badgateway_unit_active_since_seconds", unit=NGINX) is None
    assert _try_get(stack.nginx_port, "/") is None

    stack.start_unit(NGINX)
    stack.wait_state(NGINX, "active")
    nginx = by_name(read(stack, (NGINX,)))[NGINX]
    assert (nginx.active_state, nginx.sub_state) == ("active", "running")
    assert poll(lambda: _try_get(stack.nginx_port, "/"), what="nginx back") == (200, "backend ok")


def test_kill_without_restart_policy_leaves_unit_failed(stack: SystemdHarness) -> None:
    pid = by_name(read(stack, (BACKEND,)))[BACKEND].main_pid
    stack.kill_unit(BACKEND, signal.SIGKILL)
    stack.wait_state(BACKEND, "failed")
    result = read(stack, (BACKEND,))
    backend = by_name(result)[BACKEND]
    assert (backend.active_state, backend.sub_state, backend.main_pid) == ("failed", "failed", None)
    assert backend.n_restarts == 0
    assert value(result, "badgateway_unit_state", unit=BACKEND, state="failed") == 1
    assert value(result, "badgateway_unit_state", unit=BACKEND, state="active") == 0
    assert http_status(stack.nginx_port, "/") == 502  # what the exporter is there to explain

    stack.reset_failed(BACKEND)
    stack.start_unit(BACKEND)
    stack.wait_state(BACKEND, "active")
    backend = by_name(read(stack, (BACKEND,)))[BACKEND]
    assert backend.active_state == "active" and backend.main_pid not in (None, pid)


def test_kill_with_restart_on_failure_counts_restarts(stack: SystemdHarness) -> None:
    before = by_name(read(stack, (FLAKY,)))[FLAKY]
    assert before.n_restarts == 0 and before.main_pid is not None
    stack.kill_unit(FLAKY, signal.SIGKILL)
    stack.wait_for(
        FLAKY,
        lambda v: v["NRestarts"] == 1 and v["ActiveState"] == "active" and v["SubState"] == "running",
        props=("ActiveState", "SubState", "NRestarts"),
    )
    result = read(stack, (FLAKY,))
    after = by_name(result)[FLAKY]
    assert after.n_restarts == 1
    assert after.main_pid not in (None, before.main_pid)
    assert after.active_state == "active"
    assert value(result, "badgateway_unit_restarts_total", unit=FLAKY) == 1


def test_disable_enable(stack: SystemdHarness) -> None:
    assert by_name(read(stack, (PHP_FPM,)))[PHP_FPM].unit_file_state == "disabled"
    stack.enable([PHP_FPM])
    result = read(stack, (PHP_FPM, "dbus.socket"))
    assert by_name(result)[PHP_FPM].unit_file_state == "enabled"
    assert value(result, "badgateway_unit_enabled", unit=PHP_FPM) == 1
    assert (stack.unit_dir / "multi-user.target.wants" / PHP_FPM).is_symlink()
    # Debian's dbus.socket has no [Install] section: static counts as enabled.
    assert by_name(result)["dbus.socket"].unit_file_state == "static"
    assert value(result, "badgateway_unit_enabled", unit="dbus.socket") == 1

    stack.disable([PHP_FPM])
    result = read(stack, (PHP_FPM,))
    assert by_name(result)[PHP_FPM].unit_file_state == "disabled"
    assert value(result, "badgateway_unit_enabled", unit=PHP_FPM) == 0
    # Running but not enabled at boot: still active.
    assert by_name(result)[PHP_FPM].active_state == "active"


def test_queries_are_pipelined(stack: SystemdHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    batches: list[int] = []
    original = units_module._Connection.call_all

    def counting(self: Any, messages: Any, deadline: Deadline) -> Any:
        batches.append(len(messages))
        return original(self, messages, deadline)

    monkeypatch.setattr(units_module._Connection, "call_all", counting)
    running = (PHP_FPM, NGINX, BACKEND)
    check = UnitsCheck(running, bus_address=stack.bus_address)
    try:
        assert check.run(Deadline.after(5)).available
        # Hello, then one batch: ListUnitsByNames for all units and one Properties.Get per property and unit.
        state, detail = len(units_module._STATE_PROPERTIES), len(units_module._DETAIL_PROPERTIES)
        assert (state, detail) == (
            3,
            5,
        )  # UnitFileState, ActiveEnterTimestamp, MainPID; NRestarts, Result, ...
        assert batches == [1, 1 + (state + detail) * len(running)]
        batches.clear()
        assert check.run(Deadline.after(5)).available
        # Connection kept; units running the same run as before: their state alone (a unit in any
        # other state has its details read every time).
        assert batches == [1 + state * len(running)]
        batches.clear()
        # A new run of one unit: its details are read again, in a second batch.
        before = {u.name: u for u in check.run(Deadline.after(5)).units}[PHP_FPM]
        stack.manager("RestartUnit", "ss", (PHP_FPM, "replace"))
        stack.wait_for(PHP_FPM, lambda v: v["ActiveState"] == "active" and v["MainPID"] != before.main_pid,
                       props=("ActiveState", "MainPID"))  # fmt: skip
        batches.clear()
        after = {u.name: u for u in check.run(Deadline.after(5)).units}[PHP_FPM]
        assert batches[1:] == [detail] and after.main_pid != before.main_pid
        assert after.result == "success" and after.n_restarts == 0  # a manual restart
    finally:
        check.close()


class _CannedBus:
    """Stands in for the bus connection: answers ListUnitsByNames like systemd does for an alias.

    A fake, because no real alias could be made in the test systemd: a symlinked unit file there
    (systemd 252) loads as a unit of its own.
    """

    def __init__(self, canonical: dict[str, str]) -> None:
        self.canonical = canonical
        self.batches: list[list[str]] = []

    def call_all(self, calls: Any, deadline: Deadline) -> list[Any]:
        self.batches.append([call.method for call in calls])
        replies: list[Any] = []
        for call in calls:
            if call.method == "ListUnitsByNames":
                names = [self.canonical.get(name, name) for name in call.body[0]]
                replies.append(
                    ([(n, "", "loaded", "active", "running", "", "/x", 0, "", "/") for n in names],)
                )
            else:
                replies.append((("u", 7),) if call.body[1] == "MainPID" else (("s", ""),))
        return replies


def test_alias_is_listed_under_its_unit_name() -> None:
    """ListUnitsByNames lists an alias under its unit's own name: the check asks once, then remembers."""
    bus = _CannedBus({"web.service": NGINX})
    check = UnitsCheck(("web.service", NGINX))
    for expected in (
        [["ListUnitsByNames"] + ["Get"] * 16, ["ListUnitsByNames"]],  # the alias alone, to tell
        [["ListUnitsByNames"] + ["Get"] * 6],  # both running as before: their state alone
    ):
        bus.batches.clear()
        units = check._query(bus, Deadline.after(5))  # type: ignore[arg-type]
        assert bus.batches == expected
        assert [(u.name, u.load_state, u.active_state, u.main_pid) for u in units] == [
            ("web.service", "loaded", "active", 7),
            (NGINX, "loaded", "active", 7),
        ]


def test_reconnects_when_connection_breaks(stack: SystemdHarness) -> None:
    check = UnitsCheck((NGINX,), bus_address=stack.bus_address)
    try:
        assert check.run(Deadline.after(5)).available
        first = check._conn
        assert first is not None
        first.sock.shutdown(socket.SHUT_RDWR)
        result = check.run(Deadline.after(5))
        assert result.available, result.error
        assert check._conn is not None and check._conn is not first
    finally:
        check.close()


def test_bus_address_from_environment(stack: SystemdHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", stack.bus_address)
    check = UnitsCheck((NGINX,))
    try:
        assert check.bus_address == stack.bus_address
        assert check.run(Deadline.after(5)).available
    finally:
        check.close()


def test_threads_share_one_check(stack: SystemdHarness) -> None:
    check = UnitsCheck(ALL, bus_address=stack.bus_address)
    results: list[UnitsResult] = []
    threads = [
        threading.Thread(target=lambda: results.append(check.run(Deadline.after(5)))) for _ in range(4)
    ]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=10)
        assert len(results) == 4 and all(r.available and len(r.units) == len(ALL) for r in results)
    finally:
        check.close()


def test_expired_deadline_against_real_bus_returns_promptly(stack: SystemdHarness) -> None:
    check = UnitsCheck(ALL, bus_address=stack.bus_address)
    try:
        start = time.monotonic()
        result = check.run(Deadline.after(0.0))
        assert time.monotonic() - start < 0.05
        assert not result.available and result.error == "timeout"
        assert check.run(Deadline.after(5)).available  # recovers on the next scrape
    finally:
        check.close()


def test_host_left_exactly_as_found() -> None:
    """A full harness lifecycle (systemd, dbus, all units running) leaves no trace on the host."""
    require_systemd()
    harness = SystemdHarness()
    before = host_snapshot()
    harness.start()
    try:
        for unit in (PHP_FPM, NGINX, BACKEND, FLAKY):
            harness.start_unit(unit)
        for unit in (PHP_FPM, NGINX, BACKEND, FLAKY):
            harness.wait_state(unit, "active")
        harness.enable([NGINX])
        inside = host_snapshot()
        assert any(harness.id in d for d in inside.cgroup_dirs)  # the snapshot does see our cgroups
        assert host_differences(before, inside, [str(harness.tmp)])  # ... and our processes
    finally:
        harness.stop()
    after = host_snapshot()
    problems = host_differences(before, after, [str(harness.tmp)])
    assert not problems, "\n".join(problems)
    assert not harness.tmp.exists()
    assert all(not cgroup.exists() for cgroup in harness.cgroups)
    assert before.cgroup_dirs == after.cgroup_dirs and before.mountinfo == after.mountinfo


_KILLED_RUNNER = r"""
import ctypes, os, signal, subprocess, sys, time
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: orphans come to us to be reaped
inner = (
    "import sys, time; sys.path.insert(0, sys.argv[1]); from harness import systemd as h; "
    "s = h.SystemdHarness(); s.start(); s.start_unit(h.NGINX); s.wait_state(h.NGINX, 'active'); "
    "print(s.id, s.tmp, flush=True); time.sleep(60)"
)
child = subprocess.Popen([sys.executable, "-c", inner, sys.argv[1]], stdout=subprocess.PIPE, text=True)
line = child.stdout.readline().strip()
os.kill(child.pid, signal.SIGKILL)  # the "test process" dies without any teardown
child.wait(timeout=10)
deadline = time.monotonic() + 10
while time.monotonic() < deadline:
    try:
        pid, _ = os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        break
    if pid == 0:
        time.sleep(0.01)
print(line)
"""


def test_killed_test_process_takes_systemd_down() -> None:
    """SIGKILL of the process owning a harness kills the namespace; the next harness removes leftovers."""
    require_systemd()
    remove_stale()
    before = host_snapshot()
    out = subprocess.run(
        [sys.executable, "-c", _KILLED_RUNNER, str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    assert len(out) == 2, out
    harness_id, tmp = out
    middle = host_snapshot()
    # No process survived (systemd, dbus, nginx died with the namespace); only empty folders are left.
    leftovers = host_differences(before, middle, [tmp])
    assert all(harness_id in p or tmp in p for p in leftovers), leftovers
    assert not any("stray process" in p for p in leftovers), leftovers
    removed = remove_stale()
    assert {p.name for p in removed} >= {harness_id, Path(tmp).name}
    problems = host_differences(before, host_snapshot(), [tmp])
    assert not problems, "\n".join(problems)


# -- without systemd ------------------------------------------------------------------------------------
def test_no_bus_socket(tmp_path: Path) -> None:
    check = UnitsCheck((NGINX, PHP_FPM), bus_address=f"unix:path={tmp_path}/nope/system_bus_socket")
    start = time.monotonic()
    result = check.run(Deadline.after(2.0))
    assert time.monotonic() - start < 0.05
    assert not result.available and result.units == ()
    assert result.error is not None and "No such file or directory" in result.error
    assert str(tmp_path) in result.error
    assert samples(result) == {("badgateway_systemd_available", ()): 0.0}
    assert "badgateway_unit_" not in exposition(result)


def test_unsupported_address() -> None:
    result = UnitsCheck((NGINX,), bus_address="tcp:host=127.0.0.1,port=1").run(Deadline.after(1))
    assert not result.available and result.error is not None and "unsupported" in result.error


class _StuckBus:
    """A unix socket server that accepts and never answers (optionally after a successful auth)."""

    def __init__(self, path: Path, answer_auth: bool = False) -> None:
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(8)
        self.server.settimeout(0.05)
        self.answer_auth = answer_auth
        self.clients: list[socket.socket] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                client, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.clients.append(client)
            if self.answer_auth:
                client.settimeout(1.0)
                try:
                    data = b""
                    while b"\r\n" not in data:
                        data += client.recv(1024)
                    client.sendall(b"OK 0123456789abcdef0123456789abcdef\r\n")
                except OSError:
                    pass

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=2)
        for client in self.clients:
            client.close()
        self.server.close()


@pytest.mark.parametrize("answer_auth", [False, True], ids=["silent", "silent-after-auth"])
def test_stuck_bus_does_not_stall(tmp_path: Path, answer_auth: bool) -> None:
    bus = _StuckBus(tmp_path / "bus", answer_auth)
    check = UnitsCheck((NGINX, PHP_FPM, BACKEND), bus_address=f"unix:path={tmp_path}/bus")
    try:
        for _ in range(2):
            deadline = Deadline.after(0.2)
            result = check.run(deadline)
            late = time.monotonic() - deadline.at
            assert late < 0.05, f"returned {late:.3f} s after the deadline"
            assert not result.available and result.error == "timeout" and result.units == ()
            assert check._conn is None  # dropped, reopened next time
        assert samples(result) == {("badgateway_systemd_available", ()): 0.0}
    finally:
        check.close()
        bus.close()


def test_metric_families_one_hot_and_enabled_mapping() -> None:
    units = tuple(
        UnitStatus(f"u{i}.service", "loaded", state, "x", file_state, 3, 1700000000.5, 42)
        for i, (state, file_state) in enumerate(
            [
                ("active", "enabled"),
                ("activating", "enabled-runtime"),
                ("deactivating", "static"),
                ("inactive", "indirect"),
                ("failed", "alias"),
                ("reloading", "disabled"),
                ("maintenance", "masked"),
                ("active", "generated"),
            ]
        )
    )
    result = UnitsResult(True, None, units)
    got = samples(result)
    for unit in units:
        for state in ("active", "activating", "deactivating", "inactive", "failed", "reloading"):
            expected = 1.0 if unit.active_state == state else 0.0
            assert got[("badgateway_unit_state", (("state", state), ("unit", unit.name)))] == expected
        assert got[("badgateway_unit_restarts_total", (("unit", unit.name),))] == 3
    enabled = [got[("badgateway_unit_enabled", (("unit", u.name),))] for u in units]
    assert enabled == [1, 1, 1, 1, 1, 0, 0, 0]
    since = [("badgateway_unit_active_since_seconds", (("unit", u.name),)) in got for u in units]
    assert since == [True, False, False, False, False, True, False, True]
    names = {name for name, _ in got}
    assert names == {
        "badgateway_systemd_available",
        "badgateway_unit_state",
        "badgateway_unit_loaded",
        "badgateway_unit_enabled",
        "badgateway_unit_restarts_total",
        "badgateway_unit_active_since_seconds",
    }
    text = exposition(result)
    assert "# TYPE badgateway_unit_state gauge" in text
    assert "# TYPE badgateway_unit_restarts_total counter" in text


def test_default_php_fpm_unit(tmp_path: Path) -> None:
    lib, etc, empty = tmp_path / "lib", tmp_path / "etc", tmp_path / "empty"
    for folder in (lib, etc, empty):
        folder.mkdir()
    assert default_php_fpm_unit([empty, tmp_path / "absent"]) == "php-fpm.service"
    (lib / "php-fpm.service").touch()
    assert default_php_fpm_unit([lib]) == "php-fpm.service"
    for name in ("php7.4-fpm.service", "php8.2-fpm.service", "phpsessionclean.service", "php8.2-fpm.socket"):
        (lib / name).touch()
    assert default_php_fpm_unit([etc, lib]) == "php8.2-fpm.service"
    (etc / "php8.10-fpm.service").touch()
    assert default_php_fpm_unit([etc, lib]) == "php8.10-fpm.service"


def test_default_php_fpm_unit_on_this_host() -> None:
    found = default_php_fpm_unit()
    version = unit_files._php_version(found)
    assert version is not None, found
    if Path("/lib/systemd/system/php8.2-fpm.service").exists():  # Debian 12 with php8.2-fpm installed
        assert version >= (8, 2)
