"""Command line: serve ``/metrics`` (default), ``diagnose`` once, and the helper commands."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from exporter import __version__
from exporter.config import Config, ConfigError
from exporter.deadline import MAX_SCRAPE_TIMEOUT_SECONDS, Deadline
from exporter.diagnosis import EXIT_CAUSE_NOW, EXIT_LATENT_ONLY, Diagnosis
from exporter.discovery.merge import load_config
from exporter.webconfig import WebConfig, load_web_config
from exporter.without_ssl import import_asyncio_without_ssl

if TYPE_CHECKING:
    from exporter.app import Checked

PROG = "badgateway-exporter"
log = logging.getLogger(PROG)

MAX_WAIT_SECONDS = 3600.0
WAIT_POLL_SECONDS = 2.0
EXIT_USAGE = 2
# Third-party loggers that say one INFO line per request (httpx: "HTTP Request: GET ..."): quiet
# below WARNING unless --log.level=debug.
CHATTY_LOGGERS = ("httpx", "httpcore")


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
    _diagnose_parser(sub)
    sub.add_parser(
        "logs", help="classify or analyze nginx / PHP-FPM logs offline (logs --help)", add_help=False
    )
    sub.add_parser("rules", help="render the Prometheus alert rules (rules --help)", add_help=False)
    sub.add_parser("dashboards", help="render the Grafana dashboards (dashboards --help)", add_help=False)
    sub.add_parser("demo", help="run the bundled demo stack with the exporter (demo --help)", add_help=False)
    sub.add_parser(
        "fleet",
        help="every host's cause, since when and its fix, from Prometheus (fleet --help)",
        add_help=False,
    )
    sub.add_parser(
        "discover", help="print the effective configuration and where each value came from", add_help=False
    )
    return parser


_DIAGNOSE_EPILOG = f"""\
exit codes:
  0  healthy: no cause of 502/504
  1  a cause of 502/504 is happening now
  2  bad usage or configuration (also: the bundle file cannot be written)
  3  only problems for the next reload or restart (nginx -t fails while nginx serves, ...)

examples:
  {PROG} diagnose                             # once
  {PROG} diagnose --wait 60                   # after a fix or a deploy: until healthy, at most 60 s
  {PROG} diagnose --bundle /tmp/502.tar.gz    # and a redacted bundle for a colleague

The bundle holds the diagnosis, the recent lines of the watched logs, the units' journals,
nginx -T, the PHP-FPM files discovery read, the backend's environment and the versions; every
secret value is redacted, it is written with mode 0600 and nothing leaves this host."""


def _seconds(low: float, high: float, zero_ok: bool) -> Callable[[str], float]:
    """An argparse type: a finite number of seconds within ``[low, high]`` (``low`` itself if ``zero_ok``)."""
    bounds = f"from {low:g} to {high:g}" if zero_ok else f"above {low:g} and at most {high:g}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and (low <= value if zero_ok else low < value) and value <= high):
            raise argparse.ArgumentTypeError(f"must be a number of seconds {bounds}, got {text!r}")
        return value

    return parse


def _diagnose_parser(sub: argparse._SubParsersAction[_Parser]) -> None:
    diag = sub.add_parser(
        "diagnose",
        help="run every check once and print the verdict and the fix",
        description="Run every runbook check and print each step's verdict, the causes of 502/504 and the fix.",
        epilog=_DIAGNOSE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    diag.add_argument("--format", choices=["text", "json"], default="text", help="text (default) or json")
    diag.add_argument(
        "--timeout",
        type=_seconds(0, MAX_SCRAPE_TIMEOUT_SECONDS, zero_ok=False),
        default=None,
        metavar="SECONDS",
        help=f"deadline for all checks of a round (default: scrape_timeout_seconds; at most {MAX_SCRAPE_TIMEOUT_SECONDS:g})",
    )
    diag.add_argument(
        "--wait",
        type=_seconds(0, MAX_WAIT_SECONDS, zero_ok=True),
        default=None,
        metavar="SECONDS",
        help=f"check again every {WAIT_POLL_SECONDS:g} s until no cause of 502/504 is left (exit 0, or 3 if only "
        f"problems for the next restart remain) or SECONDS are up (the last verdict); one line per round "
        f"on stderr, the full diagnosis at the end (at most {MAX_WAIT_SECONDS:g})",
    )
    diag.add_argument(
        "--bundle",
        metavar="FILE.tar.gz",
        help="also write a support bundle there: diagnosis, recent logs, journals, nginx -T, PHP-FPM "
        "files, the backend's environment, versions; secrets redacted, mode 0600, written on this host only",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``badgateway-exporter`` command."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    passthrough = _passthrough(args_list)
    if passthrough is not None:
        return passthrough
    try:
        args = _parser().parse_args(args_list)
        _configure_logging(args.log_level)
        flags = (
            {"listen_address": ("--web.listen-address", args.listen_address)} if args.listen_address else None
        )
        config = load_config(args.config, flags)
        if args.command == "diagnose":
            return run_diagnose(
                config,
                args.format,
                args.timeout,
                wait=args.wait,
                bundle=args.bundle,
                reload=lambda: load_config(args.config, flags),
            )
        web_config = load_web_config(args.web_config_file) if args.web_config_file else None
        return serve(config, web_config, reload=lambda: load_config(args.config, flags))
    except (ConfigError, UsageError) as exc:
        print(f"{PROG}: {exc}" if not str(exc).startswith(PROG) else str(exc), file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def _configure_logging(level: str) -> None:
    """The exporter's own log at ``level``; the chatty third-party loggers only with ``debug``."""
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if level == "debug" else logging.WARNING)


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
    """``discover``, ``logs``, ``rules``, ``dashboards``, ``demo`` and ``fleet`` parse their own arguments."""
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


