"""A copy of a stock Debian 12 host, served by the real nginx, php-fpm and a uvicorn backend: nginx.conf
as Debian ships it, Debian's own ``default`` site enabled next to a real site (``shop.test``, PHP over
FastCGI and ``/api/`` over proxy_pass), and no exporter configuration beyond where the tree is.

The front probe must reach the site by its ``server_name`` (the address alone reaches Debian's welcome
page, whose 200 would hide every 502 of the site), and a site file that stops parsing must be named with
the line nginx reports while the probes stay those of the site.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from harness import free_port, wait_until
from harness.exporters import cli
from harness.tree import remove_unless_kept, require_stack_binaries, spawn_logged

from exporter import app
from exporter.app import Checked, Exporter
from exporter.config import Config
from exporter.demo.stack import ROOT_ENV, find_binary, make_root, stop_process, unix_connects
from exporter.discovery.merge import load_config
from exporter.discovery.nginx import TEST_WHERE
from exporter.metrics import discovery_families

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: nginx/php-fpm workers run as www-data")

REPO = Path(__file__).resolve().parents[1]
ETC_NGINX = Path("/etc/nginx")
ETC_FPM = Path("/etc/php/8.2/fpm")
WELCOME = Path("/var/www/html/index.nginx-debian.html")
_TIMEOUT = 15.0


def _replace(text: str, old: str, new: str) -> str:
    assert old in text, f"Debian's file changed: no {old!r}"
    return text.replace(old, new)


def get(port: int, path: str = "/", host: str | None = None) -> tuple[int, str]:
    """A GET to 127.0.0.1:``port`` with ``host`` as its Host header (default: the address)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers={"Host": host} if host else {})
        response = conn.getresponse()
        return response.status, response.read().decode("utf-8", "replace")
    finally:
        conn.close()


