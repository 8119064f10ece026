"""The diagnosis view: the runbook's steps, each with a verdict, evidence, the cause and the fix."""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from enum import StrEnum

from exporter.causes import Cause
from exporter.checks.fastcgi import FailureReason, FastCGIResult
from exporter.checks.http import HttpResult
from exporter.checks.processes import ServiceProcesses, listening_addresses
from exporter.checks.resources import FilesystemUsage, ResourcesResult
from exporter.checks.sockets import SocketResult
from exporter.checks.units import ENABLED_FILE_STATES, UnitsResult, default_php_fpm_unit
from exporter.config import Config, Thresholds
from exporter.discovery.analysis import (
    predict_access,
    proxy_passes_for,
    socket_alternatives,
    timeout_hint,
)
from exporter.discovery.model import Discovered, PoolFacts
from exporter.rounds import CollectorOutcome, RoundResults


class Verdict(StrEnum):
    """How a runbook step came out."""

    OK = "ok"
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"


@dataclass(frozen=True)
class Finding:
    """One runbook step as checked on this host."""

    step: str
    title: str
    verdict: Verdict
    evidence: tuple[str, ...] = ()
    cause: Cause | None = None
    fix: tuple[str, ...] = ()


@dataclass(frozen=True)
class Diagnosis:
    """All findings and the causes they point to."""

    findings: tuple[Finding, ...]
    causes: frozenset[Cause] = field(default_factory=frozenset)
    gateway_errors: tuple[str, ...] = ()  # front probes answered 502/504

    @property
    def healthy(self) -> bool:
        return not self.causes and not self.gateway_errors


def _unit(name: str) -> str:
    return name.removesuffix(".service")


