"""Prometheus alerting and recording rules, generated from :mod:`exporter.causes`.

``badgateway-exporter rules render`` writes ``rules/badgateway.rules.yml``: one alert per cause of
:data:`exporter.causes.CAUSES` (named as the table names it), the gateway-errors symptom, preventive
warnings and the exporter's own health. Thresholds, unit names, the runbook base URL and a scale
factor for every ``for:`` are settings, so the rules can be rendered for another site without
editing YAML by hand::

    badgateway-exporter rules render --out rules \\
        --runbook-base-url https://wiki.example.org/runbooks \\
        --set gateway_error_rate=0.2 --set for.PhpFpmDown=2m
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import shutil
import subprocess
import sys
import tempfile
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from exporter.causes import CAUSES, Cause

RULES_FILE = "badgateway.rules.yml"
DEFAULT_RUNBOOK_BASE_URL = "https://runbooks.example.org/badgateway-exporter"

Severity = Literal["critical", "warning"]
Category = Literal["cause", "symptom", "warning", "exporter"]

_DURATION_RE = re.compile(r"^(?:\d+(?:ms|s|m|h|d|w|y))+$")
_DURATION_PART_RE = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


class RulesError(Exception):
    """Invalid input to the rules command; the message is one line for the user."""


def parse_duration(text: str) -> float:
    """Seconds in a Prometheus duration such as ``1m30s``."""
    if not _DURATION_RE.match(text):
        raise RulesError(f"{text!r} is not a Prometheus duration (e.g. 90s, 2m, 1h30m)")
    return float(sum(int(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART_RE.findall(text)))


def format_duration(seconds: float) -> str:
    """The shortest Prometheus duration for whole ``seconds`` (``90`` -> ``1m30s``)."""
    rest = round(seconds)
    if rest <= 0:
        return "0s"
    parts = []
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            parts.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(parts)


@dataclass(frozen=True)
class Settings:
    """Everything a rendering depends on. Keys are settable with ``--set KEY=VALUE``."""

    runbook_base_url: str = DEFAULT_RUNBOOK_BASE_URL
    for_scale: float = 1.0
    exporter_job: str = "badgateway"
    front_target: str = "front"
    backend_target: str = "backend"
    php_fpm_unit: str = "php8.3-fpm"
    php_fpm_unit_regex: str = r"php[0-9.]*-fpm(\.service)?"
    backend_unit: str = "iiko-backend"
    backend_unit_regex: str = r"iiko-backend(\.service)?"
    nginx_unit: str = "nginx"
    nginx_unit_regex: str = r"nginx(\.service)?"
    nginx_site_config: str = "/etc/nginx/sites-available/iiko-base"
    php_fpm_pool_config: str = "/etc/php/8.3/fpm/pool.d/www.conf"
    gateway_error_rate: float = 0.05
    error_rate_window: str = "5m"
    oom_window: str = "30m"
    disk_fill_window: str = "6h"
    disk_fill_horizon: str = "24h"
    disk_fill_ratio: float = 0.25
    for_overrides: dict[str, str] = field(default_factory=dict)


SETTING_KEYS: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(Settings) if f.name not in {"for_overrides"}
)


@dataclass(frozen=True)
class AlertSpec:
    """One alerting rule before rendering."""

    name: str
    expr: str
    for_seconds: int
    severity: Severity
    cause: str
    category: Category
    summary: str
    description: str
    labels: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------- Go-template helpers


def _q(promql: str, *more: str) -> str:
    """A ``query`` call for Prometheus templates.

    Without ``more``, each ``%q`` in ``promql`` becomes the instance; otherwise the ``%q`` take
    ``$labels.instance`` and then the template values in ``more``, in order.
    """
    if not more and promql.count("%q") > 1:
        promql = promql.replace("%q", "%[1]q")
    args = " ".join(("$labels.instance", *more))
    return f"query (printf `{promql}` {args})"


def _unit_var(default: str, regex: str) -> str:
    """Template code setting ``$unit`` to the loaded systemd unit matching ``regex`` (or ``default``)."""
    return (
        f'{{{{ $unit := "{default}" }}}}'
        f"{{{{ range {_q(f'badgateway_unit_loaded{{instance=%q,unit=~{_go_quote(regex)}}} == 1')} }}}}"
        f'{{{{ $unit = reReplaceAll "[.]service$" "" .Labels.unit }}}}{{{{ end }}}}'
    )


def _go_quote(text: str) -> str:
    """A PromQL double-quoted string literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _join(query: str, item: str, empty: str = "") -> str:
    """Template code listing every sample of ``query`` as ``item``, separated by commas."""
    if not empty:
        return f"{{{{ range $i, $s := {query} }}}}{{{{ if $i }}}}, {{{{ end }}}}{item}{{{{ end }}}}"
    body = f"{{{{ range $i, $s := . }}}}{{{{ if $i }}}}, {{{{ end }}}}{item}{{{{ end }}}}"
    return f"{{{{ with {query} }}}}{body}{{{{ else }}}}{empty}{{{{ end }}}}"


