"""Command line: serve ``/metrics`` (default), ``diagnose`` once, and the helper commands."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from types import FrameType

from exporter import __version__
from exporter.causes import CAUSES
from exporter.config import Config, ConfigError, load_config
from exporter.diagnosis import Diagnosis, Finding, Verdict
from exporter.logs.finding import log_finding
from exporter.logs.metrics import log_families
from exporter.logs.tailer import LogWatcher
from exporter.server import Exporter, make_server
from exporter.webconfig import WebConfig, load_web_config

PROG = "badgateway-exporter"
log = logging.getLogger(PROG)


class UsageError(Exception):
    """Bad flags or values on the command line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG, description="Why is nginx answering 502/504? Prometheus exporter and diagnosis."
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument(
        "--config", metavar="FILE", help="YAML configuration file (defaults fit a stock Debian/Ubuntu host)"
    )
    parser.add_argument(
        "--web.listen-address", dest="listen_address", metavar="ADDR", help="[host]:port, default :9502"
    )
    parser.add_argument(
        "--web.config.file",
        dest="web_config_file",
        metavar="FILE",
        help="exporter-toolkit web config: TLS, mTLS, basic auth (docs/security.md)",
    )
    parser.add_argument(
        "--log.level", dest="log_level", default="info", choices=["debug", "info", "warning", "error"]
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.add_parser("serve", help="serve /metrics (the default)")
    diag = sub.add_parser("diagnose", help="run every check once and print the verdict and the fix")
    diag.add_argument("--format", choices=["text", "json"], default="text")
    diag.add_argument(
        "--timeout", type=float, default=None, metavar="SECONDS", help="deadline for all checks"
    )
    sub.add_parser(
        "logs", help="classify or analyze nginx / PHP-FPM logs offline (logs --help)", add_help=False
    )
    sub.add_parser("rules", help="render the Prometheus alert rules (rules --help)", add_help=False)
    sub.add_parser("dashboards", help="render the Grafana dashboards (dashboards --help)", add_help=False)
    sub.add_parser("demo", help="run the bundled demo stack with the exporter (demo --help)", add_help=False)
    sub.add_parser(
        "discover", help="print the effective configuration and where each value came from", add_help=False
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``badgateway-exporter`` command."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    passthrough = _passthrough(args_list)
    if passthrough is not None:
        return passthrough
    try:
        args = _parser().parse_args(args_list)
        logging.basicConfig(
            level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        flags = (
            {"listen_address": ("--web.listen-address", args.listen_address)} if args.listen_address else None
        )
        config = load_config(args.config, flags)
        if args.command == "diagnose":
            return run_diagnose(config, args.format, args.timeout)
        web_config = load_web_config(args.web_config_file) if args.web_config_file else None
        return serve(config, web_config, reload=lambda: load_config(args.config, flags))
    except (ConfigError, UsageError) as exc:
        print(f"{PROG}: {exc}" if not str(exc).startswith(PROG) else str(exc), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


_GLOBAL_OPTIONS_WITH_VALUE = ("--config", "--web.listen-address", "--web.config.file", "--log.level")


def _command_position(argv: list[str]) -> int:
    """Index of the first word that is not a global option or its value, or ``len(argv)``."""
    i = 0
    while i < len(argv):
        word = argv[i]
        if not word.startswith("-"):
            return i
        i += 2 if word in _GLOBAL_OPTIONS_WITH_VALUE else 1
    return len(argv)


def _passthrough(argv: list[str]) -> int | None:
    """``discover``, ``logs``, ``rules``, ``dashboards`` and ``demo`` parse their own arguments."""
    position = _command_position(argv)
    if position >= len(argv) or argv[position] not in (*_PASSTHROUGH, "discover"):
        return None
    command, global_options, rest = argv[position], argv[:position], argv[position + 1 :]
    if command == "discover":
        from exporter.discovery.cli import main as discover_main

        return discover_main(global_options + rest)
    if global_options:
        print(
            f"{PROG}: {' '.join(global_options)}: not an option of '{command}' (see {PROG} {command} --help)",
            file=sys.stderr,
        )
        return 2
    return _PASSTHROUGH[command]()(rest)


def _logs_main() -> Callable[[list[str]], int]:
    from exporter.logs.cli import main

    return main


def _rules_main() -> Callable[[list[str]], int]:
    from exporter.rules import main

    return main


def _dashboards_main() -> Callable[[list[str]], int]:
    from exporter.grafana import main

    return main


def _demo_main() -> Callable[[list[str]], int]:
    from exporter.demo.cli import main

    return main


_PASSTHROUGH: dict[str, Callable[[], Callable[[list[str]], int]]] = {
    "logs": _logs_main,
    "rules": _rules_main,
    "dashboards": _dashboards_main,
    "demo": _demo_main,
}


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT (installed in the main thread)."""
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        del signum, frame
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    return stop


def serve(
    config: Config, web_config: WebConfig | None = None, reload: Callable[[], Config] | None = None
) -> int:
    """Serve ``/metrics`` until SIGTERM or SIGINT."""
    watcher = LogWatcher(config.logs)
    watcher.start()
    exporter = Exporter(config, [log_families(watcher)], reload)
    try:
        server = make_server(exporter, config.listen_address, web_config)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        exporter.close()
        watcher.stop()
        print(f"{PROG}: cannot listen on {config.listen_address}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    stop = stop_on_signals()
    thread = threading.Thread(target=server.serve_forever, name="http", daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    log.info("badgateway-exporter %s listening on %s://%s:%s", __version__, server.scheme, host, port)
    stop.wait()
    log.info("shutting down")
    server.shutdown()
    server.server_close()
    exporter.close()
    watcher.stop()
    return 0


_MARKS = {Verdict.OK: "ok  ", Verdict.WARN: "warn", Verdict.FAIL: "FAIL", Verdict.SKIP: "skip"}
_COLORS = {Verdict.OK: "32", Verdict.WARN: "33", Verdict.FAIL: "31;1", Verdict.SKIP: "90"}


def run_diagnose(config: Config, output_format: str, timeout: float | None) -> int:
    """Run every check once; exit 0 healthy, 1 when a cause or a gateway error is found."""
    exporter = Exporter(config)
    try:
        _, diagnosis = exporter.check(timeout or config.scrape_timeout_seconds)
    finally:
        exporter.close()
    diagnosis = with_log_evidence(diagnosis, log_finding(config.logs))
    if output_format == "json":
        print(json.dumps(diagnosis_json(diagnosis), indent=2))
    else:
        print(render_text(diagnosis, color=sys.stdout.isatty() and "NO_COLOR" not in os.environ))
    return 0 if diagnosis.healthy else 1


def with_log_evidence(diagnosis: Diagnosis, logs: Finding) -> Diagnosis:
    """Insert the log step after the service steps, where the runbook reads the logs."""
    findings = list(diagnosis.findings)
    position = next(
        (i for i, f in enumerate(findings) if not f.step.startswith(("process:", "unit:", "units"))),
        len(findings),
    )
    findings.insert(position, logs)
    return replace(diagnosis, findings=tuple(findings))


def _finding_json(finding: Finding) -> dict[str, object]:
    return {
        "step": finding.step,
        "title": finding.title,
        "verdict": finding.verdict.value,
        "evidence": list(finding.evidence),
        "cause": finding.cause.value if finding.cause else None,
        "fix": list(finding.fix),
    }


def diagnosis_json(diagnosis: Diagnosis) -> dict[str, object]:
    """The diagnosis as a JSON-able document (``diagnose --format json``)."""
    causes = []
    for cause in sorted(diagnosis.causes):
        info = CAUSES[cause]
        fixes = [list(f.fix) for f in diagnosis.findings if f.cause == cause and f.verdict == Verdict.FAIL]
        causes.append(
            {"cause": cause.value, "title": info.title, "alert": info.alert, "runbook": info.runbook_path,
             "fix": fixes[0] if fixes else []}
        )  # fmt: skip
    return {
        "healthy": diagnosis.healthy,
        "causes": causes,
        "gateway_errors": list(diagnosis.gateway_errors),
        "findings": [_finding_json(f) for f in diagnosis.findings],
    }


def render_text(diagnosis: Diagnosis, color: bool = False) -> str:
    """The diagnosis for a person at a terminal: each step, its evidence, the verdict and the fix."""

    def paint(text: str, code: str) -> str:
        return f"\033[{code}m{text}\033[0m" if color else text

    lines = []
    for finding in diagnosis.findings:
        mark = paint(f"[{_MARKS[finding.verdict]}]", _COLORS[finding.verdict])
        lines.append(f"{mark} {finding.title}")
        lines.extend(f"       {item}" for item in finding.evidence)
        if finding.verdict in (Verdict.FAIL, Verdict.WARN):
            if finding.cause:
                lines.append(f"       cause: {finding.cause.value}")
            lines.extend(f"       fix:   {command}" for command in finding.fix)
    lines.append("")
    if diagnosis.healthy:
        lines.append(paint("Verdict: no cause of 502/504 found.", "32;1"))
        return "\n".join(lines)
    if diagnosis.causes:
        lines.append(paint(f"Verdict: {len(diagnosis.causes)} cause(s) of 502/504 found:", "31;1"))
        for cause in sorted(diagnosis.causes):
            info = CAUSES[cause]
            lines.append(f"  {cause.value}: {info.title} (runbook: {info.runbook_path})")
            first = next(f for f in diagnosis.findings if f.cause == cause and f.verdict == Verdict.FAIL)
            lines.extend(f"      {command}" for command in first.fix)
    if diagnosis.gateway_errors:
        lines.append("Gateway errors seen: " + "; ".join(diagnosis.gateway_errors))
    return "\n".join(lines)