def diagnose(results: RoundResults, config: Config) -> Diagnosis:
    """Read one round's results the way the runbook does."""
    php_unit = _unit(config.units.php_fpm or "php-fpm.service")
    backend_unit = _unit(config.units.backend)
    nginx_unit = _unit(config.units.nginx)
    findings: list[Finding] = []
    failed = {o.collector: o for o in results.collectors if not o.success}

    # Step 1: are the services running (systemctl status / ps aux)?
    answering = {
        "nginx": any(p.status_code is not None for p in results.http if p.role == "front"),
        "php_fpm": any(p.up for p in results.fastcgi),
        "backend": any(p.status_code is not None for p in results.http if p.role == "backend"),
    }
    procs = results.processes
    running: dict[str, bool | None] = {service: None for service in answering}
    if procs is None:
        findings.append(_not_checked("processes", "Processes of nginx, PHP-FPM and the backend", failed))
    else:
        units = {"nginx": nginx_unit, "php_fpm": php_unit, "backend": backend_unit}
        for service, title, cause in _PROCESS_ROLES:
            found = procs.of(service)
            running[service] = found is not None and found.count > 0
            findings.append(
                _process_finding(service, title, cause, found, answering[service], units[service], config)
            )
    php_running, nginx_running = running["php_fpm"], running["nginx"]

    # Step 1 as the runbook runs it: systemctl status.
    findings.extend(_unit_findings(results.units, config, answering, failed))

    # Step 4: nginx -t.
    nginx_config = results.nginx_config
    if not config.nginx.test:
        findings.append(
            Finding("nginx_config", "nginx -t accepts the configuration", Verdict.SKIP, ("disabled",))
        )
    elif nginx_config is None:
        findings.append(_not_checked("nginx_config", "nginx -t accepts the configuration", failed))
    elif nginx_config.valid is None:
        findings.append(
            Finding(
                "nginx_config",
                "nginx -t accepts the configuration",
                Verdict.SKIP,
                (f"could not run {' '.join(nginx_config.command)}: {nginx_config.message}",),
                fix=("sudo nginx -t",),
            )
        )
    elif nginx_config.valid:
        findings.append(
            Finding(
                "nginx_config",
                "nginx -t accepts the configuration",
                Verdict.OK,
                (" ".join(nginx_config.command),),
            )
        )
    else:
        where = f"{nginx_config.file}:{nginx_config.line}" if nginx_config.file else "the file nginx names"
        findings.append(
            Finding(
                "nginx_config",
                "nginx -t accepts the configuration",
                Verdict.FAIL,
                (f"$ {' '.join(nginx_config.command)}", nginx_config.message or "test failed"),
                Cause.NGINX_CONFIG_INVALID,
                (
                    f"fix {where}, then: sudo nginx -t",
                    f"sudo systemctl reload {nginx_unit}",
                ),
            )
        )

    # Step 5: the PHP-FPM socket (ls -la), and the FastCGI ping (cgi-fcgi).
    php_listeners: list[str] = []
    if procs is not None and any(not s.exists for s in results.sockets):
        php_procs = procs.of("php_fpm")
        php_listeners = listening_addresses(php_procs.main_pids if php_procs else ())
    findings.extend(_discovery_findings(results, config, php_unit))
    alternatives = socket_alternatives(config.discovered, results.sockets)
    for sock in results.sockets:
        extra = [a for a in alternatives.get(sock.path, {}) if a not in php_listeners]
        findings.append(_socket_finding(sock, php_running, [*php_listeners, *extra], php_unit, config))
    for fastcgi_probe in results.fastcgi:
        findings.append(_fastcgi_finding(fastcgi_probe, php_running, php_unit, results.sockets))
    if config.php_fpm and not results.fastcgi:
        findings.append(_not_checked("fastcgi", "PHP-FPM answers FastCGI ping", failed))

    # Steps "curl http://localhost:8000/health" and "curl -I http://localhost/".
    pool_exhausted = any(
        f.cause == Cause.PHP_FPM_POOL_EXHAUSTED and f.verdict == Verdict.FAIL for f in findings
    )
    gateway_errors: list[str] = []
    for http_probe in results.http:
        findings.append(_http_finding(http_probe, pool_exhausted, nginx_running, backend_unit, nginx_unit))
        if http_probe.role == "front" and http_probe.gateway_error:
            gateway_errors.append(f"{http_probe.url} answered {http_probe.status_code}")
    if config.http and not results.http:
        findings.append(_not_checked("http", "HTTP probes", failed))

    # free -h, df -h.
    if results.resources is None:
        findings.append(_not_checked("resources", "Memory and disk", failed))
    else:
        res = results.resources
        findings.append(_memory_finding(res, results.recent_oom_kills, config.thresholds))
        findings.extend(_filesystem_finding(fs, config.thresholds) for fs in res.filesystems)
        for path in res.missing_paths:
            findings.append(
                Finding(f"disk:{path}", f"Disk space for {path}", Verdict.SKIP, (f"{path} does not exist",))
            )

    causes = frozenset(f.cause for f in findings if f.cause is not None and f.verdict == Verdict.FAIL)
    # A front 502/504 that no other cause explains is itself worth a finding.
    if gateway_errors and not causes:
        findings.append(
            Finding(
                "gateway_errors",
                "nginx answers without gateway errors",
                Verdict.FAIL,
                (*gateway_errors, "no cause identified by the probes: read the nginx error log"),
                fix=("sudo tail -50 /var/log/nginx/error.log",),
            )
        )
    return Diagnosis(findings=tuple(findings), causes=causes, gateway_errors=tuple(gateway_errors))


_PROCESS_ROLES = (
    ("nginx", "nginx is running", Cause.NGINX_DOWN),
    ("php_fpm", "PHP-FPM is running", Cause.PHP_FPM_DOWN),
    ("backend", "The Python backend is running", Cause.BACKEND_DOWN),
)


def _process_finding(
    service: str,
    title: str,
    cause: Cause,
    found: ServiceProcesses | None,
    answering: bool,
    unit: str,
    config: Config,
) -> Finding:
    step = f"process:{service}"
    pattern = getattr(config.processes, service)
    if found is not None and found.count > 0:
        evidence = [f"{found.count} process(es), {_bytes(found.resident_memory_bytes)} resident"]
        evidence += [f"main: {command}" for command in found.main_commands]
        if found.users:
            evidence.append(f"running as: {', '.join(found.users)}")
        return Finding(step, title, Verdict.OK, tuple(evidence))
    if answering:
        return Finding(
            step,
            title,
            Verdict.WARN,
            (f"no process matches {pattern!r}, yet the service answers its probe:"
             f" set processes.{service} in the configuration",),
        )  # fmt: skip
    return Finding(
        step,
        title,
        Verdict.FAIL,
        (f"no process matches {pattern!r}",),
        cause,
        (
            f"sudo systemctl start {unit}",
            f"sudo systemctl enable {unit}",
            f"sudo journalctl -u {unit} -n 50 --no-pager",
        ),
    )