def _first(query: str, fmt: str, empty: str = "unknown") -> str:
    """Template code printing the first sample of ``query`` through ``fmt`` (e.g. ``humanize``)."""
    pipe = f" | {fmt}" if fmt else ""
    return f"{{{{ with {query} }}}}{{{{ . | first | value{pipe} }}}}{{{{ else }}}}{empty}{{{{ end }}}}"


# ---------------------------------------------------------------- the rules


def _cause_alert(info_cause: Cause, s: Settings) -> AlertSpec:
    info = CAUSES[info_cause]
    inst = "{{ $labels.instance }}"
    php_unit = _unit_var(s.php_fpm_unit, s.php_fpm_unit_regex)
    backend_unit = _unit_var(s.backend_unit, s.backend_unit_regex)
    nginx_unit = _unit_var(s.nginx_unit, s.nginx_unit_regex)
    window = s.error_rate_window
    failures = _join(
        _q("badgateway_fastcgi_probe_failure{instance=%q} == 1"),
        "{{ $s.Labels.socket }} ({{ $s.Labels.reason }})",
        "none reported",
    )
    procs = _first(_q('sum(badgateway_processes{instance=%q,service="php_fpm"})'), "")
    backend = _go_quote(s.backend_target)
    front = _go_quote(s.front_target)
    severity: Severity = "critical"
    labels: dict[str, str] = {}
    summary: str
    description: str
    if info_cause is Cause.PHP_FPM_DOWN:
        for_seconds = 60
        summary = f"PHP-FPM is down on {inst}"
        description = (
            f"{php_unit}PHP-FPM is not running on {inst}: nginx answers 502 for every PHP page.\n"
            f"Failing FastCGI probes: {failures}; php-fpm processes: {procs}.\n"
            f"Fix: sudo systemctl start {{{{ $unit }}}} && sudo systemctl enable {{{{ $unit }}}}"
            " (RHEL: php-fpm); the reason is in sudo journalctl -u {{ $unit }} -n 50."
        )
    elif info_cause is Cause.BACKEND_DOWN:
        for_seconds = 60
        down = _join(
            _q(f"badgateway_http_up{{instance=%q,target=~{backend}}} == 0"),
            "{{ $s.Labels.target }}",
            "none",
        )
        bprocs = _first(_q('sum(badgateway_processes{instance=%q,service="backend"})'), "")
        summary = f"The Python backend is down on {inst}"
        description = (
            f"{backend_unit}The Python backend on {inst} does not answer (probes down: {down};"
            f" backend processes: {bprocs}): nginx answers 502 for what it proxies there.\n"
            "Fix: sudo systemctl start {{ $unit }} && sudo systemctl enable {{ $unit }};"
            " the reason is in sudo journalctl -u {{ $unit }} -n 50."
        )
        labels["oom_kill"] = (
            f"{{{{ with {_q(f'increase(badgateway_oom_kills_total{{instance=%q}}[{s.oom_window}]) > 0')} }}}}"
            "recent{{ else }}none{{ end }}"
        )
    elif info_cause is Cause.BACKEND_UNHEALTHY:
        for_seconds = 120
        codes = _join(
            _q(f"badgateway_http_status_code{{instance=%q,target=~{backend}}} >= 500"),
            "{{ $s.Labels.target }} answers HTTP {{ $s.Value }}",
            "the probe gets no valid answer",
        )
        summary = f"The Python backend answers with errors on {inst}"
        description = (
            f"{backend_unit}The Python backend on {inst} is running but unhealthy: {codes}.\n"
            "Fix: read sudo journalctl -u {{ $unit }} -n 50 (database, configuration, dependencies),"
            " fix the error, then sudo systemctl restart {{ $unit }}."
        )
    elif info_cause is Cause.SOCKET_PATH_MISMATCH:
        for_seconds = 60
        missing = _join(_q("badgateway_socket_exists{instance=%q} == 0"), "{{ $s.Labels.socket }}", "none")
        present = _join(_q("badgateway_socket_exists{instance=%q} == 1"), "{{ $s.Labels.socket }}", "none")
        summary = f"nginx points at a PHP-FPM socket that does not exist on {inst}"
        description = (
            f"nginx on {inst} passes PHP to a socket that does not exist ({missing});"
            f" PHP-FPM listens on {present}.\n"
            "Fix: php -v; sudo find /var/run/php/ -name '*.sock'; set fastcgi_pass to the existing socket"
            f" in {s.nginx_site_config} (or listen = in {s.php_fpm_pool_config}),"
            " then sudo nginx -t && sudo systemctl reload nginx."
        )
    elif info_cause is Cause.SOCKET_PERMISSION_DENIED:
        for_seconds = 60
        denied = _join(
            _q("badgateway_socket_accessible{instance=%q} == 0"),
            "{{ $s.Labels.user }} may not connect to {{ $s.Labels.socket }}",
            "see the FastCGI probe",
        )
        owners = _join(
            _q("badgateway_socket_info{instance=%q}"),
            "{{ $s.Labels.socket }} is {{ $s.Labels.owner }}:{{ $s.Labels.group }} {{ $s.Labels.mode }}",
            "unknown",
        )
        summary = f"nginx workers may not connect to the PHP-FPM socket on {inst}"
        description = (
            f"{php_unit}Permission denied on {inst}: {denied} ({owners}); nginx answers 502.\n"
            f"Fix: set listen.owner = www-data, listen.group = www-data, listen.mode = 0660 in"
            f" {s.php_fpm_pool_config} (RHEL: /etc/php-fpm.d/www.conf), then"
            " sudo systemctl restart {{ $unit }}; check every parent folder with namei -l <socket>."
        )
    elif info_cause is Cause.PHP_FPM_POOL_EXHAUSTED:
        for_seconds = 120
        pools = _join(
            _q("badgateway_phpfpm_active_processes{instance=%q}"),
            "pool {{ $s.Labels.pool }} ({{ $s.Labels.socket }}) {{ $s.Value }} busy",
            "pool status unavailable (every worker busy or hung)",
        )
        queue = _first(_q("sum(badgateway_phpfpm_listen_queue{instance=%q})"), "", "unknown")
        reached = _first(
            _q("sum(increase(badgateway_phpfpm_max_children_reached_total{instance=%q}[15m]))"),
            "humanize",
            "unknown",
        )
        summary = f"Every PHP-FPM worker is busy on {inst}"
        description = (
            f"{php_unit}The PHP-FPM pool on {inst} is exhausted: {pools}; listen queue {queue};"
            f" max_children reached {reached} times in 15m. nginx answers 504.\n"
            f"Fix: find slow scripts (slowlog, sudo tail -50 /var/log/php8.3-fpm.log); if memory allows,"
            f" raise pm.max_children in {s.php_fpm_pool_config}, then sudo systemctl reload {{{{ $unit }}}}."
        )
    elif info_cause is Cause.UPSTREAM_TIMEOUT:
        for_seconds = 300
        severity = "warning"
        slow = _join(
            _q(
                "sort_desc(sum by (upstream) (rate(badgateway_nginx_upstream_errors_total{instance=%q,"
                f'kind=~"connect_timeout|read_timeout"}}[{window}])) > 0)'
            ),
            '{{ $s.Labels.upstream }} {{ printf "%.2f" $s.Value }}/s',
            "none in nginx's log",
        )
        probe = _join(
            _q("sort_desc(badgateway_http_probe_duration_seconds{instance=%q})"),
            "{{ $s.Labels.target }} {{ $s.Value | humanizeDuration }}",
            "none",
        )
        summary = f"An upstream answers too slowly on {inst} (nginx answers 504)"
        description = (
            f"Upstreams time out on {inst}: timeouts {slow}; probe durations (slowest first) {probe}.\n"
            "Fix: find why the upstream is slow (sudo tail -50 /var/log/nginx/error.log, slow queries, the"
            " PHP-FPM slowlog); if slow is legitimate, raise fastcgi_read_timeout / proxy_read_timeout"
            f" (e.g. 60s) in {s.nginx_site_config}, then sudo nginx -t && sudo systemctl reload nginx."
        )
    elif info_cause is Cause.MEMORY_EXHAUSTED:
        for_seconds = 120
        avail = _first(
            _q("badgateway_memory_available_bytes{instance=%q} / badgateway_memory_total_bytes{instance=%q}"),
            "humanizePercentage",
        )
        swap = _first(_q("badgateway_swap_free_bytes{instance=%q}"), "humanize1024")
        ooms = _first(
            _q(f"increase(badgateway_oom_kills_total{{instance=%q}}[{s.oom_window}])"), "humanize", "0"
        )
        summary = f"{inst} is out of memory"
        description = (
            f"Memory is exhausted on {inst}: {avail} available, {swap}B swap free,"
            f" {ooms} OOM kills in {s.oom_window}. The OOM killer stops php-fpm or the backend: 502.\n"
            "Fix: free -h; ps aux --sort=-rss | head; sudo dmesg -T | grep -i oom; lower pm.max_children"
            f" in {s.php_fpm_pool_config} or add memory/swap, then restart what was killed."
        )
    elif info_cause is Cause.DISK_FULL:
        for_seconds = 120
        disks = _join(
            _q(
                "sort(bottomk(3, badgateway_filesystem_avail_bytes{instance=%q}"
                " / badgateway_filesystem_size_bytes{instance=%q}))"
            ),
            "{{ $s.Labels.mountpoint }} {{ $s.Value | humanizePercentage }} free",
            "unknown",
        )
        inodes = _join(
            _q("badgateway_filesystem_files_free{instance=%q} == 0"),
            "{{ $s.Labels.mountpoint }}",
            "none",
        )
        summary = f"A filesystem the stack writes to is full on {inst}"
        description = (
            f"Disk space is exhausted on {inst}: {disks}; out of inodes: {inodes}."
            " PHP-FPM cannot create its socket or sessions, nginx cannot buffer: 502.\n"
            "Fix: df -h; df -i; sudo du -xh /var/log | sort -h | tail; sudo journalctl --vacuum-size=200M;"
            " remove or rotate what grew, then sudo systemctl restart the failed service."
        )
    elif info_cause is Cause.NGINX_CONFIG_INVALID:
        for_seconds = 300
        severity = "warning"
        fronts = _join(
            _q(f"badgateway_http_status_code{{instance=%q,target=~{front}}}"),
            "{{ $s.Labels.target }} HTTP {{ $s.Value }}",
            "none",
        )
        valid = _first(_q("badgateway_nginx_config_valid{instance=%q}"), "", "unknown")
        summary = f"The nginx configuration on {inst} fails nginx -t"
        description = (
            f"nginx -t fails on {inst} (badgateway_nginx_config_valid {valid}; front probe: {fronts}):"
            " the running nginx keeps its old configuration, but the next"
            " reload or restart will fail and take the site down.\n"
            f"Fix: sudo nginx -t shows the file and line; fix it (e.g. sudo nano {s.nginx_site_config}),"
            " run sudo nginx -t again, then sudo systemctl reload nginx."
        )
    elif info_cause is Cause.NGINX_DOWN:
        for_seconds = 60
        nprocs = _first(_q('sum(badgateway_processes{instance=%q,service="nginx"})'), "")
        fronts = _join(
            _q(f"badgateway_http_up{{instance=%q,target=~{front}}} == 0"), "{{ $s.Labels.target }}", "none"
        )
        summary = f"nginx is down on {inst}"
        description = (
            f"{nginx_unit}nginx is not running on {inst} (nginx processes: {nprocs};"
            f" front probes down: {fronts}): the site does not answer at all.\n"
            "Fix: sudo nginx -t && sudo systemctl start {{ $unit }} && sudo systemctl enable {{ $unit }};"
            " the reason is in sudo journalctl -u {{ $unit }} -n 50."
        )
    else:  # pragma: no cover - a new Cause without a rule is caught by the tests
        raise RulesError(f"cause {info_cause.value!r} has no alert rule in exporter/rules.py")
    return AlertSpec(
        name=info.alert,
        expr=f'max by (instance) (badgateway_cause{{cause="{info_cause.value}"}}) == 1',
        for_seconds=for_seconds,
        severity=severity,
        cause=info_cause.value,
        category="cause",
        summary=summary,
        description=description,
        labels=labels,
    )


