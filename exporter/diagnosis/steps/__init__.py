"""The runbook's steps, each a function ``(context, earlier findings) -> findings``, in runbook order."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from exporter.causes import Finding
from exporter.causes.commands import on_host
from exporter.diagnosis.context import StepContext
from exporter.diagnosis.steps import (
    backend_sockets,
    database,
    log_causes,
    logs,
    nginx,
    php_fpm,
    php_fpm_config,
    pools,
    probes,
    protocols,
    resources,
    services,
)

Step = Callable[[StepContext, Sequence[Finding]], list[Finding]]

_STEPS: tuple[Step, ...] = (
    services.processes,  # 1. ps aux
    services.units,  # 1. systemctl status
    logs.logs,  # 3. tail of the error logs
    nginx.nginx_test,  # 4. nginx -t
    php_fpm_config.php_fpm_test,  # 4. php-fpm -t
    pools.configuration_files,  # what the files themselves say
    pools.pools,
    pools.timeouts,
    protocols.pass_protocols,  # does each *_pass speak what it points at
    php_fpm.sockets,  # 5. ls -la of the socket
    php_fpm.fastcgi,  # 5. cgi-fcgi ping
    backend_sockets.backend_sockets,  # ls -la of the backend's own socket
    probes.http,  # curl /health, curl -I /
    database.database,  # pg_isready: the backend's database
    resources.resources,  # free -h, df -h
    log_causes.log_causes,  # what the logs prove on their own, once the probes have spoken
)


def _on_this_host(step: Step) -> Step:
    """``step`` whose fixes say ``service``/``kill`` instead of ``systemctl`` where there is no systemd."""

    def adapted(ctx: StepContext, earlier: Sequence[Finding]) -> list[Finding]:
        found = step(ctx, earlier)
        if not ctx.host.services:
            return found
        return [dataclasses.replace(f, fix=on_host(f.fix, ctx.host)) if f.fix else f for f in found]

    adapted.__name__ = adapted.__qualname__ = step.__name__
    adapted.__doc__ = step.__doc__
    return adapted


STEPS: tuple[Step, ...] = tuple(_on_this_host(step) for step in _STEPS)
"""The steps in runbook order, each fix as this host runs its services (:func:`exporter.causes.commands.on_host`)."""
