"""nginx's configuration through crossplane: upstream targets, logs, the worker user, timeouts."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

import crossplane

from exporter.discovery.model import (
    ConfigProblem,
    Listen,
    NginxFacts,
    Origin,
    Pass,
    Timeout,
    UpstreamTarget,
    listen_address,
)

PASS_DIRECTIVES = {
    "fastcgi_pass": "fastcgi",
    "proxy_pass": "proxy",
    "uwsgi_pass": "uwsgi",
    "grpc_pass": "grpc",
}
TIMEOUT_KINDS = ("connect", "send", "read")
DEFAULT_TIMEOUT_SECONDS = 60.0  # nginx's built-in default of every *_connect/send/read_timeout
_TIME_UNITS = {
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 604800.0,
    "M": 2592000.0,
    "y": 31536000.0,
}
_TIME_PART = re.compile(r"(\d+)(ms|s|m|h|d|w|M|y)?")

Stmt = dict[str, Any]


def parse_time(text: str) -> float | None:
    """nginx time syntax (``30``, ``500ms``, ``1m30s``) in seconds; None when it is not one."""
    pos, total = 0, 0.0
    text = text.strip()
    if not text:
        return None
    while pos < len(text):
        match = _TIME_PART.match(text, pos)
        if match is None:
            return None
        total += int(match.group(1)) * _TIME_UNITS[match.group(2) or "s"]
        pos = match.end()
    return total


@dataclass
class _Scope:
    """Inheritable directives in effect at one level (http, server, location)."""

    values: dict[str, tuple[str, Origin]] = field(default_factory=dict)
    server_names: tuple[str, ...] = ()
    listens: tuple[str, ...] = ()
    location: str | None = None

    def child(self) -> _Scope:
        return _Scope(dict(self.values), self.server_names, self.listens, self.location)


@dataclass
class _Walk:
    files: list[str]
    config: list[dict[str, Any]]
    prefix: str
    upstreams: dict[str, list[UpstreamTarget]] = field(default_factory=dict)
    user: tuple[str, Origin] | None = None
    error_logs: list[tuple[str, Origin]] = field(default_factory=list)
    passes: list[Pass] = field(default_factory=list)
    listens: list[Listen] = field(default_factory=list)


def _real(path: str) -> str:
    try:
        return os.path.realpath(path)
    except (OSError, ValueError):
        return path


def discover_nginx(main_file: str, prefix: str | None = None) -> NginxFacts:
    """Parse ``main_file`` and every file it includes; never raises for a bad or missing file."""
    main_file = os.path.abspath(main_file)
    nginx_prefix = prefix or "/usr/share/nginx/"
    if not os.path.exists(main_file):
        problem = ConfigProblem("nginx", main_file, None, "no such file")
        return NginxFacts(main_file=main_file, problems=(problem,))
    try:
        payload = crossplane.parse(
            main_file, catch_errors=True, check_ctx=True, check_args=True, comments=False
        )
    except Exception as exc:  # crossplane bugs must not take the exporter down
        problem = ConfigProblem("nginx", main_file, None, f"cannot parse: {exc}")
        return NginxFacts(main_file=main_file, problems=(problem,))
    config: list[dict[str, Any]] = payload.get("config", [])
    problems: list[ConfigProblem] = []
    syntax_error: ConfigProblem | None = None
    for error in payload.get("errors", []):
        message = str(error.get("error", "error"))
        problem = ConfigProblem("nginx", _real(str(error.get("file"))), error.get("line"), message)
        problems.append(problem)
        unreadable = "[Errno 13]" in message or "Permission denied" in message
        if syntax_error is None and not unreadable:
            syntax_error = problem
    walk = _Walk(files=[_real(str(c.get("file"))) for c in config], config=config, prefix=nginx_prefix)
    if config:
        root_file = str(config[0].get("file"))
        main_block = _flatten(walk, config[0].get("parsed", []), root_file)
        _walk_main(walk, main_block)
    user, user_origin = walk.user if walk.user else (None, None)
    return NginxFacts(
        main_file=main_file,
        files=tuple(walk.files),
        problems=tuple(problems),
        syntax_error=syntax_error,
        user=user,
        user_origin=user_origin,
        error_logs=tuple(walk.error_logs),
        passes=tuple(walk.passes),
        listens=tuple(walk.listens),
    )


def _flatten(walk: _Walk, block: list[Stmt], file: str, depth: int = 0) -> list[tuple[Stmt, str]]:
    """A block's statements with ``include`` expanded in place, each with its file."""
    out: list[tuple[Stmt, str]] = []
    for stmt in block:
        if stmt.get("directive") == "include" and depth < 32:
            for index in stmt.get("includes", []):
                if 0 <= index < len(walk.config):
                    included = walk.config[index]
                    out += _flatten(walk, included.get("parsed", []), str(included.get("file")), depth + 1)
            continue
        out.append((stmt, file))
    return out


