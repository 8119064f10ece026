"""Run the real exporter against a stack: in-process over real HTTP, or as the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from exporter.app import Serving, serving
from exporter.config import Config, config_from_dict
from exporter.demo.stack import Stack
from exporter.logs.tailer import LogWatcher

Labels = frozenset[tuple[str, str]]


@dataclass(frozen=True)
class Scrape:
    """One /metrics answer: its text, its samples, and how long it took."""

    text: str
    samples: dict[tuple[str, Labels], float]
    seconds: float

    def value(self, name: str, **labels: str) -> float:
        """The value of the one sample of ``name`` whose labels include ``labels``."""
        found = [v for (n, ls), v in self.samples.items() if n == name and set(labels.items()) <= ls]
        assert len(found) == 1, f"{name}{labels}: {len(found)} samples in\n{self.text}"
        return found[0]

    def has(self, name: str) -> bool:
        return any(n == name for n, _ in self.samples)

    def causes(self) -> set[str]:
        return {
            dict(ls)["cause"] for (n, ls), v in self.samples.items() if n == "badgateway_cause" and v == 1
        }


def parse(text: str, seconds: float = 0.0) -> Scrape:
    samples: dict[tuple[str, Labels], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return Scrape(text=text, samples=samples, seconds=seconds)


def stack_config(stack: Stack, **overrides: object) -> Config:
    settings = stack.exporter_config()
    settings.update(overrides)
    return config_from_dict(settings, "test")


def write_config(stack: Stack, **overrides: object) -> Path:
    settings = stack.exporter_config()
    settings.update(overrides)
    path = stack.root / "exporter-test.yml"
    path.write_text(yaml.safe_dump(settings), encoding="utf-8")
    return path


class RunningExporter:
    """An exporter served on a free loopback port through the app's own lifecycle (:func:`serving`)."""

    def __init__(self, running: Serving) -> None:
        self.exporter = running.exporter
        self.server = running.server
        self.url = f"http://127.0.0.1:{running.port}"

    @property
    def watcher(self) -> LogWatcher:
        assert self.exporter.watcher is not None
        return self.exporter.watcher

    def scrape(self, scrape_timeout: float | None = None, client_timeout: float = 30.0) -> Scrape:
        headers = {"X-Prometheus-Scrape-Timeout-Seconds": str(scrape_timeout)} if scrape_timeout else {}
        response = httpx.get(f"{self.url}/metrics", headers=headers, timeout=client_timeout)
        assert response.status_code == 200, response.text
        return parse(response.text, response.elapsed.total_seconds())


@contextmanager
def running_exporter(config: Config) -> Iterator[RunningExporter]:
    with serving(config, listen_address="127.0.0.1:0") as running:
        yield RunningExporter(running)


def cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run the real ``badgateway-exporter`` command line."""
    return subprocess.run(
        [sys.executable, "-m", "exporter", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def diagnose_json(config_path: Path, timeout: float = 60.0) -> tuple[int, dict[str, Any]]:
    """``diagnose --format json``: exit code and the parsed document."""
    done = cli("--config", str(config_path), "diagnose", "--format", "json", timeout=timeout)
    assert done.returncode in (0, 1, 3), done.stderr
    document = json.loads(done.stdout)
    assert isinstance(document, dict)
    return done.returncode, document


def diagnosed_causes(document: dict[str, Any]) -> set[str]:
    causes = document["causes"]
    assert isinstance(causes, list)
    return {c["cause"] for c in causes}
