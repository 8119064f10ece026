"""The fault catalogue and the alerting pipeline it is watched through, shared by the demo and the tests.

One place knows how to inject and heal each 502/504 cause of :mod:`exporter.causes` on a
:class:`~exporter.demo.stack.Stack`: :data:`FAULTS`. Starting, stopping and killing go through a
:class:`Services` object, so the same fault runs against plain child processes
(:class:`ProcessServices`, the demo) or units of a real systemd (the fault-matrix test).

The pipeline that turns a fault into a page is here too: a :class:`WebhookReceiver` recording every
Alertmanager notification, :class:`Prometheus` and :class:`Alertmanager` run as child processes on
loopback with the bundled rules (``for:`` scaled down by ``rules render --for-scale``) and the
bundled inhibition rules, and a bounded :class:`LoadGenerator` sending requests through nginx.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import quote

import yaml

from exporter import rules
from exporter.causes import CAUSES, Cause
from exporter.demo.stack import Stack, StackError, free_port, http_status, stop_process, tail, wait_until

Component = Literal["php_fpm", "nginx", "backend"]
COMPONENTS: tuple[Component, ...] = ("php_fpm", "backend", "nginx")

# Timings of the pipeline: 1 s scrape and evaluation, every for: x0.05 (PhpFpmDown 1m -> 3s), the
# symptom's error-rate window scaled the same way with its threshold kept at the same number of
# errors per window (0.05/s over 5m = 15 errors -> 15 errors per 15 s).
FOR_SCALE = 0.05
ERROR_RATE_WINDOW = "15s"
GATEWAY_ERROR_RATE = 1.0
SCRAPE_INTERVAL = "1s"
GROUP_WAIT = "1s"
GROUP_INTERVAL = "2s"
REPEAT_INTERVAL = "1h"

_PROCESS_TIMEOUT = 10.0
_HTTP_TIMEOUT = 5.0
_SLOW_SCRIPT_SECONDS = 5.0
_MAX_FILL_BYTES = 512 * 1024 * 1024  # never fill a filesystem larger than this
FILL_FILE = "badgateway-fault-fill"
HOG_SCRIPT = "badgateway-hog.php"


class FaultError(Exception):
    """A fault could not be injected or healed; the message says why."""


# ---------------------------------------------------------------- services


class Services(Protocol):
    """Start, stop, kill, restart and reload the stack's three components."""

    kind: str

    def start(self, component: Component) -> None: ...
    def stop(self, component: Component) -> None: ...
    def kill(self, component: Component) -> None: ...
    def restart(self, component: Component) -> None: ...
    def reload(self, component: Component) -> None: ...


class ProcessServices:
    """The components as plain child processes of this one (:class:`Stack`'s own methods)."""

    kind = "plain processes"

    def __init__(self, stack: Stack) -> None:
        self.stack = stack

    def start(self, component: Component) -> None:
        {"php_fpm": self.stack.start_php_fpm, "nginx": self.stack.start_nginx,
         "backend": self.stack.start_backend}[component]()  # fmt: skip

    def stop(self, component: Component) -> None:
        {"php_fpm": self.stack.stop_php_fpm, "nginx": self.stack.stop_nginx,
         "backend": self.stack.stop_backend}[component]()  # fmt: skip

    def kill(self, component: Component) -> None:
        if component != "php_fpm":
            raise FaultError(f"no kill for {component} in the plain-process stack")
        self.stack.kill_php_fpm()

    def restart(self, component: Component) -> None:
        self.stop(component)
        self.start(component)

    def reload(self, component: Component) -> None:
        if component != "nginx":
            raise FaultError(f"no reload for {component}")
        self.stack.reload_nginx()


# ---------------------------------------------------------------- bounded HTTP clients


