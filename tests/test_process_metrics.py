"""The exporter's own process/platform/GC families match prometheus_client's collectors, and the
``serve`` process loads neither prometheus_client nor OpenSSL until something needs them."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from harness.exporters import parse
from harness.process import exporter_process, offline_config_file
from prometheus_client import CollectorRegistry, gc_collector, platform_collector, process_collector

from exporter import process_metrics
from exporter.families import Metric


def _shape(families: Iterable[Any]) -> list[tuple[str, str, str, list[tuple[str, tuple[str, ...]]]]]:
    return [
        (f.name, f.type, f.documentation, [(s.name, tuple(sorted(s.labels))) for s in f.samples])
        for f in families
    ]


def _values(families: Iterable[Any]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): float(s.value) for f in families for s in f.samples}


def test_process_families_are_the_librarys() -> None:
    library = list(process_collector.ProcessCollector(registry=None).collect())
    ours: list[Metric] = process_metrics.process_families()
    assert _shape(ours) == _shape(library)
    mine, theirs = _values(ours), _values(library)
    assert mine.keys() == theirs.keys()
    for key in ("process_start_time_seconds", "process_max_fds"):
        assert mine[(key, ())] == theirs[(key, ())]
    assert mine[("process_resident_memory_bytes", ())] > 10 * 2**20
    assert 0 < theirs[("process_cpu_seconds_total", ())] - mine[("process_cpu_seconds_total", ())] + 0.5 < 1.5


def test_platform_and_gc_families_are_the_librarys() -> None:
    ours = list(process_metrics.own_families())
    own_names = [f.name for f in ours]
    platform = ours[own_names.index("python_info")]
    library_platform = list(platform_collector.PlatformCollector(registry=None).collect())
    assert _shape([platform]) == _shape(library_platform)
    assert _values([platform]) == _values(library_platform)
    gc_ours = [f for f in ours if f.name.startswith("python_gc_")]
    library_gc = list(gc_collector.GCCollector(registry=CollectorRegistry()).collect())
    assert _shape(gc_ours) == _shape(library_gc)
    for key, value in _values(library_gc).items():  # counters: ours read first, so never above
        assert 0 <= value - _values(gc_ours)[key] <= 1000


def _metrics(url: str, accept: str = "text/plain") -> tuple[str, str]:
    request = urllib.request.Request(f"{url}/metrics", headers={"Accept": accept})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return answer.headers["Content-Type"], answer.read().decode("utf-8")


def _mapped(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text(encoding="utf-8")


def test_serve_maps_no_openssl_until_an_https_probe_needs_it(tmp_path: Path) -> None:
    """Plain ``serve``: no libcrypto in the process. A scraper asking for an escaping written only
    by prometheus_client gets its bytes; an https target loads OpenSSL then, and is probed."""
    config = offline_config_file(tmp_path)
    with exporter_process(["--config", str(config)], tmp_path / "plain.log") as running:
        content_type, body = _metrics(running.url())
        assert content_type == "text/plain; version=0.0.4; charset=utf-8"
        assert "process_resident_memory_bytes " in body and "badgateway_build_info{" in body
        maps = _mapped(running.pid)
        assert "libcrypto" not in maps and "libssl" not in maps
        content_type, body = _metrics(running.url(), "text/plain;version=1.0.0;escaping=dots")
        assert content_type.endswith("escaping=dots") and "badgateway__build__info{" in body
    https = offline_config_file(tmp_path, http=[{"url": "https://127.0.0.1:1/health", "name": "tls"}])
    with exporter_process(["--config", str(https)], tmp_path / "https.log") as running:
        body = _metrics(running.url())[1]
        assert (
            parse(body).value("badgateway_http_up", target="tls") == 0
        )  # refused: nothing listens on port 1
        assert "libcrypto" in _mapped(running.pid)
