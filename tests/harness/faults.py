"""The fault matrix's machinery: the real stack as systemd units on a small tmpfs, the exporter, Prometheus,
Alertmanager, a webhook receiver and a load generator, and the run of one fault from injection to resolve.

Layout: a tmpfs (:data:`TMPFS_SIZE`) is mounted on a fresh 0755 folder and the whole stack lives on it
(configs, sockets, logs), so "the disk holding the logs and sockets is full" is a real full disk. When
the kernel allows namespaces, PHP-FPM, nginx and the backend run as units of a real system-mode
systemd (:mod:`harness.systemd`: PID namespace, private mounts, its own sub-cgroups), so
``systemctl stop`` is a real stop and the exporter reads unit states over D-Bus; otherwise they run as
plain child processes (:class:`exporter.demo.services.ProcessServices`). Everything is stopped by PID in
``finally`` blocks and the tmpfs is unmounted last.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import yaml

from exporter import config as config_module
from exporter.causes import CAUSES
from exporter.demo.alerting import Alertmanager, Prometheus, alertmanager_config, render_rules
from exporter.demo.catalogue import Fault, FaultContext, FaultError
from exporter.demo.load import LoadGenerator
from exporter.demo.services import Component, ProcessServices, Services
from exporter.demo.stack import (
    Stack,
    StackError,
    descendants,
    http_status,
    is_alive,
    make_root,
    mount_tmpfs,
    tail,
    unix_connects,
    unmount,
)
from exporter.demo.webhook import Notification, WebhookReceiver
from harness import poll, wait_until
from harness.alerting import running_alertmanager, running_prometheus
from harness.exporters import diagnose_json, diagnosed_causes
from harness.process import ExporterProcess, exporter_process
from harness.systemd import BACKEND, NGINX, PHP_FPM, SystemdHarness, namespace_refusal

TMPFS_SIZE = "32m"
SYMPTOM = "NginxGatewayErrors"
UNITS: dict[Component, str] = {"php_fpm": PHP_FPM, "nginx": NGINX, "backend": BACKEND}
NOTIFY_TIMEOUT = 60.0
RESOLVE_TIMEOUT = 60.0
QUIET_TIMEOUT = 60.0
HOLD_AFTER_NOTIFY = 6.0  # keep the fault until the symptom fires (inhibition exercised), at most this long
FLUSH_MARGIN = 3.0  # one Alertmanager group_interval (2 s) and a bit: late notifications land in the window
DASHBOARD_CAUSE_QUERY = 'max by (cause) (badgateway_cause{instance=~"$instance"})'  # "Causes over time"


# ---------------------------------------------------------------- a small tmpfs


def mount_refusal() -> str | None:
    if os.geteuid() != 0:
        return "needs root to mount a tmpfs"
    return None


@contextlib.contextmanager
def tmpfs_root(size: str = TMPFS_SIZE) -> Iterator[Path]:
    """A fresh 0755 folder with a tmpfs of ``size`` mounted on it; unmounted and removed afterwards."""
    root = make_root("badgateway-faults-")
    try:
        mount_tmpfs(root, size, "badgateway-faults")
    except StackError:
        root.rmdir()
        raise
    try:
        yield root
    finally:
        unmount(root)
        with contextlib.suppress(OSError):
            root.rmdir()


# ---------------------------------------------------------------- the stack as systemd units


def _exec(argv: list[str]) -> str:
    for arg in argv:
        if re.search(r"[\s\"'\\$%;]", arg):
            raise StackError(f"argument {arg!r} needs quoting in a unit file")
    return " ".join(argv)


class SystemdServices:
    """PHP-FPM, nginx and the backend of ``stack`` as units of a real systemd (``systemctl`` over D-Bus)."""

    kind = "systemd units"

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.harness = SystemdHarness(with_stack=False)
        self.bus_address = self.harness.bus_address

    def unit_files(self) -> dict[str, str]:
        log = self.stack.root / "log"
        common = "Type=simple\nStandardError=inherit\nTimeoutStopSec=10\n"
        install = "\n[Install]\nWantedBy=multi-user.target\n"
        env = " ".join(f"{k}={v}" for k, v in self.stack.backend_env().items())
        return {
            PHP_FPM: "[Unit]\nDescription=The PHP 8.2 FastCGI Process Manager (fault matrix)\n\n[Service]\n"
            f"{common}ExecStart={_exec(self.stack.php_fpm_argv())}\nExecReload=/bin/kill -USR2 $MAINPID\n"
            f"StandardOutput=append:{log}/php-fpm.stderr.log\n{install}",
            NGINX: "[Unit]\nDescription=nginx (fault matrix)\n\n[Service]\n"
            f"{common}ExecStart={_exec(self.stack.nginx_argv())}\nExecReload=/bin/kill -HUP $MAINPID\n"
            f"KillSignal=SIGQUIT\nStandardOutput=append:{log}/nginx.stderr.log\n{install}",
            BACKEND: "[Unit]\nDescription=uvicorn backend (fault matrix)\n\n[Service]\n"
            f"{common}ExecStart={_exec(self.stack.backend_argv())}\nEnvironment={env}\n"
            f"EnvironmentFile=-{self.stack.backend_env_file}\n"
            # As production units do: a crash is restarted; one at every boot is a restart loop
            # until the start limit (5 in 10 s) leaves it failed (backend_crashes_at_boot).
            "Restart=on-failure\nRestartSec=1\n"
            f"WorkingDirectory={self.stack.root}\nStandardOutput=append:{log}/backend.log\n{install}",
        }

    def start_all(self) -> None:
        self.harness.start()
        for name, text in self.unit_files().items():
            (self.harness.unit_dir / name).write_text(text, encoding="utf-8")
        self.harness.manager("Reload")
        self.harness.enable(list(UNITS.values()))  # enabled: UnitNotEnabledAtBoot stays silent
        for component in ("php_fpm", "backend", "nginx"):
            self.start(component)

    def close(self) -> None:
        self.harness.stop()

    # -- Services --------------------------------------------------------------------------------
    def _state(self, component: Component) -> str:
        return str(self.harness.unit_property(UNITS[component], "ActiveState"))

    def _wait_down(self, component: Component) -> None:
        wait_until(
            lambda: self._state(component) in ("inactive", "failed"),
            15.0,
            f"{UNITS[component]} to stop",
            interval=0.05,
            detail=self.harness.log_tail,
        )

    def _wait_ready(self, component: Component) -> None:
        unit = UNITS[component]
        stack = self.stack

        def ready() -> bool:
            state = self._state(component)
            if state == "failed":
                raise StackError(
                    f"{unit} failed to start\n{self.harness.log_tail()}\n{self._logs(component)}"
                )
            if state != "active":
                return False
            if component == "php_fpm":
                main = int(self.harness.unit_property(unit, "MainPID"))
                try:
                    written = int((stack.root / "run" / "php-fpm.pid").read_text(encoding="ascii").strip())
                except (OSError, ValueError):
                    return False
                return written == main and unix_connects(stack.socket_path)
            port = stack.nginx_port if component == "nginx" else stack.backend_port
            return http_status(port, "/ready", 1.0) == 200

        wait_until(ready, 20.0, f"{unit} to serve", interval=0.05, detail=lambda: self._logs(component))

    def _logs(self, component: Component) -> str:
        names = {"php_fpm": ["php-fpm.log", "php-fpm.stderr.log"], "nginx": ["nginx-error.log", "nginx.stderr.log"],
                 "backend": ["backend.log"]}[component]  # fmt: skip
        return "\n".join(tail(self.stack.root / "log" / name) for name in names)

    def start(self, component: Component) -> None:
        with contextlib.suppress(RuntimeError):
            self.harness.reset_failed(UNITS[component])
        self.harness.start_unit(UNITS[component])
        self._wait_ready(component)

    def stop(self, component: Component) -> None:
        self.harness.stop_unit(UNITS[component])
        self._wait_down(component)

    def kill(self, component: Component) -> None:
        """SIGKILL the main process only (PHP-FPM's master: its socket file stays behind)."""
        self.harness.kill_unit(UNITS[component], signal.SIGKILL, "main")
        self._wait_down(component)

    def restart(self, component: Component) -> None:
        pid_file = self.stack.root / "run" / "php-fpm.pid"
        old = _read(pid_file)
        self.harness.manager("RestartUnit", "ss", (UNITS[component], "replace"))
        if component == "php_fpm":
            # The pid file names the old master (or is gone) for a moment: wait for the new one.
            wait_until(
                lambda: _read(pid_file) not in ("", old),
                20.0,
                "PHP-FPM to restart",
                interval=0.05,
                detail=lambda: self._logs(component),
            )
        self._wait_ready(component)

    def reload(self, component: Component) -> None:
        if component != "nginx":
            raise StackError(f"no reload for {component}")
        master = nginx_master(self.stack)
        old = set(descendants(master))
        offset = self.stack.nginx_error_log.stat().st_size
        self.harness.manager("ReloadUnit", "ss", (NGINX, "replace"))

        def reloaded() -> bool:
            with self.stack.nginx_error_log.open("rb") as handle:
                handle.seek(offset)
                if b"[emerg]" in handle.read():
                    raise StackError(f"nginx rejected the new config\n{tail(self.stack.nginx_error_log)}")
            current = {pid for pid in descendants(master) if is_alive(pid)}
            return bool(current - old) and not (current & old)

        wait_until(reloaded, 20.0, "nginx to reload", detail=lambda: tail(self.stack.nginx_error_log))


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="ascii").strip()
    except OSError:
        return ""