_UNIT_ROLES = (
    ("nginx", "nginx", Cause.NGINX_DOWN),
    ("php_fpm", "PHP-FPM", Cause.PHP_FPM_DOWN),
    ("backend", "The Python backend", Cause.BACKEND_DOWN),
)


def _unit_findings(
    units: UnitsResult | None, config: Config, answering: dict[str, bool], failed: dict[str, CollectorOutcome]
) -> list[Finding]:
    if not config.units.enabled:
        return []
    if units is None:
        return [_not_checked("units", "systemctl status of nginx, PHP-FPM and the backend", failed)]
    if not units.available:
        return [
            Finding(
                "units",
                "systemctl status of nginx, PHP-FPM and the backend",
                Verdict.SKIP,
                (f"systemd not reachable ({units.error}): the process view decides",),
            )
        ]
    by_name = {u.name: u for u in units.units}
    findings = []
    for role, label, cause in _UNIT_ROLES:
        name = getattr(config.units, role) or "php-fpm.service"
        unit = by_name.get(name)
        if unit is None:
            continue
        short = _unit(name)
        step, title = f"unit:{name}", f"{label} unit {name} is active and enabled"
        state = f"{unit.active_state} ({unit.sub_state}), unit file {unit.unit_file_state or 'none'}"
        if unit.n_restarts:
            state += f", restarted {unit.n_restarts} times"
        if unit.load_state != "loaded":
            hint: tuple[str, ...] = (
                "systemctl list-units --all --type=service | grep -E 'php|nginx|backend'",
            )
            if role == "php_fpm":
                installed = default_php_fpm_unit()
                if installed != name:
                    hint = (
                        f"this host has {installed}: set units.php_fpm: {installed} (and check the socket path)",
                    )
            findings.append(
                Finding(step, title, Verdict.WARN, (f"{name}: LoadState={unit.load_state}",), fix=hint)
            )
        elif unit.active_state in ("inactive", "failed"):
            if answering[role]:
                findings.append(
                    Finding(
                        step,
                        title,
                        Verdict.WARN,
                        (state, "yet it answers its probe: started outside systemd?"),
                    )
                )
            else:
                findings.append(
                    Finding(
                        step, title, Verdict.FAIL, (f"systemctl status {short}: {state}",), cause,
                        (f"sudo systemctl start {short}", f"sudo systemctl enable {short}",
                         f"sudo journalctl -u {short} -n 50 --no-pager"),
                    )
                )  # fmt: skip
        elif unit.active_state != "active":
            findings.append(Finding(step, title, Verdict.WARN, (f"systemctl status {short}: {state}",)))
        elif unit.unit_file_state not in ENABLED_FILE_STATES:
            findings.append(
                Finding(
                    step, title, Verdict.WARN,
                    (f"systemctl status {short}: {state}", "running now, but it will not start after a reboot"),
                    fix=(f"sudo systemctl enable {short}",),
                )
            )  # fmt: skip
        else:
            findings.append(Finding(step, title, Verdict.OK, (f"systemctl status {short}: {state}",)))
    return findings


def _not_checked(step: str, title: str, failed: dict[str, CollectorOutcome]) -> Finding:
    outcome = failed.get(step.split(":", maxsplit=1)[0])
    reason = (outcome.error if outcome else None) or "check did not run"
    return Finding(step, title, Verdict.SKIP, (f"not checked: {reason}",))