class DebianHost:
    """``etc/nginx`` and ``etc/php/8.2/fpm`` copied from the packages under a 0755 ``root``, on loopback."""

    def __init__(self, root: Path, backend_port: int) -> None:
        self.root = root
        self.port = free_port()
        self.backend_port = backend_port
        self.etc = root / "etc" / "nginx"
        self.nginx_conf = self.etc / "nginx.conf"
        self.site = self.etc / "sites-available" / "shop"
        self.default_site = self.etc / "sites-available" / "default"
        self.fpm = root / "etc" / "php" / "8.2" / "fpm"
        self.php_conf = self.fpm / "php-fpm.conf"
        self.pool = self.fpm / "pool.d" / "www.conf"
        self.socket = root / "run" / "php" / "php8.2-fpm.sock"
        self.error_log = root / "log" / "nginx" / "error.log"
        self.shop_log = root / "log" / "nginx" / "shop.access.log"
        self.access_log = root / "log" / "nginx" / "access.log"
        self.nginx_binary = find_binary("BADGATEWAY_NGINX", ["nginx"])
        self.php_binary = find_binary("BADGATEWAY_PHP_FPM", ["php-fpm8.2"])
        self._nginx: subprocess.Popen[bytes] | None = None
        self._php: subprocess.Popen[bytes] | None = None
        self._write()

    def _file(self, path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        path.chmod(0o644)

    def _write(self) -> None:
        root = self.root
        for sub in ("run/php", "log/nginx", "tmp", "www/html", "www/shop", "etc/nginx/modules-enabled"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        for folder in root.rglob("*"):
            if folder.is_dir():
                folder.chmod(0o755)
        conf = (ETC_NGINX / "nginx.conf").read_text(encoding="utf-8")
        conf = _replace(conf, "include /etc/nginx/sites-enabled/*;", "include /etc/nginx/sites-enabled/*;")
        conf = _replace(conf, "/etc/nginx/", f"{self.etc}/")
        conf = _replace(conf, "pid /run/nginx.pid;", f"pid {root}/run/nginx.pid;")
        conf = _replace(conf, "/var/log/nginx/", f"{root}/log/nginx/")
        conf = _replace(conf, "worker_processes auto;", "worker_processes 1;")
        self._file(self.nginx_conf, conf)
        for name in ("mime.types", "fastcgi.conf", "snippets/fastcgi-php.conf"):
            self._file(self.etc / name, (ETC_NGINX / name).read_text(encoding="utf-8"))
        # The one addition: this tree's temp folders and a log format that shows the Host nginx routed by.
        self._file(
            self.etc / "conf.d" / "test-tree.conf",
            "".join(f"{kind}_temp_path {root}/tmp/{kind};\n" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
            + "log_format hosts '$host $http_user_agent $status';\n",
        )  # fmt: skip
        default = (ETC_NGINX / "sites-available" / "default").read_text(encoding="utf-8")
        default = _replace(
            default, "listen 80 default_server;", f"listen 127.0.0.1:{self.port} default_server;"
        )
        default = _replace(default, "listen [::]:80 default_server;", "")
        default = _replace(default, "root /var/www/html;", f"root {root}/www/html;")
        self._file(self.default_site, default)
        welcome = WELCOME.read_text(encoding="utf-8") if WELCOME.exists() else "<h1>Welcome to nginx!</h1>\n"
        self._file(root / "www" / "html" / "index.nginx-debian.html", welcome)
        self._file(root / "www" / "shop" / "index.php", '<?php echo "shop ok\\n";\n')
        self._file(self.site, self.site_text())
        for name in ("default", "shop"):
            link = self.etc / "sites-enabled" / name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.parent.chmod(0o755)
            link.symlink_to(self.etc / "sites-available" / name)
        php_conf = (ETC_FPM / "php-fpm.conf").read_text(encoding="utf-8")
        php_conf = _replace(php_conf, "pid = /run/php/php8.2-fpm.pid", f"pid = {root}/run/php/php8.2-fpm.pid")
        php_conf = _replace(
            php_conf, "error_log = /var/log/php8.2-fpm.log", f"error_log = {root}/log/php8.2-fpm.log"
        )
        php_conf = _replace(
            php_conf, "include=/etc/php/8.2/fpm/pool.d/*.conf", f"include={self.fpm}/pool.d/*.conf"
        )
        self._file(self.php_conf, php_conf)
        pool = (ETC_FPM / "pool.d" / "www.conf").read_text(encoding="utf-8")
        pool = _replace(pool, "listen = /run/php/php8.2-fpm.sock", f"listen = {self.socket}")
        pool = _replace(pool, ";ping.path = /ping", "ping.path = /ping")
        pool = _replace(pool, ";pm.status_path = /status", "pm.status_path = /status")
        assert re.search(r"^listen\.owner = www-data$", pool, re.M) and re.search(
            r"^listen\.group = www-data$", pool, re.M
        )
        self._file(self.pool, pool)
        for folder in (self.etc / "conf.d", self.etc / "snippets", self.fpm / "pool.d"):
            folder.chmod(0o755)

    def site_text(self) -> str:
        return f"""server {{
    listen 127.0.0.1:{self.port};
    server_name shop.test www.shop.test;
    root {self.root}/www/shop;
    index index.php;
    access_log {self.shop_log} hosts;

    location ~ \\.php$ {{
        include snippets/fastcgi-php.conf;
        fastcgi_pass unix:{self.socket};
    }}

    location /api/ {{
        proxy_pass http://127.0.0.1:{self.backend_port}/;
    }}
}}
"""

    def line_of(self, path: Path, needle: str) -> int:
        lines = path.read_text(encoding="utf-8").splitlines()
        return next(number for number, line in enumerate(lines, start=1) if needle in line)

    def exporter_config(self) -> Path:
        """Only where the tree is: discovery does the rest."""
        settings = {
            "discovery": {
                "nginx_config": str(self.nginx_conf),
                "php_fpm_configs": [f"{self.root}/etc/php/*/fpm/php-fpm.conf"],
            },
            "nginx": {"error_log": str(self.error_log)},  # nginx -t's own log: not /var/log/nginx
            "units": {"enabled": False},  # plain children, no systemd units
        }
        path = self.root / "exporter.yml"
        path.write_text(yaml.safe_dump(settings), encoding="utf-8")
        return path

    def nginx_test(self) -> tuple[str, int] | None:
        """Where ``nginx -t`` itself says the configuration breaks."""
        done = subprocess.run(
            [self.nginx_binary, "-t", "-c", str(self.nginx_conf), "-e", str(self.error_log)],
            capture_output=True, text=True, timeout=_TIMEOUT, check=False,
        )  # fmt: skip
        where = next(
            (TEST_WHERE.search(line) for line in done.stderr.splitlines() if "[emerg]" in line), None
        )
        return (where.group("file"), int(where.group("line"))) if where else None

    def start(self) -> None:
        self.start_php_fpm()
        argv = [self.nginx_binary, "-e", str(self.error_log), "-c", str(self.nginx_conf), "-g", "daemon off;"]
        assert self.nginx_test() is None
        self._nginx = self._spawn(argv, "nginx.stderr")
        proc = self._nginx
        wait_until(lambda: proc.poll() is None and _answers(self.port), _TIMEOUT, "nginx")

    def start_php_fpm(self) -> None:
        self._php = self._spawn([self.php_binary, "-F", "-y", str(self.php_conf)], "php-fpm.stderr")
        proc = self._php
        wait_until(lambda: proc.poll() is None and unix_connects(self.socket), _TIMEOUT, "php-fpm")

    def stop_php_fpm(self) -> None:
        stop_process(self._php, signal.SIGQUIT, _TIMEOUT)
        self._php = None

    def stop(self) -> None:
        stop_process(self._nginx, signal.SIGQUIT, _TIMEOUT)
        self.stop_php_fpm()
        self._nginx = None

    def _spawn(self, argv: list[str], log: str) -> subprocess.Popen[bytes]:
        return spawn_logged(argv, self.root, log)


def _answers(port: int) -> bool:
    try:
        return get(port)[0] == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def backend() -> Iterator[int]:
    """The real uvicorn backend (the demo app) behind ``location /api/``."""
    require_stack_binaries(("php-fpm8.2",))
    if (
        not (ETC_NGINX / "sites-available" / "default").exists()
        or not (ETC_FPM / "pool.d" / "www.conf").exists()
    ):
        pytest.skip("needs Debian's packaged nginx and php8.2-fpm files")
    root = make_root("badgateway-debian-backend-")
    port = free_port()
    argv = [sys.executable, "-m", "uvicorn", "exporter.demo.backend:app", "--app-dir", str(REPO),
            "--host", "127.0.0.1", "--port", str(port), "--timeout-graceful-shutdown", "1"]  # fmt: skip
    with (root / "backend.log").open("ab") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, ROOT_ENV: str(root)}, start_new_session=True,
        )  # fmt: skip
    try:
        wait_until(lambda: _get_status(port, "/health") == 200, 20.0, "the backend")
        yield port
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)


