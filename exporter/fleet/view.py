"""The fleet as the on-call reads it: every host with an active cause (which, since when, the fix) and
every host whose exporter Prometheus cannot scrape, from a handful of queries.

A host is the set of its target labels as Prometheus stores them (``instance``, ``job`` and whatever
the fleet adds: external labels such as ``cluster`` and ``region`` through remote write or federation),
so the same instance in two clusters is two hosts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from exporter.causes import CAUSES, FACT_LABELS, UNEXPLAINED, Cause
from exporter.fleet.prometheus import PrometheusAPI, Series

HostKey = tuple[tuple[str, str], ...]
_NOT_HOST = frozenset({"__name__", "cause", "fix", "version", *FACT_LABELS})
MAX_POINTS = 3600  # points per series of the range query that finds "since when" (1 s steps over 1 h)


def promql_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def host_key(labels: dict[str, str]) -> HostKey:
    return tuple(sorted((k, v) for k, v in labels.items() if k not in _NOT_HOST))


def host_name(key: HostKey) -> str:
    """``web-1:9502 (cluster=eu, region=west)``: the instance, then the labels that tell it apart (not job)."""
    labels = dict(key)
    rest = ", ".join(f"{k}={v}" for k, v in key if k not in ("instance", "job"))
    name = labels.get("instance", "?")
    return f"{name} ({rest})" if rest else name


@dataclass(frozen=True)
class Finding:
    fix: str
    facts: dict[str, str]


@dataclass
class ActiveCause:
    host: HostKey
    cause: str
    since: float | None
    """Unix time the cause became active, as far as ``lookback`` reaches."""
    since_before_lookback: bool
    findings: list[Finding] = field(default_factory=list)

    @property
    def alert(self) -> str | None:
        try:
            return CAUSES[Cause(self.cause)].alert
        except (ValueError, KeyError):
            return "NginxGatewayErrors" if self.cause == UNEXPLAINED else None

    @property
    def title(self) -> str:
        try:
            return CAUSES[Cause(self.cause)].title
        except (ValueError, KeyError):
            if self.cause == UNEXPLAINED:
                return "nginx answers 502/504 and no cause explains it"
            return self.cause


@dataclass
class ExporterDown:
    host: HostKey
    since: float | None
    since_before_lookback: bool


@dataclass
class FleetView:
    prometheus: str
    job: str
    evaluated_at: float
    lookback_seconds: float
    hosts: list[HostKey]
    causes: list[ActiveCause]
    exporters_down: list[ExporterDown]

    @property
    def exit_code(self) -> int:
        """0 healthy, 1 a cause now, 3 no cause known but some hosts are blind (exporter down)."""
        if self.causes:
            return 1
        return 3 if self.exporters_down else 0

    def to_json(self) -> dict[str, Any]:
        def since(value: float | None, before: bool) -> dict[str, Any]:
            return {
                "since": None if value is None else _rfc3339(value),
                "since_seconds": None if value is None else round(self.evaluated_at - value, 1),
                "since_before_lookback": before,
            }

        return {
            "prometheus": self.prometheus,
            "job": self.job,
            "evaluated_at": _rfc3339(self.evaluated_at),
            "lookback_seconds": self.lookback_seconds,
            "hosts": len(self.hosts),
            "healthy": self.exit_code == 0,
            "causes": [
                {
                    "host": dict(c.host),
                    "name": host_name(c.host),
                    "cause": c.cause,
                    "alert": c.alert,
                    "title": c.title,
                    **since(c.since, c.since_before_lookback),
                    "findings": [{"fix": f.fix, **f.facts} for f in c.findings],
                }
                for c in self.causes
            ],
            "exporters_down": [
                {"host": dict(d.host), "name": host_name(d.host), **since(d.since, d.since_before_lookback)}
                for d in self.exporters_down
            ],
        }


def _rfc3339(stamp: float) -> str:
    return datetime.fromtimestamp(stamp, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _run_start(series: Series, start: float, end: float, step: float) -> tuple[float | None, bool]:
    """Where the last unbroken run of points (one per ``step``) that reaches ``end`` starts, and whether
    it reaches back to ``start`` (then it began at that time or earlier)."""
    points = [t for t, v in series.points if not math.isnan(v)]
    if not points or end - points[-1] > 1.5 * step:
        return None, False
    first = points[-1]
    for earlier in reversed(points[:-1]):
        if first - earlier > 1.5 * step:
            break
        first = earlier
    return first, first - start < 1.5 * step


def _starts(api: PrometheusAPI, expr: str, now: float, lookback: float) -> dict[HostKey, dict[str, Any]]:
    step = max(1.0, math.ceil(lookback / MAX_POINTS))
    found: dict[HostKey, dict[str, Any]] = {}
    for series in api.query_range(expr, now - lookback, now, step):
        start, before = _run_start(series, now - lookback, now, step)
        found.setdefault(host_key(series.labels), {})[series.labels.get("cause", "")] = (start, before)
    return found


def fleet_view(api: PrometheusAPI, job: str, lookback: float) -> FleetView:
    """Ask Prometheus (five queries) and put the answers together."""
    sel = f"job=~{promql_string(job)}"
    now, ups = api.query(f"up{{{sel}}}")
    _, builds = api.query(f"badgateway_build_info{{{sel}}}")
    hosts = sorted({host_key(s.labels) for s in [*ups, *builds]})
    _, active = api.query(f"badgateway_cause{{{sel}}} == 1")
    _, infos = api.query(f"badgateway_cause_info{{{sel}}}")
    findings: dict[tuple[HostKey, str], list[Finding]] = {}
    for info in infos:
        facts = {k: info.labels.get(k, "") for k in FACT_LABELS if info.labels.get(k)}
        finding = Finding(info.labels.get("fix", ""), facts)
        findings.setdefault((host_key(info.labels), info.labels.get("cause", "")), []).append(finding)
    starts = _starts(api, f"badgateway_cause{{{sel}}} == 1", now, lookback) if active else {}
    causes = []
    for sample in active:
        key, cause = host_key(sample.labels), sample.labels.get("cause", "")
        start, before = starts.get(key, {}).get(cause, (None, False))
        found = sorted(findings.get((key, cause), []), key=lambda f: f.fix)
        causes.append(ActiveCause(key, cause, start, before, found))
    causes.sort(key=lambda c: (c.since is None, c.since or 0.0, host_name(c.host), c.cause))
    down_hosts = [host_key(s.labels) for s in ups if s.value == 0]
    down_starts = _starts(api, f"up{{{sel}}} == 0", now, lookback) if down_hosts else {}
    down = [ExporterDown(k, *down_starts.get(k, {}).get("", (None, False))) for k in sorted(down_hosts)]
    return FleetView(api.url, job, now, lookback, hosts, causes, down)
