"""Which systemd units the host has installed: the PHP-FPM unit's name follows the PHP version."""

from __future__ import annotations

import os
import re
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
    """The host's ``php*-fpm.service`` with the highest version, else ``php-fpm.service``."""
    found: dict[str, tuple[int, ...]] = {}
    for directory in unit_dirs:
        try:
            names = [entry.name for entry in Path(directory).iterdir()]
        except OSError:
            continue
        for name in names:
            version = _php_version(name)
            if version is not None:
                found[name] = version
    if not found:
        return "php-fpm.service"
    return max(found, key=lambda name: (found[name], name))


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
