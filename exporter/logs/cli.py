"""``badgateway-exporter logs ...``: classify lines from stdin, analyze old log files."""

from __future__ import annotations

import argparse
import json
import sys
from typing import IO

from exporter.logs.analyze import AnalyzeError, analyze, format_text
from exporter.logs.classify import (
    CHILD_KILLED,
    MAX_LINE_BYTES,
    SOURCES,
    Source,
    classify_nginx,
    classify_phpfpm,
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="badgateway-exporter logs",
        description="Read nginx error logs and PHP-FPM logs offline.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    classify = sub.add_parser(
        "classify",
        help="classify lines read on stdin, one JSON object per line",
        description='Print {"kind", "upstream"} (nginx) or {"event", "pool"} (PHP-FPM) per input line.',
    )
    classify.add_argument("--source", choices=SOURCES, default="nginx", help="which log the lines come from")
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
    analyze_cmd.add_argument("--top", type=int, default=5, help="how many busiest minutes to show")
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


def _classify(stdin: IO[bytes], stdout: IO[str], source: Source) -> int:
    write = stdout.write
    for raw in stdin:
        line = raw.rstrip(b"\r\n")[:MAX_LINE_BYTES]
        if source == "nginx":
            kind, upstream = classify_nginx(line)
            write(json.dumps({"kind": kind, "upstream": upstream}) + "\n")
        else:
            event, pool, signal = classify_phpfpm(line)
            record: dict[str, str | None] = {"event": event, "pool": pool}
            if event == CHILD_KILLED:
                record["signal"] = signal
            write(json.dumps(record) + "\n")
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
