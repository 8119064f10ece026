"""``badgateway-exporter fleet``: bad usage and an unreachable or empty Prometheus are one line and exit 2.

The views of a fleet with causes (exit 1), a healthy one (exit 0) and one with an exporter down (exit 3)
are checked on the real fleet of tests/test_fleet.py; here a real Prometheus scrapes one real exporter
and one closed port.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import free_port, wait_until
from harness.alerting import Prometheus, running_prometheus
from harness.process import exporter_process


def fleet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exporter", "fleet", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "the following arguments are required: --prometheus"),
        (["--prometheus", "prometheus:9090"], "expected an http:// or https:// URL"),
        (["--prometheus", "http://[::1"], "not a URL"),
        (["--prometheus", "http://"], "expected an http:// or https:// URL"),
        (["--prometheus", "http://127.0.0.1:1", "--format", "yaml"], "invalid choice"),
        (["--prometheus", "http://127.0.0.1:1", "--timeout", "0"], "must be a number of seconds"),
        (["--prometheus", "http://127.0.0.1:1", "--lookback", "6 hours"], "expected a duration"),
        (["--prometheus", "http://127.0.0.1:1", "--header", "X-Scope-OrgID"], "expected NAME:VALUE"),
    ],
)
def test_bad_usage_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    done = fleet(*args)
    assert done.returncode == 2 and done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1 and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_unreachable_prometheus_is_one_line_and_exit_2() -> None:
    done = fleet("--prometheus", f"http://127.0.0.1:{free_port()}", "--timeout", "2")
    assert done.returncode == 2, done.stdout + done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "cannot reach Prometheus" in done.stderr


def test_a_silent_peer_meets_the_deadline() -> None:
    """A peer that accepts and never answers: the command ends at its --timeout."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        done = fleet("--prometheus", f"http://127.0.0.1:{server.getsockname()[1]}", "--timeout", "1")
    assert done.returncode == 2 and "no answer within the deadline" in done.stderr, done.stderr


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[Prometheus, str, str]]:
    """A real Prometheus scraping one real exporter (on this host, so it may name causes) and one closed
    port (its ``up`` is 0: an exporter down)."""
    config = tmp_path / "exporter.yml"
    config.write_text(
        "units: {enabled: false}\nnginx: {test: false}\nphp_fpm: []\nhttp: []\n", encoding="utf-8"
    )
    with exporter_process(["--config", str(config)], tmp_path / "exporter.log") as exporter:
        live = f"127.0.0.1:{exporter.port}"
        dead = f"127.0.0.1:{free_port()}"
        with running_prometheus(tmp_path / "prometheus", [live, dead]) as prom:
            wait_until(
                lambda: (
                    len(prom.query('up{job="badgateway"}')) == 2 and bool(prom.query("badgateway_build_info"))
                ),
                60,
                "Prometheus' first scrapes",
                interval=0.5,
                detail=prom.log_tail,
            )
            yield prom, live, dead


def test_an_exporter_down_is_listed_and_a_wrong_job_is_exit_2(
    prometheus: tuple[Prometheus, str, str],
) -> None:
    prom, live, dead = prometheus
    done = fleet("--prometheus", prom.url, "--format", "json")
    assert done.returncode in (1, 3), done.stdout + done.stderr
    document = json.loads(done.stdout)
    assert document["hosts"] == 2
    assert [d["host"]["instance"] for d in document["exporters_down"]] == [dead]
    assert all(c["host"]["instance"] == live for c in document["causes"])
    text = fleet("--prometheus", prom.url)
    assert "Exporter down" in text.stdout and dead in text.stdout, text.stdout
    wrong = fleet("--prometheus", prom.url, "--job", "node")
    assert wrong.returncode == 2 and "holds no up or badgateway_build_info series" in wrong.stderr, (
        wrong.stderr
    )
