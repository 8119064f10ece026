"""Command line: serve ``/metrics`` (default), ``diagnose`` once, and the helper commands."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence

from exporter import __version__
from exporter.app import diagnose_once, serving, stop_on_signals
from exporter.config import Config, ConfigError
from exporter.diagnosis.render import diagnosis_json, render_text
from exporter.discovery.merge import load_config
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
    from exporter.mixin.cli import rules_main

    return rules_main


def _dashboards_main() -> Callable[[list[str]], int]:
    from exporter.mixin.cli import dashboards_main

    return dashboards_main


def _demo_main() -> Callable[[list[str]], int]:
    from exporter.demo.cli import main

    return main


_PASSTHROUGH: dict[str, Callable[[], Callable[[list[str]], int]]] = {
    "logs": _logs_main,
    "rules": _rules_main,
    "dashboards": _dashboards_main,
    "demo": _demo_main,
}


def serve(
    config: Config, web_config: WebConfig | None = None, reload: Callable[[], Config] | None = None
) -> int:
    """Serve ``/metrics`` until SIGTERM or SIGINT."""
    try:
        with serving(config, web_config, reload) as running:
            stop = stop_on_signals()
            host, port = running.server.server_address[:2]
            log.info(
                "badgateway-exporter %s listening on %s://%s:%s",
                __version__,
                running.server.scheme,
                host,
                port,
            )
            stop.wait()
            log.info("shutting down")
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        print(f"{PROG}: cannot listen on {config.listen_address}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


def run_diagnose(config: Config, output_format: str, timeout: float | None) -> int:
    """Run every check once; exit 0 healthy, 1 a cause of 502/504 now, 3 only problems for the next restart."""
    diagnosis = diagnose_once(config, timeout)
    if output_format == "json":
        print(json.dumps(diagnosis_json(diagnosis), indent=2))
    else:
        print(render_text(diagnosis, color=sys.stdout.isatty() and "NO_COLOR" not in os.environ))
    return diagnosis.exit_code
