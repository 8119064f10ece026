"""The causes of a 502/504 that the diagnosis names: one spec per cause, one module per spec.

:data:`CAUSES` is the one source of truth: ``diagnose``, ``badgateway_cause`` and
``badgateway_cause_info``, the alert rules and their inhibitions, the dashboards, the runbook index
and the demo's fault catalogue are all derived from it. Adding a cause means: a member of
:class:`Cause`, a module here with its ``SPEC`` and fix, the evidence of its check, its runbooks
(en, ru) and its fault; ``tests/unit/test_cause_specs.py`` fails until all of them exist.
"""

from __future__ import annotations

from exporter.causes import (
    backend_down,
    backend_unhealthy,
    database_down,
    disk_full,
    listen_backlog_full,
    memory_exhausted,
    nginx_config_invalid,
    nginx_connections_exhausted,
    nginx_down,
    php_fpm_config_invalid,
    php_fpm_down,
    php_fpm_pool_exhausted,
    php_fpm_workers_crashing,
    selinux_denied,
    socket_path_mismatch,
    socket_permission_denied,
    upstream_header_too_big,
    upstream_host_not_found,
    upstream_protocol_mismatch,
    upstream_request_killed,
    upstream_timeout,
    upstream_tls_failed,
)
from exporter.causes.model import (
    FACT_LABELS,
    UNEXPLAINED,
    AlertText,
    Cause,
    CauseSpec,
    Facts,
    Finding,
    Inhibition,
    Verdict,
    failing_findings,
)

SPECS: tuple[CauseSpec, ...] = (
    php_fpm_down.SPEC,
    php_fpm_config_invalid.SPEC,
    backend_down.SPEC,
    backend_unhealthy.SPEC,
    database_down.SPEC,
    socket_path_mismatch.SPEC,
    socket_permission_denied.SPEC,
    php_fpm_pool_exhausted.SPEC,
    upstream_timeout.SPEC,
    memory_exhausted.SPEC,
    disk_full.SPEC,
    nginx_config_invalid.SPEC,
    nginx_down.SPEC,
    upstream_header_too_big.SPEC,
    php_fpm_workers_crashing.SPEC,
    upstream_request_killed.SPEC,
    listen_backlog_full.SPEC,
    upstream_protocol_mismatch.SPEC,
    upstream_tls_failed.SPEC,
    nginx_connections_exhausted.SPEC,
    selinux_denied.SPEC,
    upstream_host_not_found.SPEC,
)
"""Every cause, in the order ``diagnose`` and the rules list them."""

CAUSES: dict[Cause, CauseSpec] = {spec.cause: spec for spec in SPECS}

__all__ = [
    "CAUSES",
    "FACT_LABELS",
    "SPECS",
    "UNEXPLAINED",
    "AlertText",
    "Cause",
    "CauseSpec",
    "Facts",
    "Finding",
    "Inhibition",
    "Verdict",
    "failing_findings",
]
