"""What every runbook step reads: one round's results, the configuration, and facts derived once."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from functools import cached_property

from exporter.causes import Finding, Verdict
from exporter.causes.commands import Host, Manager, Service, unit_name
from exporter.checks.php_fpm_config import php_fpm_binary, tested_configs
from exporter.checks.sockets import SocketResult
from exporter.config import Config
from exporter.discovery.units import default_php_fpm_unit
from exporter.rounds import CollectorOutcome, RoundResults

SERVICES: tuple[str, ...] = ("nginx", "php_fpm", "backend")
UNKNOWN_BACKEND_UNIT = "<the backend's unit: set units.backend>"


@dataclass(frozen=True)
class StepContext:
    """One round as the steps see it."""

    results: RoundResults
    config: Config
    failed: dict[str, CollectorOutcome]
    units: dict[str, str]
    """Service -> the unit a person types (``php8.2-fpm``)."""
    answering: dict[str, bool]
    """Service -> whether its probe got any answer this round."""
    running: dict[str, bool | None] = field(default_factory=dict)
    """Service -> whether its processes run (None: the process check did not run)."""
    host: Host = field(default_factory=Host)
    """How the services are really run here (systemd, init scripts, plain processes): the fixes follow it."""

    @classmethod
    def of(cls, results: RoundResults, config: Config) -> StepContext:
        units = {
            "nginx": unit_name(config.units.nginx),
            "php_fpm": unit_name(config.units.php_fpm or default_php_fpm_unit()),
            "backend": unit_name(config.units.backend or UNKNOWN_BACKEND_UNIT),
        }
        answering = {
            "nginx": any(p.status_code is not None for p in results.http if p.role == "front"),
            "php_fpm": any(p.up for p in results.fastcgi),
            "backend": any(p.status_code is not None for p in results.http if p.role == "backend"),
        }
        procs = results.processes
        running: dict[str, bool | None] = {}
        for service in SERVICES:
            found = procs.of(service) if procs is not None else None
            running[service] = None if procs is None else (found is not None and found.count > 0)
        failed = {o.collector: o for o in results.collectors if not o.success}
        return cls(results, config, failed, units, answering, running, host_of(results, config, units))

    @cached_property
    def sockets_by_path(self) -> dict[str, SocketResult]:
        """The socket results by path (each FastCGI step looks its socket up: a scan each was
        quadratic in the pools)."""
        return {s.path: s for s in self.results.sockets}

    def not_checked(self, step: str, title: str) -> Finding:
        """A step whose collector did not deliver this round."""
        outcome = self.failed.get(step.split(":", maxsplit=1)[0])
        reason = (outcome.error if outcome else None) or "check did not run"
        return Finding(step, title, Verdict.SKIP, (f"not checked: {reason}",))


SYSTEMD_RUNTIME = "/run/systemd/system"
"""Exists when systemd is the init system (sd_booted)."""
INIT_SCRIPTS = "/etc/init.d"


def host_of(results: RoundResults, config: Config, units: dict[str, str]) -> Host:
    """systemd, unless the exporter knows this host runs none: the units check found no systemd on the bus
    and ``/run/systemd/system`` does not exist. Then each service by its init script (``service``) when it
    has one, else as a plain process with its pid file."""
    override = config.units.manager
    known_absent = (
        results.units is not None and not results.units.available and not os.path.isdir(SYSTEMD_RUNTIME)
    )
    if override == "systemd" or (override == "auto" and not known_absent):
        return Host()
    services = []
    for service in SERVICES:
        name = units[service]
        manager: Manager
        if override == "auto":
            manager = "sysv" if os.path.isfile(os.path.join(INIT_SCRIPTS, name)) else "process"
        else:
            manager = override
        services.append(_service(config, service, name, manager))
    return Host(tuple(services), default="sysv")


def _service(config: Config, service: str, name: str, manager: Manager) -> Service:
    pid_file: str | None = getattr(config.pid_files, service)
    logs = {"nginx": config.logs.nginx, "php_fpm": config.logs.php_fpm, "backend": config.logs.app}[service]
    log = next((path for pattern in logs for path in sorted(glob.glob(pattern))), logs[0] if logs else None)
    start = None
    if service == "nginx":
        start = "sudo nginx -t && sudo nginx" + (f" -c {config.nginx.config}" if config.nginx.config else "")
        return Service(name, manager, pid_file, start, log, stop_signal="QUIT", reload_signal="HUP")
    if service == "php_fpm":
        configs = tested_configs(config)
        binary = os.path.basename(php_fpm_binary(config))
        start = f"sudo {binary}" + (f" --fpm-config {configs[0]}" if configs else "")
        return Service(name, manager, pid_file, start, log, stop_signal="QUIT", reload_signal="USR2")
    return Service(name, manager, pid_file, None, log)


def human_bytes(value: float) -> str:
    """``1536`` -> ``1.5 KiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    return f"{value:.1f} TiB"
