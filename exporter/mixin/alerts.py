"""The alerting rules as data: one alert per cause spec of :data:`exporter.causes.SPECS`, then a table of
the symptom, the preventive warnings and the exporter's own health.

A cause alert says what the exporter's diagnosis says: its description is the spec's meaning, then,
for every ``badgateway_cause_info`` sample of the instance and cause, the facts of the evidence (unit,
socket, file and line) and the exact fix ``badgateway-exporter diagnose`` prints. Nothing of a site
is written into the rules.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from exporter.causes import SPECS, CauseSpec
from exporter.causes.model import Severity
from exporter.mixin.settings import MixinError, Settings, parse_duration
from exporter.mixin.templates import (
    DEFAULT_SCOPE,
    INSTANCE,
    Scope,
    fill,
    first,
    first_label,
    join,
    promql_string,
    query,
    with_instance,
)

Category = Literal["cause", "symptom", "warning", "exporter"]

DIAGNOSE = "sudo badgateway-exporter diagnose"
SYMPTOM = "NginxGatewayErrors"
"""The symptom alert: nginx answers 502/504 and no cause alert explains it."""


@dataclass(frozen=True)
class AlertSpec:
    """One alerting rule before rendering."""

    name: str
    title: str
    expr: str
    for_seconds: int
    severity: Severity
    cause: str
    category: Category
    summary: str
    description: str
    labels: tuple[tuple[str, str], ...] = ()
    """Extra labels: ``(label, template)``."""


# ---------------------------------------------------------------- label templates


@dataclass(frozen=True)
class LabelTemplate:
    """An alert label computed at alert time, named by a spec's ``page.labels``."""

    values: tuple[str, ...]
    template: Callable[[Settings], str]
    meaning: Callable[[Settings], str]


def _recent_oom_kill(s: Settings) -> str:
    recent = query(f"increase(badgateway_oom_kills_total{{instance=%q}}[{s.oom_window}]) > 0", scope=s.scope)
    return f"{{{{ with {recent} }}}}recent{{{{ else }}}}none{{{{ end }}}}"


LABEL_TEMPLATES: dict[str, LabelTemplate] = {
    "recent_oom_kill": LabelTemplate(
        values=("recent", "none"),
        template=_recent_oom_kill,
        meaning=lambda s: (
            f'"recent" when badgateway_oom_kills_total increased in the last {s.oom_window}'
            ' on that instance, "none" otherwise'
        ),
    ),
}


def label_template(spec: CauseSpec, name: str) -> LabelTemplate:
    try:
        return LABEL_TEMPLATES[name]
    except KeyError:
        known = ", ".join(sorted(LABEL_TEMPLATES))
        raise MixinError(f"{spec.alert}: unknown label template {name!r} (known: {known})") from None


# ---------------------------------------------------------------- cause alerts


def cause_expr(spec: CauseSpec) -> str:
    return f'max by (instance) (badgateway_cause{{cause="{spec.cause.value}"}}) == 1'


def cause_description(spec: CauseSpec, scope: Scope = DEFAULT_SCOPE) -> str:
    """The meaning, then what ``diagnose`` found: per finding the facts that are known and the fix.

    Findings are separated by an empty line; without any, one line points at ``diagnose``.
    """
    # Sorted by the fix so that several findings read in the same order at every evaluation.
    selector = f'badgateway_cause_info{{instance=%q,cause="{spec.cause.value}"}}'
    findings = f'sortByLabel "fix" ({query(selector, scope=scope)})'
    facts = (
        "{{ with $f.Labels.unit }}\nUnit: {{ . }}{{ end }}"
        "{{ with $f.Labels.socket }}\nSocket: {{ . }}{{ end }}"
        "{{ with $f.Labels.file }}\nFile: {{ . }}{{ with $f.Labels.line }}:{{ . }}{{ end }}{{ end }}"
    )
    fix = '\nFix:\n  {{ reReplaceAll "\\n" "\\n  " $f.Labels.fix }}'
    fallback = (
        f"\nFix: run {DIAGNOSE} on the host: it names the unit, socket or file and prints the exact commands."
    )
    return (
        f"{with_instance(spec.page.meaning)}"
        f"{{{{ range $i, $f := {findings} }}}}{{{{ if $i }}}}\n{{{{ end }}}}{facts}{fix}"
        f"{{{{ else }}}}{fallback}{{{{ end }}}}"
    )


