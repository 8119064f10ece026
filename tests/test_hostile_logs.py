"""Hostile log input against the real exporter process: a glob of thousands of files under a small
descriptor limit. (Forged evidence through the request path, against a real nginx, is in
``tests/test_log_causes_stack.py``; truncation to a smaller size in ``tests/test_logs_tailer.py``.)"""

from __future__ import annotations

import concurrent.futures
import shutil
from pathlib import Path

import httpx
import pytest
import yaml
from harness import wait_until
from harness.exporters import parse
from harness.process import exporter_process

FILES = 3000
FD_LIMIT = 1024
LINE = (
    "2026/12/01 10:00:00 [error] 7#7: *{n} upstream timed out (110: Connection timed out) while reading response"
    ' header from upstream, client: 127.0.0.1, server: s, request: "GET / HTTP/1.1", upstream:'
    ' "fastcgi://unix:/run/php/site{n}.sock:", host: "s"\n'
)


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="prlimit (util-linux) not installed")
def test_a_glob_of_thousands_of_files_under_1024_descriptors_keeps_metrics_up(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    for n in range(FILES):
        (logs / f"site{n:04d}-error.log").write_text(LINE.format(n=n), encoding="ascii")
    config = tmp_path / "exporter.yml"
    config.write_text(yaml.safe_dump({
        "php_fpm": [{"socket": str(tmp_path / "missing.sock"), "timeout_seconds": 0.2}],
        "http": [], "nginx": {"test": False}, "units": {"enabled": False}, "discovery": {"enabled": False},
        "filesystems": [str(tmp_path)], "scrape_timeout_seconds": 2.0,
        "logs": {"nginx": [f"{logs}/*-error.log"], "php_fpm": [], "start": "beginning"},
    }), encoding="utf-8")  # fmt: skip
    prefix = ["prlimit", f"--nofile={FD_LIMIT}:{FD_LIMIT}", "--"]
    with exporter_process(["--config", str(config)], tmp_path / "exporter.log", prefix=prefix) as exporter:
        url = f"{exporter.url()}/metrics"

        def skipped() -> float:
            return parse(httpx.get(url, timeout=10).text).value("badgateway_log_files_skipped")

        wait_until(lambda: skipped() == FILES - 256, 20.0, "the files beyond logs.max_files to be counted")
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: httpx.get(url, timeout=10).status_code, range(40)))
        assert answers == [200] * 40
        scrape = parse(httpx.get(url, timeout=10).text)
        tailed = {dict(labels)["log"] for (name, labels) in scrape.samples
                  if name == "badgateway_nginx_error_log_lines_total"}  # fmt: skip
        assert len(tailed) == 256
        open_fds = len(list(Path(f"/proc/{exporter.pid}/fd").iterdir()))
        assert open_fds < 256 + 64, open_fds  # one per tailed file, and the process's own few
        text = exporter.log_text()
    assert "Traceback" not in text
    assert text.count("more than 256 files match the log patterns") == 1, text[-2000:]
