"""Many PHP-FPM pools under one real master, and a real nginx with one server block per pool.

A Debian-shaped tree under a 0755 root: ``etc/php/8.2/fpm/php-fpm.conf`` including
``pool.d/*.conf`` (one file per pool ``pNNN``: its own socket, ping and status on, ``pm = static``
with one worker) and ``etc/nginx/nginx.conf`` including ``sites-enabled/*`` (one site per pool,
``server_name pNNN.test`` on one shared port, ``fastcgi_pass`` to that pool's socket), and the
demo's uvicorn backend behind the default server's ``/api/`` (the exporter expects a Python backend
on the host). Discovery finds every pool, every fastcgi_pass and the backend from these files
alone. Used by ``tests/test_scale_pools.py``, ``tests/test_exposition.py`` and
``benchmarks/scale_bench.py``.

Every process is a child started with Popen and reaped with wait(); every wait polls with a deadline.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil

from exporter.demo.stack import (
    ROOT_ENV,
    find_binary,
    http_status,
    make_root,
    stop_process,
    unix_connects,
)
from harness import free_port, wait_until
from harness.tree import readable_dir, readable_file, remove_unless_kept, require_stack_binaries, spawn_logged

_TIMEOUT = 30.0
WORKER_USER = "www-data"


class PoolFarm:
    """``pools`` PHP-FPM pools (``p000``, ``p001``, ...) and nginx in front of each of them."""

    def __init__(self, root: Path, pools: int) -> None:
        if pools < 1:
            raise ValueError("pools must be at least 1")
        self.root = root
        self.names = [f"p{index:03d}" for index in range(pools)]
        self.port = free_port()
        self.backend_port = free_port()
        while self.backend_port == self.port:
            self.backend_port = free_port()
        self.etc_nginx = root / "etc" / "nginx"
        self.php_dir = root / "etc" / "php" / "8.2" / "fpm"
        self.nginx_conf = self.etc_nginx / "nginx.conf"
        self.php_conf = self.php_dir / "php-fpm.conf"
        self.run_php = root / "run" / "php"
        self.nginx_error_log = root / "log" / "nginx" / "error.log"
        self.php_log = root / "log" / "php8.2-fpm.log"
        self.nginx_binary = find_binary("BADGATEWAY_NGINX", ["nginx"])
        self.php_binary = find_binary("BADGATEWAY_PHP_FPM", ["php-fpm8.2", "php-fpm8.3", "php-fpm"])
        self._nginx: subprocess.Popen[bytes] | None = None
        self._php: subprocess.Popen[bytes] | None = None
        self._backend: subprocess.Popen[bytes] | None = None
        self._paused: set[str] = set()
        self._write()

    # -- files -------------------------------------------------------------------------------

    def socket(self, name: str) -> Path:
        return self.run_php / f"{name}.sock"

    def pool_file(self, name: str) -> Path:
        return self.php_dir / "pool.d" / f"{name}.conf"

    def site(self, name: str) -> Path:
        return self.etc_nginx / "sites-available" / name

    def _mkdir(self, path: Path) -> Path:
        return readable_dir(path, self.root)

    def _write_file(self, path: Path, text: str) -> None:
        readable_file(path, text, self.root)

    def _write(self) -> None:
        root = self.root
        for sub in ("run/php", "log/nginx", "tmp", "www", "backend", "etc/nginx/sites-enabled"):
            self._mkdir(root / sub)
        self._write_file(root / "www" / "index.php", '<?php echo "php ok\\n";\n')
        self._write_file(
            self.nginx_conf,
            f"""user {WORKER_USER};
worker_processes 1;
daemon off;
pid {root}/run/nginx.pid;
error_log {self.nginx_error_log} warn;

events {{
    worker_connections 1024;
}}

