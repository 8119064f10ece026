"""Files and processes of the real stacks the tests build under a temporary root: every folder and
file readable by the stack's unprivileged workers, every server a child in its own session logging
below ``root/log``."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path


def readable_dir(path: Path, root: Path) -> Path:
    """``path`` made (with its parents), each folder up to ``root`` mode 0755: nginx's and PHP-FPM's
    workers run as www-data and must reach their sockets, pages and logs."""
    path.mkdir(parents=True, exist_ok=True)
    for folder in [path, *path.parents]:
        if folder == root.parent:
            break
        folder.chmod(0o755)
    return path


def readable_file(path: Path, text: str, root: Path) -> None:
    """``text`` written to ``path`` (mode 0644), its folders made by :func:`readable_dir`."""
    readable_dir(path.parent, root)
    path.write_text(text, encoding="utf-8")
    path.chmod(0o644)


def spawn_logged(argv: list[str], root: Path, log: str) -> subprocess.Popen[bytes]:
    """``argv`` started in ``root``, in a session of its own, its output appended to ``root/log/<log>``."""
    with (root / "log" / log).open("ab") as out:
        return subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=root,
            start_new_session=True,
        )  # fmt: skip


def remove_unless_kept(root: Path | str) -> None:
    """Remove a stack's temporary root, unless ``BADGATEWAY_KEEP_STACK`` asks to keep it (configs, logs)."""
    if not os.environ.get("BADGATEWAY_KEEP_STACK"):
        shutil.rmtree(root, ignore_errors=True)


PHP_FPM_BINARIES = ("php-fpm8.2", "php-fpm8.3", "php-fpm")


def require_stack_binaries(php_fpm: tuple[str, ...] = PHP_FPM_BINARIES) -> None:
    """Skip the test unless nginx and one of ``php_fpm`` are installed."""
    import pytest  # the harness also serves the benchmarks, outside pytest

    from exporter.demo.stack import StackError, find_binary

    try:
        find_binary("BADGATEWAY_NGINX", ["nginx"])
        find_binary("BADGATEWAY_PHP_FPM", list(php_fpm))
    except StackError as exc:
        pytest.skip(f"real stack unavailable: {exc}")
