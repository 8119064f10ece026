"""What goes into a bundle: one function per part, each returning its files and its notes.

Every part reads files or runs one program under the bundle's deadline (no shell); a part that
fails says so in a note for the README and never stops the others. Everything is redacted here,
before it becomes a :class:`~exporter.bundle.archive.Member`.
"""

from __future__ import annotations

import glob
import json
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from exporter import __version__
from exporter.app import Checked
from exporter.bundle.archive import Member
from exporter.bundle.redact import redact_environ, redact_json, redact_text
from exporter.config import Config
from exporter.deadline import Deadline
from exporter.diagnosis.render import diagnosis_json, render_text

LOG_TAIL_BYTES = 256 * 1024  # of each watched log
MAX_LOGS = 32
MAX_FILE_BYTES = 1024 * 1024  # of each configuration file, and of each program's output
MAX_CONFIG_FILES = 64
COMMAND_SECONDS = 10.0  # each program, within the bundle's own deadline
JOURNAL_LINES = 200
_SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin", "/usr/local/sbin"])


@dataclass
class Part:
    """The files one part produced and what it could not collect."""

    members: list[Member] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add_text(self, name: str, text: str, about: str) -> None:
        self.members.append(Member(name, redact_text(text).encode("utf-8"), about))


@dataclass(frozen=True)
class Source:
    """What the parts read: the configuration, the round and its diagnosis, and the deadline."""

    config: Config
    checked: Checked
    deadline: Deadline
    proc: str = "/proc"


def run(argv: list[str], deadline: Deadline) -> tuple[int, str, str]:
    """``argv`` (no shell) under the deadline: exit status, stdout, stderr; OSError or TimeoutError."""
    seconds = deadline.capped(COMMAND_SECONDS).remaining()
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=seconds,
            check=False,
            env={**os.environ, "LC_ALL": "C", "SYSTEMD_PAGER": "", "PAGER": "cat"},
        )
    except subprocess.TimeoutExpired:
        raise TimeoutError(f"{argv[0]}: no answer within {seconds:.1f}s") from None
    return done.returncode, _bounded_text(done.stdout), _bounded_text(done.stderr)


def _bounded_text(data: bytes) -> str:
    if len(data) <= MAX_FILE_BYTES:
        return data.decode("utf-8", "replace")
    return data[:MAX_FILE_BYTES].decode("utf-8", "replace") + f"\n[... cut at {MAX_FILE_BYTES} bytes]\n"


def _archive_path(folder: str, path: str) -> str:
    return f"{folder}/{os.path.abspath(path).lstrip('/')}"


def read_tail(path: str, limit: int) -> str:
    """The last ``limit`` bytes of ``path`` from a line start (the whole file when smaller)."""
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        start = max(0, size - limit)
        handle.seek(start)
        data = handle.read(limit)
    if start > 0:
        data = data[data.find(b"\n") + 1 :] if b"\n" in data else data
    return data.decode("utf-8", "replace")


# -- the parts ------------------------------------------------------------------------------------


def diagnosis_part(source: Source) -> Part:
    part = Part()
    diagnosis = source.checked.diagnosis
    part.add_text("diagnosis.txt", render_text(diagnosis) + "\n", "the diagnosis, as diagnose prints it")
    document = json.dumps(redact_json(diagnosis_json(diagnosis)), indent=2) + "\n"
    part.members.append(
        Member("diagnosis.json", document.encode("utf-8"), "the same, diagnose --format json")
    )
    return part


def watched_logs(config: Config) -> list[str]:
    """The files the configured log patterns match (nginx's error log setting included)."""
    patterns = [*config.logs.nginx, *config.logs.php_fpm]
    if config.nginx.error_log:
        patterns.append(config.nginx.error_log)
    found = {os.path.abspath(path) for pattern in patterns for path in glob.glob(pattern)}
    return sorted(path for path in found if os.path.isfile(path))