def cause_alert(spec: CauseSpec, s: Settings) -> AlertSpec:
    """The alert of one cause spec."""
    return AlertSpec(
        name=spec.alert,
        title=spec.title,
        expr=s.scope.expr(cause_expr(spec)),
        for_seconds=spec.page.for_seconds,
        severity=spec.page.severity,
        cause=spec.cause.value,
        category="cause",
        summary=with_instance(spec.page.summary),
        description=cause_description(spec, s.scope),
        labels=tuple((label, label_template(spec, name).template(s)) for label, name in spec.page.labels),
    )


# ---------------------------------------------------------------- the other alerts, as a table


def template_values(s: Settings) -> dict[str, str]:
    """What the ``{name}`` placeholders of :data:`OTHER_ALERTS` stand for."""
    window = s.error_rate_window
    front = promql_string(s.front_target)
    errors = f"badgateway_nginx_upstream_errors_total{{instance=%q}}[{window}]"
    scope = s.scope
    return {
        "instance": INSTANCE,
        "diagnose": DIAGNOSE,
        "window": window,
        "front": front,
        "gateway_error_rate": f"{s.gateway_error_rate:g}",
        "exporter_job": promql_string(s.exporter_job),
        "disk_fill_ratio": f"{s.disk_fill_ratio:g}",
        "disk_fill_window": s.disk_fill_window,
        "disk_fill_horizon": s.disk_fill_horizon,
        "disk_fill_horizon_seconds": f"{parse_duration(s.disk_fill_horizon):g}",
        "upstream_errors": join(
            query(f"sort_desc(sum by (kind, upstream) (rate({errors})) > 0)", scope=scope),
            '{{ $s.Labels.kind }} from {{ $s.Labels.upstream }} {{ printf "%.2f" $s.Value }}/s',
            "none in nginx's log",
        ),
        "front_status": join(
            query(f"badgateway_http_status_code{{instance=%q,target=~{front}}}", scope=scope),
            "{{ $s.Labels.target }} HTTP {{ $s.Value }}",
            "no front probe",
        ),
        "error_log": first_label(
            query(f"sort_desc(sum by (log) (rate({errors})) > 0)", scope=scope), "log", "nginx's error log"
        ),
        "unit_since": first(
            query("badgateway_unit_active_since_seconds{instance=%q,unit=%q}", "$labels.unit", scope=scope),
            "humanizeTimestamp",
        ),
        "collector_took": first(
            query(
                "badgateway_collector_duration_seconds{instance=%q,collector=%q}",
                "$labels.collector",
                scope=scope,
            ),
            "humanizeDuration",
        ),
    }


# The symptom pages only for 502/504s that no cause explains: it is silent while the exporter names
# any cause on the instance, and for the rest of the window after one healed. A cause alert's own
# `for:` may be longer than the symptom's (UpstreamTimeout waits 5m, the symptom 2m): without this
# the symptom would page "cause unknown" before the known cause's alert is allowed to fire. Just
# after a fix, the errors logged during it are still in the rate window and the round that saw the
# fix may still carry a 502 probed a moment before: those are the healed cause's too. Alertmanager's
# inhibition (any cause alert mutes the symptom) stays as a second guard. `cause="unexplained"` is the
# exporter saying that no cause explains them: the symptom is the page for it.
SYMPTOM_EXPR = (
    "(\n"
    "  sum by (instance) (rate(badgateway_nginx_upstream_errors_total[{window}])) > {gateway_error_rate}\n"
    "  or\n"
    "  max by (instance) (badgateway_http_status_code{target=~{front}} == 502"
    " or badgateway_http_status_code{target=~{front}} == 504)\n"
    ")\n"
    "unless on (instance)\n"
    'max by (instance) (max_over_time(badgateway_cause{cause!="unexplained"}[{window}])) == 1'
)