http {{
    access_log off;
    client_body_temp_path {root}/tmp/client_body;
    proxy_temp_path {root}/tmp/proxy;
    fastcgi_temp_path {root}/tmp/fastcgi;
    uwsgi_temp_path {root}/tmp/uwsgi;
    scgi_temp_path {root}/tmp/scgi;
    server_names_hash_bucket_size 64;

    server {{
        listen 127.0.0.1:{self.port} default_server;
        server_name _;
        location = /ready {{
            return 200 "ready\\n";
        }}
        location = / {{
            return 200 "farm\\n";
        }}
        location /api/ {{
            proxy_pass http://127.0.0.1:{self.backend_port}/;
            proxy_read_timeout 3s;
        }}
    }}

    include sites-enabled/*;
}}
""",
        )
        self._write_file(
            self.php_conf,
            f"""; PHP-FPM of a Debian-like layout with many pools
[global]
pid = {self.run_php}/php8.2-fpm.pid
error_log = {self.php_log}
daemonize = no

include={self.php_dir}/pool.d/*.conf
""",
        )
        for name in self.names:
            self._write_pool(name)
            self.write_site(name, self.socket(name))

    def _write_pool(self, name: str) -> None:
        self._write_file(
            self.pool_file(name),
            f"""[{name}]
user = {WORKER_USER}
group = {WORKER_USER}
listen = {self.run_php}/$pool.sock
listen.owner = {WORKER_USER}
listen.group = {WORKER_USER}
listen.mode = 0660
ping.path = /ping
pm.status_path = /status
pm = static
pm.max_children = 1
""",
        )

    def write_site(self, name: str, socket: Path) -> None:
        """The site of pool ``name`` (sites-available + the sites-enabled symlink), passing to ``socket``."""
        self._write_file(
            self.site(name),
            f"""server {{
    listen 127.0.0.1:{self.port};
    server_name {name}.test;
    root {self.root}/www;
    index index.php;

    location ~ \\.php$ {{
        fastcgi_param SCRIPT_FILENAME $document_root$fastcgi_script_name;
        fastcgi_param REQUEST_METHOD $request_method;
        fastcgi_param QUERY_STRING $query_string;
        fastcgi_pass unix:{socket};
        fastcgi_read_timeout 3s;
    }}
}}
""",
        )
        enabled = self.etc_nginx / "sites-enabled" / name
        if not enabled.is_symlink():
            enabled.symlink_to(self.site(name))

    def line_of(self, path: Path, needle: str) -> int:
        """1-based line of the first line of ``path`` containing ``needle``."""
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if needle in line:
                return number
        raise AssertionError(f"{needle!r} not in {path}")

    def exporter_settings(self) -> dict[str, object]:
        """An exporter config that only says where the tree is: discovery finds the pools and sites."""
        return {
            "scrape_timeout_seconds": 8.0,
            "nginx": {
                "binary": self.nginx_binary,
                "prefix": f"{self.root}/",
                "error_log": str(self.nginx_error_log),
            },
            "php_fpm_test": {"binary": self.php_binary},
            "processes": {
                "nginx": r"^nginx: master process .* -c " + re.escape(str(self.nginx_conf)),
                "php_fpm": r"^php-fpm: master process \(" + re.escape(str(self.php_conf)) + r"\)",
                "backend": r"\buvicorn\b.* --port " + str(self.backend_port) + r"\b",
            },
            "units": {"enabled": False},
            "database": {"enabled": False},
            "filesystems": [str(self.root)],
            "thresholds": {"oom_kill_window_seconds": 60.0},
            "discovery": {
                "nginx_config": str(self.nginx_conf),
                "php_fpm_configs": [str(self.php_conf)],
            },
        }

    # -- processes ---------------------------------------------------------------------------

    def start(self) -> None:
        """PHP-FPM (until every pool's socket accepts), the backend, then nginx (until it serves ``/ready``)."""
        try:
            self.start_php_fpm()
            self.start_backend()
            self.start_nginx()
        except BaseException:
            self.stop()
            raise

    def start_php_fpm(self) -> None:
        check = subprocess.run(
            [self.php_binary, "-t", "-y", str(self.php_conf)],
            capture_output=True,
            timeout=_TIMEOUT,
            check=False,
        )
        assert check.returncode == 0, check.stderr.decode()
        self._php = self._spawn([self.php_binary, "-F", "-y", str(self.php_conf)], "php-fpm.stderr")
        proc = self._php
        wait_until(
            lambda: proc.poll() is None and all(unix_connects(self.socket(n)) for n in self.names),
            _TIMEOUT,
            "every PHP-FPM pool to accept",
            interval=0.05,
        )
        wait_until(lambda: len(self._workers()) == len(self.names), _TIMEOUT, "a worker in every pool")

    def start_backend(self) -> None:
        """The demo's uvicorn backend (``exporter.demo.backend``) until ``/health`` answers."""
        repo = Path(__file__).resolve().parents[2]
        argv = [sys.executable, "-m", "uvicorn", "exporter.demo.backend:app", "--app-dir", str(repo),
                "--host", "127.0.0.1", "--port", str(self.backend_port), "--timeout-graceful-shutdown", "1"]  # fmt: skip
        env = {**os.environ, ROOT_ENV: str(self.root)}
        with (self.root / "log" / "backend.log").open("ab") as out:
            self._backend = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=self.root, env=env,
                start_new_session=True,
            )  # fmt: skip
        proc = self._backend
        wait_until(
            lambda: proc.poll() is None and http_status(self.backend_port, "/health", 1.0) == 200,
            _TIMEOUT,
            "the backend",
        )

    def start_nginx(self) -> None:
        argv = [
            self.nginx_binary,
            "-e",
            str(self.nginx_error_log),
            "-p",
            f"{self.root}/",
            "-c",
            str(self.nginx_conf),
        ]
        check = subprocess.run([*argv, "-t"], capture_output=True, timeout=_TIMEOUT, check=False)
        assert check.returncode == 0, check.stderr.decode()
        self._nginx = self._spawn(argv, "nginx.stderr")
        proc = self._nginx
        wait_until(
            lambda: proc.poll() is None and http_status(self.port, "/ready", 1.0) == 200, _TIMEOUT, "nginx"
        )

    def reload_nginx(self) -> None:
        """``nginx -s reload`` by SIGHUP, until its workers are new."""
        assert self._nginx is not None
        master = psutil.Process(self._nginx.pid)
        before = {child.pid for child in master.children()}
        os.kill(self._nginx.pid, signal.SIGHUP)

        def reloaded() -> bool:
            now = {child.pid for child in master.children()}
            return bool(now) and not now & before

        wait_until(reloaded, _TIMEOUT, "nginx to reload")

    @property
    def php_fpm_pid(self) -> int | None:
        return self._php.pid if self._php is not None and self._php.poll() is None else None

    def _workers(self) -> dict[str, list[int]]:
        """Pool name -> pids of its workers (``php-fpm: pool NAME``)."""
        found: dict[str, list[int]] = {}
        if self.php_fpm_pid is None:
            return found
        for child in psutil.Process(self.php_fpm_pid).children():
            with contextlib.suppress(psutil.Error):
                title = " ".join(child.cmdline())
                if title.startswith("php-fpm: pool "):
                    found.setdefault(title.removeprefix("php-fpm: pool ").strip(), []).append(child.pid)
        return found

    def pause_pools(self, names: list[str]) -> None:
        """SIGSTOP the workers of these pools: their sockets accept, nothing ever answers."""
        workers = self._workers()
        for name in names:
            for pid in workers[name]:
                os.kill(pid, signal.SIGSTOP)
            self._paused.add(name)

    def resume_pools(self) -> None:
        """SIGCONT every paused pool's workers."""
        workers = self._workers()
        for name in sorted(self._paused):
            for pid in workers.get(name, []):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
        self._paused.clear()

    def _spawn(self, argv: list[str], log: str) -> subprocess.Popen[bytes]:
        return spawn_logged(argv, self.root, log)

    def stop(self) -> None:
        """Resume paused pools, SIGQUIT both masters (they reap their workers) and wait; SIGKILL after a deadline."""
        self.resume_pools()
        stop_process(self._nginx, signal.SIGQUIT, _TIMEOUT)
        stop_process(self._backend, signal.SIGTERM, _TIMEOUT)
        stop_process(self._php, signal.SIGQUIT, _TIMEOUT)
        self._nginx = self._php = self._backend = None


@contextlib.contextmanager
def running_farm(pools: int, prefix: str) -> Iterator[PoolFarm]:
    """A started :class:`PoolFarm` of ``pools`` pools under a fresh root, stopped and removed after
    (kept with ``BADGATEWAY_KEEP_STACK``); the test is skipped when nginx or PHP-FPM is missing."""
    require_stack_binaries()
    root = make_root(prefix)
    farm = PoolFarm(root, pools)
    try:
        farm.start()
        yield farm
    finally:
        farm.stop()
        remove_unless_kept(root)