def _other_alerts(s: Settings) -> list[AlertSpec]:
    inst = "{{ $labels.instance }}"
    window = s.error_rate_window
    front = _go_quote(s.front_target)
    kinds = _join(
        _q(
            "sort_desc(sum by (kind, upstream) (rate(badgateway_nginx_upstream_errors_total{instance=%q}"
            f"[{window}])) > 0)"
        ),
        '{{ $s.Labels.kind }} from {{ $s.Labels.upstream }} {{ printf "%.2f" $s.Value }}/s',
        "none in nginx's log",
    )
    statuses = _join(
        _q(f"badgateway_http_status_code{{instance=%q,target=~{front}}}"),
        "{{ $s.Labels.target }} HTTP {{ $s.Value }}",
        "no front probe",
    )
    horizon = parse_duration(s.disk_fill_horizon)
    took = _q("badgateway_collector_duration_seconds{instance=%q,collector=%q}", "$labels.collector")
    since = _q("badgateway_unit_active_since_seconds{instance=%q,unit=%q}", "$labels.unit")
    return [
        AlertSpec(
            name="NginxGatewayErrors",
            expr=(
                "(\n"
                f"  sum by (instance) (rate(badgateway_nginx_upstream_errors_total[{window}]))"
                f" > {s.gateway_error_rate:g}\n"
                "  or\n"
                f"  max by (instance) (badgateway_http_status_code{{target=~{front}}} == 502"
                f" or badgateway_http_status_code{{target=~{front}}} == 504)\n"
                ")\n"
                # While a cause fires, Alertmanager's inhibition silences this alert. Just after the
                # fix, the errors logged during it are still in the rate window and the round that saw
                # the fix may still carry a 502 probed a moment before: those are the healed cause's,
                # not an unexplained symptom.
                "unless on (instance) (\n"
                f"  max by (instance) (max_over_time(badgateway_cause[{window}])) == 1\n"
                "  unless on (instance) max by (instance) (badgateway_cause) == 1\n"
                ")"
            ),
            for_seconds=120,
            severity="critical",
            cause="unknown",
            category="symptom",
            summary=f"nginx answers 502/504 on {inst} and no cause alert explains it",
            description=(
                f"nginx on {inst} is failing to reach its upstreams: {kinds}; front probe: {statuses}."
                " No cause alert fires for this instance (any of them would inhibit this one).\n"
                "Fix: run sudo badgateway-exporter diagnose; read sudo tail -50 /var/log/nginx/error.log"
                " and follow the runbook steps 1-5."
            ),
        ),
        AlertSpec(
            name="UnitNotEnabledAtBoot",
            expr=(
                "max by (instance, unit) (badgateway_unit_enabled == 0)\n"
                "and on (instance, unit)\n"
                'max by (instance, unit) (badgateway_unit_state{state="active"} == 1)'
            ),
            for_seconds=900,
            severity="warning",
            cause="unit_not_enabled",
            category="warning",
            summary=f"{{{{ $labels.unit }}}} runs but is not enabled at boot on {inst}",
            description=(
                f"{{{{ $labels.unit }}}} is active on {inst}"
                f" (since {_first(since, 'humanizeTimestamp')}) but not enabled: after the next reboot it"
                " stays down and nginx answers 502.\n"
                "Fix: sudo systemctl enable {{ $labels.unit }}"
            ),
        ),
        AlertSpec(
            name="DiskWillFillSoon",
            expr=(
                "max by (instance, mountpoint) (badgateway_filesystem_avail_bytes"
                f" / badgateway_filesystem_size_bytes < {s.disk_fill_ratio:g})\n"
                "and on (instance, mountpoint)\n"
                "max by (instance, mountpoint) ("
                f"predict_linear(badgateway_filesystem_avail_bytes[{s.disk_fill_window}], {horizon:g}) < 0)"
            ),
            for_seconds=3600,
            severity="warning",
            cause="disk_full",
            category="warning",
            summary=f"{{{{ $labels.mountpoint }}}} on {inst} will be full within {s.disk_fill_horizon}",
            description=(
                f"{{{{ $labels.mountpoint }}}} on {inst} has {{{{ $value | humanizePercentage }}}} free and,"
                f" at the rate of the last {s.disk_fill_window}, fills up within {s.disk_fill_horizon}."
                " A full disk stops PHP-FPM and nginx (502).\n"
                "Fix: sudo du -xh {{ $labels.mountpoint }} | sort -h | tail; rotate or remove what grows"
                " (logs: sudo journalctl --vacuum-size=200M, logrotate)."
            ),
        ),
        AlertSpec(
            name="BadGatewayExporterDown",
            expr=f'max by (instance) (up{{job=~"{s.exporter_job}"}}) == 0',
            for_seconds=300,
            severity="warning",
            cause="exporter",
            category="exporter",
            summary=f"badgateway-exporter on {inst} cannot be scraped",
            description=(
                f"Prometheus cannot scrape badgateway-exporter on {inst} (up {{{{ $value }}}}):"
                " every 502 cause alert for this instance is blind.\n"
                "Fix: sudo systemctl status badgateway-exporter;"
                " sudo journalctl -u badgateway-exporter -n 50;"
                f" curl -s http://{inst}/metrics | head"
            ),
        ),
        AlertSpec(
            name="BadGatewayCollectorFailing",
            expr="max by (instance, collector) (badgateway_collector_success == 0)",
            for_seconds=900,
            severity="warning",
            cause="exporter",
            category="exporter",
            summary=f"The {{{{ $labels.collector }}}} collector fails on {inst}",
            description=(
                f"badgateway-exporter's {{{{ $labels.collector }}}} collector on {inst} fails"
                f" (success {{{{ $value }}}}, last run {_first(took, 'humanizeDuration')})"
                ": it may lack permissions (e.g. nginx -t needs root), the causes it checks are not seen.\n"
                "Fix: sudo badgateway-exporter diagnose shows the error;"
                " sudo journalctl -u badgateway-exporter -n 50."
            ),
        ),
    ]