def nginx_master(stack: Stack) -> int:
    """The host PID of the stack's nginx master (found by its command line)."""
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if cmdline.startswith("nginx: master process") and str(stack.nginx_conf) in cmdline:
            return int(proc.pid)
    raise StackError("no nginx master process for this stack")


# ---------------------------------------------------------------- the whole pipeline


@dataclass
class Pipeline:
    """Everything of one matrix run, started."""

    stack: Stack
    services: Services
    ctx: FaultContext
    exporter: ExporterProcess
    config_path: Path
    webhook: WebhookReceiver
    alertmanager: Alertmanager
    prometheus: Prometheus
    load: LoadGenerator
    log: Callable[[str], None]

    @property
    def instance(self) -> str:
        return f"127.0.0.1:{self.exporter.port}"

    def causes_now(self) -> set[str]:
        """Causes at 1 in Prometheus (the dashboard's "Causes over time" query)."""
        expr = DASHBOARD_CAUSE_QUERY.replace("$instance", re.escape(self.instance).replace("\\", "\\\\"))
        return {
            r["metric"].get("cause", "") for r in self.prometheus.query(expr) if float(r["value"][1]) == 1
        }

    def quiet(self) -> bool:
        """No alert pending or firing in Prometheus, no cause at 1."""
        return not self.prometheus.query("ALERTS") and not self.causes_now()


