"""The rows of the overview dashboard: the causes at a glance (from the specs), then the evidence.

Every panel that lists causes reads :data:`exporter.causes.SPECS`; the recording-rule names, the
thresholds and the probe targets come from the same :class:`~exporter.mixin.settings.Settings` as
the alert rules.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from exporter.causes import FACT_LABELS, SPECS, CauseSpec
from exporter.mixin import recording
from exporter.mixin.alerts import LABEL_TEMPLATES, SYMPTOM
from exporter.mixin.panels import (
    BLUE,
    CAUSE_STEPS,
    GREEN,
    INST,
    JOB,
    OK_CAUSE,
    ORANGE,
    RED,
    TIMEOUT_KINDS,
    UP_DOWN,
    YELLOW,
    Panel,
    Row,
    Target,
    bargauge,
    mapping,
    or_zero,
    stat,
    state_timeline,
    steps,
    table,
    timeseries,
)
from exporter.mixin.settings import Settings

CAUSE_INFO_TITLE = "What diagnose says"
CAUSE_INFO_COLUMNS: tuple[str, ...] = ("instance", "cause", "fix", *FACT_LABELS)


def _regex_literal(text: str) -> str:
    return json.dumps(text)


def cause_stat(spec: CauseSpec) -> Panel:
    """The stat of one cause: green OK / red CAUSE, linked to its runbook."""
    cause = spec.cause.value
    return stat(
        spec.alert,
        [Target(f'max(badgateway_cause{{{INST}, cause="{cause}"}})', cause)],
        3,
        description=(
            f'`badgateway_cause{{cause="{cause}"}}`: {spec.title} (nginx answers {spec.status_code}).'
            " Red when the diagnosis finds this cause on any selected instance;"
            f" the alert is {spec.alert}, decided from the collectors {', '.join(spec.evidence)}."
            " The link opens its runbook."
        ),
        thresholds=CAUSE_STEPS,
        mappings=OK_CAUSE,
        links=[
            {
                "title": f"Runbook: {spec.alert}",
                "url": f"${{runbook_base}}/{spec.alert}.md",
                "targetBlank": True,
            }
        ],
    )


def _rate_stats(s: Settings) -> list[Panel]:
    """Active causes, the 502 and 504 rates and the front probe, next to the cause stats."""
    w = s.error_rate_window
    by_kind = recording.upstream_errors_rate_by_kind(s)
    front = _regex_literal(s.front_target)
    rate_steps = steps((GREEN, None), (RED, s.gateway_error_rate))
    return [
        stat(
            "Active causes",
            [Target(f"sum({recording.CAUSES_ACTIVE}{{{INST}}})", "causes")],
            3,
            description="How many causes the diagnosis finds right now, over the selected instances.",
            thresholds=CAUSE_STEPS,
        ),
        stat(
            "502 rate (upstream errors)",
            [Target(f'sum({by_kind}{{{INST}, kind!~"{TIMEOUT_KINDS}"}}) or vector(0)', "502/s")],
            4,
            description=(
                f"nginx error-log upstream failures per second over {w} whose kind makes nginx answer 502"
                f" (every kind but {TIMEOUT_KINDS.replace('|', ', ')}). Red from {s.gateway_error_rate:g}/s,"
                f" the {SYMPTOM} threshold."
            ),
            unit="reqps",
            thresholds=rate_steps,
            graph=True,
        ),
        stat(
            "504 rate (upstream timeouts)",
            [Target(f'sum({by_kind}{{{INST}, kind=~"{TIMEOUT_KINDS}"}}) or vector(0)', "504/s")],
            4,
            description=f"nginx error-log upstream timeouts per second over {w} (nginx answers 504).",
            unit="reqps",
            thresholds=rate_steps,
            graph=True,
        ),
        stat(
            "Front probe status",
            [Target(f"max(badgateway_http_status_code{{{INST}, target=~{front}}})", "front")],
            4,
            description=(
                "HTTP status of the exporter's probe through nginx (worst of the selected instances);"
                " 502/504 is the symptom itself, 0 means no answer."
            ),
            thresholds=steps((RED, None), (GREEN, 200), (ORANGE, 400), (RED, 500)),
            mappings=mapping({"0": ("no answer", RED)}),
        ),
    ]


def cause_info_table() -> Panel:
    """``badgateway_cause_info`` of the selected instances: the facts and the fix ``diagnose`` prints."""
    labels = ", ".join(CAUSE_INFO_COLUMNS)
    causes = ", ".join(f"{spec.cause.value} ({spec.alert})" for spec in SPECS)
    return table(
        CAUSE_INFO_TITLE,
        [Target(f"max by ({labels}) (badgateway_cause_info{{{INST}}})", table=True)],
        24,
        8,
        description=(
            "One line per cause the diagnosis finds right now (`badgateway_cause_info`): the exact fix"
            " `sudo badgateway-exporter diagnose` prints on that host and the facts of the evidence"
            " (unit, socket, configuration file and line; empty when the cause has none). The cause"
            f" alerts carry the same text. Causes: {causes}. Empty while no cause is found."
        ),
        columns=CAUSE_INFO_COLUMNS,
        wrap=("fix",),
    )


def cause_row(s: Settings) -> Row:
    panels = [cause_stat(spec) for spec in SPECS] + _rate_stats(s)
    panels += [
        state_timeline(
            "Causes over time",
            [Target(f"max by (cause) (badgateway_cause{{{INST}}})", "{{cause}}")],
            16,
            9,
            description="Since when each cause is found (red), over the selected instances.",
            mappings=OK_CAUSE,
            thresholds=CAUSE_STEPS,
        ),
        bargauge(
            "Active causes per instance",
            [Target(f"sum by (instance) ({recording.CAUSES_ACTIVE}{{{INST}}})", "{{instance}}")],
            8,
            9,
            description="Which hosts of the fleet have a cause right now.",
            thresholds=CAUSE_STEPS,
            min_value=0,
        ),
        cause_info_table(),
    ]
    return Row("Causes: which, since when, how bad", panels)


def _oom_labels(s: Settings) -> str:
    """Which cause alerts carry an OOM-kill label, as the specs say."""
    carried = [
        f'{spec.alert} carries {label}="recent" ({LABEL_TEMPLATES[name].meaning(s)})'
        for spec in SPECS
        for label, name in spec.page.labels
        if name == "recent_oom_kill"
    ]
    return "; ".join(carried)


def gateway_row(s: Settings) -> Row:
    w = s.error_rate_window
    by_kind = recording.upstream_errors_rate_by_kind(s)
    return Row(
        "Gateway errors (nginx error log)",
        [
            timeseries(
                "Upstream errors by kind",
                [Target(or_zero(f"sum by (instance, kind) ({by_kind}{{{INST}}})"), "{{instance}} {{kind}}")],
                12,
                description=f"Upstream failures per second ({w} rate) by kind; see docs/logs.md for the kinds.",
                unit="reqps",
                stacked=True,
            ),
            timeseries(
                "Upstream errors by upstream",
                [
                    Target(
                        or_zero(f"sum by (instance, upstream) ({by_kind}{{{INST}}})"),
                        "{{instance}} {{upstream}}",
                    )
                ],
                12,
                description=f"Upstream failures per second ({w} rate) by normalised upstream address.",
                unit="reqps",
                stacked=True,
            ),
            timeseries(
                "502 vs 504",
                [
                    Target(
                        or_zero(f'sum by (instance) ({by_kind}{{{INST}, kind!~"{TIMEOUT_KINDS}"}})'),
                        "{{instance}} 502",
                    ),
                    Target(
                        or_zero(f'sum by (instance) ({by_kind}{{{INST}, kind=~"{TIMEOUT_KINDS}"}})'),
                        "{{instance}} 504",
                    ),
                ],
                12,
                description="Upstream failures that nginx answers with 502 (refused, missing socket, reset…) and 504 (timeouts).",
                unit="reqps",
                thresholds=steps((GREEN, None), (RED, s.gateway_error_rate)),
            ),
            timeseries(
                "PHP-FPM log events",
                [
                    Target(
                        or_zero(
                            "sum by (instance, event) "
                            f"(increase(badgateway_phpfpm_log_events_total{{{INST}}}[$__rate_interval]))"
                        ),
                        "{{instance}} {{event}}",
                    )
                ],
                12,
                description="max_children_reached, child_killed, execution_timeout, busy, bind_error in the PHP-FPM log.",
                unit="short",
                bars=True,
            ),
        ],
    )


UNIT_STATES = ("active", "reloading", "activating", "deactivating", "inactive", "failed")


UNIT_STATE_COLORS = (GREEN, BLUE, YELLOW, ORANGE, RED, RED)


def unit_state_expr() -> str:
    """The one-hot ``badgateway_unit_state`` as one number per unit (1 active … 6 failed)."""
    parts = [
        f'(badgateway_unit_state{{{INST}, state="{state}"}} == 1) * {code}'
        for code, state in enumerate(UNIT_STATES, start=1)
    ]
    return "max by (instance, unit) (\n  " + "\n  or ".join(parts) + "\n)"


def units_row(s: Settings) -> Row:
    state_mapping = mapping(
        {
            str(code): (state, color)
            for code, (state, color) in enumerate(zip(UNIT_STATES, UNIT_STATE_COLORS, strict=True), start=1)
        }
    )
    return Row(
        "Units and processes",
        [
            state_timeline(
                "systemd unit states",
                [Target(unit_state_expr(), "{{instance}} {{unit}}")],
                12,
                description="ActiveState of each unit over D-Bus (badgateway_unit_state). Empty on hosts without systemd (containers): see the process view.",
                mappings=state_mapping,
            ),
            state_timeline(
                "Services (process view)",
                [
                    Target(
                        f"max by (instance, service) (badgateway_processes{{{INST}}} > bool 0)",
                        "{{instance}} {{service}}",
                    )
                ],
                12,
                description="Whether processes of nginx, php_fpm and backend exist (works without systemd).",
                mappings=mapping({"0": ("no processes", RED), "1": ("running", GREEN)}),
                thresholds=steps((RED, None), (GREEN, 1)),
            ),
            stat(
                "Units not enabled at boot",
                [
                    Target(
                        or_zero(f"count by (instance) (badgateway_unit_enabled{{{INST}}} == 0)"),
                        "{{instance}}",
                    )
                ],
                8,
                description="Units that would stay down after a reboot (UnitNotEnabledAtBoot).",
                thresholds=steps((GREEN, None), (ORANGE, 1)),
                text_mode="value_and_name",
            ),
            stat(
                "systemd",
                [Target(f"min(badgateway_systemd_available{{{INST}}})", "systemd")],
                8,
                description="Whether systemd answered on the system bus (else the diagnosis uses the process view).",
                mappings=mapping({"0": ("no (processes)", BLUE), "1": ("yes", GREEN)}),
            ),
            stat(
                "nginx -t",
                [Target(f"min(badgateway_nginx_config_valid{{{INST}}})", "nginx -t")],
                8,
                description="Whether nginx -t accepts the configuration on disk (worst of the selected instances). No data: no verdict (see the exporter row).",
                mappings=mapping({"0": ("invalid", RED), "1": ("valid", GREEN)}),
                thresholds=steps((RED, None), (GREEN, 1)),
            ),
            timeseries(
                "Processes per service",
                [
                    Target(
                        f"sum by (instance, service) (badgateway_processes{{{INST}}})",
                        "{{instance}} {{service}}",
                    )
                ],
                12,
                unit="short",
                min_value=0,
            ),
            timeseries(
                "Unit restarts (systemd)",
                [
                    Target(
                        f"sum by (instance, unit) (increase(badgateway_unit_restarts_total{{{INST}}}[$__rate_interval]))",
                        "{{instance}} {{unit}}",
                    )
                ],
                12,
                description="Automatic restarts by Restart= (NRestarts). A crash loop shows here.",
                unit="short",
                bars=True,
            ),
        ],
    )


def php_fpm_row(s: Settings) -> Row:
    return Row("PHP-FPM", _fastcgi_panels(s) + _pool_panels(s))


def _fastcgi_panels(s: Settings) -> list[Panel]:
    """The FastCGI probe of each socket."""
    return [
        timeseries(
            "FastCGI probe latency",
            [
                Target(
                    f"max by (instance, socket) (badgateway_fastcgi_probe_duration_seconds{{{INST}}})",
                    "{{instance}} {{socket}}",
                )
            ],
            8,
            unit="s",
            min_value=0,
        ),
        state_timeline(
            "FastCGI probe",
            [
                Target(
                    f"min by (instance, socket) (badgateway_fastcgi_up{{{INST}}})",
                    "{{instance}} {{socket}}",
                )
            ],
            8,
            description="Whether the pool answers the FastCGI ping over the socket.",
            mappings=UP_DOWN,
            thresholds=steps((RED, None), (GREEN, 1)),
        ),
        timeseries(
            "FastCGI probe failure reason",
            [
                Target(
                    f"max by (instance, reason) (badgateway_fastcgi_probe_failure{{{INST}}})",
                    "{{instance}} {{reason}}",
                )
            ],
            8,
            description="1 for the reason the probe fails: socket_missing, permission_denied, connection_refused, timeout, …",
            unit="short",
            min_value=0,
            max_value=1,
        ),
    ]


def _pool_panels(s: Settings) -> list[Panel]:
    """The pool's own status page: workers, queue, connections."""
    pool = "instance, socket, pool"
    return [
        timeseries(
            "Pool saturation: busy vs total workers",
            [
                Target(
                    f"sum by ({pool}) (badgateway_phpfpm_active_processes{{{INST}}})",
                    "{{instance}} {{pool}} active",
                ),
                Target(
                    f"sum by ({pool}) (badgateway_phpfpm_total_processes{{{INST}}})",
                    "{{instance}} {{pool}} total",
                ),
                Target(
                    f"max by ({pool}) (badgateway_phpfpm_max_active_processes{{{INST}}})",
                    "{{instance}} {{pool}} most active since start",
                ),
            ],
            8,
            description=(
                "Busy workers against the workers the pool has (with pm = static, total is pm.max_children);"
                " the probe's own status request counts as one busy worker."
            ),
            unit="short",
            min_value=0,
        ),
        timeseries(
            "Pool busy ratio",
            [
                Target(
                    f"max by ({pool}) ({recording.PHPFPM_BUSY_RATIO}{{{INST}}})",
                    "{{instance}} {{pool}}",
                )
            ],
            8,
            unit="percentunit",
            min_value=0,
            max_value=1,
            thresholds=steps((GREEN, None), (RED, 0.9)),
        ),
        timeseries(
            "Listen queue",
            [
                Target(
                    f"max by ({pool}) (badgateway_phpfpm_listen_queue{{{INST}}})",
                    "{{instance}} {{pool}} waiting",
                ),
                Target(
                    f"max by ({pool}) (badgateway_phpfpm_max_listen_queue{{{INST}}})",
                    "{{instance}} {{pool}} most waiting since start",
                ),
                Target(
                    f"max by ({pool}) (badgateway_phpfpm_listen_queue_length{{{INST}}})",
                    "{{instance}} {{pool}} backlog size",
                ),
            ],
            8,
            description="Requests waiting for a free worker; the pool is exhausted when this grows.",
            unit="short",
            min_value=0,
        ),
        timeseries(
            "Accepted connections",
            [
                Target(
                    f"sum by ({pool}) (rate(badgateway_phpfpm_accepted_connections_total{{{INST}}}[$__rate_interval]))",
                    "{{instance}} {{pool}}",
                )
            ],
            12,
            unit="reqps",
            min_value=0,
        ),
        timeseries(
            "max_children reached, slow requests",
            [
                Target(
                    f"sum by ({pool}) (increase(badgateway_phpfpm_max_children_reached_total{{{INST}}}[$__rate_interval]))",
                    "{{instance}} {{pool}} max_children reached",
                ),
                Target(
                    f"sum by ({pool}) (increase(badgateway_phpfpm_slow_requests_total{{{INST}}}[$__rate_interval]))",
                    "{{instance}} {{pool}} slow requests",
                ),
            ],
            12,
            unit="short",
            bars=True,
        ),
    ]


