"""Configuration: a YAML file validated strictly into typed dataclasses.

Defaults fit a stock Ubuntu/Debian host as described in the runbook.
"""

from __future__ import annotations

import dataclasses
import math
import re
import reprlib
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, Union

import yaml

from exporter.discovery.model import Discovered


class ConfigError(Exception):
    """Invalid configuration; the message names the file and the key."""


_SHOWN = reprlib.Repr()
_SHOWN.maxstring = _SHOWN.maxother = 60
_SHOWN.maxlist = _SHOWN.maxdict = _SHOWN.maxtuple = _SHOWN.maxset = 4
_SHOWN.maxlevel = 2


_UNPRINTABLE: Final = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def backend_sockets(config: Config) -> list[str]:
    """The unix sockets of the backend: the HTTP probes' own (``http[].unix_socket``), then every socket
    nginx passes to other than with ``fastcgi_pass`` (``proxy_pass http://unix:...``, ``uwsgi_pass``)."""
    found = [t.unix_socket for t in config.http if t.unix_socket]
    nginx = config.discovered.nginx if config.discovered is not None else None
    for item in nginx.passes if nginx is not None else ():
        if item.directive != "fastcgi_pass":
            found += [t.address for t in item.targets if t.address.startswith("/")]
    return list(dict.fromkeys(found))


def printable(text: str) -> str:
    """``text`` with every control character (tab aside) escaped as ``\\x1b``, ``\\u202e``: for
    text read from logs, files or requests shown on a terminal or in a label value, so that it
    cannot move the cursor, set the window title, clear the screen or fake a line of its own."""
    if _UNPRINTABLE.search(text) is None:
        return text
    return _UNPRINTABLE.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def shown(value: object) -> str:
    """``repr(value)`` cut to a few dozen characters, in bounded time whatever ``value`` holds: for
    error messages about values read from a file."""
    return _SHOWN.repr(value)


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
    unix_socket: str | None = None
    """Send the request over this unix socket (``proxy_pass http://unix:/run/gunicorn.sock``), not TCP."""


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
class PhpFpmTestSettings:
    """How to run ``php-fpm -t`` (see :mod:`exporter.checks.php_fpm_config`)."""

    test: bool = True
    binary: str | None = None
    """None: ``php-fpmX.Y`` of the PHP-FPM unit (``php8.2-fpm.service``) when installed, else ``php-fpm``."""
    configs: list[str] | None = None
    """The ``php-fpm.conf`` files to test; None: those discovery read (``discovery.php_fpm_configs``)."""
    test_interval_seconds: float = 30.0
    """Run at most this often; a change of a tested file runs it again at once."""
    test_timeout_seconds: float = 5.0


@dataclass(frozen=True)
class DatabaseSettings:
    """The backend's database (see :mod:`exporter.checks.database`)."""

    enabled: bool = True
    url: str | None = None
    """``postgresql://host:port/db``; None: found from the backend's environment or unit file."""
    unit: str = "postgresql.service"
    """The database's unit when it runs on this host (for the fix)."""
    timeout_seconds: float = 1.0


@dataclass(frozen=True)
class ProcessPatterns:
    """Regular expressions matched against a process's command line; children count too."""

    nginx: str = r"^nginx: master process"
    php_fpm: str = r"^php-fpm: master process"
    backend: str = r"\b(uvicorn|gunicorn|hypercorn)\b"


@dataclass(frozen=True)
class PidFiles:
    """The pid file of each service's main process: it, not a matching title, says which process it is
    (missing or stale: the service does not run). Without one, the titles of ``processes`` decide."""

    nginx: str | None = None  # None: nginx's own ``pid`` directive (discovery), else found by title
    php_fpm: str | None = None  # None: ``pid`` in php-fpm.conf's [global] (discovery), else by title
    backend: str | None = None  # e.g. gunicorn's --pid file; None: its unit's processes, else by title


