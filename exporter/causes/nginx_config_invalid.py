"""The nginx configuration on disk fails ``nginx -t``: the next reload or restart takes the site down."""

from __future__ import annotations

from exporter.causes import commands
from exporter.causes.model import AlertText, Cause, CauseSpec

SPEC = CauseSpec(
    cause=Cause.NGINX_CONFIG_INVALID,
    alert="NginxConfigInvalid",
    title="The nginx configuration on disk fails nginx -t",
    status_code=502,
    evidence=("nginx_config",),
    page=AlertText(
        summary="The nginx configuration on {instance} fails nginx -t",
        meaning="nginx -t fails on {instance}: the running nginx keeps its old configuration, but the next"
        " reload or restart will fail and take the site down.",
        for_seconds=300,
        severity="warning",
    ),
    faults=("nginx_config_broken",),
    latent_while_serving=True,
)


def fix_file(file: str | None, line: int | None, unit: str) -> tuple[str, ...]:
    where = f"{file}:{line}" if file else "the file nginx names"
    return f"fix {where}, then: sudo nginx -t", commands.reload(unit)