def alert_specs(settings: Settings) -> list[AlertSpec]:
    """Every alert, cause alerts first in the order of :data:`CAUSES`."""
    return [_cause_alert(cause, settings) for cause in CAUSES] + _other_alerts(settings)


def recording_rules(settings: Settings) -> list[dict[str, str]]:
    """Recording rules for dashboards; the alerts read raw series, so there is no cross-group lag."""
    w = settings.error_rate_window
    return [
        {
            "record": f"instance:badgateway_nginx_upstream_errors:rate{w}",
            "expr": f"sum by (instance) (rate(badgateway_nginx_upstream_errors_total[{w}]))",
        },
        {
            "record": f"instance_kind_upstream:badgateway_nginx_upstream_errors:rate{w}",
            "expr": f"sum by (instance, kind, upstream) (rate(badgateway_nginx_upstream_errors_total[{w}]))",
        },
        {
            "record": "instance:badgateway_causes_active:count",
            "expr": "sum by (instance) (badgateway_cause)",
        },
        {
            "record": "instance:badgateway_memory_available:ratio",
            "expr": (
                "max by (instance) (badgateway_memory_available_bytes)"
                " / max by (instance) (badgateway_memory_total_bytes)"
            ),
        },
        {
            "record": "instance_mountpoint:badgateway_filesystem_avail:ratio",
            "expr": (
                "max by (instance, mountpoint) (badgateway_filesystem_avail_bytes)"
                " / max by (instance, mountpoint) (badgateway_filesystem_size_bytes)"
            ),
        },
        {
            "record": "instance_pool:badgateway_phpfpm_busy_workers:ratio",
            "expr": (
                "max by (instance, socket, pool) (badgateway_phpfpm_active_processes)"
                " / max by (instance, socket, pool) (badgateway_phpfpm_total_processes)"
            ),
        },
    ]


