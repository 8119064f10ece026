"""Discovery on static trees (no processes): nginx via crossplane, PHP-FPM INI, merge and origins."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from test_discovery_tree import Tree

from exporter.config import ConfigError
from exporter.discovery.cli import main as discover_main
from exporter.discovery.merge import load_config
from exporter.discovery.model import Origin, listen_address
from exporter.discovery.nginx import discover_nginx, parse_time
from exporter.discovery.phpfpm import discover_php_fpm


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    return Tree(tmp_path / "root", php_version="8.3", backend_ports=(18001, 18002))


def test_parse_time() -> None:
    assert parse_time("30") == 30
    assert parse_time("500ms") == 0.5
    assert parse_time("1m30s") == 90
    assert parse_time("2h") == 7200
    assert parse_time("soon") is None
    assert parse_time("") is None


@given(st.integers(min_value=0, max_value=10_000), st.sampled_from(["ms", "s", "m", "h"]))
def test_parse_time_units(value: int, unit: str) -> None:
    factor = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    assert parse_time(f"{value}{unit}") == pytest.approx(value * factor)


@pytest.mark.parametrize(
    ("value", "address"),
    [
        ("unix:/run/php/x.sock", "/run/php/x.sock"),
        ("/run/php/x.sock", "/run/php/x.sock"),
        ("9000", "127.0.0.1:9000"),
        ("0.0.0.0:9000", "127.0.0.1:9000"),
        ("[::]:9000", "[::1]:9000"),
        ("localhost:9000", "localhost:9000"),
    ],
)
def test_listen_address(value: str, address: str) -> None:
    assert listen_address(value) == address


def test_nginx_tree(tree: Tree) -> None:
    facts = discover_nginx(str(tree.nginx_conf), f"{tree.root}/")
    assert facts.syntax_error is None and not facts.problems
    assert facts.user == "www-data"
    assert [path for path, _ in facts.error_logs] == [str(tree.nginx_error_log)]
    fastcgi = [p for p in facts.passes if p.directive == "fastcgi_pass"]
    assert len(fastcgi) == 1  # sites-available/old is not enabled
    item = fastcgi[0]
    assert [t.address for t in item.targets] == [str(tree.socket)]
    assert item.origin.file == str(tree.site)  # the real file behind sites-enabled/app
    assert item.origin.line == tree.line_of(tree.site, "fastcgi_pass")
    assert item.location == "~ \\.php$" and item.server_names == ("app.test",)
    read = item.timeout("fastcgi_read_timeout")
    assert (
        read is not None and read.seconds == 3 and read.origin.line == tree.line_of(tree.site, "fastcgi_read")
    )
    connect = item.timeout("fastcgi_connect_timeout")
    assert connect is not None and connect.seconds == 60 and connect.origin.kind == "default"
    proxy = next(p for p in facts.passes if p.directive == "proxy_pass")
    assert [t.address for t in proxy.targets] == ["127.0.0.1:18001", "127.0.0.1:18002"]
    assert {t.upstream for t in proxy.targets} == {"app_backend"}
    inherited = proxy.timeout("proxy_connect_timeout")  # set at http level in nginx.conf
    assert inherited is not None and inherited.seconds == 2 and inherited.origin.file == str(tree.nginx_conf)
    assert [(entry.host, entry.port) for entry in facts.listens] == [("127.0.0.1", tree.port)]


def test_nginx_missing_and_broken(tmp_path: Path, tree: Tree) -> None:
    missing = discover_nginx(str(tmp_path / "nope.conf"))
    assert missing.problems and missing.problems[0].message == "no such file"
    tree.site.write_text(
        "server {\n    listen 80;\n    location / {\n        fastcgi_pass unix:/x.sock\n    }\n}\n"
    )
    broken = discover_nginx(str(tree.nginx_conf))
    assert broken.syntax_error is not None
    assert (broken.syntax_error.file, broken.syntax_error.line) == (str(tree.site), 4)
    assert broken.user == "www-data"  # what parsed is kept


def test_nginx_unix_and_plain_targets(tmp_path: Path) -> None:
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        "events {}\nhttp {\n  upstream php { server unix:/run/php/a.sock; server 127.0.0.1:9000 down; }\n"
        "  server {\n    listen 8080 ssl;\n"
        "    location /a { proxy_pass http://localhost:8000; }\n"
        "    location /b { proxy_pass http://unix:/run/app.sock:/; }\n"
        "    location /c { fastcgi_pass php; }\n"
        "    location /d { proxy_pass http://$host; }\n"
        "    location /e { grpc_pass grpc://127.0.0.1:50051; uwsgi_pass 127.0.0.1:3031; }\n"
        "  }\n}\n"
    )
    facts = discover_nginx(str(conf))
    targets = {p.location: [t.address for t in p.targets] for p in facts.passes}
    assert targets["/a"] == ["localhost:8000"]
    assert targets["/b"] == ["/run/app.sock"]
    assert targets["/c"] == ["/run/php/a.sock"]  # the down server is left out
    assert targets["/d"] == []
    assert next(p for p in facts.passes if p.location == "/d").unresolved
    assert {p.directive for p in facts.passes if p.location == "/e"} == {"grpc_pass", "uwsgi_pass"}
    assert facts.listens[0].ssl and facts.listens[0].port == 8080


def test_php_fpm_tree(tmp_path: Path) -> None:
    fpm = tmp_path / "etc" / "php" / "8.1" / "fpm"
    (fpm / "pool.d").mkdir(parents=True)
    (fpm / "php-fpm.conf").write_text(
        "[global]\n; comment\nerror_log = log/php8.1-fpm.log\ninclude="
        + str(fpm / "pool.d" / "*.conf")
        + "\n"
    )
    (fpm / "pool.d" / "a.conf").write_text(
        '[api]\nlisten = /run/php/php8.1-$pool.sock ; trailing comment\nping.path = "/ping"\n'
        "pm.status_path = /status\npm.status_listen = 127.0.0.1:9001\nuser = ${DISCOVERY_TEST_USER}\n"
    )
    (fpm / "pool.d" / "b.conf").write_text("[www]\nlisten = 9000\nthis line is wrong\n")
    facts = discover_php_fpm([str(tmp_path / "etc/php/*/fpm/php-fpm.conf")])
    assert [p.name for p in facts.pools] == ["api", "www"]
    api, www = facts.pools
    assert api.listen == "/run/php/php8.1-api.sock"
    assert api.get("ping.path") == "/ping"
    assert api.status_listen == "127.0.0.1:9001"
    assert api.version == "8.1"
    assert api.settings["listen"].origin.line == 2
    assert www.listen == "127.0.0.1:9000"
    assert [(p.file, p.line) for p in facts.problems] == [(str(fpm / "pool.d" / "b.conf"), 3)]
    assert facts.error_logs[0][0] == "/var/log/php8.1-fpm.log"


def _write_yaml(tree: Tree, settings: dict[str, object]) -> Path:
    path = tree.root / "exporter.yml"
    path.write_text(yaml.safe_dump(settings), encoding="utf-8")
    return path


def test_merge_explicit_wins(tree: Tree) -> None:
    settings = tree.exporter_settings()
    discovered = load_config(str(_write_yaml(tree, settings)))
    assert [p.socket for p in discovered.php_fpm] == [str(tree.socket)]
    assert discovered.nginx.config == str(tree.nginx_conf)  # discovered, next to the explicit binary
    assert discovered.nginx.binary == tree.nginx_binary
    assert discovered.units.php_fpm == "php8.3-fpm.service"
    assert {t.name for t in discovered.http} == {
        "front:app.test",  # the site's server_name, sent as its Host
        "backend:127.0.0.1:18001",
        "backend:127.0.0.1:18002",
    }
    front = next(t for t in discovered.http if t.role == "front")
    assert (front.url, front.host) == (f"http://127.0.0.1:{tree.port}/", "app.test")

    settings["php_fpm"] = [{"socket": "/elsewhere.sock"}]
    settings["nginx_user"] = "nobody"
    explicit = load_config(str(_write_yaml(tree, settings)))
    assert [p.socket for p in explicit.php_fpm] == ["/elsewhere.sock"]
    assert explicit.nginx_user == "nobody"
    assert explicit.discovered is not None
    origins = explicit.discovered.origins
    assert str(origins["php_fpm[0].socket"]).startswith(f"{tree.root / 'exporter.yml'}:")
    assert str(origins["php_fpm[0].ping_path"]).endswith("(default within an explicit list)")

    settings["discovery"] = {"enabled": False}
    off = load_config(str(_write_yaml(tree, settings)))
    assert off.nginx.config is None and off.http[0].url == "http://127.0.0.1:8000/health"


def test_discovery_problem_keeps_defaults(tmp_path: Path) -> None:
    path = tmp_path / "exporter.yml"
    path.write_text(yaml.safe_dump({"discovery": {"nginx_config": str(tmp_path / "missing.conf"),
                                                  "php_fpm_configs": [str(tmp_path / "none/*.conf")]}}))  # fmt: skip
    config = load_config(str(path))
    # No pool and no fastcgi_pass found: the socket of the PHP-FPM version whose unit is installed.
    version = (
        config.units.php_fpm.removeprefix("php").removesuffix("-fpm.service") if config.units.php_fpm else ""
    )
    expected = f"/run/php/php{version}-fpm.sock" if version[:1].isdigit() else "/run/php/php-fpm.sock"
    assert config.php_fpm[0].socket == expected
    assert config.discovered is not None
    assert [p.message for p in config.discovered.problems] == ["no such file"]


def test_unknown_discovery_key_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "exporter.yml"
    path.write_text("discovery:\n  nginx_conf: /x\n")
    with pytest.raises(ConfigError, match=r"discovery\.nginx_conf: unknown key"):
        load_config(str(path))
    path.write_text("discovered: {}\n")
    with pytest.raises(ConfigError, match="discovered: unknown key"):
        load_config(str(path))


def test_discover_yaml_round_trips(tree: Tree, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write_yaml(tree, tree.exporter_settings())
    assert discover_main(["--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "# from " in out
    reloaded = tree.root / "effective.yml"
    reloaded.write_text(out)
    settings = yaml.safe_load(out)
    settings["discovery"]["enabled"] = False
    reloaded.write_text(yaml.safe_dump(settings))
    again = load_config(str(reloaded))
    original = load_config(str(path))
    # The printed configuration means the same thing on its own (only discovery.enabled differs).
    assert dataclasses.replace(again, discovery=original.discovery) == original


def test_discover_bad_config_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yml"
    path.write_text("nope: 1\n")
    assert discover_main(["--config", str(path)]) == 2
    assert "nope: unknown key" in capsys.readouterr().err


def _php_site(tree: Tree, fastcgi_line: str, after: str = "") -> str:
    """The tree's site with a PHP location whose ``fastcgi_pass`` line is ``fastcgi_line``."""
    text = (
        f"server {{\n    listen 127.0.0.1:{tree.port};\n    server_name shop.test;\n"
        f"    location ~ \\.php$ {{\n        include snippets/fastcgi-php.conf;\n        {fastcgi_line}\n    }}\n"
        f"    location /api/ {{ proxy_pass http://127.0.0.1:18001; }}\n}}\n{after}"
    )
    tree.site.write_text(text)
    return text


