"""Step 4 of the runbook: ``nginx -t``."""

from __future__ import annotations

import re
from collections.abc import Sequence

from exporter.causes import Cause, Facts, Finding, Verdict, nginx_config_invalid, upstream_host_not_found
from exporter.diagnosis.context import StepContext

TITLE = "nginx -t accepts the configuration"


def nginx_test(ctx: StepContext, earlier: Sequence[Finding]) -> list[Finding]:
    del earlier
    result = ctx.results.nginx_config
    if not ctx.config.nginx.test:
        return [Finding("nginx_config", TITLE, Verdict.SKIP, ("disabled",))]
    if result is None:
        return [ctx.not_checked("nginx_config", TITLE)]
    command = " ".join(result.command)
    if result.valid is None:
        return [
            Finding("nginx_config", TITLE, Verdict.SKIP, (f"could not run {command}: {result.message}",),
                    fix=("sudo nginx -t",))
        ]  # fmt: skip
    if result.valid:
        return [Finding("nginx_config", TITLE, Verdict.OK, (command,))]
    unit = ctx.units["nginx"]
    fix = nginx_config_invalid.fix_file(result.file, result.line, unit)
    unresolved = _HOST_NOT_FOUND.search(result.message or "")
    if unresolved is not None:  # an upstream's name that does not resolve: what to check first
        where = f"{result.file}:{result.line}" if result.file else "nginx's configuration"
        name = unresolved.group(1).rsplit(":", 1)[0]
        fix = (*upstream_host_not_found.resolve(name, where, "127.0.0.53")[:2], *fix)
    return [
        Finding(
            "nginx_config", _failed_title(result.file, result.line), Verdict.FAIL,
            (f"$ {command}", result.message or "test failed",
             "the running nginx still serves its previous configuration: do not reload or restart it"
             " before nginx -t passes"),
            Cause.NGINX_CONFIG_INVALID, fix, Facts(unit=unit, file=result.file or "", line=result.line),
        )
    ]  # fmt: skip


_HOST_NOT_FOUND = re.compile(r'host not found in upstream "([^"\s]{1,253})"')
"""nginx -t (and a start) refuses a config whose upstream's name does not resolve: the name is nginx's own."""


def _failed_title(file: str | None, line: int | None) -> str:
    if not file:
        return "nginx -t fails"
    return f"nginx -t fails: {file}:{line}" if line else f"nginx -t fails: {file}"
