"""A real nginx + PHP-FPM + uvicorn stack as child processes, with fault injection.

Everything lives under one root folder (configs, sockets, pid files, logs, nginx temp paths);
nothing on the host outside it is touched. Each component is a direct child started with
``start_new_session=True`` and waited for on stop. Orphaned PHP-FPM/nginx workers (after a
SIGKILL of their master) are reparented to this process, which makes itself a child subreaper,
and are reaped here: on these hosts PID 1 does not reap.
"""

from __future__ import annotations

import contextlib
import ctypes
import grp
import http.client
import math
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import IO

import psutil

WORKER_USER = "www-data"
ROOT_ENV = "BADGATEWAY_DEMO_ROOT"
BACKEND_STATUS_FILE = "backend/health_status"
BACKEND_DELAY_FILE = "backend/health_delay"
PM_MODES = ("static", "dynamic", "ondemand")

_PR_SET_CHILD_SUBREAPER = 36
_UNIX_PATH_MAX = 107
_START_TIMEOUT = 15.0
_STOP_TIMEOUT = 6.0
_SUBPROCESS_TIMEOUT = 15.0
_PLACEHOLDER = re.compile(r"@[A-Z_]+@")


class StackError(Exception):
    """A component of the demo stack failed; the message carries its log tail."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    *,
    interval: float = 0.02,
    detail: Callable[[], str] | None = None,
) -> None:
    """Poll ``predicate`` until it is true; raise :class:`StackError` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            extra = detail() if detail is not None else ""
            raise StackError(
                f"timed out after {timeout:g}s waiting for {what}" + (f"\n{extra}" if extra else "")
            )
        time.sleep(min(interval, remaining))


def make_root(prefix: str = "badgateway-stack-") -> Path:
    """A fresh 0755 folder under the system temp folder (whose parents www-data can traverse)."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    root.chmod(0o755)
    return root


def find_binary(env: str, names: Iterable[str]) -> str:
    """The program named by environment variable ``env``, else the first of ``names`` found."""
    override = os.environ.get(env)
    if override:
        return override
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin", "/usr/local/sbin"])
    for name in names:
        found = shutil.which(name, path=search)
        if found:
            return found
    raise StackError(f"none of {', '.join(names)} found (set {env})")


def tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a text file, or a note that it cannot be read."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 16384))
            data = handle.read()
    except OSError as exc:
        return f"--- {path}: {exc.strerror or exc}"
    text = data.decode("utf-8", "replace").splitlines()[-lines:]
    return f"--- {path} (last {len(text)} lines)\n" + "\n".join(text)


def set_child_subreaper() -> bool:
    """Make this process adopt orphaned descendants (Linux prctl); True when it worked."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def descendants(pid: int) -> list[int]:
    """Pids of every descendant of ``pid`` (empty when it is gone)."""
    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def session_members(sid: int) -> list[int]:
    """Pids (other than ``sid`` itself) still in session ``sid``, orphans and zombies included.

    Each component is started with ``start_new_session=True``, so its workers stay findable this
    way even after their master is gone (a pid in use as a session id is not handed out again).
    """
    members = []
    for pid in psutil.pids():
        if pid == sid:
            continue
        with contextlib.suppress(OSError):
            if os.getsid(pid) == sid:
                members.append(pid)
    return members


def is_alive(pid: int) -> bool:
    """True when ``pid`` exists and is not a zombie."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def reap(pids: Iterable[int], timeout: float) -> list[int]:
    """Wait for ``pids`` to end, reaping those that are our children; return the ones left."""
    pending = set(pids)
    deadline = time.monotonic() + timeout
    while pending:
        for pid in list(pending):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                # Not our child (reaped by its own parent, or adopted by someone else).
                if not is_alive(pid):
                    pending.discard(pid)
                continue
            if done == pid:
                pending.discard(pid)
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(0.01)
    return sorted(pending)


def _signal(pids: Iterable[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def stop_process(proc: subprocess.Popen[bytes] | None, sig: signal.Signals, timeout: float = 10.0) -> None:
    """Send ``sig`` to a child and wait for it; SIGKILL it (its process group, when it leads one) after ``timeout``."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            if os.getpgid(proc.pid) == proc.pid:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)


