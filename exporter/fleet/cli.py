"""``badgateway-exporter fleet --prometheus URL``: every host with an active cause, since when and its
fix, and the hosts whose exporter is down, from the Prometheus HTTP API.

Exit codes (like ``diagnose``): 0 healthy, 1 a cause of 502/504 on some host now, 2 bad usage or
Prometheus unreachable (or holding no series of the job), 3 no cause known but some exporter is down.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
import typing
from collections.abc import Sequence
from datetime import UTC, datetime

from exporter.fleet.prometheus import PrometheusAPI, PrometheusError
from exporter.fleet.view import ActiveCause, FleetView, fleet_view, host_name

PROG = "badgateway-exporter fleet"
_DURATION_RE = re.compile(r"^(\d+)(s|m|h|d)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_MAX_TIMEOUT = 300.0

_EPILOG = f"""\
exit codes:
  0  healthy: no cause of 502/504 on any host, every exporter up
  1  a cause of 502/504 is happening now on at least one host
  2  bad usage, Prometheus unreachable, or no series of the job in it
  3  no cause known, but some exporter is down (those hosts are not watched)

examples:
  {PROG} --prometheus http://prometheus:9090
  {PROG} --prometheus http://thanos-query:10902 --job 'badgateway|node-badgateway' --format json
  {PROG} --prometheus http://mimir:8080/prometheus --header 'X-Scope-OrgID: tenant-1' --lookback 24h"""


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:
        raise UsageError(message)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 < value <= _MAX_TIMEOUT):
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0 and at most {_MAX_TIMEOUT:g}")
    return value


def _duration(text: str) -> float:
    match = _DURATION_RE.match(text)
    if not match or int(match.group(1)) == 0:
        raise argparse.ArgumentTypeError(f"expected a duration such as 30m, 6h or 2d, got {text!r}")
    return float(int(match.group(1)) * _UNITS[match.group(2)])


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not re.fullmatch(r"[A-Za-z0-9-]+", name.strip()) or "\n" in value:
        raise argparse.ArgumentTypeError(f"expected NAME:VALUE, got {text!r}")
    return name.strip(), value.strip()


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="The fleet from Prometheus: every host with an active cause of 502/504 (since when,"
        " the fix diagnose prints there) and every host whose exporter is down.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--prometheus", required=True, metavar="URL",
                        help="Prometheus HTTP API base URL (a server, Thanos Query, Mimir's /prometheus)")  # fmt: skip
    parser.add_argument("--job", default="badgateway", metavar="REGEX",
                        help="job regex of the exporters' scrape config (default: badgateway)")  # fmt: skip
    parser.add_argument("--format", choices=["text", "json"], default="text", help="text (default) or json")
    parser.add_argument("--timeout", type=_seconds, default=10.0, metavar="SECONDS",
                        help="deadline for all queries together (default: 10)")  # fmt: skip
    parser.add_argument("--header", action="append", default=[], type=_header, metavar="NAME:VALUE",
                        help="an HTTP header for every query, e.g. 'X-Scope-OrgID: tenant-1' (Mimir)")  # fmt: skip
    parser.add_argument("--lookback", type=_duration, default=3600.0, metavar="DURATION",
                        help="how far back 'since' looks, at 1 s resolution per hour of it (default: 1h)")  # fmt: skip
    return parser


_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _safe(text: str) -> str:
    """``text`` from Prometheus (label values) with control characters escaped, newlines kept."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _ago(seconds: float) -> str:
    rest = max(0, round(seconds))
    parts = [(rest // 86400, "d"), (rest % 86400 // 3600, "h"), (rest % 3600 // 60, "m"), (rest % 60, "s")]
    shown = [f"{n}{u}" for n, u in parts if n][:2]
    return "".join(shown) or "0s"


def _since(view: FleetView, since: float | None, before: bool) -> str:
    if since is None:
        return "since: unknown"
    clock = datetime.fromtimestamp(since, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    text = f"since {clock} ({_ago(view.evaluated_at - since)} ago)"
    return f"{text}, or earlier (the lookback starts there)" if before else text


def _cause_lines(view: FleetView, cause: ActiveCause) -> list[str]:
    alert = f"{cause.alert}: " if cause.alert else ""
    lines = [
        _safe(host_name(cause.host)),
        _safe(
            f"  {alert}{cause.title} ({cause.cause}), {_since(view, cause.since, cause.since_before_lookback)}"
        ),
    ]
    if not cause.findings:
        lines.append("  Fix: run sudo badgateway-exporter diagnose on the host")
    for i, finding in enumerate(cause.findings):
        if i:
            lines.append("")
        lines += [f"  {name.capitalize()}: {_safe(value)}" for name, value in finding.facts.items()]
        lines.append("  Fix:")
        lines += [f"    {_safe(line)}" for line in finding.fix.split("\n")]
    return lines


def render_text(view: FleetView) -> str:
    down = len(view.exporters_down)
    hosts_with = len({c.host for c in view.causes})
    head = (
        f"Fleet in {_safe(view.prometheus)} (job=~{_safe(view.job)!r}): {len(view.hosts)} host(s),"
        f" {hosts_with} with a cause of 502/504 now, {down} exporter(s) down."
    )
    lines = [head]
    for cause in view.causes:
        lines += ["", *_cause_lines(view, cause)]
    if view.exporters_down:
        lines += ["", "Exporter down (Prometheus cannot scrape it: every cause on these hosts is unseen):"]
        for d in view.exporters_down:
            lines.append(_safe(f"  {host_name(d.host)}, {_since(view, d.since, d.since_before_lookback)}"))
            lines.append(
                _safe(f"    curl -s http://{dict(d.host).get('instance', 'HOST:9502')}/metrics | head")
            )
        lines.append(
            "  Fix: on each host: sudo systemctl status badgateway-exporter; sudo journalctl -u badgateway-exporter"
        )
    if view.exit_code == 0:
        lines += ["", "Healthy: no cause of 502/504 on any host."]
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    """``badgateway-exporter fleet …``; exit 0, 1, 2 or 3 (see the module's docstring)."""
    try:
        args = _parser().parse_args(list(argv))
        started = time.monotonic()
        with PrometheusAPI(args.prometheus, args.timeout, dict(args.header)) as api:
            view = fleet_view(api, args.job, args.lookback)
        if not view.hosts:
            raise PrometheusError(
                f"{args.prometheus} holds no up or badgateway_build_info series of job=~{args.job!r}"
                " (check --job, and that this Prometheus receives the exporters' series)"
            )
    except (UsageError, PrometheusError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    if args.format == "json":
        document = {**view.to_json(), "query_seconds": round(time.monotonic() - started, 3)}
        print(json.dumps(document, indent=2, ensure_ascii=False))
    else:
        print(render_text(view))
    return view.exit_code