def _get_status(port: int, path: str) -> int | None:
    try:
        return get(port, path)[0]
    except OSError:
        return None


@pytest.fixture
def host(backend: int, monkeypatch: pytest.MonkeyPatch) -> Iterator[DebianHost]:
    monkeypatch.setattr(app, "RELOAD_CHECK_SECONDS", 0.0)
    made = DebianHost(make_root("badgateway-debian-"), backend)
    try:
        made.start()
        yield made
    finally:
        made.stop()
        remove_unless_kept(made.root)


def fronts(config: Config) -> list[tuple[str, str, str | None]]:
    return [(t.name, t.url, t.host) for t in config.http if t.role == "front"]


def front_result(checked: Checked) -> tuple[int | None, str]:
    (probe,) = [p for p in checked.results.http if p.role == "front"]
    return probe.status_code, probe.target


def discovery_errors(checked: Checked, config: Config) -> float:
    return sum(
        s.value
        for family in discovery_families(checked.results, config)
        for s in family.samples
        if s.name == "badgateway_discovery_config_errors" and s.labels["source"] == "nginx"
    )


def test_front_probe_reaches_the_site_by_its_server_name(host: DebianHost, backend: int) -> None:
    config = load_config(str(host.exporter_config()))
    # One front: the site that passes to PHP-FPM and the backend; Debian's default site is none.
    assert fronts(config) == [("front:shop.test", f"http://127.0.0.1:{host.port}/", "shop.test")]
    assert [t.url for t in config.http if t.role == "backend"] == [f"http://127.0.0.1:{backend}/health"]
    assert [pool.socket for pool in config.php_fpm] == [str(host.socket)]
    assert config.discovered is not None and not config.discovered.problems
    origins = config.discovered.origins
    assert str(origins["http[0].url"]).startswith(f"{host.site}:{host.line_of(host.site, 'listen')}")
    assert str(origins["http[0].host"]).startswith(f"{host.site}:{host.line_of(host.site, 'server_name')}")
    # The address alone is Debian's welcome page: what the front probe used to watch.
    status, body = get(host.port)
    assert status == 200 and "Welcome to nginx" in body
    assert get(host.port, host="shop.test") == (200, "shop ok\n")

    exporter = Exporter(config)
    try:
        assert front_result(exporter.check(8.0)) == (200, "front:shop.test")
        host.stop_php_fpm()
        wait_until(lambda: get(host.port, host="shop.test")[0] == 502, _TIMEOUT, "the site to answer 502")
        checked = exporter.check(8.0)
    finally:
        exporter.close()
    # The site's 502 is seen by the front probe, and counts as a gateway error of the round ...
    assert front_result(checked) == (502, "front:shop.test")
    assert checked.diagnosis.gateway_errors
    # ... where the default site still answers 200.
    assert get(host.port)[0] == 200
    # nginx itself routed the probes by their Host: in the site's own log, not in the default one.
    probes = [line for line in host.shop_log.read_text().splitlines() if "badgateway-exporter" in line]
    assert probes == ["shop.test badgateway-exporter 200", "shop.test badgateway-exporter 502"]
    assert "badgateway-exporter" not in (host.access_log.read_text() if host.access_log.exists() else "")


