"""Shell commands the fixes are made of, in one place so every cause says them the same way."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal


def unit_name(unit: str) -> str:
    """``php8.2-fpm.service`` -> ``php8.2-fpm``: how a person types it."""
    return unit.removesuffix(".service")


def start(unit: str) -> str:
    return f"sudo systemctl start {unit_name(unit)}"


def restart(unit: str) -> str:
    return f"sudo systemctl restart {unit_name(unit)}"


def reload(unit: str) -> str:
    return f"sudo systemctl reload {unit_name(unit)}"


def enable(unit: str) -> str:
    return f"sudo systemctl enable {unit_name(unit)}"


def journal(unit: str) -> str:
    return f"sudo journalctl -u {unit_name(unit)} -n 50 --no-pager"


def start_enable_journal(unit: str) -> tuple[str, ...]:
    """Bring a stopped service back, keep it across reboots, and read why it stopped."""
    return start(unit), enable(unit), journal(unit)


NGINX_TEST_AND_RELOAD = "then: sudo nginx -t && sudo systemctl reload nginx"


def php_fpm_test(binary: str) -> str:
    """``sudo php-fpm8.2 -t``: how a person checks PHP-FPM's configuration (the binary by its name)."""
    return f"sudo {binary.rsplit('/', 1)[-1] or 'php-fpm'} -t"


def read_why_then_restart(unit: str) -> tuple[str, ...]:
    """A service that crashes as it starts (a restart loop, ``start-limit-hit``): starting it again fails
    the same way; its own log says why."""
    return journal(unit), f"fix what it says, then: {reset_failed(unit)} && {restart(unit)}"


def reset_failed(unit: str) -> str:
    return f"sudo systemctl reset-failed {unit_name(unit)}"


# -- fixes that fit the host: systemd, SysV init scripts (``service``), or a plain process ---------------

Manager = Literal["systemd", "sysv", "process"]
_SYSTEMCTL = re.compile(r"sudo systemctl (start|stop|restart|reload|enable|reset-failed) ([\w@.:-]+)")
_RESET_AND = re.compile(r"sudo systemctl reset-failed ([\w@.:-]+) && ")
_JOURNAL = re.compile(r"sudo journalctl -u ([\w@.:-]+) -n (\d+) --no-pager")


@dataclass(frozen=True)
class Service:
    """How one service is really run on this host, for the commands that start, stop and read it."""

    unit: str
    """The name a person types (``php8.2-fpm``): the unit, the init script or the program."""
    manager: Manager
    pid_file: str | None = None
    start: str | None = None
    """The command that starts it by hand (``process``), e.g. ``sudo php-fpm8.2 --fpm-config /etc/...``."""
    log: str | None = None
    """Its own log, read where there is no journal."""
    stop_signal: str = "TERM"
    reload_signal: str = "HUP"


@dataclass(frozen=True)
class Host:
    """How services are run here. The default (no service listed) is systemd: every fix as written."""

    services: tuple[Service, ...] = ()
    default: Manager = "systemd"
    """For a unit not listed (the database's, say): ``sysv`` on a host known to run no systemd."""

    def of(self, unit: str) -> Service:
        name = unit_name(unit)
        found = next((s for s in self.services if s.unit == name), None)
        return found if found is not None else Service(name, self.default)


def on_host(fix: tuple[str, ...], host: Host) -> tuple[str, ...]:
    """``fix`` with its ``systemctl`` and ``journalctl`` commands as this host runs its services."""
    if not host.services and host.default == "systemd":
        return fix
    return tuple(_on_host(line, host) for line in fix)


def _on_host(line: str, host: Host) -> str:
    line = _RESET_AND.sub(lambda m: "" if host.of(m.group(1)).manager != "systemd" else m.group(0), line)
    line = _SYSTEMCTL.sub(lambda m: _control(host.of(m.group(2)), m.group(1)) or m.group(0), line)
    return _JOURNAL.sub(lambda m: _read_log(host.of(m.group(1)), int(m.group(2))) or m.group(0), line)


def _control(service: Service, action: str) -> str | None:
    """``action`` on ``service`` as its manager does it; None: keep the systemctl command."""
    name = service.unit
    if service.manager == "systemd":
        return None
    if service.manager == "sysv":
        if action == "enable":
            return f"sudo update-rc.d {name} enable"
        return "true" if action == "reset-failed" else f"sudo service {name} {action}"
    return _by_pid_file(service, action)


def _by_pid_file(service: Service, action: str) -> str:
    name, pid = service.unit, service.pid_file
    started = service.start or f"start {name} the way this host starts it (no unit, no init script)"
    signal_of = f"sudo kill -{{}} $(cat {pid})" if pid else f"sudo pkill -{{}} -o -x {name}"
    if action == "start":
        return started
    if action == "stop":
        return signal_of.format(service.stop_signal)
    if action == "restart":
        return f"{signal_of.format(service.stop_signal)}; {started}"
    if action == "reload":
        return signal_of.format(service.reload_signal)
    if action == "enable":
        return f"# make {name} start at boot the way this host starts services (no systemd, no init script)"
    return "true"


def _read_log(service: Service, lines: int) -> str | None:
    if service.manager == "systemd":
        return None
    if service.log:
        return f"sudo tail -{lines} {service.log}"
    return f"# {service.unit}'s own log (there is no journal on this host)"
