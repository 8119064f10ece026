"""Helpers, no tests: Debian/Ubuntu-shaped nginx and PHP-FPM trees in a temp folder, served by the real binaries.

``Tree`` writes ``etc/nginx`` (nginx.conf, conf.d, sites-available + sites-enabled symlinks,
snippets/fastcgi-php.conf) and ``etc/php/<version>/fpm`` (php-fpm.conf, pool.d/www.conf) under a
0755 root, and starts the real ``nginx`` and ``php-fpm8.2`` on them as plain children.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

from harness import free_port, wait_until
from harness.tree import readable_dir, readable_file, spawn_logged

from exporter.demo.stack import find_binary, http_status, stop_process, unix_connects

NGINX_BINARY_ENV = "BADGATEWAY_NGINX"
PHP_FPM_BINARY_ENV = "BADGATEWAY_PHP_FPM"
_TIMEOUT = 15.0

FASTCGI_PHP_SNIPPET = """# regex to split $uri to $fastcgi_script_name and $fastcgi_path
fastcgi_split_path_info ^(.+?\\.php)(/.*)$;

# Check that the PHP script exists before passing it
try_files $fastcgi_script_name =404;

# Bypass the fact that try_files resets $fastcgi_path_info
set $path_info $fastcgi_path_info;
fastcgi_param PATH_INFO $path_info;

fastcgi_index index.php;
include fastcgi.conf;
"""

FASTCGI_CONF = """fastcgi_param SCRIPT_FILENAME $document_root$fastcgi_script_name;
fastcgi_param QUERY_STRING $query_string;
fastcgi_param REQUEST_METHOD $request_method;
fastcgi_param CONTENT_TYPE $content_type;
fastcgi_param CONTENT_LENGTH $content_length;
fastcgi_param SCRIPT_NAME $fastcgi_script_name;
fastcgi_param REQUEST_URI $request_uri;
fastcgi_param DOCUMENT_URI $document_uri;
fastcgi_param DOCUMENT_ROOT $document_root;
fastcgi_param SERVER_PROTOCOL $server_protocol;
fastcgi_param GATEWAY_INTERFACE CGI/1.1;
fastcgi_param SERVER_SOFTWARE nginx/$nginx_version;
fastcgi_param REMOTE_ADDR $remote_addr;
fastcgi_param REMOTE_PORT $remote_port;
fastcgi_param SERVER_ADDR $server_addr;
fastcgi_param SERVER_PORT $server_port;
fastcgi_param SERVER_NAME $server_name;
fastcgi_param REDIRECT_STATUS 200;
"""


class Tree:
    """An ``/etc``-like tree under ``root`` and the real processes serving it."""

    def __init__(
        self,
        root: Path,
        *,
        php_version: str = "8.3",
        nginx_php_version: str | None = None,
        pool_lines: str | None = None,
        backend_ports: tuple[int, ...] = (),
        proxy_read_timeout: str = "2s",
    ) -> None:
        self.root = root
        self.php_version = php_version
        self.nginx_php_version = nginx_php_version or php_version
        self.port = free_port()
        self.backend_ports = backend_ports
        self.etc_nginx = root / "etc" / "nginx"
        self.php_dir = root / "etc" / "php" / php_version / "fpm"
        self.nginx_conf = self.etc_nginx / "nginx.conf"
        self.php_conf = self.php_dir / "php-fpm.conf"
        self.pool_conf = self.php_dir / "pool.d" / "www.conf"
        self.site = self.etc_nginx / "sites-available" / "app"
        self.run_php = root / "run" / "php"
        self.socket = self.run_php / f"php{php_version}-fpm.sock"
        self.nginx_socket = self.run_php / f"php{self.nginx_php_version}-fpm.sock"
        self.nginx_error_log = root / "log" / "nginx" / "error.log"
        self.php_log = root / "log" / f"php{php_version}-fpm.log"
        self.nginx_binary = find_binary(NGINX_BINARY_ENV, ["nginx"])
        self.php_binary = find_binary(PHP_FPM_BINARY_ENV, ["php-fpm8.2", "php-fpm8.3", "php-fpm"])
        self._nginx: subprocess.Popen[bytes] | None = None
        self._php: subprocess.Popen[bytes] | None = None
        self.proxy_read_timeout = proxy_read_timeout
        default_pool = (
            "user = www-data\ngroup = www-data\n"
            "listen.owner = www-data\nlisten.group = www-data\nlisten.mode = 0660\n"
            "ping.path = /ping\npm.status_path = /status\n"
        )
        self.pool_lines = default_pool if pool_lines is None else pool_lines
        self._write()

    # -- files -------------------------------------------------------------------------------

    def _mkdir(self, path: Path) -> Path:
        return readable_dir(path, self.root)

    def _write_file(self, path: Path, text: str) -> None:
        readable_file(path, text, self.root)

    def _write(self) -> None:
        root = self.root
        for sub in ("run/php", "log/nginx", "tmp", "www", "etc/nginx/conf.d", "etc/nginx/modules-enabled"):
            self._mkdir(root / sub)
        self._write_file(root / "www" / "index.php", '<?php echo "php ok\\n";\n')
        self._write_file(
            self.nginx_conf,
            f"""user www-data;