def scaled_for(spec: AlertSpec, settings: Settings) -> float:
    """The ``for:`` of ``spec`` in seconds after overrides and the scale factor."""
    override = settings.for_overrides.get(spec.name)
    base = parse_duration(override) if override is not None else float(spec.for_seconds)
    return base * settings.for_scale


def _alert_rule(spec: AlertSpec, settings: Settings) -> dict[str, Any]:
    rule: dict[str, Any] = {"alert": spec.name, "expr": spec.expr}
    for_seconds = scaled_for(spec, settings)
    if round(for_seconds) > 0:
        rule["for"] = format_duration(for_seconds)
    base = settings.runbook_base_url.rstrip("/")
    rule["labels"] = {
        "severity": spec.severity,
        "cause": spec.cause,
        "category": spec.category,
        **spec.labels,
    }
    rule["annotations"] = {
        "summary": spec.summary,
        "description": spec.description,
        "runbook_url": f"{base}/{spec.name}.md",
        "runbook_url_ru": f"{base}/ru/{spec.name}.md",
    }
    return rule


def rule_groups(settings: Settings) -> dict[str, Any]:
    """The rule file as a mapping."""
    specs = alert_specs(settings)
    groups: list[dict[str, Any]] = [
        {"name": "badgateway.recording", "rules": recording_rules(settings)},
        # The symptom is evaluated in the causes' group, right after them: a healed cause and the
        # symptom it inhibited then reach Alertmanager resolved together. In a group of its own,
        # evaluated at another moment of the interval, the symptom could still be firing, and no
        # longer inhibited, for up to one evaluation interval after its cause resolved.
        {
            "name": "badgateway.causes",
            "rules": [_alert_rule(s, settings) for s in specs if s.category == "cause"]
            + [_alert_rule(s, settings) for s in specs if s.category == "symptom"],
        },
        {
            "name": "badgateway.warnings",
            "rules": [_alert_rule(s, settings) for s in specs if s.category in ("warning", "exporter")],
        },
    ]
    return {"groups": groups}