class RequestLoop:
    """``threads`` threads each sending GETs of ``paths`` in turn, paced, bounded in count and time."""

    def __init__(
        self,
        port: int,
        paths: tuple[str, ...],
        *,
        threads: int = 1,
        interval: float = 0.2,
        timeout: float = 10.0,
        max_seconds: float = 900.0,
        max_requests: int = 50_000,
        name: str = "load",
    ) -> None:
        self.port = port
        self.paths = paths
        self.interval = interval
        self.timeout = timeout
        self.max_seconds = max_seconds
        self.max_requests = max_requests
        self.statuses: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sent = 0
        self._threads = [
            threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True) for i in range(threads)
        ]

    def start(self) -> RequestLoop:
        for thread in self._threads:
            thread.start()
        return self

    def _take(self) -> bool:
        with self._lock:
            if self._sent >= self.max_requests:
                return False
            self._sent += 1
            return True

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        index = 0
        while not self._stop.is_set() and time.monotonic() < deadline and self._take():
            path = self.paths[index % len(self.paths)]
            index += 1
            status = http_status(self.port, path, self.timeout)
            key = str(status) if status is not None else "error"
            with self._lock:
                self.statuses[key] = self.statuses.get(key, 0) + 1
            self._stop.wait(self.interval)

    @property
    def sent(self) -> int:
        with self._lock:
            return self._sent

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self.statuses)

    def halt(self) -> None:
        """Send no more requests (those under way finish); :meth:`stop` also waits for the threads."""
        self._stop.set()

    def stop(self, timeout: float = 15.0) -> None:
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))


class LoadGenerator(RequestLoop):
    """Steady traffic through nginx: the PHP site and the backend behind ``/api/``."""

    def __init__(self, stack: Stack, *, rate: float = 10.0, max_seconds: float = 900.0) -> None:
        super().__init__(
            stack.nginx_port,
            ("/", "/api/health"),
            threads=2,
            interval=2.0 / rate,
            timeout=5.0,
            max_seconds=max_seconds,
            max_requests=int(rate * max_seconds) + 10,
            name="load",
        )


# ---------------------------------------------------------------- faults


@dataclass
class FaultContext:
    """What a fault acts on: the stack's files, its services, and the disk under it."""

    stack: Stack
    services: Services
    disk: Path | None = None  # mount point of a small filesystem holding the logs and the socket
    original_max_children: int = 0
    state: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.original_max_children:
            self.original_max_children = self.stack.max_children


@dataclass(frozen=True)
class Fault:
    """One cause, injected for real and healed."""

    name: str
    cause: Cause
    title: str
    inject: Callable[[FaultContext], None]
    heal: Callable[[FaultContext], None]
    unavailable: Callable[[FaultContext], str | None] = lambda ctx: None

    @property
    def alert(self) -> str:
        return CAUSES[self.cause].alert


def _needs_root(ctx: FaultContext) -> str | None:
    del ctx
    return None if os.geteuid() == 0 else "needs root (nginx's workers must run as www-data)"


def _start_again(component: Component) -> Callable[[FaultContext], None]:
    return lambda ctx: ctx.services.start(component)


def _pool_exhaust(ctx: FaultContext) -> None:
    ctx.stack.set_max_children(1)
    ctx.services.restart("php_fpm")
    # Concurrent slow requests hold the only worker: pings and pages queue behind them.
    ctx.state["slow"] = RequestLoop(
        ctx.stack.nginx_port,
        (f"/slow.php?s={_SLOW_SCRIPT_SECONDS:g}",),
        threads=3,
        interval=0.0,
        timeout=_SLOW_SCRIPT_SECONDS + 5,
        max_seconds=300.0,
        max_requests=600,
        name="slow",
    ).start()


def _pool_heal(ctx: FaultContext) -> None:
    slow = ctx.state.pop("slow", None)
    if isinstance(slow, RequestLoop):
        slow.halt()  # no new slow requests; the restart below ends the running ones
    ctx.stack.set_max_children(ctx.original_max_children)
    ctx.services.restart("php_fpm")
    if isinstance(slow, RequestLoop):
        slow.stop()


def _other_socket(ctx: FaultContext) -> str:
    return f"unix:{ctx.stack.other_php_socket('8.3')}"


def _mismatch(ctx: FaultContext) -> None:
    ctx.stack.point_fastcgi_pass(_other_socket(ctx))
    ctx.services.reload("nginx")


def _mismatch_heal(ctx: FaultContext) -> None:
    ctx.stack.restore_nginx_config()
    ctx.services.reload("nginx")