def mount_tmpfs(root: Path, size: str, name: str) -> None:
    """Mount a tmpfs of ``size`` (e.g. ``32m``) on ``root``; :class:`StackError` with mount's reason."""
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755,nosuid,nodev", name, str(root)],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    if done.returncode != 0:
        raise StackError(f"cannot mount a tmpfs on {root}: {done.stderr.strip()}")


def is_mounted(path: Path) -> bool:
    """Whether something is mounted exactly on ``path``."""
    target = str(path)
    return any(
        line.split()[4] == target
        for line in Path("/proc/self/mountinfo").read_text(encoding="utf-8").splitlines()
    )


def unmount(path: Path, timeout: float = 15.0) -> None:
    """umount ``path``, retrying while something still holds it open (then raise, never lazy)."""
    last = ""

    def gone() -> bool:
        nonlocal last
        if not is_mounted(path):
            return True
        done = subprocess.run(["umount", str(path)], capture_output=True, text=True, timeout=10, check=False)
        last = done.stderr.strip()
        return done.returncode == 0 and not is_mounted(path)

    wait_until(gone, timeout, f"umount {path}", interval=0.2, detail=lambda: last)


def unix_connects(path: Path) -> bool:
    """Whether ``connect()`` to the unix socket ``path`` succeeds within half a second."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        try:
            sock.connect(str(path))
        except OSError:
            return False
        return True


def _http_get(port: int, path: str, timeout: float = 1.0) -> tuple[int, bytes] | None:
    """GET over plain http.client (no proxy settings apply); None when nothing answers."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def http_status(port: int, path: str, timeout: float = 5.0) -> int | None:
    """The status of a GET of ``path`` on 127.0.0.1:``port``; None when nothing answers."""
    answer = _http_get(port, path, timeout)
    return answer[0] if answer is not None else None