OTHER_ALERTS: tuple[AlertSpec, ...] = (
    AlertSpec(
        name=SYMPTOM,
        title="nginx answers 502/504 and no cause alert explains it",
        expr=SYMPTOM_EXPR,
        for_seconds=120,
        severity="critical",
        cause="unknown",
        category="symptom",
        summary="nginx answers 502/504 on {instance} and no cause alert explains it",
        description=(
            "nginx on {instance} is failing to reach its upstreams: {upstream_errors};"
            " front probe: {front_status}."
            " The exporter names no cause for this instance: these errors are unexplained.\n"
            "Fix: run {diagnose} on the host, read the last errors of {error_log}"
            " and follow the runbook steps 1-5."
        ),
    ),
    AlertSpec(
        name="UnitNotEnabledAtBoot",
        title="A unit runs but is not enabled at boot",
        expr=(
            "max by (instance, unit) (badgateway_unit_enabled == 0)\n"
            "and on (instance, unit)\n"
            'max by (instance, unit) (badgateway_unit_state{state="active"} == 1)'
        ),
        for_seconds=900,
        severity="warning",
        cause="unit_not_enabled",
        category="warning",
        summary="{{ $labels.unit }} runs but is not enabled at boot on {instance}",
        description=(
            "{{ $labels.unit }} is active on {instance} (since {unit_since}) but not enabled:"
            " after the next reboot it stays down and nginx answers 502.\n"
            "Fix: sudo systemctl enable {{ $labels.unit }}"
        ),
    ),
    AlertSpec(
        name="DiskWillFillSoon",
        title="A filesystem will be full soon",
        expr=(
            "max by (instance, mountpoint) (badgateway_filesystem_avail_bytes"
            " / badgateway_filesystem_size_bytes < {disk_fill_ratio})\n"
            "and on (instance, mountpoint)\n"
            "max by (instance, mountpoint) ("
            "predict_linear(badgateway_filesystem_avail_bytes[{disk_fill_window}], {disk_fill_horizon_seconds}) < 0)"
        ),
        for_seconds=3600,
        severity="warning",
        cause="disk_full",
        category="warning",
        summary="{{ $labels.mountpoint }} on {instance} will be full within {disk_fill_horizon}",
        description=(
            "{{ $labels.mountpoint }} on {instance} has {{ $value | humanizePercentage }} free and,"
            " at the rate of the last {disk_fill_window}, fills up within {disk_fill_horizon}."
            " A full disk stops PHP-FPM and nginx (502).\n"
            "Fix: sudo du -xh {{ $labels.mountpoint }} | sort -h | tail; rotate or remove what grows"
            " (logs: sudo journalctl --vacuum-size=200M, logrotate)."
        ),
    ),
    AlertSpec(
        name="BadGatewayExporterDown",
        title="Prometheus cannot scrape badgateway-exporter",
        expr="max by (instance) (up{job=~{exporter_job}}) == 0",
        for_seconds=300,
        severity="warning",
        cause="exporter",
        category="exporter",
        summary="badgateway-exporter on {instance} cannot be scraped",
        description=(
            "Prometheus cannot scrape badgateway-exporter on {instance} (up {{ $value }}):"
            " every 502 cause alert for this instance is blind.\n"
            "Fix: sudo systemctl status badgateway-exporter; sudo journalctl -u badgateway-exporter -n 50;"
            " curl -s http://{instance}/metrics | head"
        ),
    ),
    AlertSpec(
        name="BadGatewayCollectorFailing",
        title="A collector of badgateway-exporter fails",
        expr="max by (instance, collector) (badgateway_collector_success == 0)",
        for_seconds=900,
        severity="warning",
        cause="exporter",
        category="exporter",
        summary="The {{ $labels.collector }} collector fails on {instance}",
        description=(
            "badgateway-exporter's {{ $labels.collector }} collector on {instance} fails"
            " (success {{ $value }}, last run {collector_took}): it may lack permissions"
            " (e.g. nginx -t needs root), the causes it checks are not seen.\n"
            "Fix: {diagnose} shows the error; sudo journalctl -u badgateway-exporter -n 50."
        ),
    ),
)
"""The symptom, the warnings and the exporter's health; ``{name}`` stands for :func:`template_values`."""


def _filled(spec: AlertSpec, values: dict[str, str], scope: Scope) -> AlertSpec:
    return AlertSpec(
        name=spec.name,
        title=spec.title,
        expr=scope.expr(fill(spec.expr, values)),
        for_seconds=spec.for_seconds,
        severity=spec.severity,
        cause=spec.cause,
        category=spec.category,
        summary=fill(spec.summary, values),
        description=fill(spec.description, values),
        labels=spec.labels,
    )


def alert_specs(settings: Settings) -> list[AlertSpec]:
    """Every alert: the cause alerts in the order of :data:`SPECS`, then :data:`OTHER_ALERTS`."""
    values = template_values(settings)
    scope = settings.scope
    return [cause_alert(spec, settings) for spec in SPECS] + [_filled(a, values, scope) for a in OTHER_ALERTS]


ALERT_NAMES: tuple[str, ...] = tuple(spec.alert for spec in SPECS) + tuple(a.name for a in OTHER_ALERTS)


def scaled_for(spec: AlertSpec, settings: Settings) -> float:
    """The ``for:`` of ``spec`` in seconds after its override and the scale factor."""
    override = settings.for_overrides.get(spec.name)
    base = parse_duration(override) if override is not None else float(spec.for_seconds)
    return base * settings.for_scale
