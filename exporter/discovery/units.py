"""Which systemd units the host has installed: the PHP-FPM unit's name follows the PHP version."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

DEFAULT_UNIT_DIRS: Final = ("/etc/systemd/system", "/lib/systemd/system", "/usr/lib/systemd/system")
_PHP_FPM_UNIT = re.compile(r"^php(\d+(?:\.\d+)*)?-fpm\.service$")


def _php_version(name: str) -> tuple[int, ...] | None:
    match = _PHP_FPM_UNIT.match(name)
    if match is None:
        return None
    return tuple(int(part) for part in match.group(1).split(".")) if match.group(1) else ()


def default_php_fpm_unit(unit_dirs: Sequence[str | os.PathLike[str]] = DEFAULT_UNIT_DIRS) -> str:
    """The host's ``php*-fpm.service`` with the highest version, else ``php-fpm.service``.

    Listed again only when a folder's modification time changes (a unit file added or removed): the
    diagnosis asks on every round, and ``/lib/systemd/system`` holds hundreds of names.
    """
    key = tuple(os.fspath(directory) for directory in unit_dirs)
    stamps = tuple(_modified(directory) for directory in key)
    cached = _DEFAULT_UNIT_CACHE.get(key)
    if cached is not None and cached[0] == stamps:
        return cached[1]
    found: dict[str, tuple[int, ...]] = {}
    for directory in key:
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        for name in names:
            version = _php_version(name)
            if version is not None:
                found[name] = version
    unit = max(found, key=lambda name: (found[name], name)) if found else "php-fpm.service"
    # A folder changed within the clock's granularity of the listing may change again unseen.
    if max(stamps) < time.time_ns() - _SETTLED_NS:
        _DEFAULT_UNIT_CACHE[key] = (stamps, unit)
    return unit


_SETTLED_NS = 2_000_000_000
_DEFAULT_UNIT_CACHE: dict[tuple[str, ...], tuple[tuple[int, ...], str]] = {}


def _modified(directory: str) -> int:
    try:
        return os.stat(directory).st_mtime_ns
    except OSError:
        return -1


_EXEC_START = re.compile(r"^\s*ExecStart\s*=\s*(.*)$", re.MULTILINE)
_MAX_UNIT_FILE_BYTES = 64 * 1024


def backend_unit(
    process_pattern: str, unit_dirs: Sequence[str | os.PathLike[str]] = DEFAULT_UNIT_DIRS
) -> str | None:
    """The service whose ``ExecStart`` runs the backend (matches ``process_pattern``: uvicorn, gunicorn, ...).

    The operator's own units (``/etc/systemd/system``) come first; within a folder, names in order.
    None when no unit file runs it.
    """
    pattern = re.compile(process_pattern)
    for directory in unit_dirs:
        try:
            entries = sorted(Path(directory).glob("*.service"))
        except OSError:
            continue
        for entry in entries:
            try:
                text = entry.read_text(encoding="utf-8", errors="replace")[:_MAX_UNIT_FILE_BYTES]
            except OSError:
                continue
            if any(pattern.search(command) for command in _EXEC_START.findall(text)):
                return entry.name
    return None