def _socket_finding(
    sock: SocketResult, php_running: bool | None, php_listeners: list[str], php_unit: str, config: Config
) -> Finding:
    step = f"socket:{sock.path}"
    title = f"PHP-FPM socket {sock.path} exists and nginx's user may use it"
    if not sock.exists:
        evidence = [f"ls -la {sock.path}: {sock.connect_error or 'No such file or directory'}"]
        alternatives = [a for a in php_listeners if a != sock.path] if php_running else []
        discovered = config.discovered
        declaring = discovered.pool_for(sock.path) if discovered is not None else None
        if php_running and declaring is not None:
            # A pool file declares this very socket: that pool's PHP-FPM is down, the path is right.
            unit = f"php{declaring.version}-fpm" if declaring.version else php_unit
            listen = declaring.settings["listen"].origin
            return Finding(
                step, title, Verdict.FAIL,
                (*evidence, f"pool [{declaring.name}] declares it ({listen.file}:{listen.line}) but its PHP-FPM"
                 f" ({declaring.config_file}) is not listening; another PHP-FPM runs"),
                Cause.PHP_FPM_DOWN,
                (f"sudo systemctl start {unit}", f"sudo systemctl enable {unit}",
                 f"sudo journalctl -u {unit} -n 50 --no-pager"),
            )  # fmt: skip
        if php_running:
            evidence.append(
                f"PHP-FPM is running and listens on: {', '.join(alternatives) or 'nothing visible'}"
            )
            target = alternatives[0] if alternatives else None
            mismatch_fix = (
                _mismatch_fix(sock.path, target, discovered)
                if target
                else (
                    "find where PHP-FPM listens: sudo grep -rn '^listen' /etc/php/*/fpm/pool.d/; sudo ss -xlp | grep php",
                )
            )
            return Finding(
                step, title, Verdict.FAIL, tuple(evidence), Cause.SOCKET_PATH_MISMATCH,
                (*mismatch_fix, "then: sudo nginx -t && sudo systemctl reload nginx"),
            )  # fmt: skip
        return Finding(
            step,
            title,
            Verdict.FAIL,
            (*evidence, "PHP-FPM is not running, so nothing created the socket"),
            Cause.PHP_FPM_DOWN,
            (f"sudo systemctl start {php_unit}", f"sudo systemctl enable {php_unit}"),
        )
    evidence = [
        f"{sock.mode} {sock.owner}:{sock.group} {sock.path}" + ("" if sock.is_socket else " (not a socket)")
    ]
    if sock.connect_errno == errno.ECONNREFUSED:
        return Finding(
            step,
            title,
            Verdict.FAIL,
            (*evidence, "connect() refused: a stale socket file, the PHP-FPM master that made it is gone"),
            Cause.PHP_FPM_DOWN,
            (f"sudo systemctl restart {php_unit}", f"sudo journalctl -u {php_unit} -n 50 --no-pager"),
        )
    if sock.accessible is None:
        evidence.append(f"user {sock.user} does not exist here: cannot check nginx's access")
        return Finding(step, title, Verdict.WARN, tuple(evidence))
    if not sock.accessible:
        blocked = sock.blocked_by
        if blocked is not None and blocked.needs == "search":
            evidence.append(
                f"{sock.user} may not enter {blocked.path} ({blocked.mode} {blocked.owner}:{blocked.group})"
            )
            fix: tuple[str, ...] = (f"sudo chmod o+x {blocked.path}",)
        else:
            evidence.append(f"{sock.user} may not write to the socket")
            pool_file = f"/etc/php/{_php_version(php_unit)}/fpm/pool.d/www.conf"
            fix = (
                f"in {pool_file}: listen.owner = {config.nginx_user}, listen.group = {config.nginx_user},"
                " listen.mode = 0660",
                f"sudo systemctl restart {php_unit}",
            )
        return Finding(step, title, Verdict.FAIL, tuple(evidence), Cause.SOCKET_PERMISSION_DENIED, fix)
    if not sock.connectable and sock.connect_error:
        evidence.append(f"connect(): {sock.connect_error}")
        return Finding(step, title, Verdict.WARN, tuple(evidence))
    evidence.append(f"{sock.user} may connect; connect() succeeds")
    return Finding(step, title, Verdict.OK, tuple(evidence))


