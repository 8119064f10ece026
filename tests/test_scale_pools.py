"""100 PHP-FPM pools under one real master, nginx with 100 server blocks: discovery finds them all,
``diagnose`` probes every one, a broken site is named alone, and hung pools do not hide the others."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness.exporters import diagnose_json, diagnosed_causes, running_exporter
from harness.pools import PoolFarm, running_farm

from exporter.checks.fastcgi import FastCGIPoolsCheck
from exporter.config import PhpFpmPool
from exporter.deadline import Deadline
from exporter.discovery.merge import MAX_FRONT_TARGETS, load_config

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: nginx/php-fpm workers run as www-data"),
    pytest.mark.timeout(240),
]
POOLS = 100


@pytest.fixture(scope="module")
def farm() -> Iterator[PoolFarm]:
    with running_farm(POOLS, "badgateway-pools-") as pools:
        yield pools


def config_file(farm: PoolFarm) -> Path:
    path = farm.root / "exporter.yml"
    path.write_text(yaml.safe_dump(farm.exporter_settings()), encoding="utf-8")
    return path


def fastcgi_findings(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        f["step"].removeprefix("fastcgi:"): f
        for f in document["findings"]
        if f["step"].startswith("fastcgi:")
    }


def test_discovery_finds_every_pool_and_every_site(farm: PoolFarm) -> None:
    config = load_config(str(config_file(farm)))
    sockets = {str(farm.socket(name)) for name in farm.names}
    assert {pool.socket for pool in config.php_fpm} == sockets
    assert all(p.ping_path == "/ping" and p.status_path == "/status" for p in config.php_fpm)
    discovered = config.discovered
    assert discovered is not None
    for name in farm.names:
        pool = discovered.pool_for(str(farm.socket(name)))
        assert pool is not None and pool.name == name and pool.file == str(farm.pool_file(name))
        passes = discovered.fastcgi_passes(str(farm.socket(name)))
        assert [p.origin.file for p in passes] == [str(farm.site(name))]
    fronts = [t for t in config.http if t.role == "front"]
    assert len(fronts) == MAX_FRONT_TARGETS
    assert [t.url for t in config.http if t.role == "backend"] == [
        f"http://127.0.0.1:{farm.backend_port}/health"
    ]


def test_diagnose_probes_every_pool_and_names_the_one_broken_site(farm: PoolFarm) -> None:
    path = config_file(farm)
    code, document = diagnose_json(path)
    assert code == 0, document["causes"]
    assert document["causes"] == []
    probes = fastcgi_findings(document)
    assert set(probes) == {str(farm.socket(name)) for name in farm.names}
    for name in farm.names:
        finding = probes[str(farm.socket(name))]
        assert finding["verdict"] == "ok"
        assert any(line.startswith(f"pool {name} (static): ") for line in finding["evidence"]), finding

    broken = farm.run_php / "p042-typo.sock"
    farm.write_site("p042", broken)
    farm.reload_nginx()
    try:
        code, document = diagnose_json(path)
    finally:
        farm.write_site("p042", farm.socket("p042"))
        farm.reload_nginx()
    assert code == 1
    assert diagnosed_causes(document) == {"socket_path_mismatch"}
    failing = {f["step"]: f["cause"] for f in document["findings"] if f["verdict"] == "fail"}
    assert failing == {f"socket:{broken}": "socket_path_mismatch", f"fastcgi:{broken}": None}
    probes = fastcgi_findings(document)
    healthy = [s for s, f in probes.items() if f["verdict"] == "ok"]
    assert sorted(healthy) == sorted(str(farm.socket(n)) for n in farm.names)  # p042's pool itself is fine
    (cause,) = document["causes"]
    line = farm.line_of(farm.site("p042"), "fastcgi_pass")
    assert f"in {farm.site('p042')} line {line}: change `fastcgi_pass unix:{broken};`" in "\n".join(
        cause["fix"]
    )


def test_hung_pools_time_out_and_every_other_pool_is_still_exported(farm: PoolFarm) -> None:
    hung = farm.names[::10]
    config = load_config(str(config_file(farm)))
    with running_exporter(config) as exporter:
        assert exporter.scrape().value("badgateway_collector_success", collector="fastcgi") == 1
        farm.pause_pools(hung)
        try:
            scrape = exporter.scrape(scrape_timeout=2.0)
        finally:
            farm.resume_pools()
    for name in farm.names:
        sock = str(farm.socket(name))
        if name in hung:
            assert scrape.value("badgateway_fastcgi_up", socket=sock) == 0, name
            assert scrape.value("badgateway_fastcgi_probe_failure", socket=sock, reason="timeout") == 1
        else:
            assert scrape.value("badgateway_fastcgi_up", socket=sock) == 1, name
            assert scrape.value("badgateway_phpfpm_total_processes", socket=sock, pool=name) == 1
    # The probes stopped at their own deadline: the collector answered, with every pool.
    assert scrape.value("badgateway_collector_success", collector="fastcgi") == 1


def test_more_pools_than_connections_in_flight_are_all_probed(farm: PoolFarm) -> None:
    """Three entries per socket (300 > the 256 connections the loop keeps open): every one answered,
    each pool's scoreboard still right (one worker, the status request its only busy one)."""
    pools = [PhpFpmPool(socket=str(farm.socket(name))) for name in farm.names] * 3
    results = FastCGIPoolsCheck(pools).run(Deadline.after(10.0))
    assert [r.socket for r in results] == [p.socket for p in pools]
    assert all(r.up and r.failure is None for r in results)
    for result in results:
        assert result.pool_status is not None
        assert (result.pool_status.total_processes, result.pool_status.active_processes) == (1, 1)
