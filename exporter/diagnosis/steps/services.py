"""Step 1 of the runbook: are nginx, PHP-FPM and the backend running (``ps``, ``systemctl status``)?"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from exporter.causes import Cause, Facts, Finding, Verdict, backend_down, commands, nginx_down, php_fpm_down
from exporter.checks.processes import ServiceProcesses
from exporter.checks.units import ENABLED_FILE_STATES, UnitStatus
from exporter.config import Config, backend_sockets
from exporter.diagnosis.context import StepContext, human_bytes
from exporter.diagnosis.steps.php_fpm_config import invalid_config, php_fpm_start_fix
from exporter.discovery.units import default_php_fpm_unit


class _Role:
    def __init__(self, label: str, cause: Cause, fix: Callable[[str], tuple[str, ...]]) -> None:
        self.label, self.cause, self.fix = label, cause, fix


ROLES: dict[str, _Role] = {
    "nginx": _Role("nginx", Cause.NGINX_DOWN, nginx_down.start),
    "php_fpm": _Role("PHP-FPM", Cause.PHP_FPM_DOWN, php_fpm_down.start),
    "backend": _Role("The Python backend", Cause.BACKEND_DOWN, backend_down.start),
}


def _fix(ctx: StepContext, service: str, unit: str) -> tuple[str, ...]:
    """How to bring ``service`` back (PHP-FPM: first fix the file ``php-fpm -t`` names, if any).

    A unit that crashes as it starts (a restart loop, ``start-limit-hit``) does not need a start: its log
    says why it fails.
    """
    if service == "php_fpm" and invalid_config(ctx) is not None:
        return php_fpm_start_fix(ctx, unit)
    status = unit_status(ctx, service)
    if status is not None and (restart_loop(ctx, status) or status.result == "start-limit-hit"):
        return commands.read_why_then_restart(unit)
    return php_fpm_start_fix(ctx, unit) if service == "php_fpm" else ROLES[service].fix(unit)


def unit_status(ctx: StepContext, service: str) -> UnitStatus | None:
    """What systemd said this round about ``service``'s unit (None: not asked, or no answer)."""
    result = ctx.results.units
    name = configured_unit(ctx, service) if ctx.config.units.enabled else None
    if result is None or not result.available or name is None:
        return None
    return next((u for u in result.units if u.name == name), None)


def restart_loop(ctx: StepContext, unit: UnitStatus) -> bool:
    """systemd restarted the unit at least ``units.restart_loop_restarts`` times within the window."""
    return (unit.restarts_in_window or 0) >= ctx.config.units.restart_loop_restarts


def failure_detail(ctx: StepContext, unit: UnitStatus) -> list[str]:
    """How the unit last ended, when, and whether systemd keeps restarting it."""
    lines = []
    how = unit.how_it_ended()
    if how is not None:
        when = unit.inactive_enter_timestamp_seconds
        at = f" at {_utc(when)}" if when and unit.active_state in ("inactive", "failed") else ""
        lines.append(f"last exit: Result={how}{at}")
    if restart_loop(ctx, unit):
        minutes = ctx.config.units.restart_window_seconds / 60
        lines.append(
            f"restart loop: systemd restarted it {unit.restarts_in_window} times in the last {minutes:g} min"
            f" ({unit.n_restarts} since it was last started by hand)"
        )
    return lines


JOURNAL_SHOWN = 3


def journal_evidence(unit: UnitStatus) -> list[str]:
    """What the unit's own journal says of why: the exception, the backend's events, PHP-FPM's error."""
    journal = unit.journal
    if journal is None:
        return []
    if journal.error is not None:
        return [f"journal of {unit.name} not read: {journal.error}"]
    said: list[str] = []
    php = journal.php_fpm_error
    if php is not None:
        said.append(php[0])
    events = [line for event, line in journal.events if event != "exception"]
    said += list(dict.fromkeys(events))[-JOURNAL_SHOWN:]
    if journal.exception is not None:
        said.append(journal.exception)
    if not said:
        said = [entry.message for entry in journal.lines[-JOURNAL_SHOWN:] if entry.message.strip()]
    return [f"journal: {line.strip()}" for line in said]