def _mismatch_fix(path: str, target: str, discovered: Discovered | None) -> tuple[str, ...]:
    """The exact lines to change when discovery knows them, else where to look."""
    passes = discovered.fastcgi_passes(path) if discovered is not None else ()
    pool = discovered.pool_for(target) if discovered is not None else None
    fixes = [f"nginx expects {path} but PHP-FPM listens on {target}"]
    if passes:
        for item in passes:
            fixes.append(
                f"in {item.origin.file} line {item.origin.line}: change `fastcgi_pass {item.raw};`"
                f" to `fastcgi_pass unix:{target};`"
            )
    else:
        fixes.append(
            f"either set `fastcgi_pass unix:{target};` where nginx has it: sudo grep -rn fastcgi_pass /etc/nginx/"
        )
    if pool is not None and "listen" in pool.settings:
        listen = pool.settings["listen"].origin
        fixes.append(f"or in {listen.file} line {listen.line}: `listen = {path}` (pool [{pool.name}])")
    else:
        fixes.append(f"or set `listen = {path}` in the pool: sudo grep -rn '^listen' /etc/php/*/fpm/pool.d/")
    return tuple(fixes)


def _discovery_findings(results: RoundResults, config: Config, php_unit: str) -> list[Finding]:
    """What the nginx and PHP-FPM files themselves say: parse errors, socket access, ping/status, timeouts."""
    discovered = config.discovered
    if discovered is None:
        return []
    findings: list[Finding] = []
    problems = [
        p for p in discovered.problems if not (discovered.nginx and p == discovered.nginx.syntax_error)
    ]
    if problems:
        findings.append(
            Finding(
                "discovery", "nginx and PHP-FPM configuration files can be read", Verdict.WARN,
                tuple(str(p) for p in problems),
                fix=("the exporter keeps running with the defaults and what it could read;"
                     " set the values in its configuration file or fix the files named",),
            )
        )  # fmt: skip
    probed = {pool.socket.removeprefix("unix:") for pool in config.php_fpm}
    sockets = {s.path: s for s in results.sockets}
    for address in sorted(probed):
        pool = discovered.pool_for(address)
        if pool is None or pool.listen != address:
            continue
        unit = f"php{pool.version}-fpm" if pool.version else php_unit
        findings.extend(_pool_findings(pool, config, sockets.get(address), unit))
    findings.extend(_timeout_findings(results, config, discovered))
    return findings


def _pool_findings(pool: PoolFacts, config: Config, sock: SocketResult | None, unit: str) -> list[Finding]:
    findings: list[Finding] = []
    predicted = predict_access(pool, config.nginx_user)
    if predicted is not None and not predicted.allowed:
        step = f"pool_access:{pool.file}:{pool.name}"
        title = f"Pool [{pool.name}] lets nginx's user {config.nginx_user} use its socket"
        evidence = [
            f"{pool.file}: {predicted.describe()}",
            f"{config.nginx_user} would need write permission on {pool.listen}"
            + (" (listen.acl_users / listen.acl_groups)" if predicted.acl else ""),
        ]
        lines = []
        for key, value in (("listen.owner", config.nginx_user), ("listen.group", config.nginx_user),
                           ("listen.mode", "0660")):  # fmt: skip
            origin = predicted.origins[key]
            where = (
                f"line {origin.line}" if origin.kind != "default" and origin.line else f"under [{pool.name}]"
            )
            lines.append(f"{where}: {key} = {value}")
        fix = (f"in {pool.file}, " + "; ".join(lines), f"sudo systemctl restart {unit}")
        if sock is not None and sock.exists and sock.accessible:
            evidence.append(
                f"the socket now is {sock.mode} {sock.owner}:{sock.group} and usable: the file changed since"
                " PHP-FPM started; nginx is locked out after the next restart"
            )
            findings.append(Finding(step, title, Verdict.WARN, tuple(evidence), fix=fix))
        else:
            findings.append(
                Finding(step, title, Verdict.FAIL, tuple(evidence), Cause.SOCKET_PERMISSION_DENIED, fix)
            )
    missing = [key for key in ("ping.path", "pm.status_path") if pool.get(key) is None]
    if missing:
        add = {"ping.path": "ping.path = /ping", "pm.status_path": "pm.status_path = /status"}
        findings.append(
            Finding(
                f"pool_probe:{pool.file}:{pool.name}",
                f"Pool [{pool.name}] answers the exporter's ping and status requests",
                Verdict.WARN,
                (f"{pool.file}: pool [{pool.name}] (line {pool.line}) sets no {' and no '.join(missing)}",
                 "the exporter falls back to a connect-only probe: a hung pool looks healthy"
                 if "ping.path" in missing else "no pool figures (workers, listen queue)"),
                fix=(f"add under [{pool.name}] in {pool.file}: " + "; ".join(add[k] for k in missing),
                     f"sudo systemctl reload {unit}"),
            )
        )  # fmt: skip
    return findings


