"""nginx's configuration through crossplane: upstream targets, server blocks, logs, the worker user,
timeouts; and ``nginx -t``'s verdict on it, which names the broken file and line when one does not load.

Each file is parsed on its own (``single=True``) and the ``include`` directives are followed here, so
an error is always reported for the file it is in, and a file that does not parse takes nothing else
down: the other files are still read, and what of the broken file still parses is kept.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import crossplane

from exporter.discovery.model import (
    ConfigProblem,
    Directive,
    Listen,
    NginxFacts,
    Origin,
    Pass,
    Server,
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
    parsed: dict[str, list[Stmt]]  # each file read (as included, not resolved) and its statements
    prefix: str
    upstreams: dict[str, list[UpstreamTarget]] = field(default_factory=dict)
    user: tuple[str, Origin] | None = None
    error_logs: list[tuple[str, Origin]] = field(default_factory=list)
    passes: list[Pass] = field(default_factory=list)
    listens: list[Listen] = field(default_factory=list)
    servers: list[Server] = field(default_factory=list)
    limits: list[Directive] = field(default_factory=list)
    resolvers: list[Directive] = field(default_factory=list)
    pid: tuple[str, Origin] | None = None


_LIMITS = ("worker_connections", "worker_rlimit_nofile", "worker_processes")
BUFFER_SIZE_DEFAULT = "4k|8k"
"""nginx's default ``*_buffer_size``: one memory page."""


def _real(path: str) -> str:
    try:
        return os.path.realpath(path)
    except (OSError, ValueError):
        return path


def discover_nginx(
    main_file: str,
    prefix: str | None = None,
    *,
    binary: str | None = None,
    error_log: str | None = None,
    timeout_seconds: float = 5.0,
) -> NginxFacts:
    """Parse ``main_file`` and every file it includes; never raises for a bad or missing file.

    ``binary``: also run ``BINARY -t -c MAIN_FILE [-p PREFIX] [-e ERROR_LOG]`` (within
    ``timeout_seconds``) when it is installed: when nginx refuses the configuration, its own
    ``in FILE:LINE`` names the syntax error; when it accepts it, the parser's complaints are not one.
    """
    main_file = os.path.abspath(main_file)
    nginx_prefix = prefix or "/usr/share/nginx/"
    if not os.path.exists(main_file):
        problem = ConfigProblem("nginx", main_file, None, "no such file")
        return NginxFacts(main_file=main_file, problems=(problem,))
    try:
        parsed, found = _parse_tree(main_file)
    except Exception as exc:  # crossplane bugs must not take the exporter down
        problem = ConfigProblem("nginx", main_file, None, f"cannot parse: {exc}")
        return NginxFacts(main_file=main_file, problems=(problem,))
    verdict = nginx_test(binary, main_file, prefix, error_log, timeout_seconds) if binary else None
    problems, syntax_error = _problems(found, verdict)
    walk = _Walk(parsed=parsed, prefix=nginx_prefix)
    _walk_main(walk, _flatten(walk, parsed.get(main_file, []), main_file))
    user, user_origin = walk.user if walk.user else (None, None)
    return NginxFacts(
        main_file=main_file,
        files=tuple(_real(path) for path in parsed),
        problems=tuple(problems),
        syntax_error=syntax_error,
        user=user,
        user_origin=user_origin,
        error_logs=tuple(walk.error_logs),
        passes=tuple(walk.passes),
        listens=tuple(walk.listens),
        servers=tuple(walk.servers),
        limits=tuple(walk.limits),
        resolvers=tuple(walk.resolvers),
        pid_file=walk.pid,
    )


# -- nginx -t ------------------------------------------------------------------------------------

TEST_WHERE = re.compile(r" in (?P<file>\S+?):(?P<line>\d+)\s*$")
"""Where ``nginx -t`` says its problem is: `` in FILE:LINE`` at the end of the line."""

_TEST_LEVEL = re.compile(r"^.*?\[(?:emerg|crit|alert)\]\s*(?:\d+#\d+:\s*)?")


def parse_test_output(
    output: str, exit_code: int, is_root: bool
) -> tuple[bool | None, str | None, str | None]:
    """Turn ``nginx -t`` output into (valid, test_error, message)."""
    problem = next(
        (line for line in output.splitlines() if "[emerg]" in line or "[crit]" in line or "[alert]" in line),
        None,
    )
    if exit_code == 0:
        return True, None, None
    if problem and "(13: Permission denied)" in problem and not is_root:
        return (
            None,
            "permission_denied",
            f"nginx -t needs root to open its log and pid files: {problem.strip()}",
        )
    return (
        False,
        None,
        (problem or output.strip().splitlines()[-1] if output.strip() else f"exit code {exit_code}"),
    )


