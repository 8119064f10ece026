"""What discovery found, with the file and line of every fact (no dependency on the config module)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property


@dataclass(frozen=True)
class Origin:
    """Where a value came from: ``file:line`` of nginx/PHP-FPM/exporter config, a default or a flag."""

    kind: str  # "nginx", "php_fpm", "config", "default", "flag", "derived"
    file: str | None = None
    line: int | None = None
    note: str | None = None

    def __str__(self) -> str:
        if self.file is not None:
            where = f"{self.file}:{self.line}" if self.line is not None else self.file
        elif self.kind == "default":
            where = "default"
        elif self.kind == "flag":
            where = f"flag {self.note}" if self.note else "flag"
        else:
            where = "discovery" if self.kind == "derived" else self.kind
        if self.note and self.kind != "flag":
            return f"{where} ({self.note})"
        return where


@dataclass(frozen=True)
class ConfigProblem:
    """A file that could not be read or parsed, with the line when known."""

    source: str  # "nginx" or "php_fpm"
    file: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.message}"


@dataclass(frozen=True)
class Timeout:
    """An nginx ``*_timeout`` in effect for one pass directive."""

    name: str  # e.g. "fastcgi_read_timeout"
    seconds: float
    origin: Origin  # the directive, or nginx's built-in default


@dataclass(frozen=True)
class Directive:
    """One nginx directive's value where it is set (or nginx's built-in default, with its note)."""

    name: str
    value: str
    origin: Origin

    @property
    def where(self) -> str:
        """``FILE:LINE`` of the directive, or the note of the default."""
        if self.origin.file:
            return f"{self.origin.file}:{self.origin.line}" if self.origin.line else self.origin.file
        return str(self.origin)


@dataclass(frozen=True)
class UpstreamTarget:
    """One place nginx sends requests to: a unix socket or ``host:port``."""

    address: str  # "/run/php/php8.2-fpm.sock" or "127.0.0.1:8000"
    origin: Origin  # the ``*_pass`` line, or the ``server`` line of the upstream block
    upstream: str | None = None  # name of the ``upstream {}`` block it came through


@dataclass(frozen=True)
class Pass:
    """A ``fastcgi_pass`` / ``proxy_pass`` / ``uwsgi_pass`` / ``grpc_pass`` directive."""

    directive: str
    raw: str  # the argument as written
    origin: Origin
    scheme: str | None  # "http"/"https" for proxy_pass, "grpc"/"grpcs" for grpc_pass
    targets: tuple[UpstreamTarget, ...]
    server_names: tuple[str, ...]
    listens: tuple[str, ...]
    location: str | None
    timeouts: tuple[Timeout, ...]
    buffer_size: Directive | None = None
    """The ``*_buffer_size`` in effect (the response headers must fit in it)."""
    unresolved: str | None = None  # why no target could be derived (variables, unknown upstream)

    def timeout(self, name: str) -> Timeout | None:
        """The effective ``name`` timeout of this directive."""
        return next((t for t in self.timeouts if t.name == name), None)


@dataclass(frozen=True)
class Listen:
    """A ``listen`` directive of a ``server`` block."""

    host: str | None  # None: every address
    port: int | None  # None for a unix socket
    unix: str | None
    ssl: bool
    default_server: bool
    origin: Origin
    server_names: tuple[str, ...]


@dataclass(frozen=True)
class Server:
    """A ``server`` block of the ``http`` context: how nginx routes requests to it, what it passes on."""

    origin: Origin  # the ``server {`` line
    server_names: tuple[str, ...]
    listens: tuple[Listen, ...]  # nginx's ``*:80`` when the block has no ``listen``
    passes: tuple[Pass, ...] = ()  # every ``*_pass`` of its locations
    names_origin: Origin | None = None  # the ``server_name`` line


@dataclass(frozen=True)
class NginxFacts:
    """What nginx's configuration says."""

    main_file: str
    files: tuple[str, ...] = ()
    problems: tuple[ConfigProblem, ...] = ()
    syntax_error: ConfigProblem | None = None
    user: str | None = None
    user_origin: Origin | None = None
    error_logs: tuple[tuple[str, Origin], ...] = ()
    passes: tuple[Pass, ...] = ()
    listens: tuple[Listen, ...] = ()
    servers: tuple[Server, ...] = ()
    limits: tuple[Directive, ...] = ()
    """``worker_connections`` (events), ``worker_rlimit_nofile`` and ``worker_processes`` (main)."""
    resolvers: tuple[Directive, ...] = ()
    pid_file: tuple[str, Origin] | None = None
    """nginx's ``pid`` file and its directive (None: no ``pid`` directive; nginx's built-in default)."""
    """Every ``resolver`` directive, wherever it is set."""

    def limit(self, name: str) -> Directive | None:
        return next((d for d in self.limits if d.name == name), None)


