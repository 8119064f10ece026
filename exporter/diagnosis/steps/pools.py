"""What nginx's and PHP-FPM's own files say: parse errors, socket access, ping/status, timeouts."""

from __future__ import annotations

from collections.abc import Sequence

from exporter.causes import Cause, Facts, Finding, Verdict, socket_permission_denied
from exporter.checks.analysis import predict_access, proxy_passes_for, timeout_hint
from exporter.checks.sockets import SocketResult
from exporter.diagnosis.context import StepContext
from exporter.discovery.model import PoolFacts


def configuration_files(ctx: StepContext, earlier: Sequence[Finding]) -> list[Finding]:
    """Files discovery could not read or parse, each with its file and line (nginx's own when nginx -t ran)."""
    del earlier
    discovered = ctx.config.discovered
    if discovered is None or not discovered.problems:
        return []
    syntax_error = discovered.nginx.syntax_error if discovered.nginx else None
    evidence = [str(p) for p in discovered.problems]
    if syntax_error is None:
        return [
            Finding(
                "discovery", "nginx and PHP-FPM configuration files can be read", Verdict.WARN, tuple(evidence),
                fix=("the exporter keeps running with the defaults and what it could read;"
                     " set the values in its configuration file or fix the files named",),
            )
        ]  # fmt: skip
    where = f"{syntax_error.file} line {syntax_error.line}" if syntax_error.line else syntax_error.file
    evidence += [
        "the running nginx still serves its previous configuration; the exporter probes what it found"
        " before the file broke (or, started since, what of the files still parses)",
    ]
    return [
        Finding(
            "discovery", f"nginx's configuration files parse: not {where}", Verdict.WARN, tuple(evidence),
            fix=(f"fix {where}: {syntax_error.message}",
                 "do not reload or restart nginx before `sudo nginx -t` passes: until then it keeps serving"
                 " the previous configuration"),
            latent=True,
        )
    ]  # fmt: skip


def pools(ctx: StepContext, earlier: Sequence[Finding]) -> list[Finding]:
    """Each probed pool's own settings: may nginx's user use its socket, can it be pinged."""
    del earlier
    discovered = ctx.config.discovered
    if discovered is None:
        return []
    sockets = ctx.sockets_by_path
    findings: list[Finding] = []
    for address in sorted({pool.socket.removeprefix("unix:") for pool in ctx.config.php_fpm}):
        pool = discovered.pool_for(address)
        if pool is None or pool.listen != address:
            continue
        unit = f"php{pool.version}-fpm" if pool.version else ctx.units["php_fpm"]
        access = _access_finding(ctx, pool, sockets.get(address), unit)
        findings.extend(f for f in (access, _probe_finding(pool, unit)) if f is not None)
    return findings


def _access_finding(
    ctx: StepContext, pool: PoolFacts, sock: SocketResult | None, unit: str
) -> Finding | None:
    user = ctx.config.nginx_user
    predicted = predict_access(pool, user)
    if predicted is None or predicted.allowed:
        return None
    step = f"pool_access:{pool.file}:{pool.name}"
    title = f"Pool [{pool.name}] lets nginx's user {user} use its socket"
    evidence = [
        f"{pool.file}: {predicted.describe()}",
        f"{user} would need write permission on {pool.listen}"
        + (" (listen.acl_users / listen.acl_groups)" if predicted.acl else ""),
    ]
    lines = []
    for key, value in (("listen.owner", user), ("listen.group", user), ("listen.mode", "0660")):
        origin = predicted.origins[key]
        where = f"line {origin.line}" if origin.kind != "default" and origin.line else f"under [{pool.name}]"
        lines.append(f"{where}: {key} = {value}")
    fix = socket_permission_denied.pool_lines(pool.file, lines, unit)
    if sock is not None and sock.exists and sock.accessible:
        evidence.append(
            f"the socket now is {sock.mode} {sock.owner}:{sock.group} and usable: the file changed since"
            " PHP-FPM started; nginx is locked out after the next restart"
        )
        return Finding(step, title, Verdict.WARN, tuple(evidence), fix=fix, latent=True)
    facts = Facts(unit=unit, socket=pool.listen or "", file=pool.file)
    return Finding(step, title, Verdict.FAIL, tuple(evidence), Cause.SOCKET_PERMISSION_DENIED, fix, facts)


_PROBE_LINES = {"ping.path": "ping.path = /ping", "pm.status_path": "pm.status_path = /status"}


def _probe_finding(pool: PoolFacts, unit: str) -> Finding | None:
    missing = [key for key in _PROBE_LINES if pool.get(key) is None]
    if not missing:
        return None
    return Finding(
        f"pool_probe:{pool.file}:{pool.name}",
        f"Pool [{pool.name}] answers the exporter's ping and status requests",
        Verdict.WARN,
        (f"{pool.file}: pool [{pool.name}] (line {pool.line}) sets no {' and no '.join(missing)}",
         "the exporter falls back to a connect-only probe: a hung pool looks healthy"
         if "ping.path" in missing else "no pool figures (workers, listen queue)"),
        fix=(f"add under [{pool.name}] in {pool.file}: " + "; ".join(_PROBE_LINES[k] for k in missing),
             f"sudo systemctl reload {unit}"),
    )  # fmt: skip


def timeouts(ctx: StepContext, earlier: Sequence[Finding]) -> list[Finding]:
    """Whether nginx's ``*_read_timeout`` for an upstream is shorter than that upstream's slowest answer."""
    del earlier
    discovered = ctx.config.discovered
    if discovered is None:
        return []
    results = ctx.results
    hints = []
    for probe in results.http:
        if probe.role == "backend":
            key = f"http:{probe.target}"
            passes = proxy_passes_for(discovered, probe.url)
            slowest = results.slowest(key) or probe.duration_seconds
            hints.append(timeout_hint(passes, "proxy_read_timeout", key, slowest))
    for fcgi in results.fastcgi:
        key = f"fastcgi:{fcgi.socket}"
        slowest = results.slowest(key) or fcgi.duration_seconds
        hints.append(
            timeout_hint(discovered.fastcgi_passes(fcgi.socket), "fastcgi_read_timeout", key, slowest)
        )
    findings = []
    for hint in hints:
        if hint is None:
            continue
        upstream = hint.probe.split(":", 1)[1]
        evidence = [f"the slowest probe of {upstream} took {hint.slowest_seconds:.2f} s"]
        fixes = []
        for item, timeout in hint.passes:
            where = (
                f"{timeout.origin.file}:{timeout.origin.line}" if timeout.origin.file else str(timeout.origin)
            )
            evidence.append(f"{item.directive} {item.raw} ({item.origin.file}:{item.origin.line}): {timeout.name}"
                            f" {timeout.seconds:g}s ({where})")  # fmt: skip
            target = item.origin if timeout.origin.file is None else timeout.origin
            fixes.append(f"in {target.file} near line {target.line}: {timeout.name}"
                         f" {max(int(hint.slowest_seconds * 2) + 1, 5)}s; (or make the upstream faster)")  # fmt: skip
        findings.append(
            Finding(
                f"nginx_timeout:{hint.probe}", f"nginx waits long enough for {upstream}", Verdict.WARN,
                (*evidence, "nginx answers 504 when the upstream is this slow"),
                Cause.UPSTREAM_TIMEOUT, (*fixes, "then: sudo nginx -t && sudo systemctl reload nginx"),
            )
        )  # fmt: skip
    return findings