def nginx_test(
    binary: str, main_file: str, prefix: str | None, error_log: str | None, timeout_seconds: float
) -> ConfigProblem | bool | None:
    """``nginx -t`` on ``main_file``: True when it loads, the file and line nginx names when it does not,
    None when there is no verdict with a place (no binary, not root, a deadline, a failure elsewhere)."""
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin", "/sbin"])
    path = shutil.which(binary, path=search)
    if path is None:
        return None
    command = [path, "-t", "-c", main_file]
    command += ["-p", prefix] if prefix else []
    command += ["-e", error_log] if error_log else []
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, errors="replace", timeout=timeout_seconds,
            check=False, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    is_root = os.geteuid() == 0
    valid, _, message = parse_test_output(done.stderr + done.stdout, done.returncode, is_root)
    if valid is None or valid:
        return valid
    where = TEST_WHERE.search(message or "")
    if message is None or where is None or (not is_root and "Permission denied" in message):
        return None  # not a place in the files, or one a non-root user merely may not read
    text = _TEST_LEVEL.sub("", message[: where.start()]).strip()
    return ConfigProblem("nginx", _real(where.group("file")), int(where.group("line")), f"nginx -t: {text}")


def _problems(
    found: list[tuple[ConfigProblem, bool]], verdict: ConfigProblem | bool | None
) -> tuple[list[ConfigProblem], ConfigProblem | None]:
    """Every problem, and the syntax error: nginx's own when it ran, else the parser's first."""
    unreadable = [problem for problem, syntax in found if not syntax]
    parser_errors = [problem for problem, syntax in found if syntax]
    if verdict is True:
        return unreadable, None
    if isinstance(verdict, ConfigProblem):
        others = [p for p in parser_errors if p.file != verdict.file]
        return [verdict, *others, *unreadable], verdict
    problems = [problem for problem, _ in found]
    return problems, parser_errors[0] if parser_errors else None


# -- parsing, errors named for the file they are in ---------------------------------------------------

_UNREADABLE = ("PermissionError", "IsADirectoryError", "FileNotFoundError", "OSError")
_CROSSPLANE_WHERE = re.compile(r" in \S+:\d+\s*$")


def _parse_tree(main_file: str) -> tuple[dict[str, list[Stmt]], list[tuple[ConfigProblem, bool]]]:
    """Every file from ``main_file`` on, in nginx's order; each problem with whether it is a syntax error.

    Each ``include`` statement gets ``includes``: the names of the files it brings in. A file whose
    braces do not balance (crossplane then keeps nothing of it) is read again on its own
    (:func:`_salvage`): the other files never depend on it.
    """
    payload = crossplane.parse(
        main_file, catch_errors=True, check_ctx=True, check_args=True, comments=False,
        onerror=lambda exc: type(exc).__name__,
    )  # fmt: skip
    config: list[dict[str, Any]] = payload.get("config", [])
    names = [str(entry.get("file")) for entry in config]
    parsed = {name: list(entry.get("parsed", [])) for name, entry in zip(names, config, strict=True)}
    found: list[tuple[ConfigProblem, bool]] = []
    for error in payload.get("errors", []):
        kind = str(error.get("callback", ""))
        # crossplane's message may name the last file included before the error: the file is error["file"].
        message = _CROSSPLANE_WHERE.sub("", str(error.get("error", "error")))
        syntax = (
            kind not in _UNREADABLE and "[Errno 13]" not in message and "Permission denied" not in message
        )
        found.append(
            (ConfigProblem("nginx", _real(str(error.get("file"))), error.get("line"), message), syntax)
        )
        file = str(error.get("file"))
        if kind == "NgxParserSyntaxError" and not parsed.get(file):
            parsed[file] = _salvage(file, error.get("line"), message)
            _resolve_includes(parsed[file], os.path.dirname(main_file), parsed)
    for block in parsed.values():
        for stmt in _statements(block):
            if "includes" in stmt and all(isinstance(i, int) for i in stmt["includes"]):
                stmt["includes"] = [names[i] for i in stmt["includes"] if 0 <= i < len(names)]
    return parsed, found


def _statements(block: list[Stmt]) -> Iterator[Stmt]:
    for stmt in block:
        yield stmt
        yield from _statements(stmt.get("block", []))


def _resolve_includes(block: list[Stmt], config_dir: str, parsed: dict[str, list[Stmt]]) -> None:
    """``includes`` for the ``include`` statements of a salvaged block: the files already read it names."""
    for stmt in _statements(block):
        if stmt.get("directive") == "include" and _args(stmt):
            pattern = _args(stmt)[0]
            full = pattern if os.path.isabs(pattern) else os.path.join(config_dir, pattern)
            matches = sorted(glob.glob(full)) if glob.has_magic(full) else [full]
            stmt["includes"] = [name for name in matches if name in parsed]