def _timeout_findings(results: RoundResults, config: Config, discovered: Discovered) -> list[Finding]:
    findings: list[Finding] = []
    hints = []
    for probe in results.http:
        if probe.role != "backend":
            continue
        key = f"http:{probe.target}"
        passes = proxy_passes_for(discovered, probe.url)
        hints.append(
            timeout_hint(passes, "proxy_read_timeout", key, results.slowest(key) or probe.duration_seconds)
        )
    for fcgi in results.fastcgi:
        key = f"fastcgi:{fcgi.socket}"
        passes = discovered.fastcgi_passes(fcgi.socket)
        hints.append(
            timeout_hint(passes, "fastcgi_read_timeout", key, results.slowest(key) or fcgi.duration_seconds)
        )
    for hint in hints:
        if hint is None:
            continue
        evidence = [f"the slowest probe of {hint.probe.split(':', 1)[1]} took {hint.slowest_seconds:.2f} s"]
        fixes = []
        for item, timeout in hint.passes:
            where = (
                f"{timeout.origin.file}:{timeout.origin.line}" if timeout.origin.file else str(timeout.origin)
            )
            evidence.append(f"{item.directive} {item.raw} ({item.origin.file}:{item.origin.line}): {timeout.name}"
                            f" {timeout.seconds:g}s ({where})")  # fmt: skip
            target = item.origin if timeout.origin.file is None else timeout.origin
            fixes.append(f"in {target.file} near line {target.line}: {timeout.name} {max(int(hint.slowest_seconds * 2) + 1, 5)}s;"
                         " (or make the upstream faster)")  # fmt: skip
        findings.append(
            Finding(
                f"nginx_timeout:{hint.probe}",
                f"nginx waits long enough for {hint.probe.split(':', 1)[1]}",
                Verdict.WARN,
                (*evidence, "nginx answers 504 when the upstream is this slow"),
                Cause.UPSTREAM_TIMEOUT,
                (*fixes, "then: sudo nginx -t && sudo systemctl reload nginx"),
            )
        )
    return findings


def _php_version(php_unit: str) -> str:
    version = php_unit.removeprefix("php").removesuffix("-fpm")
    return version if version and version[0].isdigit() else "*"


def _fastcgi_finding(
    probe: FastCGIResult, php_running: bool | None, php_unit: str, sockets: tuple[SocketResult, ...]
) -> Finding:
    step = f"fastcgi:{probe.socket}"
    title = f"PHP-FPM answers a FastCGI ping on {probe.socket}"
    took = f"{probe.duration_seconds * 1000:.1f} ms"
    if probe.up:
        evidence = [f"ping answered in {took}"]
        status = probe.pool_status
        if status is not None:
            evidence.append(
                f"pool {status.pool} ({status.process_manager}): {status.active_processes} active,"
                f" {status.idle_processes} idle, {status.total_processes} total, listen queue {status.listen_queue},"
                f" max children reached {status.max_children_reached} times"
            )
            if status.listen_queue > 0:
                return Finding(
                    step,
                    title,
                    Verdict.FAIL,
                    (*evidence, f"{status.listen_queue} request(s) waiting for a free worker"),
                    Cause.PHP_FPM_POOL_EXHAUSTED,
                    _pool_fix(php_unit),
                )
        if probe.status_failure is not None:
            evidence.append(f"status page: {probe.status_detail}")
            return Finding(step, title, Verdict.WARN, tuple(evidence),
                           fix=("enable it in the pool: pm.status_path = /status",))  # fmt: skip
        return Finding(step, title, Verdict.OK, tuple(evidence))
    evidence = [f"{probe.failure}: {probe.detail}"]
    reason = probe.failure
    socket_known = any(s.path == probe.socket.removeprefix("unix:") for s in sockets)
    if reason in (FailureReason.SOCKET_MISSING, FailureReason.CONNECTION_REFUSED):
        if socket_known:
            # The socket finding names php_fpm_down or socket_path_mismatch from the same evidence.
            return Finding(step, title, Verdict.FAIL, tuple(evidence))
        return Finding(
            step, title, Verdict.FAIL, tuple(evidence), Cause.PHP_FPM_DOWN,
            (f"sudo systemctl start {php_unit}", f"sudo journalctl -u {php_unit} -n 50 --no-pager"),
        )  # fmt: skip
    if reason == FailureReason.PERMISSION_DENIED:
        return Finding(
            step, title, Verdict.FAIL, (*evidence, "this exporter may not connect either"),
            Cause.SOCKET_PERMISSION_DENIED, ("check listen.owner / listen.group / listen.mode in the pool",),
        )  # fmt: skip
    if reason == FailureReason.TIMEOUT:
        return Finding(
            step,
            title,
            Verdict.FAIL,
            (*evidence, "PHP-FPM took the connection but no worker answered: every worker is busy or hung"),
            Cause.PHP_FPM_POOL_EXHAUSTED,
            _pool_fix(php_unit),
        )
    if reason in (FailureReason.NOT_FOUND, FailureReason.ACCESS_DENIED):
        return Finding(
            step, title, Verdict.WARN, tuple(evidence),
            fix=("enable it in the pool file: ping.path = /ping and pm.status_path = /status",
                 f"sudo systemctl reload {php_unit}"),
        )  # fmt: skip
    return Finding(
        step, title, Verdict.FAIL, tuple(evidence), None, (f"sudo journalctl -u {php_unit} -n 50 --no-pager",)
    )