def systemd_refusal() -> str | None:
    return namespace_refusal()


def exporter_settings(stack: Stack, bus_address: str | None) -> dict[str, Any]:
    settings = stack.exporter_config()
    # Prometheus' 1 s scrape timeout leaves the default 0.5 s margin only 0.5 s: take 0.2.
    settings["scrape_timeout_margin_seconds"] = 0.2
    # An OOM kill means memory_exhausted for this long: 10 minutes, scaled like every for: (x0.05).
    settings["thresholds"] = {"oom_kill_window_seconds": 30.0}
    # A cause from the logs holds while its lines arrive within the evidence window: 5 minutes, scaled.
    settings["logs"] = {**stack.exporter_config()["logs"], "evidence_window_seconds": 15.0}  # type: ignore[dict-item]
    if bus_address is not None:
        settings["units"] = {
            "nginx": NGINX,
            "php_fpm": PHP_FPM,
            "backend": BACKEND,
            "bus_address": bus_address,
        }
        # The pid files name PIDs of systemd's PID namespace, not the host's: the units' cgroups say
        # which processes are theirs (explicit nulls: discovery would read the same files).
        settings["pid_files"] = {"nginx": None, "php_fpm": None}
    else:
        settings["units"] = {"enabled": False}
    if hasattr(config_module, "DiscoverySettings"):
        # Discovery (issue 5) reads the stack's own files (never the host's /etc/php) and derives the
        # PHP-FPM probes from nginx's fastcgi_pass, as on a real host where nothing is configured.
        settings["discovery"] = {"php_fpm_configs": [str(stack.php_fpm_conf)]}
        settings.pop("php_fpm", None)
    return settings


