"""Discovery against Debian-shaped trees served by the real nginx and php-fpm: the discovered
targets are the ones the real processes use, and the configuration's mismatches become findings."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from harness import free_port, wait_until
from harness.exporters import cli, running_exporter
from harness.tree import remove_unless_kept, require_stack_binaries
from test_discovery_tree import Tree

from exporter import app
from exporter.app import Exporter
from exporter.checks.processes import listening_addresses
from exporter.config import Config
from exporter.demo.stack import ROOT_ENV, http_status, make_root
from exporter.discovery.merge import load_config
from exporter.families import Metric
from exporter.metrics import discovery_families as metric_families

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: nginx/php-fpm workers run as www-data")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def backends() -> Iterator[tuple[tuple[int, ...], Path]]:
    """Two real uvicorn backends (the demo app), each with its own fault folder."""
    require_stack_binaries()
    root = make_root("badgateway-disc-backends-")
    procs: list[subprocess.Popen[bytes]] = []
    ports: list[int] = []
    try:
        for index in range(2):
            port = free_port()
            while port in ports:
                port = free_port()
            folder = root / f"b{index}"
            (folder / "backend").mkdir(parents=True)
            folder.chmod(0o755)
            argv = [sys.executable, "-m", "uvicorn", "exporter.demo.backend:app", "--app-dir", str(REPO),
                    "--host", "127.0.0.1", "--port", str(port), "--timeout-graceful-shutdown", "1"]  # fmt: skip
            with (root / f"b{index}.log").open("ab") as out:
                procs.append(
                    subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env={**os.environ, ROOT_ENV: str(folder)}, start_new_session=True)
                )  # fmt: skip
            ports.append(port)
        for port in ports:
            wait_until(lambda port=port: http_status(port, "/health", 1.0) == 200, 20.0, f"backend on {port}")  # type: ignore[misc]
        yield tuple(ports), root
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)


TreeFactory = Callable[..., Tree]


@pytest.fixture
def make_tree(backends: tuple[tuple[int, ...], Path]) -> Iterator[TreeFactory]:
    """``make_tree(**Tree kwargs)``: a tree in a fresh 0755 folder, its processes stopped at teardown."""
    made: list[Tree] = []
    ports = backends[0]

    def factory(**kwargs: Any) -> Tree:
        kwargs.setdefault("backend_ports", ports)
        tree = Tree(make_root("badgateway-disc-"), **kwargs)
        made.append(tree)
        return tree

    yield factory
    for tree in made:
        tree.stop()
        remove_unless_kept(tree.root)


def backend_pattern(ports: tuple[int, ...]) -> str:
    return r"\buvicorn\b.* --port (" + "|".join(str(p) for p in ports) + r")\b"


def write(tree: Tree, ports: tuple[int, ...], **extra: object) -> Path:
    settings = tree.exporter_settings(backend_pattern(ports))
    settings.update(extra)
    path = tree.root / "exporter.yml"
    path.write_text(yaml.safe_dump(settings), encoding="utf-8")
    return path


def diagnose(path: Path) -> tuple[int, dict[str, object]]:
    done = cli("--config", str(path), "diagnose", "--format", "json", timeout=90)
    assert done.returncode in (0, 1, 3), done.stderr
    document = json.loads(done.stdout)
    assert "Traceback" not in done.stderr
    return done.returncode, document


def causes(document: dict[str, object]) -> set[str]:
    items = document["causes"]
    assert isinstance(items, list)
    return {c["cause"] for c in items}


def findings(document: dict[str, object], prefix: str) -> list[dict[str, object]]:
    items = document["findings"]
    assert isinstance(items, list)
    return [f for f in items if str(f["step"]).startswith(prefix)]


def samples(families: list[Metric], name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(s.labels.items())): s.value
        for family in families
        for s in family.samples
        if s.name == name
    }


def nginx_ports(pid: int) -> set[int]:
    return {
        int(address.rsplit(":", 1)[1])
        for address in listening_addresses([pid])
        if not address.startswith("/")
    }


def php_sockets(pid: int) -> set[str]:
    return {address for address in listening_addresses([pid]) if address.startswith("/")}


def test_php_80_vs_83_mismatch(make_tree: TreeFactory, backends: tuple[tuple[int, ...], Path]) -> None:
    ports = backends[0]
    tree = make_tree(php_version="8.0", nginx_php_version="8.3")
    tree.start_php_fpm()
    tree.start_nginx()
    assert http_status(tree.port, "/index.php") == 502  # the real symptom
    assert tree.php_fpm_pid is not None and tree.nginx_pid is not None

    path = write(tree, ports)
    config = load_config(str(path))
    sockets = [pool.socket for pool in config.php_fpm]
    # What PHP-FPM really listens on, and what nginx really points at, are both watched.
    assert php_sockets(tree.php_fpm_pid) == {str(tree.socket)}
    assert str(tree.socket) in sockets and str(tree.nginx_socket) in sockets
    # The front target is the port nginx really serves.
    front = next(t for t in config.http if t.role == "front")
    assert front.url == f"http://127.0.0.1:{tree.port}/"
    assert tree.port in nginx_ports(tree.nginx_pid)

    code, document = diagnose(path)
    assert code == 1
    assert causes(document) == {"socket_path_mismatch"}
    finding = next(f for f in findings(document, f"socket:{tree.nginx_socket}"))
    fix = "\n".join(finding["fix"])  # type: ignore[arg-type]
    line = tree.line_of(tree.site, "fastcgi_pass")
    # The real file (sites-available), not the sites-enabled symlink, with the exact line.
    assert f"in {tree.site} line {line}: change `fastcgi_pass unix:{tree.nginx_socket};`" in fix
    assert f"`fastcgi_pass unix:{tree.socket};`" in fix
    assert (
        f"in {tree.pool_conf} line {tree.line_of(tree.pool_conf, 'listen =')}: `listen = {tree.nginx_socket}`"
        in fix
    )

    exporter = Exporter(config)
    try:
        checked = exporter.check(5.0)
        results, diagnosis = checked.results, checked.diagnosis
    finally:
        exporter.close()
    assert "socket_path_mismatch" in {c.value for c in diagnosis.causes}
    alternative = samples(list(metric_families(results, config)), "badgateway_fastcgi_socket_alternative")
    assert alternative == {(("alternative", str(tree.socket)), ("socket", str(tree.nginx_socket))): 1.0}

    # Fixing the line the finding names makes the 502 go away.
    tree.site.write_text(tree.site.read_text().replace(str(tree.nginx_socket), str(tree.socket)))
    assert tree.nginx_pid is not None
    os.kill(tree.nginx_pid, signal.SIGHUP)
    wait_until(lambda: http_status(tree.port, "/index.php") == 200, 15.0, "nginx to reload")


def test_pool_listen_owner_wrong(make_tree: TreeFactory, backends: tuple[tuple[int, ...], Path]) -> None:
    ports = backends[0]
    pool_lines = (
        "user = www-data\ngroup = www-data\nlisten.owner = nobody\nlisten.group = nogroup\nlisten.mode = 0660\n"
        "ping.path = /ping\npm.status_path = /status\n"
    )
    tree = make_tree(pool_lines=pool_lines)
    tree.start_php_fpm()
    tree.start_nginx()
    path = write(tree, ports)

    # Before a single request fails: the pool file alone names the cause.
    code, document = diagnose(path)
    assert code == 1
    assert causes(document) == {"socket_permission_denied"}
    pool = findings(document, "pool_access:")
    assert len(pool) == 1 and pool[0]["verdict"] == "fail"
    owner_line = tree.line_of(tree.pool_conf, "listen.owner")
    assert f"listen.owner = nobody (line {owner_line})" in " ".join(pool[0]["evidence"])  # type: ignore[arg-type]
    assert f"in {tree.pool_conf}, line {owner_line}: listen.owner = www-data" in pool[0]["fix"][0]  # type: ignore[index]
    # And it is right: nginx really answers 502 (13: Permission denied).
    assert http_status(tree.port, "/index.php") == 502
    assert "(13: Permission denied)" in tree.nginx_error_log.read_text()

    # With PHP-FPM stopped there is no socket to look at; the pool file still says it.
    tree.stop_php_fpm()
    code, document = diagnose(path)
    assert {"socket_permission_denied", "php_fpm_down"} <= causes(document)


def test_pool_without_ping_and_status(make_tree: TreeFactory, backends: tuple[tuple[int, ...], Path]) -> None:
    ports = backends[0]
    tree = make_tree(
        pool_lines="user = www-data\ngroup = www-data\nlisten.owner = www-data\nlisten.group = www-data\n"
    )
    tree.start_php_fpm()
    tree.start_nginx()
    assert http_status(tree.port, "/index.php") == 200
    path = write(tree, ports)
    config = load_config(str(path))
    pool = next(p for p in config.php_fpm if p.socket == str(tree.socket))
    assert pool.ping_path is None and pool.status_path is None  # connect-only probe

    with running_exporter(config) as exporter:
        scrape = exporter.scrape()
    assert scrape.value("badgateway_fastcgi_up", socket=str(tree.socket)) == 1
    assert scrape.value("badgateway_socket_accessible", socket=str(tree.socket), user="www-data") == 1
    assert scrape.causes() == set()

    code, document = diagnose(path)
    assert code == 0, document
    warning = findings(document, "pool_probe:")
    assert len(warning) == 1 and warning[0]["verdict"] == "warn"
    assert str(tree.pool_conf) in " ".join(warning[0]["evidence"])  # type: ignore[arg-type]
    assert warning[0]["fix"][0] == (  # type: ignore[index]
        f"add under [www] in {tree.pool_conf}: ping.path = /ping; pm.status_path = /status"
    )


def test_upstream_with_two_servers(make_tree: TreeFactory, backends: tuple[tuple[int, ...], Path]) -> None:
    ports, backend_root = backends
    tree = make_tree(proxy_read_timeout="1s")
    tree.start_php_fpm()
    tree.start_nginx()
    path = write(tree, ports)
    config = load_config(str(path))
    urls = {t.url for t in config.http if t.role == "backend"}
    assert urls == {f"http://127.0.0.1:{port}/health" for port in ports}
    # Those are the ports the real backends listen on, and nginx really proxies to them.
    listening = {
        c.laddr.port for c in psutil.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN and c.laddr
    }
    assert set(ports) <= listening
    assert http_status(tree.port, "/api/health") == 200
    origin = config.discovered.origins if config.discovered else {}
    upstream_file = tree.etc_nginx / "conf.d" / "upstream.conf"
    assert str(origin["http[1].url"]).startswith(
        f"{upstream_file}:{tree.line_of(upstream_file, str(ports[0]))}"
    )

    code, document = diagnose(path)
    assert code == 0, document
    assert not findings(document, "nginx_timeout:")

    # One backend slower than nginx's proxy_read_timeout 1s: a hint for upstream_timeout.
    delay = backend_root / "b0" / "backend" / "health_delay"
    delay.write_text("1.6\n")
    try:
        code, document = diagnose(path)
    finally:
        delay.write_text("0\n")
    hints = findings(document, "nginx_timeout:")
    assert len(hints) == 1, document
    assert hints[0]["verdict"] == "warn" and hints[0]["cause"] == "upstream_timeout"
    timeout_line = tree.line_of(tree.site, "proxy_read_timeout")
    assert f"proxy_read_timeout 1s ({tree.site}:{timeout_line})" in " ".join(hints[0]["evidence"])  # type: ignore[arg-type]


def test_config_with_syntax_error(make_tree: TreeFactory, backends: tuple[tuple[int, ...], Path]) -> None:
    ports = backends[0]
    tree = make_tree()
    tree.start_php_fpm()
    tree.start_nginx()
    # Break the enabled site on disk: the running nginx keeps serving the old configuration.
    text = tree.site.read_text()
    tree.site.write_text(text.replace("index index.php;", "index index.php"))
    broken_line = tree.line_of(tree.site, "index index.php")
    assert http_status(tree.port, "/index.php") == 200

    path = write(tree, ports)
    config = load_config(str(path))  # never raises for a broken nginx file
    assert config.discovered is not None
    assert [str(p.file) for p in config.discovered.problems] == [str(tree.site)]
    assert config.discovered.problems[0].line is not None
    # What parsed is still used: the PHP-FPM pool and nginx's own error log.
    assert [pool.socket for pool in config.php_fpm] == [str(tree.socket)]
    assert str(tree.nginx_error_log) in config.logs.nginx

    _, document = diagnose(path)
    assert "nginx_config_invalid" in causes(document)

    # Without a working nginx -t (no binary), the exporter's own parse gives the verdict.
    no_binary = write(tree, ports)
    settings = yaml.safe_load(no_binary.read_text())
    settings["nginx"]["binary"] = str(tree.root / "no-such-nginx")
    no_binary.write_text(yaml.safe_dump(settings))
    with running_exporter(load_config(str(no_binary))) as exporter:
        scrape = exporter.scrape()
    assert scrape.value("badgateway_nginx_config_valid") == 0
    assert scrape.value("badgateway_nginx_config_test_error", reason="binary_missing") == 1
    assert "nginx_config_invalid" in scrape.causes()
    _, document = diagnose(no_binary)
    finding = findings(document, "nginx_config")[0]
    assert finding["verdict"] == "fail" and finding["cause"] == "nginx_config_invalid"
    assert f"{tree.site}:{broken_line}" in " ".join(finding["evidence"])  # type: ignore[arg-type]
    assert finding["fix"][0].startswith(f"fix {tree.site}:{broken_line}")  # type: ignore[index]


def test_discover_prints_origins(make_tree: TreeFactory, backends: tuple[tuple[int, ...], Path]) -> None:
    ports = backends[0]
    tree = make_tree()
    path = write(tree, ports)
    yaml_out = cli("discover", "--config", str(path), "--web.listen-address", "127.0.0.1:19502", timeout=60)
    assert yaml_out.returncode == 0, yaml_out.stderr
    effective = yaml.safe_load(yaml_out.stdout)
    config: Config = load_config(str(path), {"listen_address": ("--web.listen-address", "127.0.0.1:19502")})
    assert effective["php_fpm"][0]["socket"] == config.php_fpm[0].socket == str(tree.socket)
    listen_line = tree.line_of(tree.pool_conf, "listen =")
    assert f"socket: {tree.socket}  # from {tree.pool_conf}:{listen_line}" in yaml_out.stdout
    assert "listen_address: 127.0.0.1:19502  # from flag --web.listen-address" in yaml_out.stdout
    assert f"# from {path}:" in yaml_out.stdout  # explicit values name the exporter's file and line
    assert "binary: " + tree.nginx_binary in yaml_out.stdout
    json_out = cli("discover", "--config", str(path), "--format", "json", timeout=60)
    document = json.loads(json_out.stdout)
    assert document["origins"]["nginx_user"] == f"{tree.nginx_conf}:1"
    assert document["origins"]["scrape_timeout_seconds"].startswith(f"{path}:")
    assert document["origins"]["listen_address"] == "default"
    passes = document["found"]["nginx"]["passes"]
    assert {p["directive"] for p in passes} == {"fastcgi_pass", "proxy_pass"}
    assert "/nonexistent.sock" not in json_out.stdout  # sites-available without a sites-enabled link


def test_running_exporter_rediscovers_when_nginx_changes(
    make_tree: TreeFactory, backends: tuple[tuple[int, ...], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """fastcgi_pass pointed at another PHP version's socket and nginx reloaded: the running exporter sees it."""
    monkeypatch.setattr(app, "RELOAD_CHECK_SECONDS", 0.0)
    ports = backends[0]
    tree = make_tree(php_version="8.3", nginx_php_version="8.3")
    tree.start_php_fpm()
    tree.start_nginx()
    path = write(tree, ports)
    exporter = Exporter(load_config(str(path)), reload=lambda: load_config(str(path)))
    try:
        before = exporter.check(5.0).diagnosis
        assert "socket_path_mismatch" not in before.causes
        other = str(tree.socket).replace("8.3", "8.0")
        tree.site.write_text(tree.site.read_text().replace(str(tree.socket), other))
        assert tree.nginx_pid is not None
        os.kill(tree.nginx_pid, signal.SIGHUP)
        wait_until(
            lambda: http_status(tree.port, "/index.php") == 502, 15.0, "nginx to reload onto the other socket"
        )
        after = exporter.check(5.0).diagnosis
    finally:
        exporter.close()
    assert {c.value for c in after.causes} == {"socket_path_mismatch"}
    assert other in {pool.socket for pool in exporter.config.php_fpm}
