"""The runbook's steps, each a function ``(context, earlier findings) -> findings``, in runbook order."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from exporter.causes import Finding
from exporter.diagnosis.context import StepContext
from exporter.diagnosis.steps import (
    database,
    log_causes,
    logs,
    nginx,
    php_fpm,
    php_fpm_config,
    pools,
    probes,
    resources,
    services,
)

Step = Callable[[StepContext, Sequence[Finding]], list[Finding]]

STEPS: tuple[Step, ...] = (
    services.processes,  # 1. ps aux
    services.units,  # 1. systemctl status
    logs.logs,  # 3. tail of the error logs
    nginx.nginx_test,  # 4. nginx -t
    php_fpm_config.php_fpm_test,  # 4. php-fpm -t
    pools.configuration_files,  # what the files themselves say
    pools.pools,
    pools.timeouts,
    php_fpm.sockets,  # 5. ls -la of the socket
    php_fpm.fastcgi,  # 5. cgi-fcgi ping
    probes.http,  # curl /health, curl -I /
    database.database,  # pg_isready: the backend's database
    resources.resources,  # free -h, df -h
    log_causes.log_causes,  # what the logs prove on their own, once the probes have spoken
)