def test_nginx_error_is_named_for_its_own_file(tree: Tree) -> None:
    """crossplane's message names the included snippet: the problem is the site's, its line the site's."""
    _php_site(tree, f"fastcgi_pass unix:{tree.socket}")  # no ";" after the include
    facts = discover_nginx(str(tree.nginx_conf))
    assert facts.syntax_error is not None
    assert (facts.syntax_error.file, facts.syntax_error.line) == (str(tree.site), 6)
    assert "snippets" not in facts.syntax_error.message
    assert [p.file for p in facts.problems] == [str(tree.site)]
    # The rest of the tree and of the site still counts: the snippet, the server block, its proxy_pass.
    assert str(tree.etc_nginx / "snippets" / "fastcgi-php.conf") in facts.files
    (site,) = [s for s in facts.servers if s.passes]
    assert site.server_names == ("shop.test",)
    assert [p.directive for p in site.passes] == ["proxy_pass"]


@pytest.mark.parametrize(
    ("fastcgi_line", "after", "line"),
    [
        ("fastcgi_pass unix:/x.sock;", "}\n", 10),  # a stray } after the server block
        # One } too many inside it: the server closes early, its /api/ location lands in http (line 8).
        ("fastcgi_pass unix:/x.sock; }", "", 8),
    ],
)
def test_nginx_stray_brace_keeps_what_parses(tree: Tree, fastcgi_line: str, after: str, line: int) -> None:
    _php_site(tree, fastcgi_line, after)
    facts = discover_nginx(str(tree.nginx_conf))
    assert facts.syntax_error is not None
    assert (facts.syntax_error.file, facts.syntax_error.line) == (str(tree.site), line)
    (site,) = [s for s in facts.servers if s.passes]
    assert site.server_names == ("shop.test",) and [(x.host, x.port) for x in site.listens] == [
        ("127.0.0.1", tree.port)
    ]
    assert "fastcgi_pass" in {p.directive for p in site.passes}
    assert [item.origin.line for item in site.passes if item.directive == "fastcgi_pass"] == [6]
    assert facts.user == "www-data"  # nginx.conf itself is untouched


