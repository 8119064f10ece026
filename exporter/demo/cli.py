"""``badgateway-exporter demo``: the bundled stack, watched by the exporter, Prometheus and Alertmanager.

``demo`` starts a real nginx + PHP-FPM + uvicorn stack on loopback, the exporter, a small load
generator and, when Debian's ``prometheus`` and ``prometheus-alertmanager`` are installed, a
Prometheus with the bundled rules (``for:`` scaled by 0.05, 1 s scrape) and an Alertmanager with the
bundled inhibition rules whose receivers are a webhook printed here. From another terminal,
``demo break CAUSE`` injects a fault into the running demo and ``demo heal`` heals it: the demo
prints each notification as it arrives. Everything stops on Ctrl-C, SIGTERM or ``--duration``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from exporter.app import serving, stop_on_signals
from exporter.config import ConfigError, config_from_dict
from exporter.demo import alerting
from exporter.demo.alerting import Alertmanager, Prometheus, alertmanager_config, render_rules
from exporter.demo.catalogue import FAULTS, Fault, FaultContext, FaultError, find_fault
from exporter.demo.load import LoadGenerator
from exporter.demo.services import ProcessServices
from exporter.demo.stack import Stack, StackError, make_root, mount_tmpfs, unmount
from exporter.demo.webhook import Notification, WebhookReceiver
from exporter.diagnosis.render import render_text

PROG = "badgateway-exporter demo"
CONTROL_SOCKET = "control.sock"
POINTER = Path(tempfile.gettempdir()) / "badgateway-demo.current"
_CONTROL_TIMEOUT = 120.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Start a real nginx + PHP-FPM + uvicorn stack on loopback, the exporter watching it,"
        " and Prometheus + Alertmanager paging through a local webhook.",
        epilog="In another terminal: badgateway-exporter demo break CAUSE (see: demo faults), then demo heal.",
    )
    parser.add_argument("--web.listen-address", dest="listen", default="127.0.0.1:9502", metavar="ADDR")
    parser.add_argument(
        "--dir", type=Path, default=None, help="folder for the stack (default: a new temp folder)"
    )
    parser.add_argument(
        "--duration", type=float, default=None, metavar="SECONDS", help="stop after this long"
    )
    parser.add_argument("--no-alerting", action="store_true", help="do not start Prometheus and Alertmanager")
    parser.add_argument(
        "--tmpfs",
        metavar="SIZE",
        default=None,
        help="put the stack on a tmpfs of SIZE (e.g. 32m; root only) so that disk_full can be injected;"
        " unmounted on exit",
    )
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    brk = sub.add_parser("break", help="inject a fault into the running demo")
    brk.add_argument("fault", help="a fault or cause name (see: demo faults)")
    brk.add_argument("--dir", type=Path, default=None, dest="target", help="the running demo's folder")
    heal = sub.add_parser("heal", help="heal the faults injected into the running demo")
    heal.add_argument("fault", nargs="?", default=None, help="only this fault (default: all)")
    heal.add_argument("--dir", type=Path, default=None, dest="target", help="the running demo's folder")
    sub.add_parser("faults", help="list the faults that break can inject")
    return parser


def main(argv: Sequence[str]) -> int:
    """Run the demo, or talk to a running one (``break``, ``heal``), or list the faults."""
    args = _parser().parse_args(list(argv))
    if args.action == "faults":
        for fault in FAULTS:
            print(f"{fault.name:28} {fault.cause.value:26} {fault.title}")
        return 0
    if args.action in ("break", "heal"):
        return _client(args.action, args.fault, args.target)
    return _run(args)


# ---------------------------------------------------------------- break / heal from another terminal


def _demo_dir(target: Path | None) -> Path | None:
    if target is not None:
        return target.resolve()
    try:
        return Path(POINTER.read_text(encoding="utf-8").strip())
    except OSError:
        return None


def _client(action: str, fault: str | None, target: Path | None) -> int:
    folder = _demo_dir(target)
    if folder is None:
        print(
            f"{PROG} {action}: no running demo found (start one with: {own_command()} demo)",
            file=sys.stderr,
        )
        return 1
    try:
        reply = control_request(folder, action, fault)
    except OSError as exc:
        print(f"{PROG} {action}: cannot reach the demo in {folder}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    try:
        answer = json.loads(reply)
    except ValueError:
        print(f"{PROG} {action}: unreadable answer {reply[:200]!r}", file=sys.stderr)
        return 1
    print(answer.get("message", ""))
    return 0 if answer.get("ok") else 1


def control_request(folder: Path, action: str, fault: str | None, timeout: float = _CONTROL_TIMEOUT) -> bytes:
    """``break FAULT`` or ``heal`` sent to the demo running in ``folder``; its answer's line (JSON)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        conn.connect(str(folder / CONTROL_SOCKET))
        conn.sendall(json.dumps({"action": action, "fault": fault}).encode() + b"\n")
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = conn.recv(65536)
            if not chunk:
                break
            reply += chunk
    return reply


