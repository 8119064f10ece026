"""A minimal real nginx + PHP-FPM for the log tests: produces real error.log / php-fpm.log lines.

Separate from ``exporter.demo.stack`` on purpose (this one only has to make faults happen).
Every process is a child started with Popen and reaped with wait(); all waits poll with deadlines.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from harness import free_port, wait_until

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
PHP_FPM = next(
    (p for p in (shutil.which(n) for n in ("php-fpm8.2", "php-fpm8.3", "php-fpm")) if p),
    "/usr/sbin/php-fpm8.2",
)


def available() -> bool:
    """Both binaries exist (the tests skip otherwise)."""
    return os.access(NGINX, os.X_OK) and os.access(PHP_FPM, os.X_OK)


class LogStack:
    """nginx on 127.0.0.1:<port> in front of PHP-FPM (pm=dynamic, max_children=1, a 2 s
    request_terminate_timeout) and a proxy location whose upstream port has nothing listening.

    ``nginx_user`` other than www-data (e.g. ``nobody nogroup``) makes every PHP request a real
    ``13: Permission denied`` on the 0660 www-data socket.
    """

    def __init__(self, nginx_user: str = "www-data") -> None:
        self.nginx_user = nginx_user
        self.root = Path(tempfile.mkdtemp(prefix="bgw-logs-", dir="/tmp"))
        os.chmod(self.root, 0o755)  # www-data workers must reach the socket and scripts
        for sub in ("log", "run", "www", "tmp"):
            (self.root / sub).mkdir()
            os.chmod(self.root / sub, 0o755)
        self.port = free_port()
        self.dead_port = free_port()
        self.error_log = self.root / "log" / "error.log"
        self.fpm_log = self.root / "log" / "php-fpm.log"
        self.socket = self.root / "run" / "php.sock"
        self.nginx: subprocess.Popen[bytes] | None = None
        self.fpm: subprocess.Popen[bytes] | None = None
        (self.root / "www" / "index.php").write_text("<?php echo 'ok';\n")
        (self.root / "www" / "slow.php").write_text("<?php sleep((int)($_GET['s'] ?? 5)); echo 'done';\n")
        for name in ("index.php", "slow.php"):
            os.chmod(self.root / "www" / name, 0o644)
        self._write_configs()

    def _write_configs(self) -> None:
        r = self.root
        (r / "php-fpm.conf").write_text(
            f"""[global]
pid = {r}/run/php-fpm.pid
error_log = {self.fpm_log}
daemonize = no
log_level = notice

[www]
user = www-data
group = www-data
listen = {self.socket}
listen.owner = www-data
listen.group = www-data
listen.mode = 0660
pm = dynamic
pm.max_children = 1
pm.start_servers = 1
pm.min_spare_servers = 1
pm.max_spare_servers = 1
request_terminate_timeout = 2s
"""
        )
        (r / "nginx.conf").write_text(
            f"""daemon off;
user {self.nginx_user};
pid {r}/run/nginx.pid;
worker_processes 1;
error_log {self.error_log} notice;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {r}/tmp/body;
    proxy_temp_path {r}/tmp/proxy;
    fastcgi_temp_path {r}/tmp/fastcgi;
    uwsgi_temp_path {r}/tmp/uwsgi;
    scgi_temp_path {r}/tmp/scgi;
    server {{
        listen 127.0.0.1:{self.port};
        root {r}/www;
        location ~ \\.php$ {{
            include /etc/nginx/fastcgi_params;
            fastcgi_param SCRIPT_FILENAME $document_root$fastcgi_script_name;
            fastcgi_pass unix:{self.socket};
            fastcgi_read_timeout 1s;
        }}
        location /backend/ {{
            proxy_pass http://127.0.0.1:{self.dead_port};
        }}
    }}
}}
"""
        )

    def start_fpm(self) -> None:
        """Start PHP-FPM and wait for its socket."""
        conf = str(self.root / "php-fpm.conf")
        subprocess.run([PHP_FPM, "-t", "-y", conf], check=True, capture_output=True, timeout=20)
        self.fpm = subprocess.Popen(
            [PHP_FPM, "-F", "-y", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_until(self.socket.exists, 10, "the PHP-FPM socket")

    def stop_fpm(self) -> None:
        """Stop PHP-FPM gracefully (it removes its socket)."""
        if self.fpm is not None:
            _stop(self.fpm, signal.SIGQUIT)
            self.fpm = None

    def start_nginx(self) -> None:
        """Start nginx (``-e`` keeps even startup messages out of /var/log/nginx)."""
        args = [NGINX, "-e", str(self.error_log), "-p", f"{self.root}/", "-c", str(self.root / "nginx.conf")]
        subprocess.run([*args, "-t"], check=True, capture_output=True, timeout=20)
        self.nginx = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def listening() -> bool:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
            except OSError:
                return False
            return True

        wait_until(listening, 10, "nginx to listen")

    def get(self, path: str, timeout: float = 10.0) -> int:
        """GET ``path`` from nginx; return the HTTP status."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=timeout) as reply:
                return int(reply.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    def close(self) -> None:
        """Stop everything and remove the folder."""
        if self.nginx is not None:
            _stop(self.nginx, signal.SIGQUIT)
            self.nginx = None
        self.stop_fpm()
        shutil.rmtree(self.root, ignore_errors=True)


def _stop(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