def _disk_unavailable(ctx: FaultContext) -> str | None:
    if ctx.disk is None:
        return "no small filesystem under the stack's logs and socket (mount a tmpfs: needs root)"
    usage = shutil.disk_usage(ctx.disk)
    if usage.total > _MAX_FILL_BYTES:
        return f"{ctx.disk} is {usage.total} bytes: too large to fill safely"
    return None


def fill_disk(folder: Path) -> Path:
    """Write zeros into ``folder`` until its filesystem is full (refused above 512 MiB)."""
    usage = shutil.disk_usage(folder)
    if usage.total > _MAX_FILL_BYTES:
        raise FaultError(f"{folder}: {usage.total} bytes, refusing to fill a filesystem that large")
    path = folder / FILL_FILE
    chunk = b"\0" * (1 << 20)
    written = 0
    with path.open("wb") as handle:
        while written <= usage.total:
            try:
                handle.write(chunk)
                handle.flush()
            except OSError:
                break
            written += len(chunk)
        with contextlib.suppress(OSError):
            # The last partial chunk: fill the remaining bytes too.
            handle.write(b"\0" * max(0, shutil.disk_usage(folder).free))
            handle.flush()
    return path


def _disk_fill(ctx: FaultContext) -> None:
    if ctx.disk is None:
        raise FaultError("no disk to fill")
    fill_disk(ctx.disk)


def _disk_heal(ctx: FaultContext) -> None:
    if ctx.disk is not None:
        (ctx.disk / FILL_FILE).unlink(missing_ok=True)


# -- OOM: a PHP worker in a memory-limited cgroup v2 sub-cgroup ---------------------------------


def cgroup2_memory_parent() -> tuple[Path | None, str]:
    """A cgroup v2 folder whose children get the memory controller, or None and the reason."""
    mounts: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text(encoding="utf-8").splitlines():
            left, _, right = line.partition(" - ")
            if right.split()[:1] == ["cgroup2"]:
                mounts[left.split()[4]] = "cgroup2"
    if not mounts:
        return None, "no cgroup v2 hierarchy is mounted"
    for mount in sorted(mounts):
        root = Path(mount)
        try:
            controllers = (root / "cgroup.subtree_control").read_text(encoding="utf-8").split()
            available = (root / "cgroup.controllers").read_text(encoding="utf-8").split()
        except OSError as exc:
            return None, f"{root}: {exc.strerror or exc}"
        if "memory" in controllers:
            return root, ""
        reason = (
            f"cgroup v2 at {root} offers no memory controller (controllers: {' '.join(available) or 'none'});"
            " the memory controller is bound to cgroup v1 here"
            if "memory" not in available
            else f"the memory controller is not enabled for children of {root}"
        )
        return None, reason
    return None, "no usable cgroup v2 hierarchy"


def _oom_unavailable(ctx: FaultContext) -> str | None:
    if os.geteuid() != 0:
        return "needs root to create a cgroup"
    parent, reason = cgroup2_memory_parent()
    return None if parent is not None else reason