@dataclass(frozen=True)
class Setting:
    """One ``key = value`` of a PHP-FPM file."""

    value: str
    origin: Origin


@dataclass(frozen=True)
class PoolFacts:
    """One PHP-FPM pool: its settings with their lines, and the file that opens its section."""

    name: str
    file: str
    line: int
    config_file: str  # the main php-fpm.conf it belongs to
    settings: dict[str, Setting] = field(default_factory=dict)

    def get(self, key: str) -> str | None:
        """The value of ``key`` (after ``$pool`` substitution), or None."""
        found = self.settings.get(key)
        return found.value if found is not None else None

    @property
    def listen(self) -> str | None:
        """The probe address of ``listen`` (unix path or ``host:port``)."""
        value = self.get("listen")
        return listen_address(value) if value else None

    @property
    def status_listen(self) -> str | None:
        """The probe address of ``pm.status_listen``."""
        value = self.get("pm.status_listen")
        return listen_address(value) if value else None

    @property
    def version(self) -> str | None:
        """``8.3`` for a file under ``/etc/php/8.3/fpm/``."""
        parts = self.config_file.split("/")
        for index, part in enumerate(parts[:-1]):
            if part == "php" and index + 1 < len(parts) and parts[index + 1][:1].isdigit():
                return parts[index + 1]
        return None


@dataclass(frozen=True)
class PhpFpmFacts:
    """What PHP-FPM's configuration files say."""

    config_files: tuple[str, ...] = ()
    files: tuple[str, ...] = ()
    problems: tuple[ConfigProblem, ...] = ()
    pools: tuple[PoolFacts, ...] = ()
    error_logs: tuple[tuple[str, Origin], ...] = ()
    pid_files: tuple[tuple[str, Origin], ...] = ()
    """Each ``php-fpm.conf``'s ``[global] pid`` (absolute) and its line; none when it sets none."""


@dataclass(frozen=True)
class Discovered:
    """Everything discovery found plus the origin of every effective configuration value."""

    nginx: NginxFacts | None = None
    php_fpm: PhpFpmFacts | None = None
    origins: dict[str, Origin] = field(default_factory=dict)
    problems: tuple[ConfigProblem, ...] = ()

    def pool_for(self, address: str) -> PoolFacts | None:
        """The pool whose ``listen`` is ``address`` (unix path or host:port)."""
        return self._pools_by_listen.get(listen_address(address))

    def passes_to(self, address: str) -> tuple[Pass, ...]:
        """Every ``*_pass`` that sends requests to ``address`` (``unix:PATH``, a path or ``host:port``)."""
        return self._passes_by_target.get(listen_address(address.removeprefix("unix:")), ())

    def fastcgi_passes(self, address: str) -> tuple[Pass, ...]:
        """nginx ``fastcgi_pass`` directives that send requests to ``address``."""
        wanted = listen_address(address)
        return tuple(p for p in self._passes_by_target.get(wanted, ()) if p.directive == "fastcgi_pass")

    # Indexes built on first use: the diagnosis asks once per pool and round, with 100 pools and 100
    # server blocks a scan each time was a tenth of the round's CPU.
    @cached_property
    def _pools_by_listen(self) -> dict[str, PoolFacts]:
        found: dict[str, PoolFacts] = {}
        for pool in self.php_fpm.pools if self.php_fpm is not None else ():
            listen = pool.listen
            if listen is not None:
                found.setdefault(listen, pool)
        return found

    @cached_property
    def _passes_by_target(self) -> dict[str, tuple[Pass, ...]]:
        found: dict[str, list[Pass]] = {}
        for item in self.nginx.passes if self.nginx is not None else ():
            for address in dict.fromkeys(t.address for t in item.targets):
                found.setdefault(address, []).append(item)
        return {address: tuple(items) for address, items in found.items()}


def listen_address(value: str) -> str:
    """A probe address from a ``listen``/``fastcgi_pass``/``server`` value.

    ``unix:/x.sock`` and ``/x.sock`` → ``/x.sock``; ``9000`` and ``0.0.0.0:9000`` →
    ``127.0.0.1:9000``; ``[::]:9000`` → ``[::1]:9000``; ``localhost:9000`` stays.
    """
    text = value.strip()
    if text.startswith("unix:"):
        return text.removeprefix("unix:")
    if text.startswith("/"):
        return text
    if text.isdigit():
        return f"127.0.0.1:{text}"
    host, sep, port = text.rpartition(":")
    if not sep:
        return text
    if host in ("0.0.0.0", "*", ""):
        return f"127.0.0.1:{port}"
    if host in ("[::]", "[::0]"):
        return f"[::1]:{port}"
    return f"{host}:{port}"
