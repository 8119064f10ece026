"""The real exporter: the CLI as a child process, or the server in-process, on a free loopback port."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil
import yaml

from exporter.app import serving as app_serving
from exporter.config import Config, config_from_dict
from exporter.server import Limits
from exporter.webconfig import WebConfig
from harness import free_port, wait_until


@dataclass
class ExporterProcess:
    """A running exporter: its process, port and log."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def url(self, scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        try:
            return self.log.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            return f"<cannot read {self.log}: {exc}>"


def _listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@contextmanager
def exporter_process(
    args: Sequence[str],
    log: Path,
    *,
    prefix: Sequence[str] = (),
    python: str = sys.executable,
    env: dict[str, str] | None = None,
    start_timeout: float = 20.0,
) -> Iterator[ExporterProcess]:
    """Start ``python -m exporter ARGS --web.listen-address 127.0.0.1:PORT``; SIGTERM and reap it after."""
    port = free_port()
    argv = [*prefix, python, "-m", "exporter", *args, "--web.listen-address", f"127.0.0.1:{port}"]
    with log.open("wb") as handle:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    running = ExporterProcess(proc, port, log)
    try:
        wait_until(
            lambda: proc.poll() is not None or _listening(port),
            start_timeout,
            "the exporter to listen",
            detail=running.log_text,
        )
        if proc.poll() is not None:
            raise AssertionError(f"exporter exited with {proc.returncode}:\n{running.log_text()}")
        yield running
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def offline_settings(folder: Path, **overrides: object) -> dict[str, object]:
    """Settings whose checks all fail fast: nothing in them exists (tests about the server or the
    CLI, not the host), with ``overrides``."""
    return {
        "php_fpm": [{"socket": str(folder / "missing.sock"), "timeout_seconds": 0.2}],
        "http": [],
        "nginx": {"test": False},
        "units": {"enabled": False},
        "discovery": {"enabled": False},
        "filesystems": [str(folder)],
        "logs": {"nginx": [], "php_fpm": []},
        **overrides,
    }


def offline_config_file(folder: Path, **overrides: object) -> Path:
    """:func:`offline_settings` written to ``folder/config.yml``."""
    path = folder / "config.yml"
    path.write_text(yaml.safe_dump(offline_settings(folder, **overrides)), encoding="utf-8")
    return path


def offline_config(folder: Path) -> Config:
    """:func:`offline_settings` as a config, for the server in-process."""
    return config_from_dict(offline_settings(folder, scrape_timeout_seconds=2.0), "test")


@contextmanager
def sampling(pid: int, interval: float = 0.02) -> Iterator[dict[str, int]]:
    """Peak RSS (``rss``), open descriptors (``fds``) and threads (``threads``) of ``pid`` while the
    block runs, sampled every ``interval`` seconds until the block ends or the process does."""
    process = psutil.Process(pid)
    with process.oneshot():
        peak = {"rss": process.memory_info().rss, "fds": process.num_fds(), "threads": process.num_threads()}
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(interval):
            try:
                with process.oneshot():
                    peak["rss"] = max(peak["rss"], process.memory_info().rss)
                    peak["fds"] = max(peak["fds"], process.num_fds())
                    peak["threads"] = max(peak["threads"], process.num_threads())
            except psutil.Error:
                return

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        stop.set()
        thread.join(timeout=5)


def vm_hwm(pid: int) -> int:
    """The peak RSS (bytes) of ``pid`` so far, from the kernel (``VmHWM``); 0 once it has exited."""
    try:
        status = Path(f"/proc/{pid}/status").read_text(encoding="ascii")
    except OSError:
        return 0
    found = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    return int(found.group(1)) * 1024 if found else 0


@contextmanager
def serving(folder: Path, web_config: WebConfig | None, limits: Limits | None = None) -> Iterator[str]:
    """The real server on a free loopback port with ``web_config``; yields its https/http base URL."""
    with app_serving(
        offline_config(folder), web_config, listen_address="127.0.0.1:0", limits=limits
    ) as running:
        yield f"{running.server.scheme}://127.0.0.1:{running.port}"
