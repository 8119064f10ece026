"""Front probes from hand-built nginx facts (no files, no processes): one per server block that passes
to an upstream, addressed the way nginx routes it; and what a discovery of broken files keeps."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from exporter.config import Config, ConfigError, config_from_dict
from exporter.discovery.merge import (
    MAX_FRONT_TARGETS,
    derive,
    front_targets,
    keep_previous_targets,
    server_host,
)
from exporter.discovery.model import (
    ConfigProblem,
    Discovered,
    Listen,
    NginxFacts,
    Origin,
    Pass,
    Server,
    UpstreamTarget,
)

SITE = "/etc/nginx/sites-available/shop"


def listen(
    host: str | None = None, port: int | None = 80, *, ssl: bool = False, default: bool = False, line: int = 2
) -> Listen:
    return Listen(host, port, None, ssl, default, Origin("nginx", SITE, line), ())


def a_pass(directive: str = "fastcgi_pass", address: str = "/run/php/php8.2-fpm.sock") -> Pass:
    origin = Origin("nginx", SITE, 9)
    scheme = "http" if directive == "proxy_pass" else None
    return Pass(directive, address, origin, scheme, (UpstreamTarget(address, origin),), (), (), "/", ())


def server(
    *listens: Listen, names: tuple[str, ...] = (), passes: tuple[Pass, ...] = (a_pass(),), file: str = SITE
) -> Server:
    origin = Origin("nginx", file, 1)
    return Server(origin, names, listens, passes, Origin("nginx", file, 3) if names else None)


DEBIAN_DEFAULT = server(
    listen(port=80, default=True),
    listen("[::]", 80, default=True),
    names=("_",),
    passes=(),
    file="/etc/nginx/sites-available/default",
)


def fronts(*servers: Server) -> list[dict[str, Any]]:
    return [target for target, _ in front_targets(NginxFacts("/etc/nginx/nginx.conf", servers=servers))]


def row(name: str, url: str, host: str | None, verify_tls: bool = True) -> dict[str, Any]:
    return {"name": name, "url": url, "role": "front", "verify_tls": verify_tls, "host": host}


@pytest.mark.parametrize(
    ("servers", "expected"),
    [
        pytest.param((DEBIAN_DEFAULT,), [], id="default site only: no front"),
        pytest.param(
            (DEBIAN_DEFAULT, server(listen(port=80), names=("shop.test", "www.shop.test"))),
            [row("front:shop.test", "http://127.0.0.1/", "shop.test")],
            id="the proxying site beside the default one",
        ),
        pytest.param(
            (server(listen(port=443, ssl=True), names=("shop.test",)),),
            [row("front:shop.test", "https://127.0.0.1/", "shop.test", verify_tls=False)],
            id="ssl listen: https with SNI, loopback certificate not checked",
        ),
        pytest.param(
            (server(listen(port=80), listen(port=443, ssl=True), names=("shop.test",)),),
            [row("front:shop.test", "https://127.0.0.1/", "shop.test", verify_tls=False)],
            id="http and https in one block: https (a redirect to https would hide the pages)",
        ),
        pytest.param(
            (server(listen("10.0.0.5", 8443, ssl=True), names=("shop.example.org",)),),
            [row("front:shop.example.org", "https://10.0.0.5:8443/", "shop.example.org")],
            id="ssl on a named address: certificate checked for the name",
        ),
        pytest.param(
            (server(listen(None, 8080), names=("shop.test",)),),
            [row("front:shop.test", "http://127.0.0.1:8080/", "shop.test")],
            id="wildcard listen: loopback",
        ),
        pytest.param(
            (server(listen("[::]", 8080), names=("shop.test",)),),
            [row("front:shop.test", "http://[::1]:8080/", "shop.test")],
            id="IPv6 wildcard listen: IPv6 loopback",
        ),
        pytest.param(
            (server(listen("[::]", 80), listen(None, 80), names=("shop.test",)),),
            [row("front:shop.test", "http://127.0.0.1/", "shop.test")],
            id="IPv4 before IPv6",
        ),
        pytest.param(
            (server(listen("127.0.0.1", 8081), names=("_", "", "~^(?<sub>.+)\\.shop$", "*.shop.test")),),
            [row("front:127.0.0.1:8081", "http://127.0.0.1:8081/", None)],
            id="no usable server_name: named by its listen, no Host",
        ),
        pytest.param(
            (server(listen(None, 80), names=("*.shop.test", ".shop.test")),),
            [row("front:shop.test", "http://127.0.0.1/", "shop.test")],
            id=".shop.test is shop.test",
        ),
        pytest.param(
            (
                server(listen(None, 80), names=("shop.test",)),
                server(
                    listen(None, 80), names=("api.test",), passes=(a_pass("proxy_pass", "127.0.0.1:8000"),)
                ),
                server(
                    listen(None, 80), names=("grpc.test",), passes=(a_pass("grpc_pass", "127.0.0.1:50051"),)
                ),
                server(listen(None, 80), names=("static.test",), passes=()),
            ),
            [
                row("front:shop.test", "http://127.0.0.1/", "shop.test"),
                row("front:api.test", "http://127.0.0.1/", "api.test"),
                row("front:grpc.test", "http://127.0.0.1/", "grpc.test"),
            ],
            id="several proxying servers: several fronts, the static one none",
        ),
        pytest.param(
            (
                server(listen(None, 80), names=("shop.test",)),
                server(listen(None, 443, ssl=True), names=("shop.test",)),
                server(listen(None, 80), names=("shop.test",)),
            ),
            [
                row("front:shop.test", "http://127.0.0.1/", "shop.test"),
                row("front:shop.test@127.0.0.1:443", "https://127.0.0.1/", "shop.test", verify_tls=False),
            ],
            id="the same name on two listens: two names; a conflicting third block none",
        ),
        pytest.param(
            (server(Listen(None, None, "/run/nginx.sock", False, False, Origin("nginx", SITE, 2), ())),),
            [],
            id="unix-socket listen only: not probed",
        ),
    ],
)
def test_front_targets(servers: tuple[Server, ...], expected: list[dict[str, Any]]) -> None:
    assert fronts(*servers) == expected
    # Whatever is derived is a valid configuration.
    config_from_dict({"http": expected}, "derived")


def test_front_targets_are_bounded() -> None:
    many = [server(listen(None, 80), names=(f"site{i}.test",)) for i in range(MAX_FRONT_TARGETS + 5)]
    assert len(fronts(*many)) == MAX_FRONT_TARGETS


@pytest.mark.parametrize(
    ("names", "host"),
    [
        (("_",), None),
        (("",), None),
        (("~^www\\.",), None),
        (("*.shop.test",), None),
        (("shop.*",), None),
        (("$hostname",), None),
        (("_", "shop.test"), "shop.test"),
        ((".shop.test",), "shop.test"),
        (("shop.test.",), "shop.test"),
        (("localhost",), "localhost"),
    ],
)
def test_server_host(names: tuple[str, ...], host: str | None) -> None:
    assert server_host(names) == host


def test_front_origins_name_the_lines() -> None:
    site = server(listen(None, 8080, line=2), names=("shop.test",))
    ((_, origins),) = front_targets(NginxFacts("/etc/nginx/nginx.conf", servers=(site,)))
    assert (origins["url"].file, origins["url"].line) == (SITE, 2)
    assert (origins["host"].file, origins["host"].line) == (SITE, 3)


def test_derive_never_falls_back_to_the_default_front() -> None:
    """nginx read, nothing proxies: no front at all (the built-in one would probe the welcome page)."""
    facts = NginxFacts("/etc/nginx/nginx.conf", files=("/etc/nginx/nginx.conf",), servers=(DEBIAN_DEFAULT,))
    values, origins = derive(facts, None)
    assert values["http"] == []
    assert "no server block passes" in str(origins["http"])
    # A file that does not parse: the targets of what parsed are still derived.
    broken = dataclasses.replace(
        facts,
        servers=(DEBIAN_DEFAULT, server(listen(None, 80), names=("shop.test",))),
        syntax_error=ConfigProblem("nginx", SITE, 12, 'unexpected "}"'),
    )
    values, _ = derive(broken, None)
    assert [t["name"] for t in values["http"]] == ["front:shop.test"]
    # No server block read at all (nginx.conf unreadable): the built-in targets stay.
    unreadable = NginxFacts("/etc/nginx/nginx.conf", files=("/etc/nginx/nginx.conf",))
    assert "http" not in derive(unreadable, None)[0]


def _config(http: list[dict[str, Any]], nginx: NginxFacts, origin: Origin) -> Config:
    config = config_from_dict({"http": http}, "test")
    origins = {f"http[{i}].url": origin for i in range(len(http))}
    return dataclasses.replace(
        config, discovered=Discovered(nginx=nginx, origins=origins, problems=nginx.problems)
    )


def test_keep_previous_targets_when_the_files_break() -> None:
    shop = [row("front:shop.test", "http://127.0.0.1/", "shop.test")]
    good = NginxFacts(
        "/etc/nginx/nginx.conf", files=(SITE,), servers=(server(listen(), names=("shop.test",)),)
    )
    error = ConfigProblem("nginx", SITE, 12, 'nginx -t: unexpected "}"')
    bad = NginxFacts(
        "/etc/nginx/nginx.conf", files=(SITE, "/etc/nginx/new.conf"), problems=(error,), syntax_error=error
    )
    previous = _config(shop, good, Origin("nginx", SITE, 2))
    fresh = _config([], bad, Origin("derived"))
    kept = keep_previous_targets(fresh, previous)
    assert kept.http == previous.http
    assert kept.discovered is not None and kept.discovered.nginx is not None
    assert kept.discovered.problems == (error,)  # the problem still shows
    assert kept.discovered.nginx.syntax_error == error
    assert kept.discovered.nginx.files == bad.files  # watched: the fix is seen
    assert kept.discovered.nginx.servers == good.servers  # what the running nginx serves
    assert "kept from the previous discovery" in str(kept.discovered.origins["http[0].url"])
    # Files that parse again replace everything.
    assert keep_previous_targets(previous, fresh) is previous
    # An explicit list in the exporter's own file always wins.
    explicit = _config([row("front", "http://127.0.0.1:8080/", None)], bad, Origin("config", "/etc/x.yml", 3))
    assert keep_previous_targets(explicit, previous).http == explicit.http


@pytest.mark.parametrize(
    ("host", "ok"),
    [
        ("shop.test", True),
        ("127.0.0.1", True),
        ("my_host", True),
        ("shop.test:8080", False),
        ("http://shop.test", False),
        ("shop.test/x", False),
        ("*.shop.test", False),
        ("", False),
        ("a b", False),
        (".shop.test", False),
    ],
)
def test_http_host_is_validated(host: str, ok: bool) -> None:
    data = {"http": [{"name": "front", "url": "http://127.0.0.1/", "role": "front", "host": host}]}
    if ok:
        assert config_from_dict(data, "x.yml").http[0].host == host
    else:
        with pytest.raises(ConfigError, match=r"x\.yml: http\[0\]\.host: expected a host name"):
            config_from_dict(data, "x.yml")
    with pytest.raises(ConfigError, match=r"http\[0\]\.host: expected a string or null"):
        config_from_dict({"http": [{"name": "f", "url": "http://x/", "host": 80}]}, "x.yml")
