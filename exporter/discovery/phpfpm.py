"""PHP-FPM's INI files: the main ``php-fpm.conf``, its ``include=`` globs, pools with ``$pool``."""

from __future__ import annotations

import glob
import os
import re

from exporter.discovery.model import ConfigProblem, Origin, PhpFpmFacts, PoolFacts, Setting

DEFAULT_CONFIGS = ("/etc/php/*/fpm/php-fpm.conf",)
INCLUDE_PREFIX = "/usr"  # php-fpm's default prefix for a relative include=
LOG_PREFIX = "/var"  # and for relative global paths such as error_log
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_MAX_FILES = 256


class _Reader:
    """Reads one php-fpm.conf and everything it includes, in PHP-FPM's order."""

    def __init__(self, config_file: str, prefix: str | None) -> None:
        self.config_file = config_file
        self.prefix = prefix
        self.files: list[str] = []
        self.problems: list[ConfigProblem] = []
        self.pools: dict[str, PoolFacts] = {}
        self.global_settings: dict[str, Setting] = {}

    def read(self, path: str, depth: int = 0) -> None:
        path = os.path.realpath(path)
        if path in self.files or len(self.files) >= _MAX_FILES or depth > 8:
            return
        self.files.append(path)
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                lines = handle.read().splitlines()
        except OSError as exc:
            self.problems.append(ConfigProblem("php_fpm", path, None, f"cannot read: {exc.strerror or exc}"))
            return
        section: str | None = None
        for number, raw in enumerate(lines, start=1):
            line = raw.strip()
            if not line or line[0] in ";#":
                continue
            if line.startswith("["):
                if not line.endswith("]") or len(line) < 3:
                    self.problems.append(
                        ConfigProblem("php_fpm", path, number, f"bad section header {line!r}")
                    )
                    section = None
                    continue
                section = line[1:-1].strip()
                if section != "global" and section not in self.pools:
                    self.pools[section] = PoolFacts(section, path, number, self.config_file)
                continue
            key, sep, value = line.partition("=")
            if not sep or not key.strip():
                self.problems.append(
                    ConfigProblem("php_fpm", path, number, f"expected key = value, got {line!r}")
                )
                continue
            key, value = key.strip(), _value(value)
            origin = Origin("php_fpm", path, number)
            if key == "include":
                self._include(value, path, number, depth)
                continue
            if section is None or section == "global":
                self.global_settings[key] = Setting(value, origin)
            else:
                pool = self.pools[section]
                pool.settings[key] = Setting(value.replace("$pool", section), origin)

    def _include(self, pattern: str, path: str, number: int, depth: int) -> None:
        if not os.path.isabs(pattern):
            pattern = os.path.join(self.prefix or INCLUDE_PREFIX, pattern)
        try:
            names = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        except (OSError, re.error) as exc:
            self.problems.append(ConfigProblem("php_fpm", path, number, f"include={pattern}: {exc}"))
            return
        for name in names:
            if not glob.has_magic(pattern) and not os.path.exists(name):
                self.problems.append(
                    ConfigProblem("php_fpm", path, number, f"include={pattern}: no such file")
                )
                continue
            self.read(name, depth + 1)


def _value(text: str) -> str:
    value = text.strip()
    if value[:1] in ("'", '"'):
        quote = value[0]
        end = value.find(quote, 1)
        value = value[1:end] if end > 0 else value[1:]
    else:
        value = value.split(";", 1)[0].strip()
    return _ENV.sub(lambda m: os.environ.get(m.group(1), m.group(0)), value)


def discover_php_fpm(
    patterns: list[str] | tuple[str, ...] = DEFAULT_CONFIGS, prefix: str | None = None
) -> PhpFpmFacts:
    """Every pool of every ``php-fpm.conf`` matched by ``patterns``; never raises."""
    config_files: list[str] = []
    for pattern in patterns:
        try:
            found = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        except (OSError, re.error):
            found = []
        config_files += [f for f in found if f not in config_files]
    files: list[str] = []
    problems: list[ConfigProblem] = []
    pools: list[PoolFacts] = []
    logs: list[tuple[str, Origin]] = []
    pid_files: list[tuple[str, Origin]] = []
    for config_file in config_files:
        if not os.path.exists(config_file):
            problems.append(ConfigProblem("php_fpm", config_file, None, "no such file"))
            continue
        reader = _Reader(config_file, prefix)
        reader.read(config_file)
        files += reader.files
        problems += reader.problems
        pools += reader.pools.values()
        pid = reader.global_settings.get("pid")
        if pid is not None and pid.value:
            pid_path = (
                pid.value if os.path.isabs(pid.value) else os.path.join(prefix or LOG_PREFIX, pid.value)
            )
            pid_files.append((pid_path, pid.origin))
        error_log = reader.global_settings.get("error_log")
        log_path = error_log.value if error_log else "log/php-fpm.log"
        if log_path != "syslog" and not log_path.startswith("/dev/"):
            full = log_path if os.path.isabs(log_path) else os.path.join(prefix or LOG_PREFIX, log_path)
            origin = (
                error_log.origin
                if error_log
                else Origin("default", note=f"php-fpm default for {config_file}")
            )
            logs.append((full, origin))
    return PhpFpmFacts(
        config_files=tuple(config_files),
        files=tuple(files),
        problems=tuple(problems),
        pools=tuple(pools),
        error_logs=tuple(logs),
        pid_files=tuple(pid_files),
    )