def logs_part(source: Source) -> Part:
    part = Part()
    paths = watched_logs(source.config)
    if not paths:
        part.notes.append("watched logs: no file matches the configured log patterns")
    for path in paths[:MAX_LOGS]:
        try:
            text = read_tail(path, LOG_TAIL_BYTES)
        except OSError as exc:
            part.notes.append(f"log {path}: {exc.strerror or exc}")
            continue
        part.add_text(_archive_path("logs", path), text, f"the last {LOG_TAIL_BYTES // 1024} KiB of {path}")
    if len(paths) > MAX_LOGS:
        part.notes.append(f"watched logs: only the first {MAX_LOGS} of {len(paths)} files")
    return part


def php_fpm_part(source: Source) -> Part:
    part = Part()
    found = source.config.discovered.php_fpm if source.config.discovered is not None else None
    files = sorted({*found.config_files, *found.files}) if found is not None else []
    if not files:
        part.notes.append("PHP-FPM configuration: discovery read no PHP-FPM file")
    for path in files[:MAX_CONFIG_FILES]:
        try:
            text = read_tail(path, MAX_FILE_BYTES)
        except OSError as exc:
            part.notes.append(f"PHP-FPM file {path}: {exc.strerror or exc}")
            continue
        part.add_text(_archive_path("php-fpm", path), text, f"{path}, as discovery read it")
    return part


def nginx_command(config: Config, flag: str) -> list[str]:
    """``nginx FLAG`` with the configuration file, prefix and error log the exporter uses."""
    argv = [config.nginx.binary, flag]
    settings = config.nginx
    for option, value in (("-c", settings.config), ("-p", settings.prefix), ("-e", settings.error_log)):
        if value:
            argv += [option, value]
    return argv


def nginx_part(source: Source) -> Part:
    part = Part()
    argv = nginx_command(source.config, "-T")
    try:
        status, out, err = run(argv, source.deadline)
    except (OSError, TimeoutError) as exc:
        part.notes.append(f"nginx -T: {_why(exc)}")
        return part
    if status != 0:
        part.notes.append(f"nginx -T: exited with status {status} (its messages are in nginx-T.txt)")
    text = f"$ {' '.join(argv)}\n# exit status {status}\n{err}\n{out}"
    part.add_text("nginx-T.txt", text, "nginx -T: the configuration nginx reads, every include")
    return part


def _units(config: Config) -> list[str]:
    units = config.units
    return list(dict.fromkeys(u for u in (units.nginx, units.php_fpm, units.backend) if u))


def journal_part(source: Source) -> Part:
    part = Part()
    journalctl = shutil.which("journalctl")
    if journalctl is None:
        part.notes.append("unit journals: journalctl is not installed on this host")
        return part
    if source.config.units.backend is None:
        part.notes.append(
            "unit journals: no unit runs the backend (set units.backend), so no backend journal"
        )
    for unit in _units(source.config):
        argv = [journalctl, "-u", unit, "-n", str(JOURNAL_LINES), "--no-pager", "-o", "short-iso"]
        try:
            status, out, err = run(argv, source.deadline)
        except (OSError, TimeoutError) as exc:
            part.notes.append(f"journal of {unit}: {_why(exc)}")
            continue
        if status != 0 or err.strip():
            part.notes.append(
                f"journal of {unit}: {(err.strip() or f'exit status {status}').splitlines()[0]}"
            )
        part.add_text(f"journal/{unit}.txt", out + err, f"journalctl -u {unit} -n {JOURNAL_LINES}")
    return part


def _main_pid(source: Source, service: str) -> int | None:
    processes = source.checked.results.processes
    found = processes.of(service) if processes is not None else None
    return found.main_pids[0] if found is not None and found.main_pids else None


