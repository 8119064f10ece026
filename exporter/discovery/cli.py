"""``badgateway-exporter discover``: the effective configuration and where each value came from."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence

import yaml

from exporter.config import Config, ConfigError
from exporter.discovery.merge import load_config
from exporter.discovery.model import Discovered, Origin

PROG = "badgateway-exporter discover"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"{self.prog}: {message}", file=sys.stderr)
        raise SystemExit(2)


def main(argv: Sequence[str] | None = None) -> int:
    """Print the effective configuration as YAML (or JSON), each value with its origin."""
    parser = _Parser(prog=PROG, description=__doc__)
    parser.add_argument("--config", metavar="FILE", help="the exporter's YAML configuration file")
    parser.add_argument("--web.listen-address", dest="listen_address", metavar="ADDR")
    parser.add_argument("--format", choices=["yaml", "json"], default="yaml")
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:
        return int(exc.code or 0)
    logging.basicConfig(level="ERROR")  # problems are part of the output
    flags: dict[str, tuple[str, object]] = {}
    if args.listen_address:
        flags["listen_address"] = ("--web.listen-address", args.listen_address)
    try:
        config = load_config(args.config, flags)
    except ConfigError as exc:
        print(f"badgateway-exporter: {exc}", file=sys.stderr)
        return 2
    if args.format == "json":
        print(json.dumps(to_json(config), indent=2))
    else:
        print(render_yaml(config))
    return 0


def _plain(config: Config) -> dict[str, object]:
    data = dataclasses.asdict(config)
    data.pop("discovered", None)
    return data


def to_json(config: Config) -> dict[str, object]:
    """``{"config": ..., "origins": {path: origin}, "problems": [...], "found": {...}}``."""
    discovered = config.discovered or Discovered()
    found: dict[str, object] = {}
    if discovered.nginx is not None:
        nginx = discovered.nginx
        found["nginx"] = {
            "main_file": nginx.main_file,
            "files": list(nginx.files),
            "valid": nginx.syntax_error is None,
            "user": nginx.user,
            "error_logs": [path for path, _ in nginx.error_logs],
            "passes": [
                {"directive": p.directive, "raw": p.raw, "at": str(p.origin), "location": p.location,
                 "server_names": list(p.server_names), "targets": [t.address for t in p.targets],
                 "upstream": next((t.upstream for t in p.targets if t.upstream), None),
                 "unresolved": p.unresolved,
                 "timeouts": {t.name: {"seconds": t.seconds, "from": str(t.origin)} for t in p.timeouts}}
                for p in nginx.passes
            ],
            "listens": [
                {"host": entry.host, "port": entry.port, "unix": entry.unix, "ssl": entry.ssl, "at": str(entry.origin)}
                for entry in nginx.listens
            ],
            "servers": [
                {"at": str(server.origin), "server_names": list(server.server_names),
                 "listens": [str(entry.origin) for entry in server.listens],
                 "passes": [str(item.origin) for item in server.passes]}
                for server in nginx.servers
            ],
        }  # fmt: skip
    if discovered.php_fpm is not None:
        found["php_fpm"] = {
            "config_files": list(discovered.php_fpm.config_files),
            "files": list(discovered.php_fpm.files),
            "pools": [
                {"name": p.name, "file": p.file, "line": p.line, "version": p.version, "listen": p.listen,
                 "settings": {k: {"value": s.value, "from": str(s.origin)} for k, s in p.settings.items()}}
                for p in discovered.php_fpm.pools
            ],
        }  # fmt: skip
    return {
        "config": _plain(config),
        "origins": {path: str(origin) for path, origin in discovered.origins.items()},
        "problems": [str(p) for p in discovered.problems],
        "found": found,
    }


def _scalar(value: object) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def render_yaml(config: Config) -> str:
    """The effective configuration as YAML a person can copy, with ``# from ...`` on every value."""
    origins = config.discovered.origins if config.discovered is not None else {}
    lines = ["# badgateway-exporter: effective configuration; each value says where it came from."]
    if config.discovered is not None:
        nginx, php = config.discovered.nginx, config.discovered.php_fpm
        if nginx is not None:
            lines.append(f"# nginx: read {len(nginx.files)} file(s) from {nginx.main_file}")
            for item in nginx.passes:
                targets = ", ".join(t.address for t in item.targets) or f"none: {item.unresolved}"
                lines.append(f"#   {item.directive} {item.raw} at {item.origin} -> {targets}")
        if php is not None:
            lines.append(
                f"# php-fpm: {len(php.pools)} pool(s) in {', '.join(php.config_files) or 'no file found'}"
            )
            for pool in php.pools:
                lines.append(f"#   [{pool.name}] {pool.file}:{pool.line} listen = {pool.get('listen')}")
        for problem in config.discovered.problems:
            lines.append(f"# PROBLEM: {problem}")
    _emit(_plain(config), "", 0, origins, lines, list_item=False)
    return "\n".join(lines)


def _emit(
    value: object, path: str, indent: int, origins: dict[str, Origin], out: list[str], list_item: bool
) -> None:
    pad = "  " * indent
    if isinstance(value, dict):
        first = True
        for key, item in value.items():
            sub = f"{path}.{key}" if path else str(key)
            lead = pad if not (list_item and first) else pad[:-2] + "- "
            first = False
            if isinstance(item, dict | list) and item:
                out.append(f"{lead}{key}:")
                _emit(item, sub, indent + 1, origins, out, list_item=False)
            else:
                out.append(f"{lead}{key}: {_scalar(item)}{_comment(origins.get(sub))}")
        return
    if isinstance(value, list):
        for index, item in enumerate(value):
            sub = f"{path}[{index}]"
            if isinstance(item, dict):
                _emit(item, sub, indent + 1, origins, out, list_item=True)
            else:
                out.append(f"{pad}- {_scalar(item)}{_comment(origins.get(sub))}")


def _comment(origin: Origin | None) -> str:
    return f"  # from {origin}" if origin is not None else ""
