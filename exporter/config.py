"""Configuration: a YAML file validated strictly into typed dataclasses.

Defaults fit a stock Ubuntu/Debian host as described in the runbook.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from exporter.discovery.model import Discovered


class ConfigError(Exception):
    """Invalid configuration; the message names the file and the key."""


@dataclass(frozen=True)
class PhpFpmPool:
    """A PHP-FPM listener to probe: a unix socket path or ``host:port``."""

    socket: str = "/run/php/php-fpm.sock"  # discovery puts the sockets nginx passes to here
    ping_path: str | None = "/ping"
    ping_response: str = "pong"
    status_path: str | None = "/status"
    timeout_seconds: float = 2.0


@dataclass(frozen=True)
class HttpTarget:
    """An HTTP endpoint to probe; ``role`` says what a failure means.

    ``host``: the ``Host`` header to send (and, over https, the TLS server name), so that nginx routes
    the probe to that ``server_name`` whatever address the URL names.
    """

    name: str
    url: str
    role: Literal["backend", "front"] = "backend"
    timeout_seconds: float = 5.0
    verify_tls: bool = True
    host: str | None = None


_HOST_NAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,62}))*$"
)
"""A DNS name as a ``server_name``: labels of letters, digits, ``-`` and ``_``; no port, no wildcard."""


def is_host_name(text: str) -> bool:
    """Whether ``text`` is a valid ``http[].host``."""
    return _HOST_NAME.match(text) is not None


@dataclass(frozen=True)
class NginxSettings:
    """How to run ``nginx -t``."""

    binary: str = "nginx"
    config: str | None = None
    prefix: str | None = None
    error_log: str | None = None
    test: bool = True
    test_interval_seconds: float = 30.0
    test_timeout_seconds: float = 5.0


@dataclass(frozen=True)
class ProcessPatterns:
    """Regular expressions matched against a process's command line; children count too."""

    nginx: str = r"^nginx: master process"
    php_fpm: str = r"^php-fpm: master process"
    backend: str = r"\b(uvicorn|gunicorn|hypercorn)\b"


@dataclass(frozen=True)
class Units:
    """systemd unit names, used for fix commands and the unit-state check."""

    nginx: str = "nginx.service"
    php_fpm: str | None = None  # None: the php*-fpm.service installed on the host, else php-fpm.service
    backend: str | None = None  # None: the unit whose ExecStart runs the backend (uvicorn, gunicorn, ...)
    enabled: bool = True
    bus_address: str | None = None  # default: $DBUS_SYSTEM_BUS_ADDRESS, else /run/dbus/system_bus_socket


@dataclass(frozen=True)
class Thresholds:
    """When a resource figure becomes a cause."""

    memory_available_ratio: float = 0.05
    filesystem_avail_ratio: float = 0.02
    filesystem_avail_bytes: int = 100 * 1024 * 1024
    filesystem_files_free_ratio: float = 0.02
    oom_kill_window_seconds: float = 600.0  # an OOM kill this recent means memory_exhausted


@dataclass(frozen=True)
class LogSettings:
    """Which logs to tail and how."""

    nginx: list[str] = field(default_factory=lambda: ["/var/log/nginx/*error.log"])
    php_fpm: list[str] = field(default_factory=lambda: ["/var/log/php*-fpm.log"])
    start: Literal["end", "beginning"] = "end"
    state_file: str | None = None
    max_upstreams: int = 20
    poll_interval_seconds: float = 0.25
    evidence_window_seconds: float = 300.0
    """Log lines older than this are history: shown apart, not evidence of what happens now."""


@dataclass(frozen=True)
class DiscoverySettings:
    """Where to read nginx's and PHP-FPM's own configuration (see docs/discovery.md)."""

    enabled: bool = True
    nginx_config: str | None = None  # None: nginx.config when set, else /etc/nginx/nginx.conf
    php_fpm_configs: list[str] = field(default_factory=lambda: ["/etc/php/*/fpm/php-fpm.conf"])
    backend_health_path: str = "/health"


def _default_http() -> list[HttpTarget]:
    return [
        HttpTarget(name="backend", url="http://127.0.0.1:8000/health", role="backend"),
        HttpTarget(name="front", url="http://localhost/", role="front"),
    ]


@dataclass(frozen=True)
class Config:
    """Everything the exporter and ``diagnose`` need to know about the host."""

    listen_address: str = ":9502"
    nginx_user: str = "www-data"
    scrape_timeout_seconds: float = 10.0
    scrape_timeout_margin_seconds: float = 0.5
    php_fpm: list[PhpFpmPool] = field(default_factory=lambda: [PhpFpmPool()])
    http: list[HttpTarget] = field(default_factory=_default_http)
    nginx: NginxSettings = field(default_factory=NginxSettings)
    processes: ProcessPatterns = field(default_factory=ProcessPatterns)
    units: Units = field(default_factory=Units)
    filesystems: list[str] = field(default_factory=lambda: ["/run/php", "/var/log/nginx", "/var/www", "/tmp"])
    thresholds: Thresholds = field(default_factory=Thresholds)
    logs: LogSettings = field(default_factory=LogSettings)
    discovery: DiscoverySettings = field(default_factory=DiscoverySettings)
    # Not a YAML key: what discovery found and where every effective value came from.
    discovered: Discovered | None = field(
        default=None, compare=False, repr=False, metadata={"internal": True}
    )


