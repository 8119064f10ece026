"""A real system-mode systemd with a real system D-Bus, run inside namespaces for tests.

Safety measures (see ``docs/units.md``): the launcher first moves itself into sub-cgroups created here
(never the host's root cgroup), then ``unshare`` gives it new PID, mount, UTS, IPC and cgroup
namespaces. Inside, ``/run``, ``/etc/systemd/system`` and ``/var/lib/systemd`` are private folders,
``/dev/console`` and ``/dev/kmsg`` are bind-mounted to a log file in the temp folder, ``/proc/sys`` and ``/sys`` are read-only
(global sysctls such as ``kernel.core_pattern`` stay untouched) and ``/sys/fs/cgroup`` is a tmpfs
with the namespace's own view of the hierarchies. Teardown SIGKILLs the namespace's PID 1 (the kernel
then kills every process in it), waits, removes the cgroup folders bottom-up and the temp folder.
:func:`host_snapshot` and :func:`host_differences` prove the host is left as it was found.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jeepney import DBusAddress, HeaderFields, MessageType, new_method_call  # type: ignore[import-untyped]
from jeepney.io.blocking import DBusConnection, open_dbus_connection  # type: ignore[import-untyped]

from harness import free_port, wait_until

SYSTEMD = "/lib/systemd/systemd"
CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_PREFIX = "badgateway-systemd-test-"
TMP_PREFIX = "bgw-systemd-"
TARGET = "bgwtest.target"
STUB_TARGETS = (
    "sysinit",
    "basic",
    "sockets",
    "shutdown",
    "local-fs",
    "local-fs-pre",
    "paths",
    "slices",
    "swap",
    "timers",
    "umount",
    "multi-user",
    "network",
    "network-online",
    "nss-user-lookup",
    "remote-fs",
)
COPIED_UNITS = ("dbus.socket", "dbus.service", "exit.target", "systemd-exit.service", "final.target",
                "systemd-journald.socket", "systemd-journald-dev-log.socket", "systemd-journald.service")  # fmt: skip
UNIT_SOURCE_DIRS = (Path("/lib/systemd/system"), Path("/usr/lib/systemd/system"))

# Units of the test stack (names as on a production host).
PHP_FPM = "php8.2-fpm.service"
NGINX = "nginx.service"
BACKEND = "iiko-backend.service"
BROKEN = "broken.service"
FLAKY = "flaky.service"
MISSING = "php8.3-fpm.service"
STACK_UNITS = (PHP_FPM, NGINX, BACKEND, BROKEN, FLAKY)
SERVICE_PROPERTIES = frozenset({"NRestarts", "MainPID", "Result", "ExecMainStatus", "ExecMainCode"})

INNER_SCRIPT = r"""#!/bin/sh
# Runs as PID 1 of a fresh PID namespace with private mount/uts/ipc/cgroup namespaces.
set -eu
T="$1"
MODE="$2"
mount --make-rprivate /
mount --bind "$T/run" /run
mount --bind "$T/etc-systemd-system" /etc/systemd/system
if [ -d /var/lib/systemd ]; then mount --bind "$T/var-lib-systemd" /var/lib/systemd; fi
# journald keeps its files in the temp folder, never in the host's /var/log/journal.
if [ -d /var/log/journal ]; then mount --bind "$T/var-log-journal" /var/log/journal; fi
# systemd as PID 1 writes to /dev/console: send that to our log file, never to the host's console.
if [ -e /dev/console ]; then mount --bind "$T/console.log" /dev/console; fi
if [ -e /dev/kmsg ]; then mount --bind "$T/console.log" /dev/kmsg; fi
for ro in /proc/sys /proc/sysrq-trigger; do
  if [ -e "$ro" ]; then mount --bind "$ro" "$ro"; mount -o remount,bind,ro "$ro"; fi