def test_nginx_test_names_the_line_nginx_reports(tree: Tree) -> None:
    """With the binary, the syntax error is nginx's own (the file behind sites-enabled, nginx's line)."""
    _php_site(tree, f"fastcgi_pass unix:{tree.socket}")
    facts = discover_nginx(
        str(tree.nginx_conf), f"{tree.root}/", binary=tree.nginx_binary, error_log=str(tree.nginx_error_log)
    )
    assert facts.syntax_error is not None
    if facts.syntax_error.message.startswith("nginx -t: "):  # nginx -t ran with a verdict (as root)
        assert (facts.syntax_error.file, facts.syntax_error.line) == (str(tree.site), 7)  # its "}" line
        assert facts.syntax_error.message == 'nginx -t: unexpected "}"'
        assert facts.problems == (facts.syntax_error,)
    else:
        assert (facts.syntax_error.file, facts.syntax_error.line) == (str(tree.site), 6)
    # A directive crossplane does not know, which nginx refuses.
    _php_site(tree, f"fastcgi_pass unix:{tree.socket}; shop_cache_zone on;")
    facts = discover_nginx(
        str(tree.nginx_conf), f"{tree.root}/", binary=tree.nginx_binary, error_log=str(tree.nginx_error_log)
    )
    if os.geteuid() == 0:
        assert facts.syntax_error is not None
        assert (facts.syntax_error.file, facts.syntax_error.line) == (str(tree.site), 6)
        assert facts.syntax_error.message == 'nginx -t: unknown directive "shop_cache_zone"'
    assert [s.server_names for s in facts.servers if s.passes] == [("shop.test",)]
    # No binary: the parser's verdict alone.
    missing = discover_nginx(str(tree.nginx_conf), binary=str(tree.root / "no-such-nginx"))
    assert missing.syntax_error is None


def test_nginx_servers(tree: Tree) -> None:
    facts = discover_nginx(str(tree.nginx_conf), f"{tree.root}/")
    (site,) = facts.servers
    assert site.origin == Origin("nginx", str(tree.site), 1)
    assert site.server_names == ("app.test",)
    assert site.names_origin == Origin("nginx", str(tree.site), tree.line_of(tree.site, "server_name"))
    assert [(x.host, x.port, x.default_server) for x in site.listens] == [("127.0.0.1", tree.port, True)]
    assert {p.directive for p in site.passes} == {"fastcgi_pass", "proxy_pass"}