worker_processes 1;
daemon off;
pid {root}/run/nginx.pid;
error_log {self.nginx_error_log} warn;
include modules-enabled/*.conf;

events {{
    worker_connections 64;
}}

http {{
    access_log {root}/log/nginx/access.log;
    client_body_temp_path {root}/tmp/client_body;
    proxy_temp_path {root}/tmp/proxy;
    fastcgi_temp_path {root}/tmp/fastcgi;
    uwsgi_temp_path {root}/tmp/uwsgi;
    scgi_temp_path {root}/tmp/scgi;
    proxy_connect_timeout 2s;

    include conf.d/*.conf;
    include sites-enabled/*;
}}
""",
        )
        self._write_file(self.etc_nginx / "fastcgi.conf", FASTCGI_CONF)
        self._write_file(self.etc_nginx / "snippets" / "fastcgi-php.conf", FASTCGI_PHP_SNIPPET)
        upstream = ""
        api = ""
        if self.backend_ports:
            servers = "".join(f"    server 127.0.0.1:{port};\n" for port in self.backend_ports)
            upstream = f"upstream app_backend {{\n{servers}}}\n"
            api = (
                "    location /api/ {\n"
                "        proxy_pass http://app_backend/;\n"
                f"        proxy_read_timeout {self.proxy_read_timeout};\n"
                "    }\n"
            )
        self._write_file(self.etc_nginx / "conf.d" / "upstream.conf", upstream or "# no backend\n")
        self._write_file(
            self.site,
            f"""server {{
    listen 127.0.0.1:{self.port} default_server;
    server_name app.test;
    root {root}/www;
    index index.php;

    location = /ready {{
        return 200 "ready\\n";
    }}

    location ~ \\.php$ {{
        include snippets/fastcgi-php.conf;
        fastcgi_pass unix:{self.nginx_socket};
        fastcgi_read_timeout 3s;
    }}

{api}}}
""",
        )
        # Available but not enabled: must not be discovered.
        self._write_file(
            self.etc_nginx / "sites-available" / "old",
            "server {\n    listen 127.0.0.1:1;\n    location / {\n        fastcgi_pass unix:/nonexistent.sock;\n    }\n}\n",
        )
        enabled = self._mkdir(self.etc_nginx / "sites-enabled") / "app"
        if not enabled.is_symlink():
            enabled.symlink_to(self.site)
        self._write_file(
            self.php_conf,
            f"""; PHP-FPM of a Debian-like layout
[global]
pid = {self.run_php}/php{self.php_version}-fpm.pid
error_log = {self.php_log}
daemonize = no

include={self.php_dir}/pool.d/*.conf
""",
        )
        self._write_file(
            self.pool_conf,
            f"""[www]
{self.pool_lines}listen = {self.run_php}/php{self.php_version}-fpm.sock
pm = static
pm.max_children = 1
""",
        )

    def line_of(self, path: Path, needle: str) -> int:
        """1-based line of the first line of ``path`` containing ``needle``."""
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if needle in line:
                return number
        raise AssertionError(f"{needle!r} not in {path}")

    def exporter_settings(self, backend_pattern: str = r"\buvicorn\b") -> dict[str, object]:
        """An exporter config that only says where the tree is (discovery does the rest)."""
        return {
            "scrape_timeout_seconds": 8.0,
            "nginx": {
                "binary": self.nginx_binary,
                "prefix": f"{self.root}/",
                "error_log": str(self.nginx_error_log),
                "test_interval_seconds": 0.0,
            },
            "processes": {
                "nginx": r"^nginx: master process .* -c " + _escape(str(self.nginx_conf)),
                "php_fpm": r"^php-fpm: master process \(" + _escape(str(self.php_conf)) + r"\)",
                "backend": backend_pattern,
            },
            "units": {"enabled": False},
            "filesystems": [str(self.root)],
            # An OOM kill elsewhere on the test host (the fault matrix's) is not this tree's cause for long.
            "thresholds": {"oom_kill_window_seconds": 60.0},
            "discovery": {
                "nginx_config": str(self.nginx_conf),
                "php_fpm_configs": [f"{self.root}/etc/php/*/fpm/php-fpm.conf"],
            },
        }

    # -- processes ---------------------------------------------------------------------------

    def start_php_fpm(self) -> None:
        """``php-fpm -t`` then ``php-fpm -F -y CONF`` until its socket accepts."""
        check = subprocess.run(
            [self.php_binary, "-t", "-y", str(self.php_conf)],
            capture_output=True,
            timeout=_TIMEOUT,
            check=False,
        )
        assert check.returncode == 0, check.stderr.decode()
        self._php = self._spawn([self.php_binary, "-F", "-y", str(self.php_conf)], "php-fpm.stderr")
        proc = self._php
        wait_until(lambda: proc.poll() is None and unix_connects(self.socket), _TIMEOUT, "php-fpm")

    def start_nginx(self) -> None:
        """``nginx -e LOG -p ROOT/ -c CONF`` until it serves ``/ready``."""
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

    @property
    def php_fpm_pid(self) -> int | None:
        return self._php.pid if self._php is not None and self._php.poll() is None else None

    @property
    def nginx_pid(self) -> int | None:
        return self._nginx.pid if self._nginx is not None and self._nginx.poll() is None else None

    def _spawn(self, argv: list[str], log: str) -> subprocess.Popen[bytes]:
        return spawn_logged(argv, self.root, log)

    def stop_php_fpm(self) -> None:
        """SIGQUIT PHP-FPM and wait for it."""
        stop_process(self._php, signal.SIGQUIT, _TIMEOUT)
        self._php = None

    def stop(self) -> None:
        """SIGQUIT both masters (they reap their workers) and wait; SIGKILL after a deadline."""
        stop_process(self._nginx, signal.SIGQUIT, _TIMEOUT)
        stop_process(self._php, signal.SIGQUIT, _TIMEOUT)
        self._nginx = self._php = None


def _escape(text: str) -> str:
    import re

    return re.escape(text)