def probes_row(s: Settings) -> Row:
    return Row(
        "Backend and front probes",
        [
            timeseries(
                "HTTP probe latency",
                [
                    Target(
                        f"max by (instance, target) (badgateway_http_probe_duration_seconds{{{INST}}})",
                        "{{instance}} {{target}}",
                    )
                ],
                12,
                description=f"Backend health check and the probe through nginx (targets {s.front_target!r}, {s.backend_target!r}).",
                unit="s",
                min_value=0,
            ),
            state_timeline(
                "HTTP probe status code",
                [
                    Target(
                        f"max by (instance, target) (badgateway_http_status_code{{{INST}}})",
                        "{{instance}} {{target}}",
                    )
                ],
                12,
                description="Status code of each probe; 0 means no answer (refused, timeout). 502/504 on the front target is the symptom.",
                mappings=mapping({"0": ("no answer", RED)}),
                thresholds=steps((RED, None), (GREEN, 200), (ORANGE, 400), (RED, 500)),
            ),
        ],
    )


def resources_row(s: Settings) -> Row:
    return Row("Memory, swap, disk", _memory_panels(s) + _disk_panels(s))


def _memory_panels(s: Settings) -> list[Panel]:
    """Memory, swap and the OOM killer."""
    return [
        timeseries(
            "Memory",
            [
                Target(
                    f"max by (instance) (badgateway_memory_available_bytes{{{INST}}})",
                    "{{instance}} available",
                ),
                Target(f"max by (instance) (badgateway_memory_total_bytes{{{INST}}})", "{{instance}} total"),
            ],
            8,
            unit="bytes",
            min_value=0,
        ),
        bargauge(
            "Memory available",
            [
                Target(
                    f"min by (instance) ({recording.MEMORY_AVAILABLE_RATIO}{{{INST}}})",
                    "{{instance}}",
                )
            ],
            4,
            unit="percentunit",
            min_value=0,
            max_value=1,
            thresholds=steps((RED, None), (ORANGE, 0.05), (GREEN, 0.15)),
        ),
        timeseries(
            "Swap used",
            [
                Target(
                    f"max by (instance) (badgateway_swap_total_bytes{{{INST}}})"
                    f" - max by (instance) (badgateway_swap_free_bytes{{{INST}}})",
                    "{{instance}} used",
                ),
                Target(f"max by (instance) (badgateway_swap_total_bytes{{{INST}}})", "{{instance}} total"),
            ],
            6,
            unit="bytes",
            min_value=0,
        ),
        timeseries(
            "OOM kills",
            [
                Target(
                    f"sum by (instance) (increase(badgateway_oom_kills_total{{{INST}}}[$__rate_interval]))",
                    "{{instance}}",
                )
            ],
            6,
            description=f"Processes the kernel's OOM killer killed. {_oom_labels(s)}.",
            unit="short",
            bars=True,
            thresholds=steps((GREEN, None), (RED, 1)),
        ),
        timeseries(
            "Resident memory by service",
            [
                Target(
                    f"sum by (instance, service) (badgateway_process_resident_memory_bytes{{{INST}}})",
                    "{{instance}} {{service}}",
                )
            ],
            8,
            unit="bytes",
            stacked=True,
            min_value=0,
        ),
    ]