def _pool_fix(php_unit: str) -> tuple[str, ...]:
    return (
        f"sudo systemctl restart {php_unit}   # frees hung workers now",
        f"raise pm.max_children in /etc/php/{_php_version(php_unit)}/fpm/pool.d/www.conf if memory allows",
        "find the slow scripts: request_slowlog_timeout = 5s and slowlog = /var/log/php-fpm-slow.log",
    )


def _http_finding(
    probe: HttpResult,
    pool_exhausted: bool,
    nginx_running: bool | None,
    backend_unit: str,
    nginx_unit: str,
) -> Finding:
    step = f"http:{probe.target}"
    if probe.role == "backend":
        title = f"The backend answers {probe.url}"
    else:
        title = f"nginx serves {probe.url} without a gateway error"
    took = f"{probe.duration_seconds * 1000:.1f} ms"
    if probe.up:
        return Finding(step, title, Verdict.OK, (f"HTTP {probe.status_code} in {took}",))
    evidence = [
        f"curl {probe.url}: "
        + (f"HTTP {probe.status_code}" if probe.status_code else f"{probe.error}: {probe.detail}")
    ]
    if probe.role == "backend":
        if probe.error in ("connection_refused", "connect_error"):
            return Finding(
                step, title, Verdict.FAIL, tuple(evidence), Cause.BACKEND_DOWN,
                (f"sudo systemctl start {backend_unit}", f"sudo systemctl enable {backend_unit}",
                 f"sudo journalctl -u {backend_unit} -n 50 --no-pager"),
            )  # fmt: skip
        if probe.error == "timeout":
            return Finding(
                step, title, Verdict.FAIL, (*evidence, "the backend accepts connections but answers too slowly"),
                Cause.UPSTREAM_TIMEOUT,
                (f"sudo journalctl -u {backend_unit} -n 50 --no-pager   # why is it slow?",
                 "if slowness is expected: raise proxy_read_timeout / fastcgi_read_timeout in the site config"),
            )  # fmt: skip
        if probe.status_code is not None:
            return Finding(
                step, title, Verdict.FAIL, tuple(evidence), Cause.BACKEND_UNHEALTHY,
                (f"curl -i {probe.url}", f"sudo journalctl -u {backend_unit} -n 50 --no-pager",
                 f"sudo systemctl restart {backend_unit}"),
            )  # fmt: skip
        return Finding(step, title, Verdict.FAIL, tuple(evidence), Cause.BACKEND_UNHEALTHY,
                       (f"sudo journalctl -u {backend_unit} -n 50 --no-pager",))  # fmt: skip
    # The front, through nginx.
    if probe.error in ("connection_refused", "connect_error") and nginx_running is not True:
        return Finding(
            step, title, Verdict.FAIL, tuple(evidence), Cause.NGINX_DOWN,
            (f"sudo nginx -t && sudo systemctl start {nginx_unit}", f"sudo systemctl enable {nginx_unit}"),
        )  # fmt: skip
    if (probe.status_code == 504 or probe.error == "timeout") and pool_exhausted:
        # The page waits behind the busy pool: the same incident as the FastCGI finding, not a second cause.
        return Finding(
            step, title, Verdict.FAIL, (*evidence, "the PHP-FPM pool is exhausted (see above): requests queue"),
        )  # fmt: skip
    if probe.status_code == 504 or probe.error == "timeout":
        return Finding(
            step, title, Verdict.FAIL, (*evidence, "an upstream did not answer within nginx's *_read_timeout"),
            Cause.UPSTREAM_TIMEOUT,
            ("sudo tail -50 /var/log/nginx/error.log | grep 'timed out'",
             "if slowness is expected: raise fastcgi_read_timeout / proxy_read_timeout"),
        )  # fmt: skip
    if probe.status_code == 502:
        return Finding(step, title, Verdict.FAIL, (*evidence, "502 Bad Gateway: see the causes above"))
    return Finding(step, title, Verdict.WARN, tuple(evidence))