def _env_file(path: Path) -> dict[str, str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return {}
    pairs = (line.partition("=") for line in lines if "=" in line and not line.lstrip().startswith("#"))
    return {key.strip(): value.strip() for key, _, value in pairs}


def _render(name: str, values: dict[str, str]) -> str:
    text = resources.files("exporter.demo").joinpath("templates", name).read_text(encoding="utf-8")
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    left = _PLACEHOLDER.findall(text)
    if left:
        raise StackError(f"template {name}: unfilled placeholders {sorted(set(left))}")
    return text


class Stack:
    """nginx + PHP-FPM + a uvicorn backend under ``root``, started and faulted on demand."""

    def __init__(
        self,
        root: Path,
        *,
        pm: str = "static",
        max_children: int = 2,
        request_terminate_timeout: float | None = None,
        backend_env: Mapping[str, str] | None = None,
    ) -> None:
        """``backend_env``: extra environment variables of the backend (none by default)."""
        if pm not in PM_MODES:
            raise ValueError(f"pm must be one of {PM_MODES}, got {pm!r}")
        if max_children < 1:
            raise ValueError("max_children must be at least 1")
        if request_terminate_timeout is not None and request_terminate_timeout <= 0:
            raise ValueError("request_terminate_timeout must be positive")
        self.pm = pm
        self.max_children = max_children
        self.request_terminate_timeout = request_terminate_timeout
        self.backend_extra_env = dict(backend_env or {})
        self.pool_extra_lines: tuple[str, ...] = ()

        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        self.socket_path = self.root / "run" / "php.sock"
        self.nginx_conf = self.root / "nginx.conf"
        self.nginx_error_log = self.root / "log" / "nginx-error.log"
        self.php_fpm_log = self.root / "log" / "php-fpm.log"
        self.php_fpm_conf = self.root / "php-fpm.conf"
        self.web_root = self.root / "www"
        self.backend_log = self.root / "log" / "backend.log"
        self.deny_connect_flag = self.root / "run" / "deny-tcp-connect"
        self.selinux_root = self.root / "selinux"
        """A stand-in for /sys/fs/selinux (SELinux cannot run here): empty unless a fault writes it."""
        self.worker_user: str | None = WORKER_USER if os.geteuid() == 0 else None
        self._check_paths()

        self.nginx_port = free_port()
        self.backend_port = free_port()
        while self.backend_port == self.nginx_port:
            self.backend_port = free_port()
        self.front_url = f"http://127.0.0.1:{self.nginx_port}/"
        self.backend_url = f"http://127.0.0.1:{self.backend_port}/health"

        self.nginx_binary = find_binary("BADGATEWAY_NGINX", ["nginx"])
        self.php_fpm_binary = find_binary("BADGATEWAY_PHP_FPM", ["php-fpm8.2", "php-fpm8.3", "php-fpm"])
        self.subreaper = set_child_subreaper()

        self._php: subprocess.Popen[bytes] | None = None
        self._nginx: subprocess.Popen[bytes] | None = None
        self._backend: subprocess.Popen[bytes] | None = None
        self._php_paused = False
        self._good_nginx_conf = ""
        self._pool_user_lines = ""
        self._template_values: dict[str, str] = {}
        self._write_files()

    # -- layout -----------------------------------------------------------------------------

    def _check_paths(self) -> None:
        if len(str(self.socket_path).encode()) > _UNIX_PATH_MAX:
            raise StackError(f"{self.socket_path}: too long for a unix socket path")
        if self.worker_user is None:
            return
        for parent in self.root.parents:
            if not parent.stat().st_mode & 0o001:
                raise StackError(
                    f"{parent}: not searchable by {self.worker_user} (mode "
                    f"{parent.stat().st_mode & 0o777:o}); put the stack root under a 0755 folder, "
                    "e.g. exporter.demo.stack.make_root()"
                )

    def _write_files(self) -> None:
        for sub in ("run", "log", "www", "tmp", "backend"):
            (self.root / sub).mkdir(exist_ok=True)
            (self.root / sub).chmod(0o755)
        for name in ("index.php", "slow.php"):
            target = self.web_root / name
            target.write_text(_render(name, {}), encoding="utf-8")
            target.chmod(0o644)
        self.set_backend_health(200)
        self.set_backend_delay(0.0)

        values = {
            "ROOT": str(self.root),
            "SOCKET": str(self.socket_path),
            "NGINX_ERROR_LOG": str(self.nginx_error_log),
            "PHP_FPM_LOG": str(self.php_fpm_log),
            "WEB_ROOT": str(self.web_root),
            "NGINX_PORT": str(self.nginx_port),
            "BACKEND_PORT": str(self.backend_port),
        }
        if self.worker_user is not None:
            user_line = f"user {self.worker_user};"
            pool_user = "\n".join(
                f"{key} = {self.worker_user}" for key in ("user", "group", "listen.owner", "listen.group")
            )
        else:
            user_line = "# not root: workers run as the current user"
            pool_user = "; not root: workers run as the current user"
        self._pool_user_lines = pool_user
        self._template_values = values
        self._good_nginx_conf = _render("nginx.conf", {**values, "USER_LINE": user_line})
        self.nginx_conf.write_text(self._good_nginx_conf, encoding="utf-8")
        self.php_fpm_conf.write_text(self._php_fpm_conf_text(), encoding="utf-8")
        for path in (self.nginx_conf, self.php_fpm_conf):
            path.chmod(0o644)

    def _php_fpm_conf_text(self) -> str:
        pm_lines = [f"pm = {self.pm}", f"pm.max_children = {self.max_children}"]
        if self.pm == "dynamic":
            pm_lines += [
                "pm.start_servers = 1",
                "pm.min_spare_servers = 1",
                f"pm.max_spare_servers = {self.max_children}",
            ]
        elif self.pm == "ondemand":
            pm_lines.append("pm.process_idle_timeout = 10s")
        if self.request_terminate_timeout is not None:
            # PHP-FPM takes whole seconds here.
            terminate = f"request_terminate_timeout = {math.ceil(self.request_terminate_timeout)}s"
        else:
            terminate = "; request_terminate_timeout: not set"
        return _render(
            "php-fpm.conf",
            {
                **self._template_values,
                "POOL_USER_LINES": self._pool_user_lines,
                "PM_LINES": "\n".join(pm_lines),
                "TERMINATE_LINE": "\n".join((terminate, *self.pool_extra_lines)),
            },
        )

    # -- whole stack ------------------------------------------------------------------------

    def start(self) -> None:
        """Start PHP-FPM, the backend and nginx, each waited for until it answers."""
        try:
            self.start_php_fpm()
            self.start_backend()
            self.start_nginx()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop everything and reap every child; safe to call any number of times."""
        errors: list[str] = []
        for stopper in (self.stop_nginx, self.stop_backend, self.stop_php_fpm):
            try:
                stopper()
            except StackError as exc:
                errors.append(str(exc))
        if errors:
            raise StackError("\n".join(errors))

    def __enter__(self) -> Stack:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @staticmethod
    def _running_pid(proc: subprocess.Popen[bytes] | None) -> int | None:
        return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def php_fpm_pid(self) -> int | None:
        """Pid of the running PHP-FPM master, else None."""
        return self._running_pid(self._php)

    @property
    def nginx_pid(self) -> int | None:
        """Pid of the running nginx master, else None."""
        return self._running_pid(self._nginx)

    @property
    def php_fpm_paused(self) -> bool:
        """True between :meth:`pause_php_fpm` and :meth:`resume_php_fpm` (or a stop)."""
        return self._php_paused

    @property
    def backend_pid(self) -> int | None:
        """Pid of the running uvicorn process, else None."""
        return self._running_pid(self._backend)

    def pids(self) -> list[int]:
        """Pids of every running process of the stack (masters and their descendants)."""
        result: list[int] = []
        for proc in (self._php, self._nginx, self._backend):
            if proc is not None and proc.poll() is None:
                result += [proc.pid, *descendants(proc.pid)]
        return result

    # -- process plumbing -------------------------------------------------------------------

    def _log_handle(self, name: str) -> IO[bytes]:
        return (self.root / "log" / name).open("ab")

    def _spawn(
        self, argv: list[str], log_name: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        with self._log_handle(log_name) as out:
            return subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                cwd=self.root,
                env=env,
            )

    def _await_ready(
        self, proc: subprocess.Popen[bytes], what: str, ready: Callable[[], bool], logs: list[Path]
    ) -> None:
        def detail() -> str:
            return "\n".join(tail(path) for path in logs)

        def check() -> bool:
            if proc.poll() is not None:
                raise StackError(f"{what} exited with status {proc.returncode} while starting\n{detail()}")
            return ready()

        try:
            wait_until(check, _START_TIMEOUT, f"{what} to be ready", detail=detail)
        except BaseException:
            self._kill(proc)
            raise

    def _kill(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL ``proc`` and all its descendants, then reap them all."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGSTOP)  # no respawning of workers from here on
        kids = sorted({*descendants(proc.pid), *session_members(proc.pid)})
        _signal([proc.pid, *kids], signal.SIGKILL)
        try:
            proc.wait(timeout=_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise StackError(f"pid {proc.pid} survived SIGKILL") from None
        left = reap(kids, _STOP_TIMEOUT)
        if left:
            raise StackError(f"processes {left} did not go away after SIGKILL")

    def _stop(self, proc: subprocess.Popen[bytes] | None, sig: signal.Signals) -> None:
        """Send ``sig`` to ``proc``, wait for it; escalate to SIGKILL after a deadline."""
        if proc is None:
            return
        if proc.poll() is not None:
            # The master is already gone: kill and reap whatever it left behind.
            self._kill(proc)
            return
        kids = descendants(proc.pid)
        _signal([proc.pid, *kids], signal.SIGCONT)
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
        try:
            proc.wait(timeout=_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._kill(proc)
            return
        left = reap({*kids, *session_members(proc.pid)}, _STOP_TIMEOUT)
        if left:
            _signal(left, signal.SIGKILL)
            left = reap(left, _STOP_TIMEOUT)
            if left:
                raise StackError(f"processes {left} did not go away")

    # -- PHP-FPM ----------------------------------------------------------------------------

    def _php_logs(self) -> list[Path]:
        return [self.php_fpm_log, self.root / "log" / "php-fpm.stderr.log"]

    def start_php_fpm(self) -> None:
        """Validate the pool config with ``-t``, start PHP-FPM, wait until its socket accepts."""
        if self._php is not None and self._php.poll() is None:
            raise StackError("php-fpm is already running")
        check = subprocess.run(
            [self.php_fpm_binary, "-t", "-y", str(self.php_fpm_conf)],
            capture_output=True,
            timeout=_SUBPROCESS_TIMEOUT,
            check=False,
            cwd=self.root,
        )
        if check.returncode != 0:
            output = (check.stdout + check.stderr).decode("utf-8", "replace")
            raise StackError(f"php-fpm -t failed ({check.returncode}):\n{output}")
        proc = self._spawn([self.php_fpm_binary, "-F", "-y", str(self.php_fpm_conf)], "php-fpm.stderr.log")
        self._php = proc
        self._php_paused = False
        pid_file = self.root / "run" / "php-fpm.pid"

        def ready() -> bool:
            try:
                pid = int(pid_file.read_text(encoding="ascii").strip())
            except (OSError, ValueError):
                return False
            return pid == proc.pid and unix_connects(self.socket_path)

        self._await_ready(proc, "php-fpm", ready, self._php_logs())

    def _php_master(self) -> subprocess.Popen[bytes]:
        if self._php is None or self._php.poll() is not None:
            raise StackError("php-fpm is not running")
        return self._php

    def stop_php_fpm(self) -> None:
        """Graceful stop (SIGQUIT): PHP-FPM removes its socket file itself."""
        self._stop(self._php, signal.SIGQUIT)
        self._php = None
        self._php_paused = False

    def kill_php_fpm(self) -> None:
        """SIGKILL the master and its workers: the stale socket file stays and refuses connections."""
        self._kill(self._php_master())
        self._php = None
        self._php_paused = False

    def pause_php_fpm(self) -> None:
        """SIGSTOP the master and its workers: connections queue and are never answered."""
        master = self._php_master()
        os.kill(master.pid, signal.SIGSTOP)
        _signal(descendants(master.pid), signal.SIGSTOP)
        self._php_paused = True

    def resume_php_fpm(self) -> None:
        """SIGCONT the workers and the master."""
        master = self._php_master()
        _signal(descendants(master.pid), signal.SIGCONT)
        os.kill(master.pid, signal.SIGCONT)
        self._php_paused = False

    # -- backend ----------------------------------------------------------------------------

    def start_backend(self) -> None:
        """Start uvicorn with :mod:`exporter.demo.backend` and wait until it answers."""
        if self._backend is not None and self._backend.poll() is None:
            raise StackError("the backend is already running")
        package_parent = Path(__file__).resolve().parents[2]
        argv = [
            sys.executable, "-m", "uvicorn", "exporter.demo.backend:app",
            "--app-dir", str(package_parent),
            "--host", "127.0.0.1", "--port", str(self.backend_port),
            "--timeout-graceful-shutdown", "1",
        ]  # fmt: skip
        env = {**os.environ, **self.backend_env()}
        proc = self._spawn(argv, self.backend_log.name, env=env)
        self._backend = proc

        def ready() -> bool:
            answer = _http_get(self.backend_port, "/ready")
            return answer is not None and answer[0] == 200 and str(self.root).encode() in answer[1]

        self._await_ready(proc, "the backend", ready, [self.backend_log])

    def stop_backend(self) -> None:
        """SIGTERM uvicorn and wait for it."""
        self._stop(self._backend, signal.SIGTERM)
        self._backend = None

    def set_backend_health(self, status: int) -> None:
        """Make ``/health`` answer with HTTP ``status`` from the next request on."""
        self._write_atomic(self.root / BACKEND_STATUS_FILE, f"{int(status)}\n")

    def set_backend_delay(self, seconds: float) -> None:
        """Make ``/health`` sleep ``seconds`` before answering, from the next request on."""
        self._write_atomic(self.root / BACKEND_DELAY_FILE, f"{float(seconds)}\n")

    @staticmethod
    def _write_atomic(path: Path, text: str) -> None:
        temporary = path.with_name(path.name + ".new")
        temporary.write_text(text, encoding="utf-8")
        temporary.chmod(0o644)
        temporary.replace(path)

    # -- nginx ------------------------------------------------------------------------------

    def _nginx_logs(self) -> list[Path]:
        return [self.nginx_error_log, self.root / "log" / "nginx.stderr.log"]

    def nginx_test_command(self) -> list[str]:
        """The ``nginx -t`` argv for this stack."""
        return [
            self.nginx_binary, "-t",
            "-e", str(self.nginx_error_log), "-p", f"{self.root}/", "-c", str(self.nginx_conf),
        ]  # fmt: skip

    def start_nginx(self) -> None:
        """Test the config, start nginx in the foreground, wait until it serves."""
        if self._nginx is not None and self._nginx.poll() is None:
            raise StackError("nginx is already running")
        check = subprocess.run(
            self.nginx_test_command(), capture_output=True, timeout=_SUBPROCESS_TIMEOUT, check=False
        )
        if check.returncode != 0:
            output = (check.stdout + check.stderr).decode("utf-8", "replace")
            raise StackError(f"nginx -t failed ({check.returncode}):\n{output}")
        argv = self.nginx_argv()
        proc = self._spawn(argv, "nginx.stderr.log")
        self._nginx = proc

        def ready() -> bool:
            answer = _http_get(self.nginx_port, "/ready")
            return answer is not None and answer[0] == 200 and answer[1].strip() == str(self.root).encode()

        self._await_ready(proc, "nginx", ready, self._nginx_logs())

    def stop_nginx(self) -> None:
        """Graceful stop (SIGQUIT) and wait for the master, which reaps its workers."""
        self._stop(self._nginx, signal.SIGQUIT)
        self._nginx = None

    def reload_nginx(self) -> None:
        """SIGHUP nginx and wait until new workers serve and the old ones are gone."""
        if self._nginx is None or self._nginx.poll() is not None:
            raise StackError("nginx is not running")
        master = self._nginx.pid
        old = set(descendants(master))
        try:
            offset = self.nginx_error_log.stat().st_size
        except OSError:
            offset = 0

        def reloaded() -> bool:
            with contextlib.suppress(OSError), self.nginx_error_log.open("rb") as handle:
                handle.seek(offset)
                if b"[emerg]" in handle.read():
                    raise StackError(f"nginx rejected the new config\n{tail(self.nginx_error_log)}")
            current = {pid for pid in descendants(master) if is_alive(pid)}
            return bool(current - old) and not (current & old)

        os.kill(master, signal.SIGHUP)
        wait_until(reloaded, _START_TIMEOUT, "nginx to reload", detail=lambda: tail(self.nginx_error_log))

    def break_nginx_config(self) -> None:
        """Write a syntax error into the config on disk; the running nginx keeps serving."""
        self.nginx_conf.write_text(
            self._good_nginx_conf
            + "\n# injected by break_nginx_config: no closing semicolon\nworker_rlimit_nofile 1024\n",
            encoding="utf-8",
        )

    def restore_nginx_config(self) -> None:
        """Put the good config back on disk."""
        self.nginx_conf.write_text(self._good_nginx_conf, encoding="utf-8")

    def edit_nginx_config(self, replacements: Mapping[str, str]) -> None:
        """Write the good config with each ``old -> new`` of ``replacements`` applied (each must occur).

        Only the file changes: reload nginx to use it; :meth:`restore_nginx_config` puts it back.
        """
        text = self._good_nginx_conf
        for old, new in replacements.items():
            if old not in text:
                raise StackError(f"{self.nginx_conf}: no {old!r} to replace")
            text = text.replace(old, new)
        self.nginx_conf.write_text(text, encoding="utf-8")

    def point_fastcgi_pass(self, address: str) -> None:
        """Write the config with ``fastcgi_pass`` aimed at ``address`` (e.g. ``unix:/run/php/php8.2-fpm.sock``).

        Only the file changes: call :meth:`reload_nginx` (or reload the unit) to make nginx use it;
        :meth:`restore_nginx_config` puts the original back.
        """
        original = f"fastcgi_pass unix:{self.socket_path};"
        if original not in self._good_nginx_conf:
            raise StackError(f"{self.nginx_conf}: no {original!r} to replace")
        self.nginx_conf.write_text(
            self._good_nginx_conf.replace(original, f"fastcgi_pass {address};"), encoding="utf-8"
        )

    def other_php_socket(self, version: str = "8.3") -> Path:
        """Where another PHP version's pool would put its socket, next to this stack's socket."""
        return self.socket_path.parent / f"php{version}-fpm.sock"

    # -- faults on files and settings (the running processes are left alone) ---------------------

    def set_pool_lines(self, lines: Sequence[str]) -> None:
        """Extra lines of the pool (``listen.backlog = 0``); take effect when PHP-FPM restarts."""
        self.pool_extra_lines = tuple(lines)
        self.php_fpm_conf.write_text(self._php_fpm_conf_text(), encoding="utf-8")

    def write_script(self, name: str, text: str) -> Path:
        """A PHP script in the web root, readable by the workers."""
        path = self.web_root / name
        path.write_text(text, encoding="utf-8")
        path.chmod(0o644)
        return path

    def set_max_children(self, max_children: int) -> None:
        """Rewrite the pool's ``pm.max_children``; takes effect when PHP-FPM restarts."""
        if max_children < 1:
            raise ValueError("max_children must be at least 1")
        self.max_children = max_children
        self.php_fpm_conf.write_text(self._php_fpm_conf_text(), encoding="utf-8")

    def chown_socket(self, user: str, group: str | None = None) -> None:
        """Give the PHP-FPM socket to ``user``:``group`` (e.g. ``root``, locking www-data out)."""
        entry = pwd.getpwnam(user)
        gid = entry.pw_gid if group is None else grp.getgrnam(group).gr_gid
        os.chown(self.socket_path, entry.pw_uid, gid)

    def restore_socket_owner(self) -> None:
        """Give the socket back to the pool's ``listen.owner``/``listen.group`` (the worker user)."""
        self.chown_socket(self.worker_user or pwd.getpwuid(os.geteuid()).pw_name)

    def set_run_dir_mode(self, mode: int) -> None:
        """chmod the socket's folder (``0o700`` takes the workers' search permission away)."""
        self.socket_path.parent.chmod(mode)

    # -- the same processes as units of a service manager ----------------------------------------

    def php_fpm_argv(self) -> list[str]:
        """The PHP-FPM command line that :meth:`start_php_fpm` runs (foreground)."""
        return [self.php_fpm_binary, "-F", "-y", str(self.php_fpm_conf)]

    def nginx_argv(self) -> list[str]:
        """The nginx command line that :meth:`start_nginx` runs (``daemon off`` is in the config).

        Through :mod:`exporter.demo.deny_connect` where the kernel allows: while the file
        :attr:`deny_connect_flag` exists, a (re)started nginx gets EACCES on every TCP connect, as
        SELinux gives it when ``httpd_can_network_connect`` is off.
        """
        launcher = [sys.executable, "-m", "exporter.demo.deny_connect", str(self.deny_connect_flag), "--"]
        return [
            *(launcher if os.uname().machine in ("x86_64", "aarch64") else []),
            self.nginx_binary,
            "-e",
            str(self.nginx_error_log),
            "-p",
            f"{self.root}/",
            "-c",
            str(self.nginx_conf),
        ]

    def backend_argv(self) -> list[str]:
        """The uvicorn command line that :meth:`start_backend` runs; needs :meth:`backend_env`."""
        package_parent = Path(__file__).resolve().parents[2]
        return [
            sys.executable, "-m", "uvicorn", "exporter.demo.backend:app",
            "--app-dir", str(package_parent),
            "--host", "127.0.0.1", "--port", str(self.backend_port),
            "--timeout-graceful-shutdown", "1",
        ]  # fmt: skip

    def backend_env(self) -> dict[str, str]:
        """The extra environment of the backend (where its fault files are, ``backend_env``, and the
        ``KEY=value`` lines of :attr:`backend_env_file`, read at each start as systemd's EnvironmentFile=)."""
        return {**self.backend_extra_env, **_env_file(self.backend_env_file), ROOT_ENV: str(self.root)}

    @property
    def backend_env_file(self) -> Path:
        """The backend's EnvironmentFile (absent: none); e.g. ``DATABASE_URL=postgresql://...``."""
        return self.root / "backend" / "env"

    # -- exporter ---------------------------------------------------------------------------

    def exporter_config(self) -> dict[str, object]:
        """A config dict for the exporter (see :mod:`exporter.config`) aimed at this stack."""
        nginx_user = self.worker_user or pwd.getpwuid(os.geteuid()).pw_name
        return {
            "nginx_user": nginx_user,
            "scrape_timeout_seconds": 5.0,
            "php_fpm": [
                {"socket": str(self.socket_path), "ping_path": "/ping", "status_path": "/status",
                 "timeout_seconds": 1.0},
            ],
            "http": [
                {"name": "backend", "url": self.backend_url, "role": "backend", "timeout_seconds": 1.0},
                {"name": "front", "url": self.front_url, "role": "front", "timeout_seconds": 2.0},
            ],
            "nginx": {
                "binary": self.nginx_binary,
                "config": str(self.nginx_conf),
                "prefix": f"{self.root}/",
                "error_log": str(self.nginx_error_log),
                "test_interval_seconds": 0.0,
                "test_timeout_seconds": 5.0,
            },
            # php-fpm -t of the stack's own file: every 30 s, and at once when the file changes.
            "php_fpm_test": {"configs": [str(self.php_fpm_conf)]},
            # The stack's own pid files name its masters (other stacks on the host have the same titles).
            "pid_files": {"nginx": str(self.root / "run" / "nginx.pid"), "php_fpm": str(self.root / "run" / "php-fpm.pid")},
            "processes": {
                "nginx": r"^nginx: master process .* -c " + re.escape(str(self.nginx_conf)) + r"(?:\s|$)",
                "php_fpm": r"^php-fpm: master process \(" + re.escape(str(self.php_fpm_conf)) + r"\)",
                "backend": r"\buvicorn\b.* --port " + str(self.backend_port) + r"\b",
            },
            "filesystems": [str(self.root / "run"), str(self.root / "log"), str(self.web_root)],
            "selinux_root": str(self.selinux_root),
            # An OOM kill anywhere on the host counts: a minute, not ten, so a stack started right
            # after one (the demo's own OOM fault, a test) is not memory_exhausted for long.
            "thresholds": {"oom_kill_window_seconds": 60.0},
            "logs": {
                "nginx": [str(self.nginx_error_log)],
                "php_fpm": [str(self.php_fpm_log)],
                "start": "beginning",
            },
        }  # fmt: skip
