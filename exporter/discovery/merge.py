"""Turn discovered facts into configuration values, merged under the explicit configuration.

Explicit values (the YAML file, then flags) always win; discovery fills in what they leave out;
the built-in defaults come last. Every effective value keeps its origin.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

from exporter.config import Config, ConfigError, config_from_dict, is_host_name, read_yaml
from exporter.discovery.model import (
    ConfigProblem,
    Discovered,
    Listen,
    NginxFacts,
    Origin,
    PhpFpmFacts,
    Server,
)
from exporter.discovery.nginx import discover_nginx
from exporter.discovery.phpfpm import discover_php_fpm
from exporter.discovery.units import backend_unit, default_php_fpm_unit

log = logging.getLogger(__name__)

DEFAULT_NGINX_CONFIG = "/etc/nginx/nginx.conf"


def load_config(path: str | None, flags: dict[str, tuple[str, object]] | None = None) -> Config:
    """Read ``path`` (or start from the defaults), apply ``flags``, then fill in what discovery finds.

    ``flags`` maps a top-level key to ``(flag name, value)``, e.g.
    ``{"listen_address": ("--web.listen-address", ":9502")}``. Explicit values always win.
    """
    data, lines = read_yaml(path) if path is not None else ({}, {})
    source = path or "<defaults>"
    flag_names: dict[str, str] = {}
    for key, (name, value) in (flags or {}).items():
        data[key] = value
        flag_names[key] = name
    explicit = config_from_dict(data, source)
    return discover_and_merge(explicit, data, source, lines, flag_names)


def discover_and_merge(
    explicit: Config,
    data: dict[str, Any],
    source: str,
    lines: dict[str, int] | None = None,
    flags: dict[str, str] | None = None,
) -> Config:
    """``explicit`` (built from ``data``) completed by discovery, with the origin of every value.

    ``lines`` maps key paths of ``data`` (``php_fpm[0].socket``) to their line in ``source``;
    ``flags`` maps key paths set by command-line flags to the flag's name.
    """
    lines = lines or {}
    flags = flags or {}
    nginx_facts: NginxFacts | None = None
    php_facts: PhpFpmFacts | None = None
    derived: dict[str, Any] = {}
    derived_origins: dict[str, Origin] = {}
    settings = explicit.discovery
    if settings.enabled:
        nginx_file = settings.nginx_config or explicit.nginx.config or DEFAULT_NGINX_CONFIG
        nginx = explicit.nginx
        nginx_facts = discover_nginx(
            nginx_file, nginx.prefix, binary=nginx.binary if nginx.test else None,
            error_log=nginx.error_log, timeout_seconds=nginx.test_timeout_seconds,
        )  # fmt: skip
        php_facts = discover_php_fpm(settings.php_fpm_configs)
        derived, derived_origins = derive(nginx_facts, php_facts, settings.backend_health_path)
    problems = tuple(
        (nginx_facts.problems if nginx_facts else ()) + (php_facts.problems if php_facts else ())
    )
    for problem in problems:
        log.warning("discovery: %s", problem)
    merged = _merge(derived, data)
    try:
        config = config_from_dict(merged, source) if derived else explicit
    except ConfigError as exc:
        # A discovered value the validator rejects must never make things worse.
        log.warning("discovery: ignoring discovered values: %s", exc)
        problems += (ConfigProblem("discovery", source, None, f"discovered values rejected: {exc}"),)
        config, derived = explicit, {}
    config = _with_host_units(config)
    if "php_fpm" not in data and "php_fpm" not in derived:
        config = _with_installed_socket(config)
    origins = _origins(config, data, source, lines, flags, derived, derived_origins)
    discovered = Discovered(nginx=nginx_facts, php_fpm=php_facts, origins=origins, problems=problems)
    return dataclasses.replace(config, discovered=discovered)


KEPT_ON_SYNTAX_ERROR = ("http", "php_fpm", "nginx_user")
"""What a discovery of files that do not parse does not replace: the running nginx still uses them."""


def keep_previous_targets(fresh: Config, previous: Config) -> Config:
    """``fresh`` (discovered again because files changed) with ``previous``'s discovered probes and
    nginx facts when nginx's files no longer parse: nginx refuses to load them, so it still serves
    the previous configuration. Explicit values of ``fresh`` still win; its problems stay (the
    finding, ``badgateway_discovery_config_errors``) and its file list (watched for the fix)."""
    found, before = fresh.discovered, previous.discovered
    if found is None or found.nginx is None or found.nginx.syntax_error is None or before is None:
        return fresh
    origins = dict(found.origins)
    kept: dict[str, Any] = {}
    for key in KEPT_ON_SYNTAX_ERROR:
        if any(_under(path, key) and origin.kind in ("config", "flag") for path, origin in origins.items()):
            continue  # set in the exporter's file or by a flag: not discovery's
        kept[key] = getattr(previous, key)
        origins = {path: origin for path, origin in origins.items() if not _under(path, key)}
        origins.update({path: _kept(origin) for path, origin in before.origins.items() if _under(path, key)})
    nginx = found.nginx
    if before.nginx is not None and before.nginx.files:
        nginx = dataclasses.replace(
            before.nginx, files=nginx.files, problems=nginx.problems, syntax_error=nginx.syntax_error
        )
    discovered = dataclasses.replace(found, nginx=nginx, origins=origins)
    return dataclasses.replace(fresh, **kept, discovered=discovered)


def _under(path: str, key: str) -> bool:
    return path == key or path.startswith((f"{key}[", f"{key}."))


def _kept(origin: Origin) -> Origin:
    note = "kept from the previous discovery: nginx's files do not parse now"
    return dataclasses.replace(origin, note=f"{origin.note}; {note}" if origin.note else note)


def _with_host_units(config: Config) -> Config:
    """Unit names the configuration leaves open, from the unit files installed on the host."""
    units = config.units
    if units.php_fpm is None:
        units = dataclasses.replace(units, php_fpm=default_php_fpm_unit())
    if units.backend is None:
        units = dataclasses.replace(units, backend=backend_unit(config.processes.backend))
    return dataclasses.replace(config, units=units)


def _with_installed_socket(config: Config) -> Config:
    """Nothing named a PHP-FPM socket: the Debian/Ubuntu socket of the installed PHP-FPM version."""
    version = (
        config.units.php_fpm.removeprefix("php").removesuffix("-fpm.service") if config.units.php_fpm else ""
    )
    if not version[:1].isdigit():
        return config
    pools = [dataclasses.replace(pool, socket=f"/run/php/php{version}-fpm.sock") for pool in config.php_fpm]
    return dataclasses.replace(config, php_fpm=pools)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``: mappings key by key, everything else (lists too) replaced."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def derive(
    nginx: NginxFacts | None, php: PhpFpmFacts | None, health_path: str = "/health"
) -> tuple[dict[str, Any], dict[str, Origin]]:
    """Configuration values (YAML-shaped) and their origins from what the files say."""
    values: dict[str, Any] = {}
    origins: dict[str, Origin] = {}
    # The nginx facts when discovery read at least one file; "parsed": and found no syntax error.
    nginx_read = nginx if nginx is not None and nginx.files else None
    nginx_parsed = nginx_read if nginx_read is not None and nginx_read.syntax_error is None else None
    if nginx_read is not None:
        _derive_nginx(nginx_read, values, origins)
    pools, pool_origins = _pools(nginx, php)
    if pools or nginx_parsed is not None:
        values["php_fpm"] = pools
        origins.update(pool_origins)
        if not pools:
            origins["php_fpm"] = Origin("derived", note="no PHP-FPM pool and no fastcgi_pass found")
    if php is not None:
        _derive_php_fpm(php, values, origins)
    if nginx_read is not None:
        # What nginx's server blocks say, even when a file does not parse (what parsed of it and the
        # others): never the built-in guesses, whose front would be the default site's welcome page.
        targets, target_origins = _http_targets(nginx_read, health_path)
        if targets or nginx_read.servers:
            values["http"] = targets
            origins.update(target_origins)
        if not targets and nginx_read.servers:
            origins["http"] = Origin("derived", note="no server block passes requests to an upstream")
    return values, origins


def _derive_nginx(nginx: NginxFacts, values: dict[str, Any], origins: dict[str, Origin]) -> None:
    """``nginx.config``, ``nginx_user`` and ``logs.nginx`` from the nginx files discovery read."""
    values["nginx"] = {"config": nginx.main_file}
    origins["nginx.config"] = Origin("derived", note="the main file discovery read")
    if nginx.user is not None and nginx.user_origin is not None:
        values["nginx_user"] = nginx.user
        origins["nginx_user"] = nginx.user_origin
    elif nginx.syntax_error is None:
        values["nginx_user"] = "nobody"
        origins["nginx_user"] = Origin(
            "default", note=f"nginx default: no user directive in {nginx.main_file}"
        )
    if nginx.pid_file is not None:
        values.setdefault("pid_files", {})["nginx"] = nginx.pid_file[0]
        origins["pid_files.nginx"] = nginx.pid_file[1]
    if nginx.error_logs:
        values.setdefault("logs", {})["nginx"] = [path for path, _ in nginx.error_logs]
        for index, (_, origin) in enumerate(nginx.error_logs):
            origins[f"logs.nginx[{index}]"] = origin


def _derive_php_fpm(php: PhpFpmFacts, values: dict[str, Any], origins: dict[str, Origin]) -> None:
    """``logs.php_fpm``, and ``units.php_fpm`` when every pool that names a PHP version names one."""
    logs = [path for path, _ in php.error_logs]
    if logs:
        values.setdefault("logs", {})["php_fpm"] = logs
        for index, (_, origin) in enumerate(php.error_logs):
            origins[f"logs.php_fpm[{index}]"] = origin
    if len(php.pid_files) == 1:  # one master: its pid file names it
        values.setdefault("pid_files", {})["php_fpm"] = php.pid_files[0][0]
        origins["pid_files.php_fpm"] = php.pid_files[0][1]
    versions = sorted({p.version for p in php.pools if p.version})
    if len(versions) == 1:
        values["units"] = {"php_fpm": f"php{versions[0]}-fpm.service"}
        origins["units.php_fpm"] = Origin(
            "php_fpm", php.pools[0].config_file, None, "PHP version of the pools"
        )


def _pools(
    nginx: NginxFacts | None, php: PhpFpmFacts | None
) -> tuple[list[dict[str, Any]], dict[str, Origin]]:
    pools: list[dict[str, Any]] = []
    origins: dict[str, Origin] = {}
    seen: set[str] = set()

    def add(entry: dict[str, Any], entry_origins: dict[str, Origin]) -> None:
        if entry["socket"] in seen:
            return
        seen.add(entry["socket"])
        index = len(pools)
        pools.append(entry)
        origins.update({f"php_fpm[{index}].{key}": value for key, value in entry_origins.items()})

    for pool in php.pools if php is not None else ():
        listen = pool.listen
        listen_setting = pool.settings.get("listen")
        if listen is None or listen_setting is None:
            continue
        ping = pool.settings.get("ping.path")
        response = pool.settings.get("ping.response")
        status = pool.settings.get("pm.status_path")
        status_listen = pool.status_listen
        missing = Origin("derived", pool.file, pool.line, f"not set in pool [{pool.name}]")
        entry: dict[str, Any] = {
            "socket": listen,
            "ping_path": ping.value if ping else None,
            "status_path": status.value if status and not status_listen else None,
        }
        entry_origins = {
            "socket": listen_setting.origin,
            "ping_path": ping.origin if ping else missing,
            "status_path": (status.origin if status else missing)
            if not status_listen
            else Origin("derived", note="served by pm.status_listen"),
        }
        if response is not None:
            entry["ping_response"] = response.value
            entry_origins["ping_response"] = response.origin
        add(entry, entry_origins)
        status_setting = pool.settings.get("pm.status_listen")
        if status_listen and status is not None and status_setting is not None:
            # Its own listener still answers when every worker of the pool is busy.
            add(
                {"socket": status_listen, "ping_path": None, "status_path": status.value},
                {"socket": status_setting.origin, "ping_path": Origin("derived", note="status listener: status only"),
                 "status_path": status.origin},
            )  # fmt: skip
    if nginx is not None:
        for item in nginx.passes:
            if item.directive != "fastcgi_pass":
                continue
            for target in item.targets:
                add(
                    {"socket": target.address, "ping_path": "/ping", "status_path": "/status"},
                    {"socket": target.origin,
                     "ping_path": Origin("default", note="no pool file declares this socket"),
                     "status_path": Origin("default", note="no pool file declares this socket")},
                )  # fmt: skip
    return pools, origins


def _http_targets(nginx: NginxFacts, health_path: str) -> tuple[list[dict[str, Any]], dict[str, Origin]]:
    targets: list[dict[str, Any]] = []
    origins: dict[str, Origin] = {}
    for target, target_origins in front_targets(nginx):
        origins.update({f"http[{len(targets)}].{key}": origin for key, origin in target_origins.items()})
        targets.append(target)
    backends = _http_backends(nginx)
    for scheme, address, origin in backends:
        name = "backend" if len(backends) == 1 else f"backend:{address}"
        index = len(targets)
        backend: dict[str, Any] = {"name": name, "url": f"{scheme}://{address}{health_path}", "role": "backend",
                                   "verify_tls": scheme == "http"}  # fmt: skip
        if address.startswith("/"):  # proxy_pass http://unix:/run/gunicorn.sock: HTTP over the socket
            backend |= {"url": f"{scheme}://localhost{health_path}", "unix_socket": address}
            origins[f"http[{index}].unix_socket"] = origin
        targets.append(backend)
        origins[f"http[{index}].url"] = Origin(
            origin.kind, origin.file, origin.line, f"+ discovery.backend_health_path {health_path}"
        )
    return targets, origins


def _http_backends(nginx: NginxFacts) -> list[tuple[str, str, Origin]]:
    """``(scheme, address, origin)`` of each distinct target (``host:port`` or a socket path) of an http(s)
    ``proxy_pass``."""
    backends: list[tuple[str, str, Origin]] = []
    for item in nginx.passes:
        if item.directive != "proxy_pass" or item.scheme not in ("http", "https"):
            continue
        for target in item.targets:
            if all(address != target.address for _, address, _ in backends):
                backends.append((item.scheme, target.address, target.origin))
    return backends


MAX_FRONT_TARGETS = 10
"""At most this many front probes are discovered (each costs nginx and its upstream one request a round)."""

_LOOPBACK = ("127.0.0.1", "[::1]", "localhost")


def front_targets(nginx: NginxFacts) -> list[tuple[dict[str, Any], dict[str, Origin]]]:
    """One front probe (YAML-shaped, with the origin of its values) per ``server`` block that passes
    requests to an upstream, addressed the way nginx routes it: the block's ``listen`` (an https one
    first; a wildcard address as loopback) and its first usable ``server_name`` as ``Host`` and TLS
    server name. A block that passes nothing (Debian's ``default`` site) is never a front."""
    out: list[tuple[dict[str, Any], dict[str, Origin]]] = []
    taken: set[str] = set()
    for server in nginx.servers:
        listen = _probe_listen(server) if server.passes else None
        if listen is None or len(out) == MAX_FRONT_TARGETS:
            continue
        front = _front(server, listen)
        route = f"{front[0]['url']} {front[0]['host']}"
        if route in taken:
            continue  # nginx ignores a second block with the same name and listen ("conflicting server name")
        name = str(front[0]["name"])
        if name in taken:
            name = f"{name}@{_address(listen)}"  # the same name on another listen
        taken.update((route, name))
        front[0]["name"] = name
        out.append(front)
    return out


def _probe_listen(server: Server) -> Listen | None:
    """The listen to probe: TCP, https before plain http (a block that redirects http to https still
    serves its pages over https), IPv4 before IPv6, else in the order written."""
    tcp = [entry for entry in server.listens if entry.port is not None]
    ordered = sorted(tcp, key=lambda entry: (not entry.ssl, (entry.host or "").startswith("[")))
    return ordered[0] if ordered else None


def _address(listen: Listen) -> str:
    host = listen.host or "127.0.0.1"
    return f"{'[::1]' if host == '[::]' else host}:{listen.port}"


def server_host(names: tuple[str, ...]) -> str | None:
    """The first ``server_name`` a probe can send as its ``Host``: not ``_`` or empty, not a regular
    expression, a wildcard or a variable (``.example.org`` is ``example.org``)."""
    for name in names:
        host = name.removeprefix(".").removesuffix(".")
        if host != "_" and not name.startswith("~") and is_host_name(host):
            return host
    return None


def _front(server: Server, listen: Listen) -> tuple[dict[str, Any], dict[str, Origin]]:
    address = _address(listen)
    host_name, port = address.rsplit(":", 1)
    scheme = "https" if listen.ssl else "http"
    default_port = "443" if listen.ssl else "80"
    url = f"{scheme}://{host_name}{'' if port == default_port else ':' + port}/"
    host = server_host(server.server_names)
    loopback = host_name in _LOOPBACK or host_name.startswith("127.")
    verify = not listen.ssl or (host is not None and not loopback)
    target: dict[str, Any] = {
        "name": f"front:{host or address}",
        "url": url,
        "role": "front",
        "verify_tls": verify,
        "host": host,
    }
    where = f"server block at {server.origin}"
    origins = {
        "name": Origin("derived", server.origin.file, server.origin.line, "a server block that passes to an upstream"),
        "url": Origin(listen.origin.kind, listen.origin.file, listen.origin.line,
                      f"listen of the {where}" if listen.origin.kind != "default" else f"{listen.origin.note}, {where}"),
        "host": Origin("nginx", server.names_origin.file, server.names_origin.line, "first usable server_name")
        if host is not None and server.names_origin is not None
        else Origin("derived", note=f"no usable server_name in the {where}: nginx's default server for the listen answers"),
        "verify_tls": Origin("derived", note="plain http" if not listen.ssl else
                             "loopback probe: certificate not checked" if not verify else "certificate checked for host"),
    }  # fmt: skip
    return target, origins


def _leaves(value: object, path: str = "") -> list[tuple[str, object]]:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: list[tuple[str, object]] = []
        for item in dataclasses.fields(value):
            if item.metadata.get("internal"):
                continue
            out += _leaves(getattr(value, item.name), f"{path}.{item.name}" if path else item.name)
        return out
    if isinstance(value, list):
        if not value:
            return [(path, value)]
        out = []
        for index, item in enumerate(value):
            out += _leaves(item, f"{path}[{index}]")
        return out
    return [(path, value)]


def _explicit_origin(path: str, data: dict[str, Any], source: str, lines: dict[str, int]) -> Origin | None:
    """The config-file origin of ``path`` when the file set it (or the list/section holding it)."""
    node: Any = data
    covered = ""
    for part in _split(path):
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                break
            node = node[part]
            covered = f"{covered}[{part}]"
        else:
            if not isinstance(node, dict) or part not in node:
                break
            node = node[part]
            covered = f"{covered}.{part}" if covered else part
    else:
        return _file_origin(source, lines.get(path) or lines.get(covered))
    # The file set the whole list this value is in: the list is the file's, defaults fill the rest.
    top = _split(path)[0]
    if isinstance(top, str) and isinstance(data.get(top), list):
        return _file_origin(source, lines.get(covered), "default within an explicit list")
    return None


def _file_origin(source: str, line: int | None, note: str | None = None) -> Origin:
    if os.path.exists(source):
        return Origin("config", source, line, note)
    return Origin("config", None, None, f"{source}{': ' + note if note else ''}")


def _split(path: str) -> list[str | int]:
    parts: list[str | int] = []
    for chunk in path.replace("]", "").split("."):
        name, *indexes = chunk.split("[")
        if name:
            parts.append(name)
        parts += [int(i) for i in indexes]
    return parts


def _origins(
    config: Config,
    data: dict[str, Any],
    source: str,
    lines: dict[str, int],
    flags: dict[str, str],
    derived: dict[str, Any],
    derived_origins: dict[str, Origin],
) -> dict[str, Origin]:
    origins: dict[str, Origin] = {}
    for path, _ in _leaves(config):
        if path in flags:
            origins[path] = Origin("flag", note=flags[path])
            continue
        explicit = _explicit_origin(path, data, source, lines)
        if explicit is not None:
            origins[path] = explicit
        elif path in derived_origins:
            origins[path] = derived_origins[path]
        elif isinstance(derived.get(str(_split(path)[0])), list):
            origins[path] = Origin("default", note="default within a discovered list")
        else:
            origins[path] = Origin("default")
    return origins