def _php_workers(stack: Stack) -> list[int]:
    import psutil

    workers = []
    for proc in psutil.process_iter(["cmdline", "ppid"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if cmdline.startswith("php-fpm: pool"):
            with contextlib.suppress(psutil.Error):
                parent = " ".join(psutil.Process(proc.info["ppid"]).cmdline())
                if str(stack.php_fpm_conf) in parent:
                    workers.append(proc.pid)
    return workers


def _oom_inject(ctx: FaultContext) -> None:
    parent, reason = cgroup2_memory_parent()
    if parent is None:
        raise FaultError(reason)
    cgroup = parent / f"badgateway-oom-{os.getpid()}"
    cgroup.mkdir()
    ctx.state["oom_cgroup"] = cgroup
    (cgroup / "memory.max").write_text(str(64 * 1024 * 1024), encoding="ascii")
    with contextlib.suppress(OSError):
        (cgroup / "memory.swap.max").write_text("0", encoding="ascii")
    for pid in _php_workers(ctx.stack):
        with contextlib.suppress(OSError):
            (cgroup / "cgroup.procs").write_text(str(pid), encoding="ascii")
    hog = ctx.stack.web_root / HOG_SCRIPT
    hog.write_text(
        "<?php\nini_set('memory_limit', '-1');\n$a = [];\n"
        "for ($i = 0; $i < 64; $i++) { $a[] = str_repeat('x', 8 * 1024 * 1024); }\necho count($a);\n",
        encoding="utf-8",
    )
    hog.chmod(0o644)
    ctx.state["oom"] = RequestLoop(
        ctx.stack.nginx_port, (f"/{HOG_SCRIPT}",), interval=0.5, max_seconds=120.0, max_requests=240,
        name="oom",
    ).start()  # fmt: skip


def _oom_heal(ctx: FaultContext) -> None:
    loop = ctx.state.pop("oom", None)
    if isinstance(loop, RequestLoop):
        loop.stop()
    (ctx.stack.web_root / HOG_SCRIPT).unlink(missing_ok=True)
    cgroup = ctx.state.pop("oom_cgroup", None)
    if isinstance(cgroup, Path):
        ctx.services.restart("php_fpm")  # the respawned workers live in the unit's own cgroup again

        def removed() -> bool:
            try:
                cgroup.rmdir()
            except FileNotFoundError:
                return True
            except OSError:
                return False
            return True

        wait_until(removed, 15.0, f"{cgroup} to be empty and removed")


FAULTS: tuple[Fault, ...] = (
    Fault("php_fpm_stopped", Cause.PHP_FPM_DOWN, "PHP-FPM stopped",
          lambda ctx: ctx.services.stop("php_fpm"), _start_again("php_fpm")),
    Fault("php_fpm_killed", Cause.PHP_FPM_DOWN, "PHP-FPM SIGKILLed (stale socket left behind)",
          lambda ctx: ctx.services.kill("php_fpm"), _start_again("php_fpm")),
    Fault("backend_stopped", Cause.BACKEND_DOWN, "backend stopped",
          lambda ctx: ctx.services.stop("backend"), _start_again("backend")),
    Fault("backend_unhealthy", Cause.BACKEND_UNHEALTHY, "backend /health answers 500",
          lambda ctx: ctx.stack.set_backend_health(500), lambda ctx: ctx.stack.set_backend_health(200)),
    Fault("socket_chowned_root", Cause.SOCKET_PERMISSION_DENIED, "PHP-FPM socket chowned root:root",
          lambda ctx: ctx.stack.chown_socket("root", "root"), lambda ctx: ctx.stack.restore_socket_owner(),
          _needs_root),
    Fault("socket_dir_no_search", Cause.SOCKET_PERMISSION_DENIED, "socket folder without search permission",
          lambda ctx: ctx.stack.set_run_dir_mode(0o700), lambda ctx: ctx.stack.set_run_dir_mode(0o755),
          _needs_root),
    Fault("backend_slow", Cause.UPSTREAM_TIMEOUT, "backend slower than proxy_read_timeout",
          lambda ctx: ctx.stack.set_backend_delay(3.0), lambda ctx: ctx.stack.set_backend_delay(0.0)),
    Fault("pool_exhausted", Cause.PHP_FPM_POOL_EXHAUSTED,
          "pm.max_children 1 and concurrent slow requests", _pool_exhaust, _pool_heal),
    Fault("nginx_config_broken", Cause.NGINX_CONFIG_INVALID,
          "syntax error in the nginx config on disk, nginx still serving",
          lambda ctx: ctx.stack.break_nginx_config(), lambda ctx: ctx.stack.restore_nginx_config()),
    Fault("nginx_stopped", Cause.NGINX_DOWN, "nginx stopped",
          lambda ctx: ctx.services.stop("nginx"), _start_again("nginx")),
    Fault("disk_full", Cause.DISK_FULL, "the disk holding the logs and the socket full",
          _disk_fill, _disk_heal, _disk_unavailable),
    Fault("fastcgi_pass_other_version", Cause.SOCKET_PATH_MISMATCH,
          "nginx fastcgi_pass pointed at PHP 8.3's socket and reloaded", _mismatch, _mismatch_heal),
    Fault("oom_kill", Cause.MEMORY_EXHAUSTED, "a PHP worker OOM-killed in a memory-limited cgroup",
          _oom_inject, _oom_heal, _oom_unavailable),
)  # fmt: skip

FAULTS_BY_NAME: dict[str, Fault] = {f.name: f for f in FAULTS}


def find_fault(name: str) -> Fault:
    """A fault by its name or by its cause (the first fault of that cause)."""
    if name in FAULTS_BY_NAME:
        return FAULTS_BY_NAME[name]
    for fault in FAULTS:
        if name in (fault.cause.value, fault.alert):
            return fault
    known = ", ".join(f.name for f in FAULTS)
    raise FaultError(f"unknown fault or cause {name!r} (known: {known}, or a cause name)")


# ---------------------------------------------------------------- the webhook receiver


@dataclass(frozen=True)
class Notification:
    """One POST from Alertmanager."""

    received: float  # time.monotonic()
    path: str
    payload: dict[str, Any]

    def alerts(self, status: str | None = None) -> list[dict[str, Any]]:
        found = self.payload.get("alerts", [])
        if not isinstance(found, list):
            return []
        return [a for a in found if isinstance(a, dict) and (status is None or a.get("status") == status)]


class WebhookReceiver:
    """A tiny threaded HTTP server on loopback recording every notification it is sent."""

    def __init__(self, on_notification: Callable[[Notification], None] | None = None) -> None:
        self.notifications: list[Notification] = []
        self._lock = threading.Lock()
        self._callback = on_notification
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = min(int(self.headers.get("Content-Length") or 0), 4 << 20)
                body = self.rfile.read(length)
                try:
                    payload = json.loads(body)
                except ValueError:
                    payload = {"invalid": body.decode("utf-8", "replace")}
                receiver._record(Notification(time.monotonic(), self.path, payload))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                del format, args

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="webhook", daemon=True)

    def _record(self, notification: Notification) -> None:
        with self._lock:
            self.notifications.append(notification)
        if self._callback is not None:
            self._callback(notification)

    def start(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def since(self, index: int) -> list[Notification]:
        with self._lock:
            return list(self.notifications[index:])

    def count(self) -> int:
        with self._lock:
            return len(self.notifications)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)


# ---------------------------------------------------------------- Prometheus and Alertmanager


def repo_file(*parts: str) -> Path | None:
    """A file of the source tree (``rules/alertmanager.yml``), when this package runs from one."""
    path = Path(__file__).resolve().parents[2].joinpath(*parts)
    return path if path.is_file() else None


def find_program(*names: str) -> str | None:
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/bin", "/usr/sbin"])
    for name in names:
        found = shutil.which(name, path=search)
        if found:
            return found
    return None


class ChildProcess:
    """A long-running program on loopback: started in its own session, stopped and reaped by PID."""

    def __init__(self, name: str, argv: list[str], log: Path, ready_url: str) -> None:
        self.name = name
        self.argv = argv
        self.log = log
        self.ready_url = ready_url
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        with self.log.open("ab") as handle:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = self.proc

        def ready() -> bool:
            if proc.poll() is not None:
                raise StackError(f"{self.name} exited with {proc.returncode}\n{tail(self.log)}")
            host, _, rest = self.ready_url.removeprefix("http://").partition("/")
            return http_status(int(host.rpartition(":")[2]), "/" + rest, 1.0) == 200

        try:
            wait_until(
                ready, timeout, f"{self.name} to be ready", interval=0.1, detail=lambda: tail(self.log)
            )
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = _PROCESS_TIMEOUT) -> None:
        proc, self.proc = self.proc, None
        stop_process(proc, signal.SIGTERM, timeout)


