"""``badgateway-exporter demo``: the bundled stack, watched by the exporter, on loopback."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

import yaml

from exporter.config import ConfigError, config_from_dict
from exporter.demo.stack import Stack, StackError, make_root
from exporter.logs.metrics import log_families
from exporter.logs.tailer import LogWatcher
from exporter.server import Exporter, make_server

PROG = "badgateway-exporter demo"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Start a real nginx + PHP-FPM + uvicorn stack on loopback and the exporter watching it.",
    )
    parser.add_argument("--web.listen-address", dest="listen", default="127.0.0.1:9502", metavar="ADDR")
    parser.add_argument(
        "--dir", type=Path, default=None, help="folder for the stack (default: a new temp folder)"
    )
    parser.add_argument(
        "--duration", type=float, default=None, metavar="SECONDS", help="stop after this long"
    )
    return parser


def main(argv: Sequence[str]) -> int:
    """Run the demo until Ctrl-C, SIGTERM or ``--duration``."""
    args = _parser().parse_args(list(argv))
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        del signum, frame
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    root = args.dir.resolve() if args.dir else make_root("badgateway-demo-")
    try:
        stack = Stack(root)
    except (StackError, OSError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    print(f"starting nginx, php-fpm and the backend in {root} ...", flush=True)
    try:
        stack.start()
    except StackError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    try:
        settings = stack.exporter_config()
        settings["listen_address"] = args.listen
        config_path = root / "exporter.yml"
        config_path.write_text(yaml.safe_dump(settings, sort_keys=False), encoding="utf-8")
        try:
            config = config_from_dict(settings, str(config_path))
        except ConfigError as exc:
            print(f"{PROG}: {exc}", file=sys.stderr)
            return 2
        watcher = LogWatcher(config.logs)
        watcher.start()
        exporter = Exporter(config, [log_families(watcher)])
        try:
            server = make_server(exporter, args.listen)
        except OSError as exc:
            print(f"{PROG}: cannot listen on {args.listen}: {exc.strerror or exc}", file=sys.stderr)
            exporter.close()
            watcher.stop()
            return 1
        thread = threading.Thread(target=server.serve_forever, name="http", daemon=True)
        thread.start()
        port = server.server_address[1]
        host = args.listen.rpartition(":")[0] or "127.0.0.1"
        from exporter.cli import render_text

        _, diagnosis = exporter.check(config.scrape_timeout_seconds)
        print(
            f"""
demo stack is up:
  site through nginx   {stack.front_url}
  backend health       {stack.backend_url}
  PHP-FPM socket       {stack.socket_path}
  nginx error log      {stack.nginx_error_log}
exporter:
  metrics              http://{host}:{port}/metrics
  config               {config_path}
  diagnose yourself    .venv/bin/badgateway-exporter --config {config_path} diagnose

what diagnose says now:
{render_text(diagnosis)}

Press Ctrl-C to stop everything.""",
            flush=True,
        )
        stop.wait(args.duration)
        print("stopping ...", flush=True)
        server.shutdown()
        server.server_close()
        exporter.close()
        watcher.stop()
    finally:
        stack.stop()
    print("stopped; nothing left running.")
    return 0