def _utc(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def processes(ctx: StepContext, earlier: Sequence[Finding]) -> list[Finding]:
    """``ps aux | grep -E 'php-fpm|uvicorn|nginx'``."""
    del earlier
    procs = ctx.results.processes
    if procs is None:
        return [ctx.not_checked("processes", "Processes of nginx, PHP-FPM and the backend")]
    return [_process_finding(ctx, service, procs.of(service)) for service in ROLES]


def _process_finding(ctx: StepContext, service: str, found: ServiceProcesses | None) -> Finding:
    role, unit = ROLES[service], ctx.units[service]
    step, title = f"process:{service}", f"{role.label} is running"
    pattern = getattr(ctx.config.processes, service)
    if found is not None and found.count > 0:
        evidence = [f"{found.count} process(es), {human_bytes(found.resident_memory_bytes)} resident"]
        evidence += [f"main: {command}" for command in found.main_commands]
        if found.users:
            evidence.append(f"running as: {', '.join(found.users)}")
        return Finding(step, title, Verdict.OK, tuple(evidence))
    missing = missing_process(pattern)
    if service == "backend" and not backend_expected(ctx.config):
        return Finding(step, title, Verdict.SKIP, (f"{missing}: and none is expected (nginx passes nothing to a"
                                                   " backend, no backend probe or unit is configured)",))  # fmt: skip
    if ctx.answering[service]:
        return Finding(
            step, f"{role.label} answers, but no process of it is seen", Verdict.WARN,
            (f"{missing}, yet the service answers its probe: set processes.{service} in the configuration",),
        )  # fmt: skip
    return Finding(
        step,
        f"{role.label} is not running",
        Verdict.FAIL,
        (missing,),
        role.cause,
        _fix(ctx, service, unit),
        Facts(unit=unit),
    )


def backend_expected(config: Config) -> bool:
    """Whether this host has a backend at all: a backend probe (configured or found in nginx's
    ``proxy_pass``), its unit, or its unix socket. A PHP-only site has none: no backend process is not a 502."""
    return (any(t.role == "backend" for t in config.http) or bool(config.units.backend)
            or bool(backend_sockets(config)))  # fmt: skip


_KNOWN_PATTERNS = {
    r"^nginx: master process": "no nginx master process",
    r"^php-fpm: master process": "no php-fpm master process",
    r"\b(uvicorn|gunicorn|hypercorn)\b": "no uvicorn, gunicorn or hypercorn process",
}


def missing_process(pattern: str) -> str:
    """What ``ps`` showed, as a person says it (the default patterns by name, others as written)."""
    known = _KNOWN_PATTERNS.get(pattern)
    if known is not None:
        return known
    shown = _ESCAPE.sub(r"\1", pattern).removeprefix("^")  # as written, not as a regular expression
    return (
        f"no process whose command line starts with {shown}"
        if pattern.startswith("^")
        else (f"no process whose command line contains {shown}")
    )


_ESCAPE = re.compile(r"\\([^A-Za-z0-9])")


UNITS_TITLE = "systemctl status of nginx, PHP-FPM and the backend"


def units(ctx: StepContext, earlier: Sequence[Finding]) -> list[Finding]:
    """``systemctl status``: active, and enabled at boot."""
    del earlier
    if not ctx.config.units.enabled:
        return []
    result = ctx.results.units
    if result is None:
        return [ctx.not_checked("units", UNITS_TITLE)]
    if not result.available:
        return [
            Finding("units", UNITS_TITLE, Verdict.SKIP,
                    (f"systemd not reachable ({result.error}): the process view decides",))
        ]  # fmt: skip
    by_name = {u.name: u for u in result.units}
    findings = []
    for service in ROLES:
        name = configured_unit(ctx, service)
        unit = by_name.get(name) if name is not None else None
        if name is not None and unit is not None:
            findings.append(_unit_finding(ctx, service, name, unit))
    return findings


def configured_unit(ctx: StepContext, service: str) -> str | None:
    """The unit name the units check asked systemd about for ``service``."""
    name: str | None = getattr(ctx.config.units, service)
    return name or (default_php_fpm_unit() if service == "php_fpm" else None)


def _unit_finding(ctx: StepContext, service: str, name: str, unit: UnitStatus) -> Finding:
    role, short = ROLES[service], ctx.units[service]
    step, title = f"unit:{name}", f"{role.label} unit {name} is active and enabled"
    state = f"{unit.active_state} ({unit.sub_state}), unit file {unit.unit_file_state or 'none'}"
    if unit.n_restarts:
        state += f", restarted {unit.n_restarts} times"
    status = f"systemctl status {short}: {state}"
    detail = failure_detail(ctx, unit) + journal_evidence(unit)
    if unit.load_state != "loaded":
        return Finding(step, title, Verdict.WARN, (f"{name}: LoadState={unit.load_state}",),
                       fix=_unit_not_loaded_hint(service, name))  # fmt: skip
    if unit.active_state in ("inactive", "failed"):
        if ctx.answering[service]:
            return Finding(
                step, title, Verdict.WARN, (state, "yet it answers its probe: started outside systemd?")
            )
        how = unit.how_it_ended()
        failed = f"{role.label} unit {name} is {unit.active_state}" + (f" ({how})" if how else "")
        return Finding(step, failed, Verdict.FAIL, (status, *detail),
                       role.cause, _fix(ctx, service, short), Facts(unit=short))  # fmt: skip
    if restart_loop(ctx, unit):
        looping = f"{role.label} unit {name} is in a restart loop"
        if ctx.answering[service]:
            return Finding(step, looping, Verdict.WARN, (status, *detail))
        return Finding(step, looping, Verdict.FAIL, (status, *detail),
                       role.cause, _fix(ctx, service, short), Facts(unit=short))  # fmt: skip
    if unit.active_state != "active":
        return Finding(step, title, Verdict.WARN, (status, *detail))
    if unit.unit_file_state not in ENABLED_FILE_STATES:
        return Finding(
            step, f"{role.label} unit {name} runs but is not enabled at boot", Verdict.WARN,
            (status, "running now, but it will not start after a reboot"),
            fix=(f"sudo systemctl enable {short}",), latent=True,
        )  # fmt: skip
    return Finding(step, title, Verdict.OK, (status,))


def _unit_not_loaded_hint(service: str, name: str) -> tuple[str, ...]:
    if service == "php_fpm":
        installed = default_php_fpm_unit()
        if installed != name:
            return (f"this host has {installed}: set units.php_fpm: {installed} (and check the socket path)",)
    return ("systemctl list-units --all --type=service | grep -E 'php|nginx|backend'",)