done
case "$MODE" in
  unified)
    mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 /sys/fs/cgroup
    ;;
  *)
    mount -t tmpfs -o mode=755,nosuid,nodev,noexec tmpfs /sys/fs/cgroup
    mkdir /sys/fs/cgroup/systemd
    mount -t cgroup -o none,name=systemd,nosuid,nodev,noexec cgroup /sys/fs/cgroup/systemd
    if [ "$MODE" = hybrid ]; then
      mkdir /sys/fs/cgroup/unified
      mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 /sys/fs/cgroup/unified
    fi
    ;;
esac
mount -o remount,bind,ro /sys
exec env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin container=badgateway-test \
  SYSTEMD_UNIT_PATH=/etc/systemd/system \
  SYSTEMD_GENERATOR_PATH="$T/empty" SYSTEMD_ENVIRONMENT_GENERATOR_PATH="$T/empty" \
  SYSTEMD_LOG_COLOR=0 \
  /lib/systemd/systemd --system --unit=bgwtest.target --log-target=kmsg --log-level=info
"""

OUTER_SCRIPT = r"""#!/bin/sh
# Joins the test's own sub-cgroups first, then enters the namespaces.
set -eu
T="$1"
MODE="$2"
shift 2
for cg in "$@"; do echo $$ > "$cg/cgroup.procs"; done
exec unshare --kill-child=SIGKILL --pid --fork --mount --uts --ipc --cgroup --mount-proc --propagation private \
  /bin/sh "$T/inner.sh" "$T" "$MODE"
