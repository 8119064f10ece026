"""The landing page ``/`` in a real headless Chromium, served by the real exporter on a real stack.

The exporter serves the stack behind basic auth (the same web config as ``/metrics``); Chromium
loads ``/`` with the credentials in the URL, dumps the DOM it built and takes a screenshot, once
on the healthy stack and once with PHP-FPM really stopped. ``/`` must show the last round and never
start one: the backend's access log counts every probe, and ``/`` answers while a slow round is
still in flight.

Set ``BADGATEWAY_LANDING_SCREENSHOTS=docs/images`` to keep the two screenshots
(``landing-healthy.png``, ``landing-php-fpm-down.png``) for the README.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import bcrypt
import httpx
import pytest
from conftest import StackFactory
from harness.exporters import Scrape, parse, stack_config

from exporter.app import Serving, serving
from exporter.demo.stack import Stack, wait_until
from exporter.webconfig import web_config_from_dict

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (Debian package chromium; scripts/setup installs it)"
)

USER = "prometheus"
PASSWORD = "landing page: s3cret/&?"
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
AUTH = (USER, PASSWORD)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
WINDOW = (1280, 1600)


class Chromium:
    """Debian's chromium, headless, each run with a new empty profile and no background traffic."""

    def __init__(self, binary: str, folder: Path) -> None:
        self.binary = binary
        self.folder = folder
        self.runs = 0

    def _run(self, url: str, *args: str) -> bytes:
        self.runs += 1
        profile = self.folder / f"profile-{self.runs}"
        profile.mkdir()
        argv = [
            self.binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--hide-scrollbars",
            *args,
            url,
        ]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: the browser and its helpers
            proc.communicate()
            raise
        assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
        return out

    def dom(self, url: str) -> str:
        return self._run(url, "--dump-dom").decode()

    def screenshot(self, url: str, path: Path) -> Path:
        width, height = WINDOW
        self._run(url, f"--screenshot={path}", f"--window-size={width},{height}")
        return path


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and data[12:16] == b"IHDR", f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def backend_health_hits(stack: Stack) -> int:
    """``GET /health`` lines in the uvicorn backend's access log: one per backend probe."""
    return stack.backend_log.read_bytes().count(b'"GET /health HTTP/1.1"')


def scrape(base: str) -> Scrape:
    response = httpx.get(f"{base}/metrics", auth=AUTH, timeout=30)
    assert response.status_code == 200, response.text
    return parse(response.text)


def keep(path: Path) -> None:
    folder = os.environ.get("BADGATEWAY_LANDING_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(folder) / path.name)


@contextmanager
def served(stack: Stack) -> Iterator[tuple[str, str, Serving]]:
    """The exporter on the stack behind basic auth: its base URL, ``/`` with the credentials, and it."""
    web = web_config_from_dict({"basic_auth_users": {USER: HASH}}, "test web config")
    with serving(stack_config(stack), web, listen_address="127.0.0.1:0") as running:
        host = f"127.0.0.1:{running.port}"
        yield f"http://{host}", f"http://{quote(USER, safe='')}:{quote(PASSWORD, safe='')}@{host}/", running


def test_landing_page_in_chromium(make_stack: StackFactory, tmp_path: Path) -> None:
    assert CHROMIUM is not None
    browser = Chromium(CHROMIUM, tmp_path)
    stack = make_stack()
    with served(stack) as (base, page, running):
        # behind the same basic auth as /metrics
        assert httpx.get(f"{base}/", timeout=5).status_code == 401
        assert httpx.get(f"{base}/", auth=(USER, "wrong"), timeout=5).status_code == 401
        assert httpx.get(f"{base}/metrics", timeout=5).status_code == 401
        denied = browser.dom(page.replace(f"{quote(USER, safe='')}:", "nobody:"))
        assert "badgateway-exporter" not in denied  # headless Chromium shows nothing for a refused login

        # no round yet: it says so, links /metrics, and asking for / probes nothing
        hits = backend_health_hits(stack)
        empty = browser.dom(page)
        assert 'data-verdict="none"' in empty and "No round of checks has run yet" in empty
        assert 'href="metrics"' in empty and 'href="-/healthy"' in empty
        for _ in range(5):
            assert httpx.get(f"{base}/", auth=AUTH, timeout=5).status_code == 200
        assert backend_health_hits(stack) == hits, "a request for / probed the backend"

        # healthy: one scrape, then the browser
        assert scrape(base).causes() == set()
        healthy = browser.dom(page)
        assert 'data-verdict="healthy"' in healthy
        assert "No cause of 502/504 found" in healthy
        assert "data-cause=" not in healthy and "php_fpm_down" not in healthy
        assert 'id="now"' not in healthy and 'data-verdict="fail"' not in healthy
        assert "Every runbook step" in healthy and 'data-verdict="ok"' in healthy
        assert "Last round:" in healthy and " s ago" in healthy
        assert '<meta http-equiv="refresh" content="10">' in healthy
        shot = browser.screenshot(page, tmp_path / "landing-healthy.png")
        assert png_size(shot) == WINDOW and shot.stat().st_size > 10_000
        keep(shot)

        # PHP-FPM really stopped: the next scrape's round names it, and so does the page
        stack.stop_php_fpm()
        assert "php_fpm_down" in scrape(base).causes()
        down = browser.dom(page)
        assert 'data-verdict="now"' in down
        assert 'data-cause="php_fpm_down"' in down
        assert "PHP-FPM is not running" in down and "docs/runbooks/PhpFpmDown.md" in down
        # No systemd on this host (no bus, no /run/systemd/system): the fix starts it the way it is run here.
        start = re.compile(r"sudo (service \S+ start|php-fpm\S* --fpm-config \S+)")
        assert start.search(down) and "sudo systemctl" not in down
        now_section = down[down.index('id="now"') : down.index('id="steps"')]
        assert "php_fpm_down" in now_section and start.search(now_section)
        assert down.index('id="now"') < down.index('id="steps"')
        shot = browser.screenshot(page, tmp_path / "landing-php-fpm-down.png")
        assert png_size(shot) == WINDOW and shot.stat().st_size > 10_000
        keep(shot)

        # / answers at once while a slow round is in flight, and starts none
        stack.set_backend_delay(5.0)
        finished = threading.Event()

        def slow_scrape() -> None:
            scrape(base)
            finished.set()

        slow = threading.Thread(target=slow_scrape, daemon=True)
        slow.start()
        prober = running.exporter.prober
        wait_until(
            lambda: prober._inflight is not None and not prober._inflight.done(),
            10,
            "the slow round to start",
        )
        hits = backend_health_hits(stack)
        started = time.monotonic()
        answer = httpx.get(f"{base}/", auth=AUTH, timeout=5)
        seconds = time.monotonic() - started
        assert answer.status_code == 200 and 'data-cause="php_fpm_down"' in answer.text
        assert answer.headers["content-type"] == "text/html; charset=utf-8"
        assert not finished.is_set(), "the round finished before / answered: the test proves nothing"
        assert seconds < 0.5, f"/ took {seconds:.3f}s while a round was in flight"
        slow.join(timeout=30)
        assert finished.is_set()
        stack.set_backend_delay(0.0)
        assert backend_health_hits(stack) <= hits + 1  # the one slow probe in flight, none from /
