"""Whether each ``*_pass`` speaks the protocol of what it points at, as the files say.

A ``proxy_pass`` to a PHP-FPM pool's socket (HTTP to FastCGI) is reset by PHP-FPM and logged only as
``recv() failed (104: Connection reset by peer)``; a ``fastcgi_pass`` to the backend's HTTP port is
``upstream sent unsupported FastCGI protocol version: 72``. Either fails every request of its
location: the configuration alone proves it.
"""

from __future__ import annotations

from collections.abc import Sequence

from exporter.causes import Cause, Facts, Finding, Verdict, upstream_protocol_mismatch
from exporter.diagnosis.context import StepContext
from exporter.diagnosis.explain import upstream_role
from exporter.discovery.model import Pass

_EXPECTED = {"fastcgi_pass": "php_fpm", "proxy_pass": "backend"}


def pass_protocols(ctx: StepContext, earlier: Sequence[Finding]) -> list[Finding]:
    del earlier
    discovered = ctx.config.discovered
    if discovered is None or discovered.nginx is None or discovered.php_fpm is None:
        return []
    pools = {p.listen for p in discovered.php_fpm.pools if p.listen}
    findings = []
    for item in discovered.nginx.passes:
        expected = _EXPECTED.get(item.directive)
        for target in item.targets:
            is_pool = target.address in pools
            role = "php_fpm" if is_pool else upstream_role(ctx.config, target.address)
            if expected is not None and role is not None and role != expected:
                findings.append(_mismatch(item, target.address, sorted(pools - {target.address})))
    return findings


def _mismatch(item: Pass, address: str, sockets: list[str]) -> Finding:
    where = f"{item.origin.file}:{item.origin.line}"
    facts = Facts(
        socket=address if address.startswith("/") else "", file=item.origin.file or "", line=item.origin.line
    )
    if item.directive == "fastcgi_pass":
        evidence = (
            f"{where}: fastcgi_pass {item.raw}",
            f"{address} is the backend's HTTP server, not PHP-FPM",
        )
        fix = upstream_protocol_mismatch.fastcgi_to_http(where, address, ", ".join(sockets) or "its socket")
    else:
        evidence = (
            f"{where}: proxy_pass {item.raw}",
            f"{address} is a PHP-FPM pool's socket: it speaks FastCGI",
        )
        fix = upstream_protocol_mismatch.http_to_fastcgi(
            where, f"unix:{address}" if address.startswith("/") else address
        )
    return Finding(f"pass_protocol:{where}", f"{item.directive} at {where} speaks the protocol of {address}",
                   Verdict.FAIL, evidence, Cause.UPSTREAM_PROTOCOL_MISMATCH, fix, facts)  # fmt: skip