_SALVAGE_ATTEMPTS = 8


def _salvage(file: str, line: int | None, message: str) -> list[Stmt]:
    """What still parses of a file whose braces do not balance: each line crossplane stops at commented
    out (a stray ``}``), a ``}`` added at the end for each block left open. Lines stay the file's."""
    try:
        lines = Path(file).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    with tempfile.TemporaryDirectory(prefix="badgateway-nginx-") as folder:
        copy = os.path.join(folder, "salvaged.conf")
        for _ in range(_SALVAGE_ATTEMPTS):
            if message.startswith("unexpected end of file") or line is None or not 1 <= line <= len(lines):
                lines.append("}")
            else:
                lines[line - 1] = "# " + lines[line - 1]
            Path(copy).write_text("\n".join(lines) + "\n", encoding="utf-8")
            payload = crossplane.parse(
                copy, single=True, catch_errors=True, check_ctx=False, check_args=False, comments=False,
                onerror=lambda exc: type(exc).__name__,
            )  # fmt: skip
            error = next(
                (e for e in payload.get("errors", []) if e.get("callback") == "NgxParserSyntaxError"), None
            )
            if error is None:
                parsed: list[Stmt] = payload["config"][0].get("parsed", [])
                return parsed
            line, message = error.get("line"), str(error.get("error", ""))
    return []


def _flatten(walk: _Walk, block: list[Stmt], file: str, depth: int = 0) -> list[tuple[Stmt, str]]:
    """A block's statements with ``include`` expanded in place, each with its file."""
    out: list[tuple[Stmt, str]] = []
    for stmt in block:
        if stmt.get("directive") == "include" and depth < 32:
            for name in stmt.get("includes", []):
                if name in walk.parsed:
                    out += _flatten(walk, walk.parsed[name], name, depth + 1)
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
        if name in ("user", "pid") and args:
            _main_value(walk, str(name), args[0], _origin(stmt, file))
        elif name == "error_log" and args:
            _add_log(walk, args[0], _origin(stmt, file))
        elif name in _LIMITS and args:
            walk.limits.append(Directive(str(name), args[0], _origin(stmt, file)))
        elif name == "events":
            for inner, inner_file in _flatten(walk, stmt.get("block", []), file):
                if inner.get("directive") in _LIMITS and _args(inner):
                    walk.limits.append(
                        Directive(str(inner["directive"]), _args(inner)[0], _origin(inner, inner_file))
                    )
    for stmt, file in block:
        if stmt.get("directive") == "http":
            http = _flatten(walk, stmt.get("block", []), file)
            for inner, inner_file in http:
                if inner.get("directive") == "upstream" and _args(inner):
                    _upstream(walk, _args(inner)[0], _flatten(walk, inner.get("block", []), inner_file))
            _walk_block(walk, http, _Scope(), "http")


def _main_value(walk: _Walk, name: str, value: str, origin: Origin) -> None:
    """``user`` (the workers' user) or ``pid`` (the master's pid file, relative to the prefix)."""
    if name == "user":
        walk.user = (value, origin)
    elif value != "off":
        walk.pid = (value if os.path.isabs(value) else os.path.join(walk.prefix, value), origin)


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
        passing = name.split("_", 1)[0] in PASS_DIRECTIVES.values()
        if (name.endswith("_timeout") or name.endswith("_buffer_size")) and args and passing:
            scope.values[name] = (args[0], _origin(stmt, file))
        elif name == "resolver" and args:
            walk.resolvers.append(Directive(name, " ".join(args), _origin(stmt, file)))
        elif name == "error_log" and args:
            _add_log(walk, args[0], _origin(stmt, file))
        elif name == "server_name" and context == "server":
            scope.server_names += tuple(args)  # several server_name lines add up


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
    block = _flatten(walk, stmt["block"], file)
    first_listen, first_pass = len(walk.listens), len(walk.passes)
    _walk_block(walk, block, scope, nested_context)
    if name == "server":
        names = [(s, f) for s, f in block if s.get("directive") == "server_name"]
        walk.servers.append(
            Server(
                origin=_origin(stmt, file),
                server_names=tuple(arg for s, _ in names for arg in _args(s)),
                listens=tuple(walk.listens[first_listen:]),
                passes=tuple(walk.passes[first_pass:]),
                names_origin=_origin(*names[0]) if names else None,
            )
        )


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
    buffer_name = f"{kind}_buffer_size"
    found_buffer = scope.values.get(buffer_name)
    buffer_size = (
        Directive(buffer_name, found_buffer[0], found_buffer[1])
        if found_buffer
        else Directive(
            buffer_name, BUFFER_SIZE_DEFAULT, Origin("default", note=f"nginx default, no {buffer_name}")
        )
    )
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
        buffer_size=buffer_size,
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
