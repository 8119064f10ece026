"""``badgateway-exporter rules …`` and ``badgateway-exporter dashboards …``: one parser, one error path.

Both commands take the same settings (:mod:`exporter.mixin.settings`), so the rules and the
dashboards rendered with the same ``--set`` values agree::

    badgateway-exporter rules render [--out DIR] [--runbooks DIR] [--runbook-base-url URL] \\
        [--for-scale F] [--set KEY=VALUE ...]
    badgateway-exporter dashboards render [--out DIR] [same settings]

``render`` writes the files and prints their paths; ``check`` compares them with a fresh render
(and runs ``promtool check rules`` and ``amtool check-config`` when they are installed). Exit 0,
1 when ``check`` finds a difference, 2 with one line on bad input.
"""

from __future__ import annotations

import argparse
import math
import shutil
import subprocess
import sys
import tempfile
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from exporter.mixin import dashboards, rules, runbooks
from exporter.mixin.alerts import ALERT_NAMES
from exporter.mixin.inhibitions import ALERTMANAGER_FILE
from exporter.mixin.panels import DASHBOARDS_DIR
from exporter.mixin.settings import (
    DEFAULT_RUNBOOK_BASE_URL,
    SETTING_KEYS,
    MixinError,
    Settings,
    settings_from_args,
)

_TOOL_TIMEOUT = 60


@dataclass(frozen=True)
class Output:
    """A folder and the files rendered into it."""

    folder: Path
    files: dict[str, str]


@dataclass(frozen=True)
class Command:
    name: str
    description: str
    default_out: str
    render: Callable[[Settings], dict[str, str]]
    validate: Callable[[dict[str, str]], list[str]]
    """Problems a real tool finds in the fresh render (empty when the tool is not installed)."""


MAX_FOR_SCALE = 100.0
"""The largest ``--for-scale``: a 15m for: becomes a day; beyond, durations overflow into nonsense."""


def _for_scale(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 <= value <= MAX_FOR_SCALE):
        raise argparse.ArgumentTypeError(f"must be a number from 0 to {MAX_FOR_SCALE:g}, got {text!r}")
    return value


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:
        raise MixinError(message)


def _tool_problems(tool: str, args: list[str], rendered: dict[str, str], names: tuple[str, ...]) -> list[str]:
    """Run ``tool args FILE...`` on the rendered ``names`` in a temporary folder."""
    binary = shutil.which(tool)
    if binary is None:
        return []
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for name in names:
            (Path(tmp) / name).write_text(rendered[name], encoding="utf-8")
            files.append(str(Path(tmp) / name))
        try:
            proc = subprocess.run(
                [binary, *args, *files], capture_output=True, text=True, timeout=_TOOL_TIMEOUT, check=False
            )
        except subprocess.TimeoutExpired:
            return [f"{tool} {' '.join(args)}: no answer within {_TOOL_TIMEOUT} s"]
    if proc.returncode == 0:
        return []
    return [f"{tool} {' '.join(args)}: " + " ".join((proc.stderr or proc.stdout).split())]


def _validate_rules(rendered: dict[str, str]) -> list[str]:
    return _tool_problems("promtool", ["check", "rules"], rendered, (rules.RULES_FILE,)) + _tool_problems(
        "amtool", ["check-config"], rendered, (ALERTMANAGER_FILE,)
    )


COMMANDS: dict[str, Command] = {
    "rules": Command(
        "rules",
        "Prometheus alert rules, the Alertmanager example and the runbook index, from exporter.causes",
        "rules",
        rules.render,
        _validate_rules,
    ),
    "dashboards": Command(
        "dashboards",
        "Grafana dashboards, from exporter.causes and the settings of the rules",
        DASHBOARDS_DIR,
        dashboards.render,
        lambda rendered: [],
    ),
}


def _parser(command: Command) -> argparse.ArgumentParser:
    parser = _ArgumentParser(prog=f"badgateway-exporter {command.name}", description=command.description)
    sub = parser.add_subparsers(dest="action", required=True)
    for action, text in (
        ("render", "write the files"),
        ("check", "verify that the files equal a fresh render (exit 1 if not)"),
    ):
        p = sub.add_parser(action, help=text)
        p.add_argument("--out", help=f"folder of the files (default: {command.default_out})")
        if command.name == "rules":
            p.add_argument(
                "--runbooks",
                help=f"folder of the runbook index {runbooks.INDEX_FILE}"
                f" (default: {runbooks.RUNBOOKS_DIR} when --out is not given, else none)",
            )
        p.add_argument(
            "--runbook-base-url", help=f"base of the runbook links (default: {DEFAULT_RUNBOOK_BASE_URL})"
        )
        p.add_argument(
            "--for-scale",
            type=_for_scale,
            help=f"multiply every for: by this factor, 0 to {MAX_FOR_SCALE:g} (default: 1)",
        )
        p.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help=f"override a setting; keys: {', '.join(SETTING_KEYS)}, for.<AlertName>=DURATION",
        )
    return parser


def _outputs(command: Command, args: argparse.Namespace, settings: Settings) -> list[Output]:
    outputs = [Output(Path(args.out or command.default_out), command.render(settings))]
    if command.name == "rules":
        folder = args.runbooks if args.runbooks is not None else (None if args.out else runbooks.RUNBOOKS_DIR)
        if folder:
            outputs.append(Output(Path(folder), runbooks.render(settings)))
    return outputs


def stale_files(output: Output, command: str) -> list[str]:
    """One problem line for every rendered file that is missing from its folder or differs."""
    problems = []
    for name, text in output.files.items():
        path = output.folder / name
        try:
            current = path.read_text(encoding="utf-8")
        except OSError as exc:
            problems.append(f"{path}: cannot read: {exc.strerror or exc}")
            continue
        if current != text:
            problems.append(
                f"{path}: differs from a fresh render (run: badgateway-exporter {command} render)"
            )
    return problems


def write_files(output: Output) -> None:
    """Write every rendered file and print its path; :class:`MixinError` when it cannot."""
    try:
        output.folder.mkdir(parents=True, exist_ok=True)
        for name, text in output.files.items():
            (output.folder / name).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise MixinError(f"{exc.filename or output.folder}: cannot write: {exc.strerror or exc}") from None
    for name in output.files:
        print(output.folder / name)


def run(name: str, argv: list[str]) -> int:
    """``badgateway-exporter NAME render|check ...``; exit 0, 1 (check found drift) or 2 (bad input)."""
    command = COMMANDS[name]
    try:
        args = _parser(command).parse_args(argv)
        settings = settings_from_args(args.set, ALERT_NAMES, args.runbook_base_url, args.for_scale)
        outputs = _outputs(command, args, settings)
        if args.action == "check":
            problems = [p for output in outputs for p in stale_files(output, name)]
            problems += command.validate(outputs[0].files)
            for problem in problems:
                print(problem, file=sys.stderr)
            return 1 if problems else 0
        for output in outputs:
            write_files(output)
        return 0
    except MixinError as exc:
        print(f"badgateway-exporter {name}: {exc}", file=sys.stderr)
        return 2


def rules_main(argv: list[str]) -> int:
    """``badgateway-exporter rules …``"""
    return run("rules", argv)


def dashboards_main(argv: list[str]) -> int:
    """``badgateway-exporter dashboards …``"""
    return run("dashboards", argv)
