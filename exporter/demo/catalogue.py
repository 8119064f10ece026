"""The fault catalogue: how to inject and heal each 502/504 cause of :mod:`exporter.causes`.

One place knows how to break a :class:`~exporter.demo.stack.Stack` for each cause: :data:`FAULTS`.
Starting, stopping and killing go through a :class:`~exporter.demo.services.Services` object, so the
same fault runs against plain child processes (the demo) or units of a real systemd (the
fault-matrix test). Shared by ``badgateway-exporter demo break`` and the tests.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from exporter.causes import Cause
from exporter.demo.fault import Fault, FaultContext
from exporter.demo.load import RequestLoop
from exporter.demo.log_faults import LOG_FAULTS
from exporter.demo.postgres import Postgres, find_bindir
from exporter.demo.services import Component, FaultError
from exporter.demo.stack import Stack, StackError, http_status, wait_until
from exporter.diagnosis.explain import RECOVERED_AFTER_SECONDS

__all__ = [
    "FAULTS",
    "FAULTS_BY_NAME",
    "FILL_FILE",
    "HOG_SCRIPT",
    "Fault",
    "FaultContext",
    "FaultError",
    "fill_disk",
    "find_fault",
    "memory_cgroups",
]

_SLOW_SCRIPT_SECONDS = 5.0
_MAX_FILL_BYTES = 512 * 1024 * 1024  # never fill a filesystem larger than this
FILL_FILE = "badgateway-fault-fill"
OOM_LIMIT_BYTES = 64 * 1024 * 1024
HOG_SCRIPT = "badgateway-hog.php"


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


# -- OOM: a PHP worker in a memory-limited sub-cgroup (cgroup v2, else v1's memory controller) ---------


@dataclass(frozen=True)
class MemoryCgroups:
    """Where memory-limited cgroups can be made, and the names of their limit files."""

    parent: Path
    limit_file: str
    swap_file: str
    version: int


_V2_FILES = ("memory.max", "memory.swap.max")
_V1_FILES = ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes")


def _cgroup_mounts() -> list[tuple[str, str, list[str]]]:
    """``(mount point, fstype, super options)`` of every cgroup hierarchy mounted here."""
    mounts = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text(encoding="utf-8").splitlines():
            left, _, right = line.partition(" - ")
            fields = right.split()
            if fields[:1] in (["cgroup2"], ["cgroup"]) and len(fields) >= 3:
                mounts.append((left.split()[4], fields[0], fields[2].split(",")))
    return mounts


def _v2_reason(root: Path) -> str | None:
    """None when children of ``root`` get the memory controller, else why not."""
    try:
        controllers = (root / "cgroup.subtree_control").read_text(encoding="utf-8").split()
        available = (root / "cgroup.controllers").read_text(encoding="utf-8").split()
    except OSError as exc:
        return f"{root}: {exc.strerror or exc}"
    if "memory" in controllers:
        return None
    if "memory" not in available:
        return (
            f"cgroup v2 at {root} offers no memory controller (controllers: {' '.join(available) or 'none'})"
        )
    return f"the memory controller is not enabled for children of {root}"


def memory_cgroups() -> tuple[MemoryCgroups | None, str]:
    """Where to make a memory-limited cgroup: cgroup v2 with the memory controller, else cgroup v1's."""
    mounts = _cgroup_mounts()
    reasons = []
    for mount, fstype, _options in sorted(mounts):
        if fstype == "cgroup2":
            reason = _v2_reason(Path(mount))
            if reason is None:
                return MemoryCgroups(Path(mount), *_V2_FILES, 2), ""
            reasons.append(reason)
    for mount, fstype, options in sorted(mounts):
        if fstype == "cgroup" and "memory" in options:
            return MemoryCgroups(Path(mount), *_V1_FILES, 1), ""
    return None, "; ".join(reasons) or "no cgroup hierarchy with a memory controller is mounted"


def _oom_unavailable(ctx: FaultContext) -> str | None:
    if os.geteuid() != 0:
        return "needs root to create a cgroup"
    found, reason = memory_cgroups()
    return None if found is not None else reason


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
    found, reason = memory_cgroups()
    if found is None:
        raise FaultError(reason)
    cgroup = found.parent / f"badgateway-oom-{os.getpid()}"
    cgroup.mkdir()
    ctx.state["oom_cgroup"] = cgroup
    limit = str(OOM_LIMIT_BYTES)
    (cgroup / found.limit_file).write_text(limit, encoding="ascii")
    with contextlib.suppress(OSError):  # no swap accounting: nothing to limit
        (cgroup / found.swap_file).write_text("0" if found.version == 2 else limit, encoding="ascii")
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


_MAX_CHILDREN_LINE = re.compile(r"^pm\.max_children = \d+$", re.MULTILINE)