def _get_json(url: str, timeout: float = _HTTP_TIMEOUT) -> Any:
    host, _, rest = url.removeprefix("http://").partition("/")
    conn = http.client.HTTPConnection(host.rpartition(":")[0], int(host.rpartition(":")[2]), timeout=timeout)
    try:
        conn.request("GET", "/" + rest)
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    if response.status != 200:
        raise StackError(f"GET {url}: HTTP {response.status}: {body[:300]!r}")
    return json.loads(body)


def render_rules(folder: Path, for_scale: float = FOR_SCALE) -> Path:
    """``badgateway-exporter rules render --out FOLDER --for-scale F --set ...``: the rule file."""
    code = rules.main(
        [
            "render", "--out", str(folder), "--for-scale", f"{for_scale:g}",
            "--set", f"error_rate_window={ERROR_RATE_WINDOW}",
            "--set", f"gateway_error_rate={GATEWAY_ERROR_RATE:g}",
        ]
    )  # fmt: skip
    if code != 0:
        raise StackError(f"rules render failed with exit code {code}")
    return folder / rules.RULES_FILE


def alertmanager_config(webhook_url: str, source: Path | None = None) -> dict[str, Any]:
    """The bundled ``rules/alertmanager.yml`` with its receivers aimed at ``webhook_url`` and short timers.

    The inhibition rules and the routing tree are kept as they are; only the webhook URLs and the
    route's ``group_wait``/``group_interval``/``repeat_interval`` change.
    """
    path = source or repo_file("rules", "alertmanager.yml")
    if path is None:
        raise StackError("rules/alertmanager.yml not found next to this package (run from a source tree)")
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(document, dict) or "route" not in document:
        raise StackError(f"{path}: not an Alertmanager configuration")

    def shorten(route: dict[str, Any]) -> None:
        route["group_wait"] = GROUP_WAIT
        route["group_interval"] = GROUP_INTERVAL
        route["repeat_interval"] = REPEAT_INTERVAL
        for child in route.get("routes", []) or []:
            shorten(child)

    shorten(document["route"])
    for receiver in document.get("receivers", []) or []:
        for hook in receiver.get("webhook_configs", []) or []:
            hook["url"] = f"{webhook_url}/{quote(receiver['name'])}"
            hook["send_resolved"] = True
    return document