class _Dumper(yaml.SafeDumper):
    pass


def _str_representer(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str_representer)


def _changed_settings(settings: Settings) -> list[str]:
    default = Settings()
    out = []
    for key in SETTING_KEYS:
        if getattr(settings, key) != getattr(default, key):
            out.append(f"{key}={getattr(settings, key)}")
    out.extend(f"for.{name}={value}" for name, value in sorted(settings.for_overrides.items()))
    return out


def render(settings: Settings) -> dict[str, str]:
    """File name -> text of every rule file."""
    changed = _changed_settings(settings)
    header = [
        "# Generated by `badgateway-exporter rules render` from exporter/rules.py and exporter/causes.py.",
        "# Do not edit by hand: render again with other settings (see docs/alerting.md).",
        f"# Settings: {', '.join(changed) if changed else 'defaults'}",
    ]
    body = yaml.dump(
        rule_groups(settings), Dumper=_Dumper, sort_keys=False, width=1_000_000, allow_unicode=True
    )
    return {RULES_FILE: "\n".join(header) + "\n" + body}


_METRIC_RE = re.compile(r"(?<![\w:])badgateway_[a-z0-9_]+(?![\w:])")


def metric_names(settings: Settings | None = None) -> set[str]:
    """Every ``badgateway_*`` series name the rendered rules read (expressions and templates).

    Recording rule names (``level:metric:operation``) are not included. A real-stack test can
    assert that each of these is in the exporter's ``/metrics`` output.
    """
    text = "\n".join(render(settings or Settings()).values())
    return set(_METRIC_RE.findall(text))