def read_yaml(path: str) -> tuple[dict[str, Any], dict[str, int]]:
    """The YAML mapping in ``path`` and the line of every key path in it."""
    data, text = load_yaml_file(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: <top level>: expected a mapping, got {data!r}")
    return data, _key_lines(text)


def load_yaml_file(path: str) -> tuple[object, str]:
    """The parsed YAML document in ``path`` and its text; :class:`ConfigError` names the file and line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}:{where}: {problem}") from None
    return data, text


def _key_lines(text: str) -> dict[str, int]:
    lines: dict[str, int] = {}

    def walk(node: yaml.Node, path: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                sub = f"{path}.{key.value}" if path else str(key.value)
                lines[sub] = key.start_mark.line + 1
                walk(value, sub)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                lines[f"{path}[{index}]"] = item.start_mark.line + 1
                walk(item, f"{path}[{index}]")

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return lines
    if root is not None:
        walk(root, "")
    return lines


def config_from_dict(data: object, source: str = "<config>") -> Config:
    """Validate a parsed YAML document into a :class:`Config`."""
    config = typing.cast(Config, _build(Config, data, source, ""))
    _check_values(config, source)
    return config


def _check_values(config: Config, source: str) -> None:
    if config.scrape_timeout_seconds <= 0:
        raise ConfigError(f"{source}: scrape_timeout_seconds: must be positive")
    if not 0 <= config.scrape_timeout_margin_seconds < config.scrape_timeout_seconds:
        raise ConfigError(f"{source}: scrape_timeout_margin_seconds: must be below scrape_timeout_seconds")
    names = [target.name for target in config.http]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"{source}: http: target name {name!r} used twice")
    for index, pool in enumerate(config.php_fpm):
        if not pool.socket:
            raise ConfigError(f"{source}: php_fpm[{index}].socket: must not be empty")
    for name in ("nginx", "php_fpm", "backend"):
        try:
            re.compile(getattr(config.processes, name))
        except re.error as exc:
            raise ConfigError(f"{source}: processes.{name}: invalid regular expression: {exc}") from None
    window = config.logs.evidence_window_seconds
    if not (math.isfinite(window) and 1 <= window <= 86400):
        raise ConfigError(
            f"{source}: logs.evidence_window_seconds: must be from 1 to 86400 seconds, got {window!r}"
        )
    for index, target in enumerate(config.http):
        if not target.url.startswith(("http://", "https://")):
            raise ConfigError(f"{source}: http[{index}].url: must start with http:// or https://")
        if target.host is not None and not is_host_name(target.host):
            raise ConfigError(
                f"{source}: http[{index}].host: expected a host name such as shop.example.org"
                f" (no scheme, port, path or wildcard), got {target.host!r}"
            )


def _describe(tp: Any) -> str:
    if isinstance(tp, type):
        return {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false"}.get(
            tp.__name__, f"a mapping ({tp.__name__})"
        )
    origin = typing.get_origin(tp)
    if origin is list:
        return "a list"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) if a is not type(None) else "null" for a in typing.get_args(tp))
    return str(tp)


def _build(tp: Any, value: object, source: str, key: str) -> object:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return _build_union(tp, value, source, key)
    if origin is Literal:
        return _build_literal(tp, value, source, key)
    if origin is list:
        return _build_list(tp, value, source, key)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _build_dataclass(tp, value, source, key)
    return _build_scalar(tp, value, source, key)


def _where(source: str, key: str) -> str:
    return f"{source}: {key or '<top level>'}"


def _build_union(tp: Any, value: object, source: str, key: str) -> object:
    """The first member of the union ``tp`` that ``value`` builds as (None for null when allowed)."""
    args = typing.get_args(tp)
    if value is None and type(None) in args:
        return None
    for arg in args:
        if arg is type(None):
            continue
        try:
            return _build(arg, value, source, key)
        except ConfigError:
            continue
    raise ConfigError(f"{_where(source, key)}: expected {_describe(tp)}, got {value!r}")


def _build_literal(tp: Any, value: object, source: str, key: str) -> object:
    if value not in typing.get_args(tp):
        raise ConfigError(f"{_where(source, key)}: expected {_describe(tp)}, got {value!r}")
    return value


def _build_list(tp: Any, value: object, source: str, key: str) -> list[object]:
    if not isinstance(value, list):
        raise ConfigError(f"{_where(source, key)}: expected a list, got {value!r}")
    (item_type,) = typing.get_args(tp)
    return [_build(item_type, item, source, f"{key}[{i}]") for i, item in enumerate(value)]


def _build_dataclass(tp: type, value: object, source: str, key: str) -> object:
    """An instance of the dataclass ``tp`` from a mapping: no unknown keys, no required key missing."""
    if not isinstance(value, dict):
        raise ConfigError(f"{_where(source, key)}: expected a mapping, got {value!r}")
    hints = typing.get_type_hints(tp)
    fields = dataclasses.fields(tp)
    known = {f.name for f in fields if not f.metadata.get("internal")}
    kwargs: dict[str, object] = {}
    for name, item in value.items():
        sub = f"{key}.{name}" if key else str(name)
        if name not in known:
            raise ConfigError(f"{source}: {sub}: unknown key")
        kwargs[name] = _build(hints[name], item, source, sub)
    missing = [f.name for f in fields if f.name not in kwargs and _is_required(f)]
    if missing:
        raise ConfigError(f"{source}: {key + '.' if key else ''}{missing[0]}: required key missing")
    return tp(**kwargs)


def _is_required(f: dataclasses.Field[Any]) -> bool:
    """Whether the field has neither a default nor a default factory."""
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _build_scalar(tp: Any, value: object, source: str, key: str) -> object:
    """A float (from an int or a float, never a bool), or an int, bool or str of exactly that type."""
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{_where(source, key)}: expected a number, got {value!r}")
        return float(value)
    if tp is int or tp is bool or tp is str:
        if type(value) is not tp:
            raise ConfigError(f"{_where(source, key)}: expected {_describe(tp)}, got {value!r}")
        return value
    raise ConfigError(f"{_where(source, key)}: unsupported type {tp!r}")