def _disk_panels(s: Settings) -> list[Panel]:
    """Free space and inodes per mount."""
    return [
        bargauge(
            "Disk available per mount",
            [
                Target(
                    f"min by (instance, mountpoint) ({recording.FILESYSTEM_AVAIL_RATIO}{{{INST}}})",
                    "{{instance}} {{mountpoint}}",
                )
            ],
            8,
            unit="percentunit",
            min_value=0,
            max_value=1,
            thresholds=steps((RED, None), (ORANGE, 0.05), (GREEN, s.disk_fill_ratio)),
        ),
        timeseries(
            "Disk and inodes free per mount",
            [
                Target(
                    f"min by (instance, mountpoint) (badgateway_filesystem_avail_bytes{{{INST}}})",
                    "{{instance}} {{mountpoint}} bytes",
                ),
                Target(
                    f"min by (instance, mountpoint) (badgateway_filesystem_files_free{{{INST}}})",
                    "{{instance}} {{mountpoint}} inodes",
                ),
            ],
            8,
            unit="bytes",
            min_value=0,
            overrides=[
                {
                    "matcher": {"id": "byFrameRefID", "options": "B"},
                    "properties": [
                        {"id": "unit", "value": "short"},
                        {"id": "custom.axisPlacement", "value": "right"},
                    ],
                }
            ],
        ),
    ]


