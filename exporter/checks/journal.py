"""The last lines a failed or restarting unit wrote to the journal, and what they say.

``journalctl -u UNIT -n N -o json`` under the round's deadline (killed when it passes): measured at
5-9 ms p50 per unit on a 24 MiB journal (docs/performance.md), and only run for a unit that failed,
is inactive or restarts. An in-process reader (systemd-python) is faster (<1 ms) but needs
libsystemd's headers to build and cannot be interrupted when the journal is stuck; a subprocess can.

What the lines say: PHP-FPM's ``ERROR: [FILE:LINE] ...`` and ``FPM initialization failed``; the
backend's own events (gunicorn, uvicorn: :func:`exporter.logs.lines.classify_app`) and the last line
of a traceback (the exception).
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from typing import Any

from exporter.deadline import Deadline
from exporter.logs.classify import NONE
from exporter.logs.lines import EXCEPTION, classify_app

MAX_OUTPUT_BYTES = 256 * 1024
MAX_MESSAGE_CHARS = 500
_PHP_AT_LINE = re.compile(r"\bERROR: \[(?P<file>/[^\]]+?):(?P<line>\d+)\] (?P<text>.+)")
_PHP_FAILED = ("FPM initialization failed", "failed to post process the configuration")
_TRACEBACK = "Traceback (most recent call last)"


@dataclass(frozen=True)
class JournalLine:
    """One journal entry of the unit."""

    time_seconds: float | None
    message: str
    priority: int | None = None


@dataclass(frozen=True)
class UnitJournal:
    """The unit's last lines and what they say; ``error`` when the journal could not be read."""

    unit: str
    lines: tuple[JournalLine, ...] = ()
    error: str | None = None

    @property
    def events(self) -> tuple[tuple[str, str], ...]:
        """``(event, line)`` of the backend events among the lines, oldest first (classify_app)."""
        found = []
        for entry in self.lines:
            event, _ = classify_app(entry.message.encode())
            if event != NONE and not (event == EXCEPTION and _TRACEBACK in entry.message):
                found.append((event, entry.message))
        return tuple(found)

    @property
    def exception(self) -> str | None:
        """The last line of the last traceback: ``RuntimeError: could not connect ...``."""
        last = [line for event, line in self.events if event == EXCEPTION]
        return last[-1].strip() if last else None

    @property
    def php_fpm_error(self) -> tuple[str, str | None, int | None] | None:
        """PHP-FPM's ``(message, file, line)`` of why it did not start, when the lines say it."""
        for entry in reversed(self.lines):
            where = _PHP_AT_LINE.search(entry.message)
            if where is not None:
                return where.group(0), where.group("file"), int(where.group("line"))
        for entry in reversed(self.lines):
            if any(text in entry.message for text in _PHP_FAILED):
                return entry.message.strip(), None, None
        return None


def _message(value: Any) -> str:
    """MESSAGE as journalctl's JSON gives it: a string, or a list of byte values for binary data."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, list) and all(isinstance(b, int) for b in value):
        text = bytes(b & 0xFF for b in value).decode("utf-8", "replace")
    else:
        text = ""
    return text[:MAX_MESSAGE_CHARS]


def parse_json_lines(output: bytes) -> tuple[JournalLine, ...]:
    """``journalctl -o json`` output (one object a line) as entries, oldest first."""
    lines = []
    for raw in output.splitlines():
        try:
            entry = json.loads(raw)
        except ValueError:
            continue
        if not isinstance(entry, dict):
            continue
        stamp = entry.get("__REALTIME_TIMESTAMP")
        priority = entry.get("PRIORITY")
        lines.append(
            JournalLine(
                int(stamp) / 1e6 if isinstance(stamp, str) and stamp.isdigit() else None,
                _message(entry.get("MESSAGE")),
                int(priority) if isinstance(priority, str) and priority.isdigit() else None,
            )
        )
    return tuple(lines)


class JournalReader:
    """Reads a unit's last ``lines`` entries with ``journalctl`` (``directory``: a journal folder, not the system's)."""

    def __init__(self, lines: int = 20, binary: str = "journalctl", directory: str | None = None) -> None:
        self.lines = lines
        self.binary = binary
        self.directory = directory

    def command(self, unit: str) -> list[str]:
        argv = [self.binary]
        if self.directory:
            argv += ["-D", self.directory]
        return [*argv, "-u", unit, "-n", str(self.lines), "-o", "json", "-q", "--no-pager"]

    def read(self, unit: str, deadline: Deadline) -> UnitJournal:
        """The unit's last lines; never past ``deadline`` (a stuck journalctl is killed)."""
        if deadline.expired():
            return UnitJournal(unit, error="timeout")
        try:
            done = subprocess.run(
                self.command(unit), capture_output=True, timeout=deadline.remaining(), check=False,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            return UnitJournal(unit, error="timeout")
        except OSError as exc:
            return UnitJournal(unit, error=f"{self.binary}: {exc.strerror or exc}")
        if done.returncode != 0 and not done.stdout:
            text = done.stderr.decode("utf-8", "replace").strip().splitlines()
            return UnitJournal(unit, error=(text[-1] if text else f"exit {done.returncode}")[:200])
        return UnitJournal(unit, parse_json_lines(done.stdout[-MAX_OUTPUT_BYTES:]))