@dataclass(frozen=True)
class Units:
    """systemd unit names, used for fix commands and the unit-state check."""

    nginx: str = "nginx.service"
    php_fpm: str | None = None  # None: the php*-fpm.service installed on the host, else php-fpm.service
    backend: str | None = None  # None: the unit whose ExecStart runs the backend (uvicorn, gunicorn, ...)
    enabled: bool = True
    bus_address: str | None = None  # default: $DBUS_SYSTEM_BUS_ADDRESS, else /run/dbus/system_bus_socket
    restart_window_seconds: float = 600.0  # automatic restarts are counted over this window
    restart_loop_restarts: int = 3  # this many within the window: a restart loop
    journal_lines: int = 20  # last lines of a failed or restarting unit's journal; 0: not read
    journalctl: str = "journalctl"
    journal_directory: str | None = None  # None: the system journal; else journalctl -D this folder
    manager: Literal["auto", "systemd", "sysv", "process"] = "auto"
    """How the services are run, for the fixes: auto is systemd unless the host is known to run none."""


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
    app: list[str] = field(default_factory=list)
    """The backend's own log files (gunicorn ``--error-logfile``, uvicorn's output), when it writes any."""
    start: Literal["end", "beginning"] = "end"
    state_file: str | None = None
    max_upstreams: int = 20
    max_files: int = 256
    """Files tailed at most (one open descriptor each); more matches are counted, not read."""
    poll_interval_seconds: float = 1.0
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
    selinux_root: str = "/sys/fs/selinux"
    """Where SELinux's state is read (``enforce``, ``booleans/``); absent on hosts without SELinux."""
    scrape_timeout_seconds: float = 10.0
    scrape_timeout_margin_seconds: float = 0.5
    php_fpm: list[PhpFpmPool] = field(default_factory=lambda: [PhpFpmPool()])
    http: list[HttpTarget] = field(default_factory=_default_http)
    nginx: NginxSettings = field(default_factory=NginxSettings)
    php_fpm_test: PhpFpmTestSettings = field(default_factory=PhpFpmTestSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    processes: ProcessPatterns = field(default_factory=ProcessPatterns)
    pid_files: PidFiles = field(default_factory=PidFiles)
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
    data, lines = load_yaml_document(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: <top level>: expected a mapping, got {shown(data)}")
    return data, lines


MAX_YAML_BYTES: Final = 1 << 20
"""A configuration file larger than this (1 MiB) is refused unread."""
MAX_YAML_DEPTH: Final = 32
"""Mappings and lists nested deeper than this are refused (the real configuration needs 4)."""
MAX_YAML_NODES: Final = 100_000
"""Values in a document, counting each use of an alias (``*name``) as the whole value it stands for:
a "billion laughs" document is refused while it is being parsed, before it is built."""


def load_yaml_file(path: str) -> tuple[object, str]:
    """The parsed YAML document in ``path`` and its text; :class:`ConfigError` names the file and line."""
    text = _read_text(path)
    data, _ = _load_yaml_text(text, path)
    return data, text


def load_yaml_document(path: str) -> tuple[object, dict[str, int]]:
    """The parsed YAML document in ``path`` and the line of every key path in it.

    Bounded whatever the file holds: at most :data:`MAX_YAML_BYTES`, :data:`MAX_YAML_DEPTH` levels
    and :data:`MAX_YAML_NODES` values with aliases expanded; a key given twice in one mapping is an
    error naming both lines. Raises :class:`ConfigError` (one line naming the file and the line).
    """
    return _load_yaml_text(_read_text(path), path)


def _read_text(path: str) -> str:
    try:
        with Path(path).open("rb") as handle:
            raw = handle.read(MAX_YAML_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(raw) > MAX_YAML_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_YAML_BYTES // 1024} KiB: not a configuration file")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None


class _ShapeError(yaml.YAMLError):
    """A document too deep, too big once its aliases are expanded, or with a key given twice."""

    def __init__(self, line: int, problem: str) -> None:
        super().__init__(problem)
        self.line, self.problem = line, problem


def _load_yaml_text(text: str, path: str) -> tuple[object, dict[str, int]]:
    loader = yaml.SafeLoader(text)
    try:
        _check_shape(yaml.parse(text, Loader=yaml.SafeLoader))
        node = loader.get_single_node()
        lines = _key_lines(node) if node is not None else {}
        data = loader.construct_document(node) if node is not None else None
    except _ShapeError as exc:
        raise ConfigError(f"{path}: line {exc.line}: {exc.problem}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}:{where}: {problem}") from None
    finally:
        loader.dispose()
    return data, lines


def _check_shape(events: Iterator[yaml.Event]) -> None:
    """Refuse, while parsing (no node built yet), nesting beyond :data:`MAX_YAML_DEPTH` and more
    than :data:`MAX_YAML_NODES` values once every alias is expanded."""
    total = 0
    anchors: dict[str, int] = {}
    open_at: list[tuple[str | None, int]] = []  # each open collection: its anchor, ``total`` at its start
    for event in events:
        line = event.start_mark.line + 1 if event.start_mark is not None else 0
        if isinstance(event, yaml.AliasEvent):
            total += anchors.get(event.anchor or "", 1)
        elif isinstance(event, yaml.ScalarEvent):
            total += 1
            if event.anchor:
                anchors[event.anchor] = 1
        elif isinstance(event, yaml.CollectionStartEvent):
            total += 1
            open_at.append((event.anchor, total))
            if len(open_at) > MAX_YAML_DEPTH:
                raise _ShapeError(line, f"nested deeper than {MAX_YAML_DEPTH} levels")
        elif isinstance(event, yaml.CollectionEndEvent) and open_at:
            anchor, started = open_at.pop()
            if anchor:
                anchors[anchor] = total - started + 1
        if total > MAX_YAML_NODES:
            raise _ShapeError(
                line, f"more than {MAX_YAML_NODES:,} values once aliases are expanded (a YAML bomb?)"
            )


def _key_lines(root: yaml.Node) -> dict[str, int]:
    """The line of every key path; refuses a key given twice in one mapping (naming both lines).

    A node reached again through an alias is not walked again: the walk is linear in the file.
    """
    lines: dict[str, int] = {}
    walked: set[int] = set()
    pending: list[tuple[yaml.Node, str]] = [(root, "")]
    while pending:
        node, path = pending.pop()
        if id(node) in walked:
            continue
        walked.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[tuple[str, str], int] = {}
            for key, value in node.value:
                line = key.start_mark.line + 1
                if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                    seen = first.get((key.tag, key.value))
                    if seen is not None:
                        raise _ShapeError(line, f"duplicate key {shown(key.value)} (first at line {seen})")
                    first[(key.tag, key.value)] = line
                sub = f"{path}.{key.value}" if path else str(key.value)
                lines.setdefault(sub, line)
                pending.append((value, sub))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                lines.setdefault(f"{path}[{index}]", item.start_mark.line + 1)
                pending.append((item, f"{path}[{index}]"))
    return lines


def config_from_dict(data: object, source: str = "<config>") -> Config:
    """Validate a parsed YAML document into a :class:`Config`."""
    config = typing.cast(Config, _build(Config, data, source, ""))
    _check_values(config, source)
    return config


def _check_values(config: Config, source: str) -> None:
    if not 0 <= config.scrape_timeout_margin_seconds < config.scrape_timeout_seconds:
        raise ConfigError(f"{source}: scrape_timeout_margin_seconds: must be below scrape_timeout_seconds")
    names = [target.name for target in config.http]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"{source}: http: target name {shown(name)} used twice")
    for index, pool in enumerate(config.php_fpm):
        if not pool.socket:
            raise ConfigError(f"{source}: php_fpm[{index}].socket: must not be empty")
    for name in ("nginx", "php_fpm", "backend"):
        try:
            re.compile(getattr(config.processes, name))
        except re.error as exc:
            raise ConfigError(f"{source}: processes.{name}: invalid regular expression: {exc}") from None
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
    raise ConfigError(f"{_where(source, key)}: expected {_describe(tp)}, got {shown(value)}")


def _build_literal(tp: Any, value: object, source: str, key: str) -> object:
    if value not in typing.get_args(tp):
        raise ConfigError(f"{_where(source, key)}: expected {_describe(tp)}, got {shown(value)}")
    return value


def _build_list(tp: Any, value: object, source: str, key: str) -> list[object]:
    if not isinstance(value, list):
        raise ConfigError(f"{_where(source, key)}: expected a list, got {shown(value)}")
    (item_type,) = typing.get_args(tp)
    return [_build(item_type, item, source, f"{key}[{i}]") for i, item in enumerate(value)]


def _build_dataclass(tp: type, value: object, source: str, key: str) -> object:
    """An instance of the dataclass ``tp`` from a mapping: no unknown keys, no required key missing."""
    if not isinstance(value, dict):
        raise ConfigError(f"{_where(source, key)}: expected a mapping, got {shown(value)}")
    hints = typing.get_type_hints(tp)
    fields = dataclasses.fields(tp)
    known = {f.name for f in fields if not f.metadata.get("internal")}
    kwargs: dict[str, object] = {}
    for name, item in value.items():
        if name not in known:
            text = name if isinstance(name, str) and _PLAIN_KEY.match(name) else shown(name)
            raise ConfigError(f"{source}: {f'{key}.{text}' if key else text}: unknown key")
        sub = f"{key}.{name}" if key else str(name)
        kwargs[name] = _in_range(_build(hints[name], item, source, sub), f"{tp.__name__}.{name}", source, sub)
    missing = [f.name for f in fields if f.name not in kwargs and _is_required(f)]
    if missing:
        raise ConfigError(f"{source}: {key + '.' if key else ''}{missing[0]}: required key missing")
    return tp(**kwargs)


_PLAIN_KEY: Final = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

NUMBER_RANGES: Final[dict[str, tuple[float, float]]] = {
    "Config.scrape_timeout_seconds": (0.1, 120.0),
    "Config.scrape_timeout_margin_seconds": (0.0, 60.0),
    "PhpFpmPool.timeout_seconds": (0.01, 120.0),
    "HttpTarget.timeout_seconds": (0.01, 120.0),
    "NginxSettings.test_interval_seconds": (0.0, 86400.0),
    "NginxSettings.test_timeout_seconds": (0.1, 300.0),
    "PhpFpmTestSettings.test_interval_seconds": (0.0, 86400.0),
    "PhpFpmTestSettings.test_timeout_seconds": (0.1, 300.0),
    "DatabaseSettings.timeout_seconds": (0.01, 120.0),
    "Units.restart_window_seconds": (1.0, 30 * 86400.0),
    "Units.restart_loop_restarts": (1, 1000),
    "Units.journal_lines": (0, 10_000),
    "Thresholds.memory_available_ratio": (0.0, 1.0),
    "Thresholds.filesystem_avail_ratio": (0.0, 1.0),
    "Thresholds.filesystem_avail_bytes": (0, 1 << 60),
    "Thresholds.filesystem_files_free_ratio": (0.0, 1.0),
    "Thresholds.oom_kill_window_seconds": (1.0, 30 * 86400.0),
    "LogSettings.max_upstreams": (1, 10_000),
    "LogSettings.max_files": (1, 100_000),
    "LogSettings.poll_interval_seconds": (0.01, 60.0),
    "LogSettings.evidence_window_seconds": (1.0, 86400.0),
}
"""Every number of the configuration (``Class.field``), and its allowed range, bounds included
(docs/security.md lists them). Numbers are finite (``.inf`` and ``.nan`` are refused)."""


def _in_range(value: object, field_name: str, source: str, key: str) -> object:
    bounds = NUMBER_RANGES.get(field_name)
    if bounds is None or isinstance(value, bool) or not isinstance(value, int | float):
        return value
    low, high = bounds
    if not low <= value <= high:
        raise ConfigError(f"{_where(source, key)}: must be a number from {low:g} to {high:g}, got {value!r}")
    return value


def _is_required(f: dataclasses.Field[Any]) -> bool:
    """Whether the field has neither a default nor a default factory."""
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _build_scalar(tp: Any, value: object, source: str, key: str) -> object:
    """A float (from an int or a float, never a bool), or an int, bool or str of exactly that type."""
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{_where(source, key)}: expected a number, got {shown(value)}")
        if not math.isfinite(value):
            raise ConfigError(f"{_where(source, key)}: expected a finite number, got {value!r}")
        return float(value)
    if tp is int or tp is bool or tp is str:
        if type(value) is not tp:
            raise ConfigError(f"{_where(source, key)}: expected {_describe(tp)}, got {shown(value)}")
        return value
    raise ConfigError(f"{_where(source, key)}: unsupported type {tp!r}")