def _bytes(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    return f"{value:.1f} TiB"


def _memory_finding(res: ResourcesResult, recent_oom_kills: int | None, thresholds: Thresholds) -> Finding:
    total, available = res.memory_total_bytes, res.memory_available_bytes
    evidence = [
        f"available {_bytes(available)} of {_bytes(total)} ({available / total:.1%})"
        if total
        else "no memory figures",
        f"swap free {_bytes(res.swap_free_bytes)} of {_bytes(res.swap_total_bytes)}",
    ]
    if res.oom_kills is not None:
        evidence.append(f"OOM kills since boot: {res.oom_kills}")
    low = bool(total) and available / total < thresholds.memory_available_ratio
    if recent_oom_kills:
        minutes = thresholds.oom_kill_window_seconds / 60
        evidence.append(
            f"the kernel's OOM killer killed {recent_oom_kills} process(es) in the last {minutes:g} min"
        )
    if low or recent_oom_kills:
        return Finding(
            "memory", "Enough free memory", Verdict.FAIL, tuple(evidence), Cause.MEMORY_EXHAUSTED,
            ("free -h; ps aux --sort=-rss | head -15",
             "lower pm.max_children or the backend's worker count, add swap, or add memory",
             "sudo journalctl -k | grep -i 'killed process'   # what the OOM killer took"),
        )  # fmt: skip
    return Finding("memory", "Enough free memory", Verdict.OK, tuple(evidence))


def filesystem_full(fs: FilesystemUsage, thresholds: Thresholds) -> bool:
    """Space or inodes below the thresholds (the byte floor is capped at 10% of small filesystems)."""
    floor = max(
        fs.size_bytes * thresholds.filesystem_avail_ratio,
        min(thresholds.filesystem_avail_bytes, fs.size_bytes * 0.1),
    )
    inodes_low = fs.files > 0 and fs.files_free / fs.files < thresholds.filesystem_files_free_ratio
    return fs.avail_bytes < floor or inodes_low


def _filesystem_finding(fs: FilesystemUsage, thresholds: Thresholds) -> Finding:
    step = f"disk:{fs.mountpoint}"
    title = f"Free space on {fs.mountpoint}"
    evidence = (
        f"{_bytes(fs.avail_bytes)} available of {_bytes(fs.size_bytes)}; {fs.files_free} of {fs.files} inodes free",
        f"holds: {', '.join(fs.paths)}",
    )
    if filesystem_full(fs, thresholds):
        return Finding(
            step, title, Verdict.FAIL, evidence, Cause.DISK_FULL,
            (f"df -h {fs.mountpoint}; sudo du -xh {fs.mountpoint} 2>/dev/null | sort -h | tail -20",
             "sudo journalctl --vacuum-size=200M; remove old rotated logs in /var/log/nginx"),
        )  # fmt: skip
    return Finding(step, title, Verdict.OK, evidence)
