"""``badgateway-exporter logs ...``: classify lines from stdin, analyze old log files."""

from __future__ import annotations

import argparse
import json
import sys
import typing
from collections.abc import Iterator
from typing import IO, Literal

from exporter.logs.analyze import AnalyzeError, analyze, format_text
from exporter.logs.classify import MAX_LINE_BYTES, SOURCES, Source
from exporter.logs.lines import LINE_SOURCES, LineSource, classify_line
from exporter.logs.tailer import LineSplitter

MAX_TOP = 1000
READ_CHUNK = 64 * 1024


def _top(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_TOP:
        raise argparse.ArgumentTypeError(f"must be a whole number from 0 to {MAX_TOP}, got {text!r}")
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:
        """One line, exit 2 (argparse would print the whole usage first)."""
        self.exit(2, f"{self.prog}: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="badgateway-exporter logs",
        description="Read nginx error logs and PHP-FPM logs offline.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    classify = sub.add_parser(
        "classify",
        help="classify lines read on stdin, one JSON object per line",
        description='Print {"source", "cause", "kind", "upstream"} (nginx) or {"source", "cause", "event", ...}'
        " (PHP-FPM, the backend, the kernel, SELinux) per input line, in order.",
    )
    classify.add_argument(
        "--source",
        choices=("auto", *LINE_SOURCES),
        default="auto",
        help="which log the lines come from (default: recognised per line)",
    )
    analyze_cmd = sub.add_parser(
        "analyze",
        help="summarise what went wrong in log files (plain or .gz)",
        description="Counts by kind and upstream, first and last time seen, the busiest minutes.",
    )
    analyze_cmd.add_argument("files", nargs="+", metavar="FILE")
    analyze_cmd.add_argument("--format", choices=("text", "json"), default="text")
    analyze_cmd.add_argument(
        "--source",
        choices=("auto", *SOURCES),
        default="auto",
        help="default: guess per file from its content",
    )
    analyze_cmd.add_argument(
        "--top", type=_top, default=5, help=f"how many busiest minutes to show (0 to {MAX_TOP})"
    )
    return parser


def main(argv: list[str]) -> int:
    """Run ``logs classify`` or ``logs analyze``; ``argv`` excludes the word ``logs``."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # usage errors (2) and --help (0): argparse has printed the message
        return exc.code if isinstance(exc.code, int) else 2
    try:
        if args.command == "classify":
            return _classify(sys.stdin.buffer, sys.stdout, args.source)
        return _analyze(args.files, args.format, None if args.source == "auto" else args.source, args.top)
    except BrokenPipeError:
        # The reader went away (``| head``): not an error worth a traceback.
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        return 130


def _lines(stdin: IO[bytes]) -> Iterator[bytes]:
    """The lines of ``stdin`` as they arrive, each cut to 64 KiB: memory stays bounded by that cap
    whatever comes in (a line that never ends, ``/dev/zero``)."""
    read = getattr(stdin, "read1", stdin.read)  # read1: what has arrived, for a live pipe
    splitter = LineSplitter()
    while data := read(READ_CHUNK):
        yield from splitter.feed(data)
    yield from splitter.flush()


def _classify(stdin: IO[bytes], stdout: IO[str], source: LineSource | Literal["auto"]) -> int:
    write = stdout.write
    for raw in _lines(stdin):
        line = raw.rstrip(b"\r")[:MAX_LINE_BYTES]
        write(json.dumps(classify_line(line, source).as_dict()) + "\n")
    stdout.flush()
    return 0


def _analyze(files: list[str], fmt: str, source: Source | None, top: int) -> int:
    try:
        result = analyze(files, source)
    except AnalyzeError as exc:
        print(f"badgateway-exporter logs analyze: {exc}", file=sys.stderr)
        return 2
    if fmt == "json":
        json.dump(result.as_dict(top), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(format_text(result, top))
    sys.stdout.flush()
    return 0