# ---------------------------------------------------------------- command line


def _convert(key: str, raw: str) -> object:
    hints = typing.get_type_hints(Settings)
    tp = hints[key]
    if tp is float:
        try:
            value = float(raw)
        except ValueError:
            raise RulesError(f"--set {key}: expected a number, got {raw!r}") from None
        if not math.isfinite(value):
            raise RulesError(f"--set {key}: expected a finite number, got {raw!r}")
        return value
    return raw


def settings_from_args(
    assignments: Sequence[str], runbook_base_url: str | None = None, for_scale: float | None = None
) -> Settings:
    """Build :class:`Settings` from ``KEY=VALUE`` strings and the two dedicated flags."""
    values: dict[str, object] = {}
    overrides: dict[str, str] = {}
    alert_names = {spec.name for spec in alert_specs(Settings())}
    for item in assignments:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise RulesError(f"--set {item!r}: expected KEY=VALUE")
        if key.startswith("for."):
            name = key[4:]
            if name not in alert_names:
                known = ", ".join(sorted(alert_names))
                raise RulesError(f"--set {key}: no alert named {name!r} (known: {known})")
            parse_duration(raw)
            overrides[name] = raw
            continue
        if key not in SETTING_KEYS:
            raise RulesError(f"--set {key}: unknown key (known: {', '.join(SETTING_KEYS)}, for.<AlertName>)")
        values[key] = _convert(key, raw)
    if runbook_base_url is not None:
        values["runbook_base_url"] = runbook_base_url
    if for_scale is not None:
        values["for_scale"] = for_scale
    settings = Settings(**values, for_overrides=overrides)  # type: ignore[arg-type]
    _validate(settings)
    return settings