def _fleet_main() -> Callable[[list[str]], int]:
    from exporter.fleet.cli import main

    return main


_PASSTHROUGH: dict[str, Callable[[], Callable[[list[str]], int]]] = {
    "logs": _logs_main,
    "rules": _rules_main,
    "dashboards": _dashboards_main,
    "demo": _demo_main,
    "fleet": _fleet_main,
}


def serve(
    config: Config, web_config: WebConfig | None = None, reload: Callable[[], Config] | None = None
) -> int:
    """Serve ``/metrics`` until SIGTERM or SIGINT."""
    if web_config is None or web_config.ssl_context is None:
        import_asyncio_without_ssl()
    from exporter.app import serving, stop_on_signals  # after asyncio: see exporter.without_ssl

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


def run_diagnose(
    config: Config,
    output_format: str,
    timeout: float | None,
    *,
    wait: float | None = None,
    bundle: str | None = None,
    reload: Callable[[], Config] | None = None,
) -> int:
    """Run every check (again, with ``wait``), print the diagnosis, write the bundle; the diagnosis's exit code.

    Exit 0 healthy, 1 a cause of 502/504 now, 3 only problems for the next restart; a bundle that
    cannot be written is a :class:`UsageError` (exit 2), found before any check runs.
    """
    if bundle is not None:
        return _diagnose_with_bundle(config, output_format, timeout, wait, bundle, reload)
    checked, _ = _check(config, timeout, wait, reload)
    _print_diagnosis(checked.diagnosis, output_format)
    return checked.diagnosis.exit_code


def _check(
    config: Config, timeout: float | None, wait: float | None, reload: Callable[[], Config] | None
) -> tuple[Checked, Config]:
    from exporter.app import check_once

    if wait is None:
        return check_once(config, timeout), config
    return wait_for_fix(config, timeout, wait, reload)


def _diagnose_with_bundle(
    config: Config,
    output_format: str,
    timeout: float | None,
    wait: float | None,
    path: str,
    reload: Callable[[], Config] | None,
) -> int:
    # Imported only when asked for: tarfile brings lzma and bz2, a MiB the serving exporter never needs.
    from exporter.bundle import BundleError, PendingBundle, write_bundle

    try:
        pending: PendingBundle | None = PendingBundle(path)
    except BundleError as exc:
        raise UsageError(str(exc)) from None
    try:
        checked, config = _check(config, timeout, wait, reload)
        _print_diagnosis(checked.diagnosis, output_format)
        assert pending is not None
        written = write_bundle(pending, config, checked)
        pending = None
        missing = f"; {len(written.notes)} note(s) on what is missing in README.txt" if written.notes else ""
        print(
            f"{PROG}: wrote the bundle {written.path} ({len(written.names)} files, "
            f"{written.size / 1024:.0f} KiB, secrets redacted){missing}",
            file=sys.stderr,
        )
    except BundleError as exc:
        raise UsageError(str(exc)) from None
    finally:
        if pending is not None:
            pending.discard()
    return checked.diagnosis.exit_code


def _print_diagnosis(diagnosis: Diagnosis, output_format: str) -> None:
    from exporter.diagnosis.render import diagnosis_json, render_text  # diagnose only, not serve

    if output_format == "json":
        print(json.dumps(diagnosis_json(diagnosis), indent=2))
    else:
        print(render_text(diagnosis, color=sys.stdout.isatty() and "NO_COLOR" not in os.environ))


def wait_for_fix(
    config: Config, timeout: float | None, wait: float, reload: Callable[[], Config] | None = None
) -> tuple[Checked, Config]:
    """Rounds every :data:`WAIT_POLL_SECONDS` until none has a cause of 502/504 now or ``wait`` is up.

    The last round starts at the deadline at the latest; ``reload`` (discovery again) runs before
    each round after the first, so a fix in nginx's or PHP-FPM's files is seen. One line per round
    goes to stderr.
    """
    from exporter.app import check_once

    started = time.monotonic()
    deadline = Deadline.after(wait)
    round_number = 0
    while True:
        round_started = time.monotonic()
        checked = check_once(config, timeout)
        round_number += 1
        print(_round_line(round_number, time.monotonic() - started, wait, checked.diagnosis), file=sys.stderr)
        if checked.diagnosis.exit_code != EXIT_CAUSE_NOW or deadline.expired():
            return checked, config
        time.sleep(max(0.0, min(round_started + WAIT_POLL_SECONDS, deadline.at) - time.monotonic()))
        config = _reloaded(config, reload)


def _reloaded(config: Config, reload: Callable[[], Config] | None) -> Config:
    if reload is None:
        return config
    try:
        return reload()
    except ConfigError as exc:
        log.warning("configuration cannot be loaded again, keeping the old one: %s", exc)
        return config


def _round_line(number: int, elapsed: float, wait: float, diagnosis: Diagnosis) -> str:
    """``diagnose --wait: round 3, 4.1s of 30s: php_fpm_down remains``."""
    head = f"{PROG} diagnose --wait: round {number}, {elapsed:.1f}s of {wait:g}s"
    if diagnosis.exit_code == EXIT_CAUSE_NOW:
        now = sorted(cause.value for cause in diagnosis.now) or ["502/504 with no cause identified"]
        return f"{head}: {', '.join(now)} {'remains' if len(now) == 1 else 'remain'}"
    if diagnosis.exit_code == EXIT_LATENT_ONLY:
        later = sorted(cause.value for cause in diagnosis.latent) or [
            f.step for f in diagnosis.latent_findings
        ]
        return f"{head}: no cause of 502/504 now; for the next reload or restart: {', '.join(later)}"
    return f"{head}: no cause of 502/504 left"