@contextlib.contextmanager
def pipeline(use_systemd: bool, log: Callable[[str], None] = print) -> Iterator[Pipeline]:
    """Start the stack (on a tmpfs), the exporter, Alertmanager, the webhook, Prometheus and the load."""
    with contextlib.ExitStack() as exits:
        started = time.monotonic()
        root = exits.enter_context(tmpfs_root())
        stack = Stack(root)
        services: Services
        bus: str | None = None
        if use_systemd:
            units = SystemdServices(stack)
            exits.callback(units.close)
            units.start_all()
            services, bus = units, units.bus_address
        else:
            services = ProcessServices(stack)
            exits.callback(stack.stop)
            stack.start()
        log(f"stack up as {services.kind} in {time.monotonic() - started:.1f}s ({root}, tmpfs {TMPFS_SIZE})")
        work = make_root("badgateway-faults-work-")
        exits.callback(shutil.rmtree, work, True)
        config_path = root / "exporter.yml"
        config_path.write_text(
            yaml.safe_dump(exporter_settings(stack, bus), sort_keys=False), encoding="utf-8"
        )
        exporter = exits.enter_context(
            exporter_process(["--config", str(config_path)], work / "exporter.log")
        )
        webhook = WebhookReceiver().start()
        exits.callback(webhook.close)
        alertmanager = exits.enter_context(
            running_alertmanager(work / "alertmanager", alertmanager_config(webhook.url))
        )
        rule_file = render_rules(work / "rules")
        prometheus = exits.enter_context(
            running_prometheus(
                work / "prometheus", [f"127.0.0.1:{exporter.port}"], rule_file, alertmanager=alertmanager.url
            )
        )
        load = LoadGenerator(stack, rate=10.0, max_seconds=1200.0)
        exits.callback(load.stop)
        load.start()
        ctx = FaultContext(stack, services, disk=root)
        pipe = Pipeline(
            stack, services, ctx, exporter, config_path, webhook, alertmanager, prometheus, load, log
        )
        log(
            f"exporter {exporter.url()}/metrics, prometheus {prometheus.url}, alertmanager {alertmanager.url},"
            f" webhook {webhook.url}"
        )
        wait_until(
            lambda: bool(pipe.prometheus.query(f'badgateway_cause{{instance="{pipe.instance}"}}')),
            60.0,
            "Prometheus' first scrape of the exporter",
            interval=0.5,
            detail=prometheus.log_tail,
        )
        log(f"first sample in Prometheus {time.monotonic() - started:.1f}s after the start")
        yield pipe


# ---------------------------------------------------------------- one fault


@dataclass
class FaultResult:
    fault: Fault
    skipped: str | None = None
    received: list[str] = field(default_factory=list)  # firing alerts notified during the fault, in order
    notify_seconds: float | None = None
    resolve_seconds: float | None = None
    symptom_fired: bool = False  # NginxGatewayErrors was firing in Prometheus (and had to be inhibited)
    diagnosed: set[str] = field(default_factory=set)
    dashboard: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.skipped is None and not self.problems


def _alert_id(alert: dict[str, Any]) -> str:
    labels = alert.get("labels", {})
    return f"{labels.get('alertname')}{{cause={labels.get('cause')}}}"