BREAKAGES = {
    "stray brace": lambda text: text + "}\n",
    "unknown directive": lambda text: text.replace(
        "    index index.php;\n", "    index index.php;\n    shop_cache_zone on;\n"
    ),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_broken_site_file_is_named_and_the_probes_stay(host: DebianHost, breakage: str) -> None:
    path = host.exporter_config()
    exporter = Exporter(load_config(str(path)), reload=lambda: load_config(str(path)))
    try:
        before = fronts(exporter.config)
        assert before == [("front:shop.test", f"http://127.0.0.1:{host.port}/", "shop.test")]
        assert front_result(exporter.check(8.0))[0] == 200

        good = host.site.read_text()
        host.site.write_text(BREAKAGES[breakage](good))
        # Where nginx itself says it breaks: the enabled link to the site, the line of the breakage.
        line = (
            len(good.splitlines()) + 1 if breakage == "stray brace" else host.line_of(host.site, "shop_cache")
        )
        assert host.nginx_test() == (str(host.etc / "sites-enabled" / "shop"), line)

        # The running exporter discovers again: the problem shows, the probes stay those of the site.
        checked = exporter.check(8.0)
        config = exporter.config
        assert config.discovered is not None
        assert [(p.file, p.line) for p in config.discovered.problems] == [(str(host.site), line)]
        assert fronts(config) == before
        assert "kept from the previous discovery" in str(config.discovered.origins["http[0].url"])
        assert front_result(checked)[0] == 200  # the running nginx still serves the previous configuration
        assert discovery_errors(checked, config) == 1
        (finding,) = [f for f in checked.diagnosis.findings if f.step == "discovery"]
        assert f"{host.site}:{line}: nginx -t: " in finding.evidence[0]
        assert "still serves its previous configuration" in " ".join(finding.evidence)
        assert finding.fix[0].startswith(f"fix {host.site} line {line}: nginx -t: ")
        assert "do not reload or restart nginx before `sudo nginx -t` passes" in finding.fix[1]

        # Started fresh on the broken tree: the same probes, from what of the tree still parses.
        fresh = load_config(str(path))
        assert fronts(fresh) == before
        assert fresh.discovered is not None
        assert [(p.file, p.line) for p in fresh.discovered.problems] == [(str(host.site), line)]
        assert [t.url for t in fresh.http if t.role == "backend"] == [
            t.url for t in config.http if t.role == "backend"
        ]
        assert [pool.socket for pool in fresh.php_fpm] == [str(host.socket)]

        # Fixed: discovered again, nothing kept, no problem left.
        host.site.write_text(good)
        checked = exporter.check(8.0)
        assert exporter.config.discovered is not None and not exporter.config.discovered.problems
        assert fronts(exporter.config) == before
        assert "kept" not in str(exporter.config.discovered.origins["http[0].url"])
        assert not [f for f in checked.diagnosis.findings if f.step == "discovery"]
    finally:
        exporter.close()


@dataclass(frozen=True)
class _Printed:
    text: str

    def line(self, prefix: str) -> str:
        return next(line.strip() for line in self.text.splitlines() if line.strip().startswith(prefix))


def test_discover_prints_the_fronts(host: DebianHost) -> None:
    done = cli("discover", "--config", str(host.exporter_config()), timeout=60)
    assert done.returncode == 0, done.stderr
    printed = _Printed(done.stdout)
    assert printed.line("- name: front:shop.test").startswith("- name: front:shop.test  # from ")
    assert printed.line("url: http://127.0.0.1:") == (
        f"url: http://127.0.0.1:{host.port}/  # from {host.site}:{host.line_of(host.site, 'listen')}"
        " (listen of the server block at " + f"{host.site}:1)"
    )
    assert printed.line("host: shop.test") == (
        f"host: shop.test  # from {host.site}:{host.line_of(host.site, 'server_name')} (first usable server_name)"
    )
    assert "front:_" not in done.stdout and "localhost" not in done.stdout


def test_a_too_big_header_on_debians_layout_is_named_with_the_sites_own_line(host: DebianHost) -> None:
    """A cause only the logs show, on the packaged files: the fix names the site's fastcgi_pass line and
    the buffer nginx uses there (Debian sets none: nginx's default, one memory page)."""
    script = host.root / "www" / "shop" / "big.php"
    script.write_text(
        "<?php\nheader('X-Padding: ' . str_repeat('a', 16384));\necho \"ok\\n\";\n", encoding="utf-8"
    )
    script.chmod(0o644)
    assert [get(host.port, "/big.php", host="shop.test")[0] for _ in range(3)] == [502, 502, 502]
    done = cli("--config", str(host.exporter_config()), "diagnose", "--format", "json", timeout=60)
    assert done.returncode == 1, done.stderr
    document = json.loads(done.stdout)
    # An OOM kill anywhere on the host in the last 10 minutes (an earlier test's) is memory_exhausted too.
    assert {c["cause"] for c in document["causes"]} - {"memory_exhausted"} == {"upstream_header_too_big"}
    found = next(c for c in document["causes"] if c["cause"] == "upstream_header_too_big")
    line = host.line_of(host.site, "fastcgi_pass")
    assert found["fix"][0] == (
        f"in {host.site}:{line}: fastcgi_buffer_size 32k; fastcgi_buffers 8 32k;   # now 4k|8k"
    ), found["fix"]
    assert document["unexplained"] == []