def exporter_row(s: Settings) -> Row:
    return Row("Exporter health", _collector_panels(s) + _log_tailer_panels(s))


def _collector_panels(s: Settings) -> list[Panel]:
    """Scrapes and collectors against the deadline."""
    return [
        state_timeline(
            "Scrape up",
            [Target(f"max by (instance) (up{{{INST}, {JOB}}})", "{{instance}}")],
            8,
            description="Whether Prometheus can scrape the exporter (BadGatewayExporterDown when 0).",
            mappings=UP_DOWN,
            thresholds=steps((RED, None), (GREEN, 1)),
        ),
        state_timeline(
            "Collector success",
            [
                Target(
                    f"min by (instance, collector) (badgateway_collector_success{{{INST}}})",
                    "{{instance}} {{collector}}",
                )
            ],
            8,
            description="0: the collector failed or missed the deadline (BadGatewayCollectorFailing), its causes are not seen.",
            mappings=mapping({"0": ("failed", RED), "1": ("ok", GREEN)}),
            thresholds=steps((RED, None), (GREEN, 1)),
        ),
        timeseries(
            "Collector duration vs deadline",
            [
                Target(
                    f"max by (instance, collector) (badgateway_collector_duration_seconds{{{INST}}})",
                    "{{instance}} {{collector}}",
                ),
                Target(
                    f"max by (instance) (badgateway_scrape_timeout_seconds{{{INST}}})",
                    "{{instance}} deadline",
                ),
                Target(
                    f"max by (instance) (scrape_duration_seconds{{{INST}, {JOB}}})",
                    "{{instance}} whole scrape",
                ),
            ],
            8,
            unit="s",
            min_value=0,
        ),
    ]