def _firing(notes: list[Notification]) -> list[str]:
    seen: list[str] = []
    for note in notes:
        for alert in note.alerts("firing"):
            name = str(alert.get("labels", {}).get("alertname"))
            if name not in seen:
                seen.append(name)
    return seen


def wait_quiet(pipe: Pipeline, timeout: float = QUIET_TIMEOUT) -> bool:
    return poll(pipe.quiet, timeout, 0.5)


def run_fault(pipe: Pipeline, fault: Fault) -> FaultResult:
    """Inject ``fault``, wait for its page, check it, heal it, wait for the resolve and for quiet."""
    result = FaultResult(fault)
    reason = fault.unavailable(pipe.ctx)
    if reason is not None:
        result.skipped = reason
        pipe.log(f"-- {fault.name}: skipped: {reason}")
        return result
    if not wait_quiet(pipe):
        result.problems.append(f"not quiet before the fault: ALERTS {pipe.prometheus.query('ALERTS')}")
    alert = fault.alert
    mark = pipe.webhook.count()
    wall_start = time.time()
    pipe.log(f"-- {fault.name}: {fault.title}")
    injected = time.monotonic()
    healed = injected
    try:
        fault.inject(pipe.ctx)

        def paged() -> bool:
            return any(
                a.get("labels", {}).get("alertname") == alert
                for n in pipe.webhook.since(mark)
                for a in n.alerts("firing")
            )

        if poll(paged, NOTIFY_TIMEOUT):
            first = next(
                n
                for n in pipe.webhook.since(mark)
                if any(_alert_id(a).startswith(alert + "{") for a in n.alerts("firing"))
            )
            result.notify_seconds = first.received - injected
            # Hold the fault until the symptom fires too, so the inhibition is really exercised.
            result.symptom_fired = poll(lambda: SYMPTOM in pipe.prometheus.firing(), HOLD_AFTER_NOTIFY, 0.5)
        else:
            result.problems.append(f"no {alert} notification within {NOTIFY_TIMEOUT:g}s")
        result.dashboard = pipe.causes_now()
        _, document = diagnose_json(pipe.config_path)
        result.diagnosed = diagnosed_causes(document)
    except (StackError, FaultError, OSError, RuntimeError, TimeoutError, AssertionError) as exc:
        result.problems.append(f"injecting or checking failed: {exc}")
    finally:
        healed = time.monotonic()
        try:
            fault.heal(pipe.ctx)
        except (StackError, FaultError, OSError, RuntimeError, TimeoutError) as exc:
            result.problems.append(f"healing failed: {exc}")

    def resolved() -> bool:
        for note in pipe.webhook.since(mark):
            for a in note.alerts("resolved"):
                if a.get("labels", {}).get("alertname") == alert and _started_after(a, wall_start - 1):
                    result.resolve_seconds = note.received - healed
                    return True
        return False

    if result.notify_seconds is not None and not poll(resolved, RESOLVE_TIMEOUT):
        result.problems.append(f"no resolved {alert} notification within {RESOLVE_TIMEOUT:g}s of healing")
    if not wait_quiet(pipe):
        result.problems.append(
            f"not quiet {QUIET_TIMEOUT:g}s after healing: ALERTS {pipe.prometheus.query('ALERTS')}"
        )
    deadline = time.monotonic() + FLUSH_MARGIN
    poll(lambda: time.monotonic() >= deadline, FLUSH_MARGIN + 1, 0.25)  # late notifications land here
    notes = pipe.webhook.since(mark)
    result.received = _firing(notes)
    others = [name for name in result.received if name != alert]
    if others:
        when = []
        for name in others:
            first_seen = next(
                n for n in notes if any(a["labels"].get("alertname") == name for a in n.alerts("firing"))
            )
            moment = (
                "before healing"
                if first_seen.received < healed
                else f"{first_seen.received - healed:.1f}s after healing"
            )
            when.append(f"{name} ({moment})")
        result.problems.append("other alerts notified: " + ", ".join(when))
    expected = {fault.cause.value}
    if result.diagnosed != expected:
        result.problems.append(f"diagnose named {sorted(result.diagnosed)}")
    if result.dashboard != expected:
        result.problems.append(f"dashboard cause query showed {sorted(result.dashboard)}")
    pipe.log(
        f"   notified {result.received} after {_fmt(result.notify_seconds)}s, resolved after"
        f" {_fmt(result.resolve_seconds)}s; diagnose {sorted(result.diagnosed)}; symptom fired:"
        f" {result.symptom_fired}; {'ok' if result.ok else '; '.join(result.problems)}"
    )
    return result