def _origin(stmt: Stmt, file: str) -> Origin:
    return Origin("nginx", _real(file), int(stmt.get("line", 0)) or None)


def _args(stmt: Stmt) -> list[str]:
    return [str(a) for a in stmt.get("args", [])]


def _walk_main(walk: _Walk, block: list[tuple[Stmt, str]]) -> None:
    for stmt, file in block:
        name, args = stmt.get("directive"), _args(stmt)
        if name == "user" and args:
            walk.user = (args[0], _origin(stmt, file))
        elif name == "error_log" and args:
            _add_log(walk, args[0], _origin(stmt, file))
    for stmt, file in block:
        if stmt.get("directive") == "http":
            http = _flatten(walk, stmt.get("block", []), file)
            for inner, inner_file in http:
                if inner.get("directive") == "upstream" and _args(inner):
                    _upstream(walk, _args(inner)[0], _flatten(walk, inner.get("block", []), inner_file))
            _walk_block(walk, http, _Scope(), "http")


def _add_log(walk: _Walk, path: str, origin: Origin) -> None:
    if path in ("stderr", "/dev/null") or path.startswith(("syslog:", "memory:")) or "$" in path:
        return
    full = path if os.path.isabs(path) else os.path.join(walk.prefix, path)
    if all(existing != full for existing, _ in walk.error_logs):
        walk.error_logs.append((full, origin))


def _upstream(walk: _Walk, name: str, block: list[tuple[Stmt, str]]) -> None:
    servers: list[UpstreamTarget] = []
    for stmt, file in block:
        args = _args(stmt)
        if stmt.get("directive") != "server" or not args or "down" in args[1:]:
            continue
        address = args[0]
        if not address.startswith("unix:") and ":" not in address.lstrip("[").split("]")[-1]:
            address += ":80"
        servers.append(UpstreamTarget(listen_address(address), _origin(stmt, file), name))
    walk.upstreams[name] = servers


_PASS_CONTEXTS = ("location", "if", "limit_except")
"""The contexts whose ``*_pass`` directives are collected."""

_BLOCK_PARENTS = {
    "server": ("http",),
    "location": ("server", "location"),
    "if": ("server", "location", "if"),
    "limit_except": ("server", "location", "if"),
}
"""The block directives walked into, each with the contexts it is walked into from."""


def _walk_block(walk: _Walk, block: list[tuple[Stmt, str]], parent: _Scope, context: str) -> None:
    scope = parent.child()
    _scope_directives(walk, block, scope, context)
    if context == "server":
        _server_listens(walk, block, scope)
    for stmt, file in block:
        name, args = str(stmt.get("directive")), _args(stmt)
        if name in PASS_DIRECTIVES and args and context in _PASS_CONTEXTS:
            walk.passes.append(_pass(walk, name, args[0], _origin(stmt, file), scope))
        elif "block" in stmt and context in _BLOCK_PARENTS.get(name, ()):
            _walk_nested(walk, stmt, file, scope, context)


def _scope_directives(walk: _Walk, block: list[tuple[Stmt, str]], scope: _Scope, context: str) -> None:
    """Put the block's own ``*_timeout`` and ``server_name`` into ``scope``; add its error logs."""
    for stmt, file in block:
        name, args = str(stmt.get("directive")), _args(stmt)
        if name.endswith("_timeout") and args and name.split("_", 1)[0] in PASS_DIRECTIVES.values():
            scope.values[name] = (args[0], _origin(stmt, file))
        elif name == "error_log" and args:
            _add_log(walk, args[0], _origin(stmt, file))
        elif name == "server_name" and context == "server":
            scope.server_names = tuple(args)