def _log_tailer_panels(s: Settings) -> list[Panel]:
    """The background log tailer and the versions running."""
    return [
        timeseries(
            "Log lines read",
            [
                Target(
                    or_zero(
                        f"sum by (instance, log) (rate(badgateway_nginx_error_log_lines_total{{{INST}}}[$__rate_interval]))"
                    ),
                    "{{instance}} {{log}}",
                )
            ],
            8,
            description="Lines the background tailer reads from the nginx error log.",
            unit="short",
        ),
        timeseries(
            "Log tailer lag and errors",
            [
                Target(
                    or_zero(f"max by (instance, log) (badgateway_log_lag_bytes{{{INST}}})"),
                    "{{instance}} {{log}} lag",
                ),
                Target(
                    or_zero(
                        f"sum by (instance, log) (increase(badgateway_log_read_errors_total{{{INST}}}[$__rate_interval]))"
                    ),
                    "{{instance}} {{log}} read errors",
                ),
                Target(
                    or_zero(
                        f"sum by (instance, log) (increase(badgateway_log_rotations_total{{{INST}}}[$__rate_interval]))"
                    ),
                    "{{instance}} {{log}} rotations",
                ),
            ],
            8,
            description="Bytes written but not yet read; read errors (e.g. permission denied) and rotations seen.",
            unit="short",
            overrides=[
                {
                    "matcher": {"id": "byFrameRefID", "options": "A"},
                    "properties": [{"id": "unit", "value": "bytes"}],
                }
            ],
        ),
        stat(
            "Exporter versions",
            [Target(f"count by (version) (badgateway_build_info{{{INST}}})", "{{version}}")],
            8,
            8,
            description="How many selected instances run each version.",
            text_mode="value_and_name",
            thresholds=steps((BLUE, None)),
        ),
    ]


ROWS: tuple[Callable[[Settings], Row], ...] = (
    cause_row,
    gateway_row,
    units_row,
    php_fpm_row,
    probes_row,
    resources_row,
    exporter_row,
)
"""The rows of the overview dashboard, top to bottom."""
