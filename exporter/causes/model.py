"""What a cause is: one declarative :class:`CauseSpec`, and the findings a round of checks yields.

A runbook step (:mod:`exporter.diagnosis.steps`) turns one round's results into
:class:`Finding` objects; a failing finding may name the :class:`Cause` it is evidence of, with the
bounded :class:`Facts` (unit, socket, file, line) that fill its fix. The spec of each cause says how
it is decided from those findings, how it pages, where its runbooks are, and which fault of the demo
catalogue injects it. ``diagnose``, ``badgateway_cause``, the alert rules, the dashboards and the
runbook index are all derived from the specs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

Severity = Literal["critical", "warning"]


class Cause(StrEnum):
    """Stable cause names shared by metrics, alerts, dashboards and ``diagnose``."""

    PHP_FPM_DOWN = "php_fpm_down"
    PHP_FPM_CONFIG_INVALID = "php_fpm_config_invalid"
    BACKEND_DOWN = "backend_down"
    BACKEND_UNHEALTHY = "backend_unhealthy"
    DATABASE_DOWN = "database_down"
    SOCKET_PATH_MISMATCH = "socket_path_mismatch"
    SOCKET_PERMISSION_DENIED = "socket_permission_denied"
    PHP_FPM_POOL_EXHAUSTED = "php_fpm_pool_exhausted"
    UPSTREAM_TIMEOUT = "upstream_timeout"
    MEMORY_EXHAUSTED = "memory_exhausted"
    DISK_FULL = "disk_full"
    NGINX_CONFIG_INVALID = "nginx_config_invalid"
    NGINX_DOWN = "nginx_down"
    UPSTREAM_HEADER_TOO_BIG = "upstream_header_too_big"
    PHP_FPM_WORKERS_CRASHING = "php_fpm_workers_crashing"
    UPSTREAM_REQUEST_KILLED = "upstream_request_killed"
    LISTEN_BACKLOG_FULL = "listen_backlog_full"
    UPSTREAM_PROTOCOL_MISMATCH = "upstream_protocol_mismatch"
    UPSTREAM_TLS_FAILED = "upstream_tls_failed"
    NGINX_CONNECTIONS_EXHAUSTED = "nginx_connections_exhausted"
    SELINUX_DENIED = "selinux_denied"
    UPSTREAM_HOST_NOT_FOUND = "upstream_host_not_found"


UNEXPLAINED = "unexplained"
"""The ``cause`` label of ``badgateway_cause`` for 502/504s that no cause explains (not a :class:`Cause`:
it has no fix of its own, and the symptom alert pages for it)."""


class Verdict(StrEnum):
    """How a runbook step came out."""

    OK = "ok"
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"


FACT_LABELS: tuple[str, ...] = ("unit", "socket", "file", "line")
"""The label names of ``badgateway_cause_info`` besides ``cause`` and ``fix``."""


@dataclass(frozen=True)
class Facts:
    """Bounded values from the evidence that fill a fix and label ``badgateway_cause_info``.

    Every value comes from the configuration, discovery or the host's own files (a unit name, a
    socket path, a configuration file and line), never from a log line or a request, so a cause
    never creates more than a handful of series.
    """

    unit: str = ""
    socket: str = ""
    file: str = ""
    line: int | None = None

    def labels(self) -> tuple[str, ...]:
        """The values in :data:`FACT_LABELS` order."""
        return (self.unit, self.socket, self.file, "" if self.line is None else str(self.line))


@dataclass(frozen=True)
class Finding:
    """One runbook step as checked on this host."""

    step: str
    title: str
    verdict: Verdict
    evidence: tuple[str, ...] = ()
    cause: Cause | None = None
    fix: tuple[str, ...] = ()
    facts: Facts = field(default_factory=Facts)
    latent: bool = False
    """A warning about the next reload, restart or reboot (not enabled at boot, a pool that will lock
    nginx out): nothing fails now, the next restart will."""

    @property
    def failing_cause(self) -> Cause | None:
        """The cause this finding is evidence of, when the step failed."""
        return self.cause if self.verdict is Verdict.FAIL else None


Decide = Callable[[Cause, Sequence[Finding]], tuple[Finding, ...]]


def failing_findings(cause: Cause, findings: Sequence[Finding]) -> tuple[Finding, ...]:
    """The default decision: every failing step that names ``cause``."""
    return tuple(f for f in findings if f.failing_cause is cause)


@dataclass(frozen=True)
class AlertText:
    """How the cause pages. ``{instance}`` stands for the alert's instance in both texts."""

    summary: str
    meaning: str
    """What is broken and what nginx answers, without host-specific names: those come with the fix."""
    for_seconds: int
    severity: Severity = "critical"
    labels: tuple[tuple[str, str], ...] = ()
    """Extra alert labels, each ``(label, name of a label template in the mixin)``."""


@dataclass(frozen=True)
class Inhibition:
    """This cause explains another alert on the same host: Alertmanager mutes that one."""

    target_alerts: tuple[str, ...]
    target_labels: tuple[tuple[str, str], ...] = ()
    why: str = ""


@dataclass(frozen=True)
class CauseSpec:
    """Everything about one cause of a 502/504, as data."""

    cause: Cause
    alert: str
    title: str
    status_code: int
    evidence: tuple[str, ...]
    """The collectors whose results decide it (``badgateway_collector_success{collector}``)."""
    page: AlertText
    faults: tuple[str, ...]
    """Names of the faults in the demo catalogue that inject it for real."""
    explains: tuple[Inhibition, ...] = ()
    decide: Decide = failing_findings
    latent_while_serving: bool = False
    """Nothing answers 502 yet while nginx still serves: it will on the next reload or restart."""
    serving: str = "nginx"
    """Whose serving keeps a ``latent_while_serving`` cause latent (``nginx``, ``php_fpm``, ``backend``)."""

    @property
    def runbooks(self) -> tuple[str, str]:
        """The English and the Russian runbook, relative to the repository."""
        return f"docs/runbooks/{self.alert}.md", f"docs/runbooks/ru/{self.alert}.md"

    @property
    def runbook_path(self) -> str:
        return self.runbooks[0]