def backend_part(source: Source) -> Part:
    part = Part()
    pid = _main_pid(source, "backend")
    if pid is None:
        part.notes.append("backend environment: the processes check found no backend process")
        return part
    try:
        with open(f"{source.proc}/{pid}/environ", "rb") as handle:
            raw = handle.read(MAX_FILE_BYTES)
    except OSError as exc:
        part.notes.append(f"backend environment: /proc/{pid}/environ: {exc.strerror or exc}")
        return part
    about = f"the environment of the backend's main process (pid {pid}), secrets redacted"
    part.members.append(Member("backend/environ.txt", redact_environ(raw).encode("utf-8"), about))
    return part


def php_fpm_binary(source: Source) -> str | None:
    """The running master's program, else the installed PHP-FPM of the unit's version, else any."""
    pid = _main_pid(source, "php_fpm")
    if pid is not None:
        try:
            return os.readlink(f"{source.proc}/{pid}/exe").removesuffix(" (deleted)")
        except OSError:
            pass
    unit = source.config.units.php_fpm or ""
    version = unit.removeprefix("php").removesuffix("-fpm.service")
    names = [f"php-fpm{version}"] if version[:1].isdigit() else []
    names += ["php-fpm", *(f"php-fpm8.{minor}" for minor in range(5, -1, -1)), "php-fpm7.4"]
    return next((found for name in names if (found := shutil.which(name, path=_SBIN_PATH))), None)


def _version_of(label: str, argv: list[str] | None, source: Source, part: Part) -> str:
    if argv is None:
        part.notes.append(f"versions: no {label} program found")
        return f"{label}: not found"
    try:
        status, out, err = run(argv, source.deadline)
    except (OSError, TimeoutError) as exc:
        part.notes.append(f"versions: {' '.join(argv)}: {_why(exc)}")
        return f"{label}: {_why(exc)}"
    if status != 0:
        part.notes.append(f"versions: {' '.join(argv)} exited with status {status}")
    return f"{label} ({' '.join(argv)}):\n" + "".join(f"  {line}\n" for line in (err + out).splitlines())


def versions_part(source: Source) -> Part:
    part = Part()
    php = php_fpm_binary(source)
    lines = [
        f"badgateway-exporter: {__version__}",
        f"python: {sys.version.split()[0]} ({sys.executable})",
        f"platform: {platform.platform()}",
        _version_of("nginx", [source.config.nginx.binary, "-v"], source, part),
        _version_of("PHP-FPM", [php, "-v"] if php else None, source, part),
    ]
    try:
        with open("/etc/os-release", encoding="utf-8", errors="replace") as handle:
            lines.append("/etc/os-release:\n" + "".join(f"  {line}" for line in handle.readlines()[:50]))
    except OSError as exc:
        part.notes.append(f"versions: /etc/os-release: {exc.strerror or exc}")
    part.add_text(
        "versions.txt", "\n".join(lines) + "\n", "versions of the exporter, Python, nginx, PHP-FPM, the OS"
    )
    return part


def _why(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return f"{exc.filename or 'program'}: not found"
    if isinstance(exc, OSError):
        return f"{exc.filename or 'program'}: {exc.strerror or exc}"
    return str(exc)


PARTS: tuple[tuple[str, Callable[[Source], Part]], ...] = (
    ("diagnosis", diagnosis_part),
    ("logs", logs_part),
    ("nginx -T", nginx_part),
    ("PHP-FPM configuration", php_fpm_part),
    ("unit journals", journal_part),
    ("backend environment", backend_part),
    ("versions", versions_part),
)


def collect(source: Source, parts: Iterable[tuple[str, Callable[[Source], Part]]] = PARTS) -> Part:
    """Every part's files and notes; a part that raises is a note, never the end of the bundle."""
    collected = Part()
    for name, make in parts:
        try:
            part = make(source)
        except Exception as exc:  # one part's bug or surprise must not lose the other parts
            collected.notes.append(f"{name}: failed: {type(exc).__name__}: {exc}")
            continue
        collected.members += part.members
        collected.notes += part.notes
    return collected