def _php_fpm_config_break(ctx: FaultContext) -> None:
    """A typo in the pool (``pm.max_children = abc``), then a restart: PHP-FPM cannot start again."""
    conf = ctx.stack.php_fpm_conf
    text = conf.read_text(encoding="utf-8")
    broken = _MAX_CHILDREN_LINE.sub("pm.max_children = abc", text, count=1)
    if broken == text:
        raise FaultError(f"{conf}: no pm.max_children line to break")
    ctx.services.stop("php_fpm")
    conf.write_text(broken, encoding="utf-8")
    try:
        ctx.services.start("php_fpm")
    except StackError:
        return  # expected: php-fpm refuses the file
    raise FaultError(f"PHP-FPM started with {conf} broken")


def _php_fpm_config_heal(ctx: FaultContext) -> None:
    ctx.stack.set_max_children(ctx.stack.max_children)  # the pool file from its template again
    ctx.services.start("php_fpm")


BOOT_ERROR = "could not connect to the database at 127.0.0.1:5432 (settings: DATABASE_URL)"


def _backend_boot_crash(ctx: FaultContext) -> None:
    """A setting that makes the app raise as it is imported, then a restart: the backend cannot start."""
    ctx.services.stop("backend")
    ctx.stack.backend_env_file.write_text(f"BADGATEWAY_DEMO_BOOT_ERROR={BOOT_ERROR}\n", encoding="utf-8")
    try:
        ctx.services.start("backend")
    except StackError:
        return  # expected: uvicorn exits with the app's exception
    raise FaultError("the backend started although its app raises at import")


def _backend_boot_heal(ctx: FaultContext) -> None:
    ctx.stack.backend_env_file.unlink(missing_ok=True)
    ctx.services.start("backend")


def _database_unavailable(ctx: FaultContext) -> str | None:
    del ctx
    return None if find_bindir() is not None else "PostgreSQL is not installed (Debian package postgresql-15)"


def _database_stop(ctx: FaultContext) -> None:
    """A real PostgreSQL behind the backend (DATABASE_URL in its EnvironmentFile), then stopped for real."""
    postgres = Postgres()
    ctx.state["postgres"] = postgres
    postgres.start()
    ctx.stack.backend_env_file.write_text(f"DATABASE_URL={postgres.url}\n", encoding="utf-8")
    ctx.services.restart("backend")  # its /health checks the database from now on
    wait_until(
        lambda: http_status(ctx.stack.backend_port, "/health", 1.0) == 200, 15.0, "the backend's /health"
    )
    # The restart's refused connects are an incident of their own: let it be over (the backend answers
    # and nginx logged nothing for that long) before the fault, or they stay unexplained 502s meanwhile.
    answered = time.monotonic()
    wait_until(lambda: time.monotonic() - answered > RECOVERED_AFTER_SECONDS, RECOVERED_AFTER_SECONDS + 5,
               "the backend's restart to be history", interval=0.5)  # fmt: skip
    postgres.stop()


def _database_heal(ctx: FaultContext) -> None:
    postgres = ctx.state.pop("postgres", None)
    if not isinstance(postgres, Postgres):
        return
    try:
        postgres.start()
        wait_until(
            lambda: http_status(ctx.stack.backend_port, "/health", 1.0) == 200, 15.0, "the backend's /health"
        )
        ctx.stack.backend_env_file.unlink(missing_ok=True)
        ctx.services.restart("backend")  # without a database again, as before the fault
    finally:
        postgres.close()


FAULTS: tuple[Fault, ...] = (
    Fault("php_fpm_stopped", Cause.PHP_FPM_DOWN, "PHP-FPM stopped",
          lambda ctx: ctx.services.stop("php_fpm"), _start_again("php_fpm")),
    Fault("php_fpm_killed", Cause.PHP_FPM_DOWN, "PHP-FPM SIGKILLed (stale socket left behind)",
          lambda ctx: ctx.services.kill("php_fpm"), _start_again("php_fpm")),
    Fault("php_fpm_config_broken", Cause.PHP_FPM_CONFIG_INVALID,
          "pm.max_children = abc in the pool file, then PHP-FPM restarted (it cannot start)",
          _php_fpm_config_break, _php_fpm_config_heal),
    Fault("backend_stopped", Cause.BACKEND_DOWN, "backend stopped",
          lambda ctx: ctx.services.stop("backend"), _start_again("backend")),
    Fault("backend_crashes_at_boot", Cause.BACKEND_DOWN,
          "the app raises as uvicorn imports it (a setting in its EnvironmentFile), then restarted",
          _backend_boot_crash, _backend_boot_heal),
    Fault("database_stopped", Cause.DATABASE_DOWN,
          "PostgreSQL behind the backend (its /health checks it) stopped for real",
          _database_stop, _database_heal, _database_unavailable),
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

FAULTS += LOG_FAULTS

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