"""

ASGI_APP = '''"""Tiny ASGI backend for the systemd harness."""


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"backend ok"})
'''


class HarnessError(RuntimeError):
    """The harness could not start (the message carries systemd's log tail)."""


def _run(argv: Sequence[str], timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)


def namespace_refusal() -> str | None:
    """None if the kernel lets us create the namespaces the harness needs, else the reason."""
    if os.geteuid() != 0:
        return "needs root to create PID/mount/cgroup namespaces and sub-cgroups"
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    try:
        probe = _run(
            ["unshare", "--pid", "--fork", "--mount", "--uts", "--ipc", "--cgroup", "--mount-proc", "true"],
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare probe failed: {exc}"
    if probe.returncode != 0:
        return f"kernel refuses namespaces: {probe.stderr.strip() or f'exit {probe.returncode}'}"
    return None


REQUIRE_ENV = "BADGATEWAY_REQUIRE_SYSTEMD"


def require_systemd() -> None:
    """Skip the calling test where the harness cannot run; with ``BADGATEWAY_REQUIRE_SYSTEMD=1`` (CI on
    a host that must run it) fail it instead."""
    import pytest  # the harness module is also imported outside pytest (the benchmarks)

    reason = namespace_refusal()
    if reason is None:
        return
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{REQUIRE_ENV}=1 but the real-systemd harness cannot run: {reason}")
    pytest.skip(f"real systemd harness not possible here: {reason}")


def cgroup_layout() -> tuple[str, list[Path]]:
    """The host's cgroup mode (hybrid, legacy or unified) and the hierarchy roots to make sub-cgroups in."""
    mounts = {}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        mounts[left.split()[4]] = right.split()[0]
    if mounts.get(str(CGROUP_ROOT)) == "cgroup2":
        return "unified", [CGROUP_ROOT]
    roots = []
    if mounts.get(str(CGROUP_ROOT / "systemd")) == "cgroup":
        roots.append(CGROUP_ROOT / "systemd")
    if mounts.get(str(CGROUP_ROOT / "unified")) == "cgroup2":
        roots.append(CGROUP_ROOT / "unified")
    if not roots or roots[0].name != "systemd":
        raise HarnessError(f"unsupported cgroup layout under {CGROUP_ROOT}: {sorted(mounts)}")
    return ("hybrid" if len(roots) == 2 else "legacy"), roots


def _unit(
    description: str, exec_start: str, log: Path, extra: str = "", unit_extra: str = "", install: bool = True
) -> str:
    text = (
        f"[Unit]\nDescription={description}\n{unit_extra}\n[Service]\nType=simple\nExecStart={exec_start}\n"
        f"StandardOutput=append:{log}\nStandardError=inherit\n{extra}"
    )
    if install:
        text += "\n[Install]\nWantedBy=multi-user.target\n"
    return text


def write_stack(stack: Path, nginx_port: int, backend_port: int) -> dict[str, str]:
    """Write php-fpm, nginx and uvicorn configs under ``stack``; return the unit files by name."""
    for sub in ("run", "log", "tmp", "www"):
        (stack / sub).mkdir(parents=True, exist_ok=True)
    php_conf = stack / "php-fpm.conf"
    php_conf.write_text(
        f"[global]\npid = {stack}/run/php-fpm.pid\nerror_log = {stack}/log/php-fpm.log\ndaemonize = no\n\n"
        f"[www]\nuser = www-data\ngroup = www-data\nlisten = {stack}/run/php.sock\n"
        "listen.owner = www-data\nlisten.group = www-data\nlisten.mode = 0660\n"
        "pm = static\npm.max_children = 1\nping.path = /ping\npm.status_path = /status\n"
    )
    nginx_conf = stack / "nginx.conf"
    temp = stack / "tmp"
    nginx_conf.write_text(
        f"daemon off;\nuser www-data;\nworker_processes 1;\npid {stack}/run/nginx.pid;\n"
        f"error_log {stack}/log/error.log;\nevents {{ worker_connections 64; }}\n"
        "http {\n"
        f"  access_log {stack}/log/access.log;\n"
        f"  client_body_temp_path {temp}/body; proxy_temp_path {temp}/proxy;\n"
        f"  fastcgi_temp_path {temp}/fastcgi; uwsgi_temp_path {temp}/uwsgi; scgi_temp_path {temp}/scgi;\n"
        f"  server {{\n    listen 127.0.0.1:{nginx_port};\n"
        "    location = /ping {\n      include /etc/nginx/fastcgi_params;\n"
        "      fastcgi_param SCRIPT_NAME /ping; fastcgi_param SCRIPT_FILENAME /ping;\n"
        f"      fastcgi_pass unix:{stack}/run/php.sock;\n    }}\n"
        f"    location / {{ proxy_pass http://127.0.0.1:{backend_port}; }}\n  }}\n}}\n"
    )
    (stack / "app.py").write_text(ASGI_APP)
    log = stack / "log"
    return {
        PHP_FPM: _unit("PHP 8.2 FastCGI (test)", f"/usr/sbin/php-fpm8.2 -F -y {php_conf}", log / "php.out"),
        NGINX: _unit(
            "nginx (test)",
            f"/usr/sbin/nginx -e {log}/error.log -p {stack}/ -c {nginx_conf}",
            log / "nginx.out",
        ),
        BACKEND: _unit(
            "uvicorn backend (test)",
            f"{sys.executable} -m uvicorn --app-dir {stack} app:app --host 127.0.0.1 --port {backend_port}"
            " --lifespan off --no-access-log",
            log / "backend.out",
        ),
        BROKEN: _unit("fails on start (test)", "/bin/false", log / "broken.out"),
        FLAKY: _unit(
            "restarted on failure (test)",
            "/bin/sleep infinity",
            log / "flaky.out",
            extra="Restart=on-failure\nRestartSec=100ms\n",
            unit_extra="StartLimitIntervalSec=0\n",
        ),
    }


def _unit_files(extra_units: dict[str, str]) -> dict[str, str]:
    files: dict[str, str] = {}
    for name in COPIED_UNITS:
        source = next((d / name for d in UNIT_SOURCE_DIRS if (d / name).is_file()), None)
        if source is None:
            raise HarnessError(
                f"{name} not found in {[str(d) for d in UNIT_SOURCE_DIRS]} (install dbus/systemd)"
            )
        files[name] = source.read_text()
    for stub in STUB_TARGETS:
        files[f"{stub}.target"] = f"[Unit]\nDescription=stub {stub}\n"
    files[TARGET] = (
        "[Unit]\nDescription=badgateway test root\n"
        "Wants=dbus.socket dbus.service systemd-journald.socket systemd-journald.service\n"
    )
    files.update(extra_units)
    return files


def _die_with_parent() -> None:
    """In the launcher (before exec): SIGKILL it if the test process dies.

    With ``unshare --kill-child`` the namespace's PID 1 follows, so a killed pytest leaves no systemd.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


def remove_stale() -> list[Path]:
    """Remove what an earlier, killed harness left: its empty sub-cgroups and temp folder.

    Only names with this harness's prefix whose owner PID (part of the name) is gone; cgroups are
    removed with rmdir, which the kernel refuses for a cgroup that still has processes.
    """
    removed = []
    candidates = [folder for root in cgroup_layout()[1] for folder in root.glob(f"{CGROUP_PREFIX}*")]
    candidates += list(Path(tempfile.gettempdir()).glob(f"{TMP_PREFIX}*"))
    for folder in candidates:
        prefix = CGROUP_PREFIX if folder.name.startswith(CGROUP_PREFIX) else TMP_PREFIX
        owner = folder.name.removeprefix(prefix).split("-", 1)[0]
        if not owner.isdigit() or Path(f"/proc/{owner}").exists():
            continue
        if prefix == TMP_PREFIX:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
            continue
        try:
            for dirpath, _dirs, _files in os.walk(folder, topdown=False):
                Path(dirpath).rmdir()
        except OSError:
            continue
        removed.append(folder)
    return removed


def _pids() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, command line) of every process on the host."""
    result: dict[int, tuple[int, str]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
            cmdline = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        result[int(entry.name)] = (ppid, cmdline.strip() or stat.split("(", 1)[1].rpartition(")")[0])
    return result


def _pid_ns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


class SystemdHarness:
    """A system-mode systemd (PID 1 of a PID namespace) with dbus and the test stack's units."""

    def __init__(self, *, with_stack: bool = True) -> None:
        remove_stale()
        self.id = f"{CGROUP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.mode, roots = cgroup_layout()
        self.cgroups = [root / self.id for root in roots]
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-"))
        self.stack = self.tmp / "stack"
        self.unit_dir = self.tmp / "etc-systemd-system"
        self.bus_path = self.tmp / "run" / "dbus" / "system_bus_socket"
        self.bus_address = f"unix:path={self.bus_path}"
        # journald (a unit of this systemd) keeps a volatile journal in the private /run.
        self.journal_directory = self.tmp / "run" / "log" / "journal"
        self.nginx_port = free_port()
        self.backend_port = free_port()
        self.with_stack = with_stack
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid1: int | None = None
        self._conn: DBusConnection | None = None
        self._log: Any = None

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self, timeout: float = 20.0) -> None:
        """Start systemd and wait until it answers on its system bus."""
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise

    def _start(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        # Parents must be traversable for www-data (php-fpm/nginx workers).
        private = ("run", "etc-systemd-system", "var-lib-systemd", "var-log-journal")
        for folder in (self.tmp, *[self.tmp / d for d in private]):
            folder.mkdir(exist_ok=True)
            folder.chmod(0o755)
        (self.tmp / "empty").mkdir()
        units = write_stack(self.stack, self.nginx_port, self.backend_port) if self.with_stack else {}
        for name, text in _unit_files(units).items():
            (self.unit_dir / name).write_text(text)
        (self.tmp / "inner.sh").write_text(INNER_SCRIPT)
        (self.tmp / "outer.sh").write_text(OUTER_SCRIPT)
        for cgroup in self.cgroups:
            cgroup.mkdir()
        (self.tmp / "console.log").touch()
        self._log = (self.tmp / "systemd.log").open("wb")
        self.proc = subprocess.Popen(
            ["/bin/sh", str(self.tmp / "outer.sh"), str(self.tmp), self.mode, *map(str, self.cgroups)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        while True:
            if self.proc.poll() is not None:
                raise HarnessError(f"namespace launcher exited {self.proc.returncode}:\n{self.log_tail()}")
            if self.pid1 is None:
                self.pid1 = self._child_of(self.proc.pid)
            if self.pid1 is not None and self.bus_path.exists():
                try:
                    self.connection()
                    self.unit_property("dbus.service", "ActiveState")
                    return
                except (OSError, RuntimeError, TimeoutError):
                    self._close_connection()
            if time.monotonic() > deadline:
                raise HarnessError(f"systemd did not come up within {timeout} s:\n{self.log_tail()}")
            time.sleep(0.02)

    @staticmethod
    def _child_of(ppid: int) -> int | None:
        for pid, (parent, _) in _pids().items():
            if parent == ppid:
                return pid
        return None

    def stop(self) -> None:
        """Kill the namespace (SIGKILL its PID 1), reap, remove cgroup folders and temp files."""
        self._close_connection()
        if self.proc is not None:
            pid1 = self.pid1 or self._child_of(self.proc.pid)
            if pid1 is not None and self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid1, signal.SIGKILL)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()  # our own unshare process
                self.proc.wait(timeout=10)
            self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        self._remove_cgroups()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _remove_cgroups(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        for cgroup in self.cgroups:
            while cgroup.exists():
                try:
                    for dirpath, _dirs, _files in os.walk(cgroup, topdown=False):
                        Path(dirpath).rmdir()
                except OSError as exc:
                    if time.monotonic() > deadline:
                        raise HarnessError(f"cannot remove {cgroup}: {exc}") from exc
                    time.sleep(0.01)

    def __enter__(self) -> SystemdHarness:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of systemd's console output."""
        text = ""
        for name in ("systemd.log", "console.log"):
            with contextlib.suppress(OSError):
                text += (self.tmp / name).read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:]) or "(no log)"

    # -- control over the real bus -------------------------------------------------------------------
    def connection(self) -> DBusConnection:
        """A jeepney connection to the namespace's system bus (kept)."""
        if self._conn is None:
            self._conn = open_dbus_connection(bus=self.bus_address, auth_timeout=2.0)
        return self._conn

    def _close_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def call(
        self,
        path: str,
        interface: str,
        method: str,
        signature: str | None = None,
        body: tuple[Any, ...] = (),
        timeout: float = 10.0,
    ) -> tuple[Any, ...]:
        """Call a method on systemd; raise RuntimeError with the D-Bus error on failure."""
        address = DBusAddress(path, bus_name="org.freedesktop.systemd1", interface=interface)
        reply = self.connection().send_and_get_reply(
            new_method_call(address, method, signature, body), timeout=timeout
        )
        if reply.header.message_type == MessageType.error:
            name = reply.header.fields.get(HeaderFields.error_name)
            raise RuntimeError(f"{method}{body}: {name}: {reply.body}")
        return tuple(reply.body)

    def manager(
        self, method: str, signature: str | None = None, body: tuple[Any, ...] = ()
    ) -> tuple[Any, ...]:
        """Call a method of org.freedesktop.systemd1.Manager."""
        return self.call(
            "/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager", method, signature, body
        )

    def unit_property(self, unit: str, prop: str, interface: str | None = None) -> Any:
        """One property of a unit (loading it if needed); Service properties by their own interface."""
        if interface is None:
            service = prop in SERVICE_PROPERTIES
            interface = "org.freedesktop.systemd1.Service" if service else "org.freedesktop.systemd1.Unit"
        (path,) = self.manager("LoadUnit", "s", (unit,))
        (variant,) = self.call(path, "org.freedesktop.DBus.Properties", "Get", "ss", (interface, prop))
        return variant[1]

    def add_units(self, files: dict[str, str]) -> None:
        """Write unit files into the namespace's unit folder and make systemd read them (Reload)."""
        for name, text in files.items():
            (self.unit_dir / name).write_text(text, encoding="utf-8")
        self.manager("Reload")

    def start_unit(self, unit: str) -> None:
        """StartUnit(unit, "replace") (returns once queued)."""
        self.manager("StartUnit", "ss", (unit, "replace"))

    def stop_unit(self, unit: str) -> None:
        """StopUnit(unit, "replace")."""
        self.manager("StopUnit", "ss", (unit, "replace"))

    def kill_unit(self, unit: str, sig: int = signal.SIGKILL, who: str = "main") -> None:
        """KillUnit: send ``sig`` to the unit's main process (or ``all``)."""
        self.manager("KillUnit", "ssi", (unit, who, int(sig)))

    def reset_failed(self, unit: str) -> None:
        """ResetFailedUnit."""
        self.manager("ResetFailedUnit", "s", (unit,))

    def enable(self, units: Sequence[str]) -> None:
        """EnableUnitFiles (persistent, inside the namespace's private /etc/systemd/system) + Reload."""
        self.manager("EnableUnitFiles", "asbb", (list(units), False, True))
        self.manager("Reload")

    def disable(self, units: Sequence[str]) -> None:
        """DisableUnitFiles + Reload."""
        self.manager("DisableUnitFiles", "asb", (list(units), False))
        self.manager("Reload")

    def wait_for(
        self,
        unit: str,
        predicate: Callable[[dict[str, Any]], bool],
        timeout: float = 10.0,
        props: Sequence[str] = ("ActiveState", "SubState"),
    ) -> dict[str, Any]:
        """Poll the unit's properties until ``predicate`` holds and return them (:func:`wait_until`:
        on timeout the error shows the last values and systemd's log)."""
        values: dict[str, Any] = {}

        def holds() -> bool:
            values.clear()
            values.update({p: self.unit_property(unit, p) for p in props})
            return predicate(dict(values))

        wait_until(holds, timeout, f"{unit}", detail=lambda: f"{unit}: still {values}\n{self.log_tail()}")
        return dict(values)

    def wait_state(self, unit: str, active_state: str, timeout: float = 10.0) -> dict[str, Any]:
        """Poll until the unit's ActiveState is ``active_state``."""
        return self.wait_for(unit, lambda v: v["ActiveState"] == active_state, timeout)


# -- host hygiene ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HostSnapshot:
    """What the harness could disturb on the host."""

    mountinfo: str
    cgroup_dirs: tuple[str, ...]
    cgroup_files: dict[str, str]
    pid1_cgroup: str
    self_cgroup: str
    sysctls: dict[str, str]
    dev: tuple[str, ...]
    etc_systemd: tuple[str, ...]
    var_lib_systemd: tuple[str, ...]
    processes: dict[int, tuple[int, str]] = field(compare=False)
    pid_ns: str | None = field(compare=False, default=None)


def _tree(root: Path, dirs_only: bool = False) -> tuple[str, ...]:
    found: list[str] = []
    if not root.exists():
        return ()
    for dirpath, dirnames, filenames in os.walk(root):
        found.extend(os.path.join(dirpath, d) for d in dirnames)
        if not dirs_only:
            found.extend(os.path.join(dirpath, f) for f in filenames)
    return tuple(sorted(found))


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        return f"<{exc.strerror}>"


def host_snapshot() -> HostSnapshot:
    """Record mounts, cgroup folders, global sysctls, /dev, /etc/systemd, /var/lib/systemd and processes."""
    hierarchies = [CGROUP_ROOT / "systemd", CGROUP_ROOT / "unified"]
    if cgroup_layout()[0] == "unified":
        hierarchies = [CGROUP_ROOT]
    dirs: list[str] = []
    for root in hierarchies:
        dirs.extend(_tree(root, dirs_only=True))
    cgroup_files = {
        path: _read(path)
        for path in (
            "/sys/fs/cgroup/systemd/release_agent",
            "/sys/fs/cgroup/systemd/notify_on_release",
            "/sys/fs/cgroup/unified/cgroup.subtree_control",
        )
    }
    return HostSnapshot(
        mountinfo=_read("/proc/self/mountinfo"),
        cgroup_dirs=tuple(sorted(dirs)),
        cgroup_files=cgroup_files,
        pid1_cgroup=_read("/proc/1/cgroup"),
        self_cgroup=_read("/proc/self/cgroup"),
        sysctls={
            name: _read(f"/proc/sys/{name}")
            for name in (
                "kernel/core_pattern",
                "fs/nr_open",
                "fs/file-max",
                "kernel/hostname",
                "kernel/pid_max",
            )
        },
        dev=tuple(sorted(os.listdir("/dev"))),
        etc_systemd=_tree(Path("/etc/systemd")),
        var_lib_systemd=_tree(Path("/var/lib/systemd")),
        processes=_pids(),
        pid_ns=_pid_ns(os.getpid()),
    )


OUR_PROGRAMS = (
    "systemd",
    "dbus-daemon",
    "php-fpm",
    "nginx",
    "uvicorn",
    "unshare",
    "sleep",
    "inner.sh",
    "outer.sh",
)


def host_differences(before: HostSnapshot, after: HostSnapshot, markers: Sequence[str] = ()) -> list[str]:
    """Human-readable differences that the harness could have caused (empty list: host unchanged).

    Processes: the host runs other work concurrently, so a new process counts only if it lives in
    another PID namespace, mentions one of ``markers`` (e.g. the temp folder), descends from this
    test process, or is an orphan (parent PID 1) running one of the harness's programs.
    """
    problems: list[str] = []
    for name in ("mountinfo", "pid1_cgroup", "self_cgroup"):
        if getattr(before, name) != getattr(after, name):
            problems.append(
                f"{name} changed:\n--- before\n{getattr(before, name)}\n--- after\n{getattr(after, name)}"
            )
    for name in ("cgroup_dirs", "dev", "etc_systemd", "var_lib_systemd"):
        old, new = set(getattr(before, name)), set(getattr(after, name))
        if old != new:
            problems.append(f"{name}: added {sorted(new - old)}, removed {sorted(old - new)}")
    for name in ("cgroup_files", "sysctls"):
        old_map, new_map = getattr(before, name), getattr(after, name)
        for key in sorted(set(old_map) | set(new_map)):
            if old_map.get(key) != new_map.get(key):
                problems.append(f"{name} {key}: {old_map.get(key)!r} -> {new_map.get(key)!r}")
    me = os.getpid()
    for pid, (ppid, cmdline) in sorted(after.processes.items()):
        if pid in before.processes or pid == me:
            continue
        ns = _pid_ns(pid)
        if ns is None:  # gone meanwhile
            continue
        reasons = []
        if before.pid_ns is not None and ns != before.pid_ns:
            reasons.append(f"in another PID namespace {ns}")
        if any(marker and marker in cmdline for marker in markers):
            reasons.append("mentions the harness folder")
        if _descends_from(pid, me, after.processes):
            reasons.append("child of the test process")
        if ppid == 1 and any(prog in cmdline for prog in OUR_PROGRAMS):
            reasons.append("orphan running a harness program")
        if reasons:
            problems.append(f"stray process {pid} ({cmdline!r}): {', '.join(reasons)}")
    return problems


def _descends_from(pid: int, ancestor: int, processes: dict[int, tuple[int, str]]) -> bool:
    seen = set()
    while pid in processes and pid not in seen:
        seen.add(pid)
        pid = processes[pid][0]
        if pid == ancestor:
            return True
    return False


@contextlib.contextmanager
def running_systemd(*, with_stack: bool = True) -> Iterator[SystemdHarness]:
    """Context manager: a started :class:`SystemdHarness`, always stopped afterwards."""
    harness = SystemdHarness(with_stack=with_stack)
    harness.start()
    try:
        yield harness
    finally:
        harness.stop()