class _Control:
    """The running demo's side of ``break``/``heal``: a unix socket served by one thread."""

    def __init__(self, path: Path, ctx: FaultContext, say: Callable[[str], None]) -> None:
        self.ctx = ctx
        self.say = say
        self.active: dict[str, tuple[Fault, float]] = {}
        self.last_break: float | None = None
        self._lock = threading.Lock()
        path.unlink(missing_ok=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        path.chmod(0o600)
        self.sock.listen(4)
        self.sock.settimeout(0.5)
        self.path = path
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="demo-control", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(5.0)
                try:
                    data = conn.recv(4096)
                    request = json.loads(data)
                    ok, message = self.handle(str(request.get("action")), request.get("fault"))
                except (OSError, ValueError, AttributeError) as exc:
                    ok, message = False, f"bad request: {exc}"
                with contextlib.suppress(OSError):
                    conn.sendall(json.dumps({"ok": ok, "message": message}).encode() + b"\n")

    def handle(self, action: str, name: object) -> tuple[bool, str]:
        with self._lock:
            try:
                if action == "break":
                    return self._break(find_fault(str(name)))
                if action == "heal":
                    return self._heal(None if name is None else find_fault(str(name)).name)
            except (FaultError, StackError, OSError, RuntimeError, TimeoutError) as exc:
                return False, f"failed: {exc}"
            return False, f"unknown action {action!r}"

    def _break(self, fault: Fault) -> tuple[bool, str]:
        if fault.name in self.active:
            return False, f"{fault.name} is already injected (demo heal first)"
        reason = fault.unavailable(self.ctx)
        if reason is not None:
            return False, f"{fault.name} cannot be injected here: {reason}"
        fault.inject(self.ctx)
        self.active[fault.name] = (fault, time.monotonic())
        self.last_break = time.monotonic()
        self.say(f"injected {fault.name}: {fault.title}; expect {fault.alert} (cause {fault.cause.value})")
        return True, (
            f"injected {fault.name} ({fault.title}); the demo prints the page ({fault.alert}) when it arrives;"
            f" heal with: {own_command()} demo heal"
        )

    def _heal(self, name: str | None) -> tuple[bool, str]:
        names = [n for n in self.active if name is None or n == name]
        if not names:
            return True, "nothing to heal"
        for item in names:
            fault, _ = self.active.pop(item)
            fault.heal(self.ctx)
            self.say(f"healed {fault.name}; expect the resolved {fault.alert}")
        self.last_break = time.monotonic()
        return True, f"healed {', '.join(names)}"

    def heal_all(self) -> None:
        with contextlib.suppress(FaultError, StackError, OSError, RuntimeError, TimeoutError):
            self._heal(None)

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        self._thread.join(timeout=5)
        self.path.unlink(missing_ok=True)


# ---------------------------------------------------------------- the demo itself


def _run(args: argparse.Namespace) -> int:
    stop = stop_on_signals()
    root = args.dir.resolve() if args.dir else make_root("badgateway-demo-")
    started = time.monotonic()

    def say(text: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {text}", flush=True)

    with contextlib.ExitStack() as exits:
        try:
            if args.tmpfs:
                root.mkdir(parents=True, exist_ok=True)
                mount_tmpfs(root, args.tmpfs, "badgateway-demo")
                exits.callback(unmount, root)
                say(f"tmpfs of {args.tmpfs} mounted on {root}")
            stack = Stack(root)
        except (StackError, OSError) as exc:
            print(f"{PROG}: {exc}", file=sys.stderr)
            return 1
        say(f"starting nginx, php-fpm and the backend in {root} ...")
        try:
            stack.start()
        except StackError as exc:
            print(f"{PROG}: {exc}", file=sys.stderr)
            return 1
        exits.callback(stack.stop)
        code = _serve(args, stack, root, exits, stop, say)
        if code:
            return code
        say("stopping ...")
    print("stopped; nothing left running" + (" or mounted." if args.tmpfs else "."), flush=True)
    return 0


def _serve(
    args: argparse.Namespace,
    stack: Stack,
    root: Path,
    exits: contextlib.ExitStack,
    stop: threading.Event,
    say: Callable[[str], None],
) -> int:
    settings = stack.exporter_config()
    settings["listen_address"] = args.listen
    settings["scrape_timeout_margin_seconds"] = 0.2  # Prometheus scrapes every second with a 1 s timeout
    settings["units"] = {"enabled": False}  # plain processes: no systemd units to read
    config_path = root / "exporter.yml"
    config_path.write_text(yaml.safe_dump(settings, sort_keys=False), encoding="utf-8")
    try:
        config = config_from_dict(settings, str(config_path))
    except ConfigError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    try:
        running = exits.enter_context(serving(config, listen_address=args.listen))
    except OSError as exc:
        print(f"{PROG}: cannot listen on {args.listen}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    exporter, server = running.exporter, running.server
    port = server.server_address[1]
    host = args.listen.rpartition(":")[0] or "127.0.0.1"
    say(f"exporter serving http://{host}:{port}/metrics")

    ctx = FaultContext(stack, ProcessServices(stack), disk=root if args.tmpfs else None)
    control = _Control(root / CONTROL_SOCKET, ctx, say)
    exits.callback(control.close)
    exits.callback(control.heal_all)  # runs before close: the stack is stopped healthy
    load = LoadGenerator(stack, rate=5.0, max_seconds=args.duration or 24 * 3600.0)
    load.start()
    exits.callback(load.stop)
    say("load generator: 5 requests/s through nginx (/ and /api/health)")

    alerting = "" if args.no_alerting else _start_alerting(root, f"{host}:{port}", exits, control, say)
    POINTER.write_text(str(root), encoding="utf-8")
    exits.callback(_remove_pointer, root)

    diagnosis = exporter.check(config.scrape_timeout_seconds).diagnosis
    me = own_command()
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
  diagnose yourself    {me} --config {config_path} diagnose
{alerting}
break it (another terminal):
  {me} demo faults              # what can be injected
  {me} demo break php_fpm_down  # a fault or a cause name
  {me} demo heal

what diagnose says now:
{render_text(diagnosis)}

Press Ctrl-C to stop everything.""",
        flush=True,
    )
    stop.wait(args.duration)
    return 0


def own_command() -> str:
    """How to run this program again from the user's shell: the script beside this Python, if any."""
    script = Path(sys.executable).parent / "badgateway-exporter"
    if not script.exists():
        return f"{sys.executable} -m exporter"
    if shutil.which("badgateway-exporter") == str(script):
        return "badgateway-exporter"
    with contextlib.suppress(ValueError):
        return str(script.relative_to(Path.cwd()))
    return str(script)


def _remove_pointer(root: Path) -> None:
    with contextlib.suppress(OSError):
        if POINTER.read_text(encoding="utf-8").strip() == str(root):
            POINTER.unlink()


def _start_alerting(
    root: Path, target: str, exits: contextlib.ExitStack, control: _Control, say: Callable[[str], None]
) -> str:
    """Prometheus + Alertmanager + the webhook, when installed; the lines to print about them."""
    if (
        alerting.find_program("prometheus") is None
        or alerting.find_program("prometheus-alertmanager", "alertmanager") is None
    ):
        say("Prometheus/Alertmanager not installed (Debian: prometheus prometheus-alertmanager): no pages")
        return "alerting:\n  not started: prometheus and prometheus-alertmanager are not installed\n"
    work = root / "alerting"
    work.mkdir(exist_ok=True)

    def on_page(note: Notification) -> None:
        since = (
            ""
            if control.last_break is None
            else f" {time.monotonic() - control.last_break:.1f}s after the last break/heal"
        )
        for alert in note.alerts():
            labels: dict[str, Any] = alert.get("labels", {})
            say(f"{alert.get('status', '?').upper():8} {labels.get('alertname')} (cause {labels.get('cause')},"
                f" receiver {note.path.strip('/')}){since}")  # fmt: skip

    try:
        webhook = WebhookReceiver(on_page).start()
        exits.callback(webhook.close)
        say(f"webhook receiver {webhook.url}")
        alertmanager = Alertmanager(work / "alertmanager", alertmanager_config(webhook.url))
        exits.callback(alertmanager.stop)
        alertmanager.start()
        say(f"alertmanager {alertmanager.url} (the bundled inhibition rules)")
        with contextlib.redirect_stdout(io.StringIO()):  # rules render prints the file name
            rule_file = render_rules(work / "rules")
        prometheus = Prometheus(work / "prometheus", [target], rule_file, alertmanager.url)
        exits.callback(prometheus.stop)
        prometheus.start()
        say(f"prometheus {prometheus.url} (rules with for: x{alerting.FOR_SCALE:g}, 1 s scrape)")
    except StackError as exc:
        say(f"alerting not started: {exc}")
        return f"alerting:\n  not started: {exc}\n"
    return (
        "alerting:\n"
        f"  prometheus           {prometheus.url}/alerts\n"
        f"  alertmanager         {alertmanager.url}/#/alerts\n"
        f"  webhook (pages)      {webhook.url} — every notification is printed here\n"
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