def _validate(s: Settings) -> None:
    if not math.isfinite(s.for_scale) or s.for_scale < 0:
        raise RulesError(f"--for-scale: must be 0 or more, got {s.for_scale:g}")
    if not re.match(r"^[a-z][a-z0-9+.-]*://\S+$", s.runbook_base_url):
        raise RulesError(f"--runbook-base-url: expected an absolute URL, got {s.runbook_base_url!r}")
    if s.gateway_error_rate < 0:
        raise RulesError("--set gateway_error_rate: must be 0 or more")
    if not 0 < s.disk_fill_ratio <= 1:
        raise RulesError("--set disk_fill_ratio: must be in (0, 1]")
    for key in ("error_rate_window", "oom_window", "disk_fill_window", "disk_fill_horizon"):
        try:
            parse_duration(getattr(s, key))
        except RulesError as exc:
            raise RulesError(f"--set {key}: {exc}") from None
    for key in (
        "php_fpm_unit_regex",
        "backend_unit_regex",
        "nginx_unit_regex",
        "front_target",
        "backend_target",
        "exporter_job",
    ):
        value = getattr(s, key)
        if not value:
            raise RulesError(f"--set {key}: must not be empty")
        try:
            re.compile(value)
        except re.error as exc:
            raise RulesError(f"--set {key}: invalid regular expression: {exc}") from None
    for key in ("php_fpm_unit", "backend_unit", "nginx_unit", "nginx_site_config", "php_fpm_pool_config"):
        value = getattr(s, key)
        if not value or any(c in value for c in '"`{}\n'):
            raise RulesError(f"--set {key}: must be non-empty without quotes, braces or newlines")


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:
        raise RulesError(message)


def _parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(prog="badgateway-exporter rules", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("render", "write the rule files"),
        ("check", "verify that the rule files in --out equal a fresh render and pass promtool"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--out", default="rules", help="folder of the rule files (default: rules)")
        p.add_argument(
            "--runbook-base-url", help=f"base of runbook_url (default: {DEFAULT_RUNBOOK_BASE_URL})"
        )
        p.add_argument("--for-scale", type=float, help="multiply every for: by this factor (default: 1)")
        p.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help=f"override a setting; keys: {', '.join(SETTING_KEYS)}, for.<AlertName>=DURATION",
        )
    return parser


def stale_files(out: Path, rendered: dict[str, str], command: str) -> list[str]:
    """One problem line for every rendered file in ``out`` that is missing or differs from ``rendered``."""
    problems = []
    for name, text in rendered.items():
        path = out / name
        try:
            current = path.read_text(encoding="utf-8")
        except OSError as exc:
            problems.append(f"{path}: cannot read: {exc.strerror or exc}")
            continue
        if current != text:
            problems.append(f"{path}: differs from a fresh render (run: {command})")
    return problems


def write_files(out: Path, rendered: dict[str, str]) -> None:
    """Write every rendered file into ``out`` and print its path; :class:`RulesError` when it cannot."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, text in rendered.items():
            (out / name).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise RulesError(f"{exc.filename or out}: cannot write: {exc.strerror or exc}") from None
    for name in rendered:
        print(out / name)


def _check(out: Path, rendered: dict[str, str]) -> list[str]:
    problems = stale_files(out, rendered, "badgateway-exporter rules render")
    promtool = shutil.which("promtool")
    if promtool is not None:
        with tempfile.TemporaryDirectory() as tmp:
            files = []
            for name, text in rendered.items():
                (Path(tmp) / name).write_text(text, encoding="utf-8")
                files.append(str(Path(tmp) / name))
            proc = subprocess.run(
                [promtool, "check", "rules", *files], capture_output=True, text=True, timeout=60, check=False
            )
            if proc.returncode != 0:
                problems.append("promtool check rules: " + " ".join(proc.stderr.split()))
    return problems


def main(argv: list[str]) -> int:
    """``badgateway-exporter rules render|check ...``; exit 0, 1 (check found drift) or 2 (bad input)."""
    try:
        args = _parser().parse_args(argv)
        settings = settings_from_args(args.set, args.runbook_base_url, args.for_scale)
        rendered = render(settings)
        out = Path(args.out)
        if args.command == "check":
            problems = _check(out, rendered)
            for problem in problems:
                print(problem, file=sys.stderr)
            return 1 if problems else 0
        write_files(out, rendered)
        return 0
    except RulesError as exc:
        print(f"badgateway-exporter rules: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
