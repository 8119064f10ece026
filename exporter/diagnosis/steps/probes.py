"""The runbook's ``curl http://localhost:8000/health`` and ``curl -I http://localhost/``."""

from __future__ import annotations

import glob
from collections.abc import Sequence

from exporter.causes import (
    Cause,
    Facts,
    Finding,
    Verdict,
    backend_down,
    backend_unhealthy,
    nginx_down,
    upstream_timeout,
)
from exporter.checks.http import HttpResult
from exporter.diagnosis.context import StepContext

_CONNECT_ERRORS = ("connection_refused", "connect_error")


def http(ctx: StepContext, earlier: Sequence[Finding]) -> list[Finding]:
    if ctx.config.http and not ctx.results.http:
        return [ctx.not_checked("http", "HTTP probes")]
    pool_exhausted = any(f.failing_cause is Cause.PHP_FPM_POOL_EXHAUSTED for f in earlier)
    return [
        _backend(ctx, probe) if probe.role == "backend" else _front(ctx, probe, pool_exhausted)
        for probe in ctx.results.http
    ]


def _titles(probe: HttpResult) -> tuple[str, str, tuple[str, ...]]:
    step = f"http:{probe.target}"
    if probe.role == "backend":
        title = f"The backend answers {probe.url}"
    else:
        title = f"nginx serves {probe.url} without a gateway error"
    answer = f"HTTP {probe.status_code}" if probe.status_code else f"{probe.error}: {probe.detail}"
    return step, title, (f"{probe.curl}: {answer}",)


def _found_title(probe: HttpResult) -> str:
    """What the probe found, said as a person would (the step's title when it did not answer 2xx/3xx)."""
    who = "The backend" if probe.role == "backend" else "nginx"
    if probe.status_code is not None:
        return f"{who} answers {probe.url} with HTTP {probe.status_code}"
    if probe.error == "timeout":
        return f"{who} does not answer {probe.url} in time"
    if probe.error in _CONNECT_ERRORS:
        return f"{who} does not accept connections at {probe.url}"
    return f"{who} gives no valid HTTP answer at {probe.url}"


def _backend(ctx: StepContext, probe: HttpResult) -> Finding:
    step, title, evidence = _titles(probe)
    if probe.up:
        return Finding(
            step, title, Verdict.OK, (f"HTTP {probe.status_code} in {probe.duration_seconds * 1000:.1f} ms",)
        )
    title = _found_title(probe)
    unit = ctx.units["backend"]
    facts = Facts(unit=unit)
    if probe.error in _CONNECT_ERRORS:
        return Finding(
            step, title, Verdict.FAIL, evidence, Cause.BACKEND_DOWN, backend_down.start(unit), facts
        )
    if probe.error == "timeout":
        return Finding(step, title, Verdict.FAIL, (*evidence, "the backend accepts connections but answers too slowly"),
                       Cause.UPSTREAM_TIMEOUT, upstream_timeout.backend_slow(unit), facts)  # fmt: skip
    url = probe.url if probe.status_code is not None else None
    return Finding(step, title, Verdict.FAIL, evidence, Cause.BACKEND_UNHEALTHY,
                   backend_unhealthy.read_and_restart(unit, url), facts)  # fmt: skip


def _front(ctx: StepContext, probe: HttpResult, pool_exhausted: bool) -> Finding:
    step, title, evidence = _titles(probe)
    if probe.up:
        return Finding(
            step, title, Verdict.OK, (f"HTTP {probe.status_code} in {probe.duration_seconds * 1000:.1f} ms",)
        )
    title = _found_title(probe)
    unit = ctx.units["nginx"]
    timed_out = probe.status_code == 504 or probe.error == "timeout"
    if probe.error in _CONNECT_ERRORS and ctx.running["nginx"] is not True:
        return Finding(
            step, title, Verdict.FAIL, evidence, Cause.NGINX_DOWN, nginx_down.start(unit), Facts(unit=unit)
        )
    if timed_out and pool_exhausted:
        # The page waits behind the busy pool: the same incident as the FastCGI finding, not a second cause.
        return Finding(step, title, Verdict.FAIL,
                       (*evidence, "the PHP-FPM pool is exhausted (see above): requests queue"))  # fmt: skip
    if timed_out:
        return Finding(
            step, title, Verdict.FAIL, (*evidence, "an upstream did not answer within nginx's *_read_timeout"),
            Cause.UPSTREAM_TIMEOUT, upstream_timeout.front_slow(nginx_error_log(ctx)), Facts(unit=unit),
        )  # fmt: skip
    if probe.status_code == 502:
        return Finding(step, title, Verdict.FAIL, (*evidence, "502 Bad Gateway: see the causes above"))
    return Finding(step, title, Verdict.WARN, evidence)


def nginx_error_log(ctx: StepContext) -> str:
    """The first nginx error log that exists, else the first configured pattern."""
    for pattern in ctx.config.logs.nginx:
        for path in sorted(glob.glob(pattern)):
            return path
    return ctx.config.logs.nginx[0] if ctx.config.logs.nginx else "/var/log/nginx/error.log"