def _started_after(alert: dict[str, Any], wall: float) -> bool:
    """The alert's ``startsAt`` (RFC 3339, UTC from Alertmanager) is at or after ``wall`` (a time.time())."""
    match = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d{1,6})?\d*(Z|[+-]\d\d:\d\d)$",
                     str(alert.get("startsAt", "")))  # fmt: skip
    if not match:
        return True
    zone = "+00:00" if match.group(3) == "Z" else match.group(3)
    return datetime.fromisoformat(match.group(1) + (match.group(2) or "") + zone).timestamp() >= wall


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def healthy_window(pipe: Pipeline, seconds: float) -> list[Notification]:
    """Let the load run for ``seconds`` on the healthy stack; the notifications received meanwhile."""
    mark = pipe.webhook.count()
    deadline = time.monotonic() + seconds
    poll(lambda: time.monotonic() >= deadline or pipe.webhook.count() > mark, seconds + 1, 0.5)
    return pipe.webhook.since(mark)


# ---------------------------------------------------------------- the table


def table(results: list[FaultResult]) -> str:
    header = ("fault", "expected cause", "received (firing alerts)", "notify s", "resolve s", "diagnose",
              "dashboard", "symptom", "result")  # fmt: skip
    rows = []
    for r in results:
        if r.skipped is not None:
            rows.append(
                (r.fault.name, r.fault.cause.value, "-", "-", "-", "-", "-", "-", f"skipped: {r.skipped}")
            )
            continue
        received = ", ".join(f"{n} ({_cause_of(n)})" for n in r.received) or "nothing"
        rows.append(
            (
                r.fault.name,
                r.fault.cause.value,
                received,
                _fmt(r.notify_seconds),
                _fmt(r.resolve_seconds),
                ", ".join(sorted(r.diagnosed)) or "none",
                ", ".join(sorted(r.dashboard)) or "none",
                "fired, inhibited" if r.symptom_fired and SYMPTOM not in r.received else
                ("NOTIFIED" if SYMPTOM in r.received else "did not fire"),
                "ok" if r.ok else "FAIL: " + "; ".join(r.problems),
            )
        )  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _cause_of(alertname: str) -> str:
    for info in CAUSES.values():
        if info.alert == alertname:
            return info.cause.value
    return "unknown" if alertname == SYMPTOM else "-"


# ---------------------------------------------------------------- host hygiene


def leftovers(root_prefix: str = "badgateway-faults") -> list[str]:
    """Mounts, processes and cgroups of a matrix run still present (empty: the host is as found)."""
    problems = []
    for line in Path("/proc/self/mountinfo").read_text(encoding="utf-8").splitlines():
        if root_prefix in line.split()[4]:
            problems.append(f"still mounted: {line.split()[4]}")
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            cmdline = " ".join(proc.info["cmdline"] or [])
            if root_prefix in cmdline and proc.pid != os.getpid():
                problems.append(f"still running: {proc.pid} {cmdline[:120]}")
    for base in (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup/systemd"), Path("/sys/fs/cgroup")):
        if base.is_dir():
            for pattern in (f"badgateway-oom-{os.getpid()}", f"badgateway-systemd-test-{os.getpid()}-*"):
                problems += [f"cgroup left: {p}" for p in base.glob(pattern)]
    return problems