def _server_listens(walk: _Walk, block: list[tuple[Stmt, str]], scope: _Scope) -> None:
    """Add a server block's listens (nginx's ``*:80`` when it has none) and put them in ``scope``."""
    listen_stmts = [(s, f) for s, f in block if s.get("directive") == "listen" and _args(s)]
    scope.listens = tuple(_args(s)[0] for s, _ in listen_stmts)
    if not listen_stmts:
        walk.listens.append(
            Listen(
                None,
                80,
                None,
                False,
                False,
                Origin("default", note="no listen: *:80"),
                scope.server_names,
            )
        )
    for stmt, file in listen_stmts:
        walk.listens.append(_listen(_args(stmt), _origin(stmt, file), scope.server_names))


def _walk_nested(walk: _Walk, stmt: Stmt, file: str, scope: _Scope, context: str) -> None:
    """Walk a ``server``, ``location``, ``if`` or ``limit_except`` block met in ``context``."""
    name = str(stmt.get("directive"))
    if name == "location":
        scope = scope.child()
        scope.location = " ".join(_args(stmt))
    nested_context = "if" if name == "limit_except" and context == "server" else name
    _walk_block(walk, _flatten(walk, stmt["block"], file), scope, nested_context)


def _listen(args: list[str], origin: Origin, names: tuple[str, ...]) -> Listen:
    address, flags = args[0], args[1:]
    ssl = "ssl" in flags
    default = "default_server" in flags or "default" in flags
    if address.startswith("unix:"):
        return Listen(None, None, address.removeprefix("unix:"), ssl, default, origin, names)
    host: str | None
    if address.isdigit():
        host, port = None, int(address)
    else:
        head, sep, tail = address.rpartition(":")
        if sep and tail.isdigit() and not head.endswith(":"):
            host, port = head, int(tail)
        else:
            host, port = address, 443 if ssl else 80
    if host in ("*", "0.0.0.0", "[::]"):
        host = None if host != "[::]" else "[::]"
    return Listen(host, port, None, ssl, default, origin, names)


def _pass(walk: _Walk, directive: str, raw: str, origin: Origin, scope: _Scope) -> Pass:
    kind = PASS_DIRECTIVES[directive]
    timeouts = []
    for timeout_kind in TIMEOUT_KINDS:
        name = f"{kind}_{timeout_kind}_timeout"
        found = scope.values.get(name)
        seconds = parse_time(found[0]) if found else None
        if found and seconds is not None:
            timeouts.append(Timeout(name, seconds, found[1]))
        else:
            timeouts.append(
                Timeout(name, DEFAULT_TIMEOUT_SECONDS, Origin("default", note=f"nginx default, no {name}"))
            )
    scheme, targets, unresolved = _resolve(walk, directive, raw, origin)
    return Pass(
        directive=directive,
        raw=raw,
        origin=origin,
        scheme=scheme,
        targets=targets,
        server_names=scope.server_names,
        listens=scope.listens,
        location=scope.location,
        timeouts=tuple(timeouts),
        unresolved=unresolved,
    )


def _resolve(
    walk: _Walk, directive: str, raw: str, origin: Origin
) -> tuple[str | None, tuple[UpstreamTarget, ...], str | None]:
    """Scheme, targets, and why there are none."""
    text = raw
    scheme: str | None = None
    match = re.match(r"^([a-z]+)://", text)
    if match:
        scheme = match.group(1)
        text = text[match.end() :]
    if directive == "proxy_pass" and scheme is None:
        return None, (), f"proxy_pass {raw}: no scheme"
    if "$" in text:
        return scheme, (), f"{directive} {raw}: uses variables, resolved per request"
    if text.startswith("unix:"):
        path = text.removeprefix("unix:")
        if directive in {"proxy_pass", "grpc_pass"}:
            path = path.split(":", 1)[0]  # http://unix:/path:/uri
        return scheme, (UpstreamTarget(path, origin),), None
    host_port = text.split("/", 1)[0]
    if host_port in walk.upstreams:
        servers = tuple(walk.upstreams[host_port])
        return scheme, servers, None if servers else f"upstream {host_port} has no usable server"
    _, sep, port = host_port.rpartition(":")
    if not sep or not port.isdigit():
        if directive != "proxy_pass" and scheme is None:
            return scheme, (), f"{directive} {raw}: no upstream block named {host_port!r}"
        default_port = 443 if scheme in ("https", "grpcs") else 80
        host_port = f"{host_port}:{default_port}"
    return scheme, (UpstreamTarget(listen_address(host_port), origin),), None