class Alertmanager(ChildProcess):
    """Debian's prometheus-alertmanager on a free loopback port, no cluster listener."""

    def __init__(self, workdir: Path, config: dict[str, Any]) -> None:
        binary = find_program("prometheus-alertmanager", "alertmanager")
        if binary is None:
            raise StackError("prometheus-alertmanager is not installed")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "alertmanager.yml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        super().__init__(
            "alertmanager",
            [
                binary,
                f"--config.file={self.config_path}",
                f"--storage.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--cluster.listen-address=",
                "--log.level=warn",
            ],
            workdir / "alertmanager.log",
            f"{self.url}/-/ready",
        )

    def alerts(self) -> list[dict[str, Any]]:
        found = _get_json(f"{self.url}/api/v2/alerts")
        return found if isinstance(found, list) else []


class Prometheus(ChildProcess):
    """Debian's prometheus scraping ``targets`` every second with ``rule_file``, sending to ``alertmanager``."""

    def __init__(self, workdir: Path, targets: list[str], rule_file: Path, alertmanager: str | None) -> None:
        binary = find_program("prometheus")
        if binary is None:
            raise StackError("prometheus is not installed")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        config: dict[str, Any] = {
            "global": {
                "scrape_interval": SCRAPE_INTERVAL,
                "scrape_timeout": SCRAPE_INTERVAL,
                "evaluation_interval": SCRAPE_INTERVAL,
            },
            "rule_files": [str(rule_file)],
            "scrape_configs": [{"job_name": "badgateway", "static_configs": [{"targets": targets}]}],
        }
        if alertmanager is not None:
            config["alerting"] = {
                "alertmanagers": [{"static_configs": [{"targets": [alertmanager.removeprefix("http://")]}]}]
            }
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        super().__init__(
            "prometheus",
            [
                binary,
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1d",
                "--log.level=warn",
            ],
            workdir / "prometheus.log",
            f"{self.url}/-/ready",
        )

    def query(self, expr: str) -> list[dict[str, Any]]:
        document = _get_json(f"{self.url}/api/v1/query?query={quote(expr)}")
        data = document.get("data", {})
        result = data.get("result", [])
        return result if isinstance(result, list) else []

    def firing(self, state: str = "firing") -> set[str]:
        """Alert names in ``ALERTS`` with ``alertstate`` ``state`` now."""
        return {r["metric"].get("alertname", "") for r in self.query(f'ALERTS{{alertstate="{state}"}}')}


@contextlib.contextmanager
def stopping(*children: ChildProcess) -> Iterator[None]:
    """Stop ``children`` (last first) when the block ends."""
    try:
        yield
    finally:
        for child in reversed(children):
            child.stop()
