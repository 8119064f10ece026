"""badgateway-exporter against what an operator would run instead, on one stack, in one run.

The peers are Debian's node_exporter 1.5 (collectors systemd, meminfo, filesystem), blackbox_exporter
0.23 (one ``http_2xx`` probe of the same backend) and mtail (tailing the same nginx error.log with a
program counting the same kinds). The stack is the real nginx + PHP-FPM + uvicorn of
``tests/harness/systemd.py``, run as units of a real systemd in a PID namespace; node_exporter's
systemd collector and our units check read that same systemd over its system bus. Where the
harness cannot run (no root, no namespaces), the demo stack runs as plain child processes,
node_exporter runs without its systemd collector and the output says so.

Measured alternately in one run, printed as ONE table (progress goes to stderr):

- scrape latency p50/p99 of our full ``/metrics`` vs node_exporter + blackbox ``/probe``, summed per
  round ("theirs"); target: our p50 <= 0.75x theirs;
- CPU seconds per 1,000 scrapes and steady RSS, ours vs the sum of node_exporter + blackbox + mtail;
  targets: CPU <= 1.0x and RSS <= 0.5x the sum;
- error.log classification throughput vs mtail one-shot on the same 1,000,000-line file (the
  generator and mtail program of ``benchmarks/logs_bench.py``); target >= 8x;
- with PHP-FPM SIGSTOPped, our p99 scrape time vs the round's deadline; target <= deadline + 50 ms;
- time from ``systemctl stop`` of the PHP-FPM unit (StopUnit over D-Bus) to
  ``badgateway_cause{cause="php_fpm_down"} 1`` on ``/metrics``, polled every 50 ms.

Usage (as root, normally through ``bash benchmarks/run``):
``.venv/bin/python benchmarks/compare.py [--scrapes N] [--lines N] [--no-systemd] [--profile FILE]``
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import logs_bench  # noqa: E402
from harness.systemd import BACKEND, NGINX, PHP_FPM, SystemdHarness, namespace_refusal  # noqa: E402

from exporter.demo.stack import Stack, free_port, make_root, wait_until  # noqa: E402

# The exporter as operators install it (benchmarks/run makes a venv with `pip install .`, no dev tools),
# so dev-only packages that some libraries import when present do not count in its memory.
EXPORTER_PYTHON = os.environ.get("BADGATEWAY_EXPORTER_PYTHON", sys.executable)

TARGET_P50_RATIO = 0.75
TARGET_CPU_RATIO = 1.0
TARGET_RSS_RATIO = 0.5
TARGET_LOG_RATIO = 8.0
TARGET_HUNG_SLACK_MS = 50.0
HUNG_SCRAPE_TIMEOUT = 2.0  # X-Prometheus-Scrape-Timeout-Seconds sent with the hung-PHP-FPM scrapes
POLL_INTERVAL = 0.05
SUBPROCESS_TIMEOUT = 30.0
MS = 1000.0
MIB = float(2**20)

BLACKBOX_CONFIG = """modules:
  http_2xx:
    prober: http
    timeout: 5s
    http:
      preferred_ip_protocol: ip4
      ip_protocol_fallback: false
      follow_redirects: false
"""


def note(message: str) -> None:
    """Progress on stderr; stdout carries only the table."""
    print(f"[compare] {message}", file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..1)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def verdict(ok: bool) -> str:
    return "OK" if ok else "MISSED"


# -- processes ---------------------------------------------------------------------------------


@dataclass
class Started:
    """A peer or our exporter, started by us and stopped by PID."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def ps(self) -> psutil.Process:
        return psutil.Process(self.proc.pid)

    def cpu_seconds(self) -> float:
        times = self.ps.cpu_times()
        return float(times.user + times.system)

    def rss_bytes(self) -> int:
        return int(self.ps.memory_info().rss)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-2000:]
        return ""


def start(name: str, argv: list[str], folder: Path, env: dict[str, str] | None = None) -> Started:
    log = folder / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            cwd=folder,  # not the checkout: `python -m exporter` must import the installed package
        )
    return Started(name, proc, log)


def wait_http(client: httpx.Client, url: str, started: Started, timeout: float = 20.0) -> None:
    def ready() -> bool:
        if started.proc.poll() is not None:
            raise SystemExit(f"{started.name} exited {started.proc.returncode}:\n{started.tail()}")
        try:
            return client.get(url, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(ready, timeout, started.name, interval=0.05)


def version_of(binary: str) -> str:
    done = subprocess.run(
        [binary, "--version"], capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT, check=False
    )
    first = (done.stdout or done.stderr).strip().splitlines()
    return first[0] if first else binary


# -- the stack: a real systemd (harness) or plain children ---------------------------------------


@dataclass
class Site:
    """The stack the exporters look at, and how to fault PHP-FPM on it."""

    systemd: bool
    reason: str  # why there is no real systemd (empty with one)
    root: Path
    socket: Path
    error_log: Path
    php_fpm_log: Path
    nginx_conf: Path
    php_fpm_conf: Path
    nginx_port: int
    backend_port: int
    bus_address: str | None
    php_fpm_pids: Callable[[], list[int]]
    stop_php_fpm: Callable[[], None]
    start_php_fpm: Callable[[], None]


@contextlib.contextmanager
def site(use_systemd: bool) -> Iterator[Site]:
    reason = namespace_refusal() if use_systemd else "--no-systemd given"
    if reason is None:
        harness = SystemdHarness()
        harness.start()
        try:
            yield _harness_site(harness)
        finally:
            harness.stop()
        return
    note(f"no real systemd: {reason}; plain child processes instead")
    root = make_root("bgw-compare-stack-")
    stack = Stack(root)
    try:
        stack.start()
        yield Site(
            systemd=False,
            reason=reason,
            root=root,
            socket=stack.socket_path,
            error_log=stack.nginx_error_log,
            php_fpm_log=stack.php_fpm_log,
            nginx_conf=stack.nginx_conf,
            php_fpm_conf=stack.php_fpm_conf,
            nginx_port=stack.nginx_port,
            backend_port=stack.backend_port,
            bus_address=None,
            php_fpm_pids=lambda: [p for p in [stack.php_fpm_pid] if p] + _children(stack.php_fpm_pid),
            stop_php_fpm=stack.stop_php_fpm,
            start_php_fpm=stack.start_php_fpm,
        )
    finally:
        stack.stop()
        shutil.rmtree(root, ignore_errors=True)


def _children(pid: int | None) -> list[int]:
    if not pid:
        return []
    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def _harness_site(harness: SystemdHarness) -> Site:
    stack = harness.stack
    for unit in (PHP_FPM, BACKEND, NGINX):
        harness.start_unit(unit)
    for unit in (PHP_FPM, BACKEND, NGINX):
        harness.wait_state(unit, "active")
    socket_path = stack / "run" / "php.sock"

    def answers(port: int) -> Callable[[], bool]:
        def check() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        return check

    wait_until(answers(harness.backend_port), 15, "the backend to answer")
    wait_until(answers(harness.nginx_port), 15, "nginx to answer")
    wait_until(socket_path.exists, 15, "the PHP-FPM socket")

    def php_pids() -> list[int]:
        # MainPID is a PID of the harness's namespace: find the master on the host by its title.
        title = f"php-fpm: master process ({stack / 'php-fpm.conf'})"
        for proc in psutil.process_iter(["cmdline"]):
            if " ".join(proc.info["cmdline"] or []).strip() == title:
                return [proc.pid, *_children(proc.pid)]
        return []

    def start_php() -> None:
        harness.start_unit(PHP_FPM)
        harness.wait_state(PHP_FPM, "active")
        wait_until(socket_path.exists, 15, "the PHP-FPM socket")

    return Site(
        systemd=True,
        reason="",
        root=stack,
        socket=socket_path,
        error_log=stack / "log" / "error.log",
        php_fpm_log=stack / "log" / "php-fpm.log",
        nginx_conf=stack / "nginx.conf",
        php_fpm_conf=stack / "php-fpm.conf",
        nginx_port=harness.nginx_port,
        backend_port=harness.backend_port,
        bus_address=harness.bus_address,
        php_fpm_pids=php_pids,
        stop_php_fpm=lambda: harness.stop_unit(PHP_FPM),
        start_php_fpm=start_php,
    )


def exporter_config(s: Site) -> dict[str, Any]:
    """Our exporter's config for the site: every check, the logs, the units on the same bus."""
    config: dict[str, Any] = {
        "nginx_user": "www-data" if os.geteuid() == 0 else psutil.Process().username(),
        "scrape_timeout_seconds": 10.0,
        # The round's deadline, not the pool's own timeout, must bound the hung-PHP-FPM scrapes.
        "php_fpm": [{"socket": str(s.socket), "timeout_seconds": 60.0}],
        "http": [
            {"name": "backend", "url": f"http://127.0.0.1:{s.backend_port}/", "timeout_seconds": 1.0},
            {"name": "front", "url": f"http://127.0.0.1:{s.nginx_port}/", "role": "front"},
        ],
        "nginx": {
            "binary": shutil.which("nginx", path="/usr/sbin:/usr/bin:/sbin:/bin") or "nginx",
            "config": str(s.nginx_conf),
            "prefix": f"{s.root}/",
            "error_log": str(s.error_log),
        },
        "processes": {
            "nginx": r"^nginx: master process .* -c " + re.escape(str(s.nginx_conf)) + r"(?:\s|$)",
            "php_fpm": r"^php-fpm: master process \(" + re.escape(str(s.php_fpm_conf)) + r"\)",
            "backend": r"\buvicorn\b.* --port " + str(s.backend_port) + r"\b",
        },
        "filesystems": [str(s.socket.parent), str(s.error_log.parent), str(s.root)],
        "logs": {"nginx": [str(s.error_log)], "php_fpm": [str(s.php_fpm_log)], "start": "beginning"},
    }
    if s.systemd:
        config["units"] = {
            "nginx": NGINX,
            "php_fpm": PHP_FPM,
            "backend": BACKEND,
            "bus_address": s.bus_address,
        }
        # The pid files name PIDs of systemd's namespace: the units' cgroups say which processes are theirs.
        config["pid_files"] = {"nginx": None, "php_fpm": None}
    else:
        config["units"] = {"enabled": False}
    return config


# -- the measurements ----------------------------------------------------------------------------


@dataclass
class Scrapes:
    ours: list[float] = field(default_factory=list)
    node: list[float] = field(default_factory=list)
    blackbox: list[float] = field(default_factory=list)

    @property
    def theirs(self) -> list[float]:
        return [n + b for n, b in zip(self.node, self.blackbox, strict=True)]


def timed_get(client: httpx.Client, url: str, headers: dict[str, str] | None = None) -> tuple[float, str]:
    began = time.perf_counter()
    response = client.get(url, headers=headers)
    elapsed = time.perf_counter() - began
    if response.status_code != 200:
        raise SystemExit(f"{url} answered {response.status_code}")
    return elapsed, response.text


def alternate(client: httpx.Client, urls: tuple[str, str, str], rounds: int) -> Scrapes:
    """``rounds`` rounds of one scrape each; the order rotates so no one always goes first."""
    ours_url, node_url, probe_url = urls
    result = Scrapes()
    order = [(ours_url, result.ours), (node_url, result.node), (probe_url, result.blackbox)]
    for index in range(rounds):
        shift = index % 3
        for url, times in order[shift:] + order[:shift]:
            times.append(timed_get(client, url)[0])
    return result


def hung_scrapes(client: httpx.Client, url: str, s: Site, count: int) -> list[float]:
    pids = s.php_fpm_pids()
    if not pids:
        raise SystemExit("no PHP-FPM process to SIGSTOP")
    headers = {"X-Prometheus-Scrape-Timeout-Seconds": str(HUNG_SCRAPE_TIMEOUT)}
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
    try:
        return [timed_get(client, url, headers)[0] for _ in range(count)]
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


CAUSE_LINE = re.compile(r'^badgateway_cause\{cause="php_fpm_down"\} (\S+)$', re.MULTILINE)


def php_fpm_down(text: str) -> bool:
    found = CAUSE_LINE.search(text)
    return found is not None and float(found.group(1)) == 1.0


def stop_to_cause(client: httpx.Client, url: str, s: Site, repeats: int) -> list[float]:
    """Seconds from stopping PHP-FPM to the first /metrics answer naming php_fpm_down."""
    found: list[float] = []
    for attempt in range(repeats):
        if attempt:
            s.start_php_fpm()
            wait_until(lambda: not php_fpm_down(timed_get(client, url)[1]), 15, "php_fpm_down to clear")
        began = time.perf_counter()
        s.stop_php_fpm()
        deadline = began + 15.0
        while True:
            tick = time.perf_counter()
            if php_fpm_down(timed_get(client, url)[1]):
                found.append(time.perf_counter() - began)
                break
            if tick > deadline:
                raise SystemExit("php_fpm_down not reported within 15 s of stopping PHP-FPM")
            time.sleep(max(0.0, tick + POLL_INTERVAL - time.perf_counter()))
    return found


@dataclass
class Usage:
    cpu_ours: float
    cpu_peers: dict[str, float]
    rss_ours: int
    rss_peers: dict[str, int]


def measure_scrapes(
    s: Site, folder: Path, scrapes: int, hung: int, repeats: int, profile: Path | None
) -> tuple[Scrapes, Usage, list[float], float, list[float], list[str]]:
    facts: list[str] = []
    config_path = folder / "badgateway.yml"
    config_path.write_text(yaml.safe_dump(exporter_config(s)), encoding="utf-8")
    bb_config = folder / "blackbox.yml"
    bb_config.write_text(BLACKBOX_CONFIG, encoding="utf-8")
    progs = folder / "mtail-progs"
    progs.mkdir()
    (progs / "upstream.mtail").write_text(logs_bench.MTAIL_PROGRAM, encoding="utf-8")
    ports = {name: free_port() for name in ("ours", "node", "blackbox", "mtail")}

    node_args = [
        "prometheus-node-exporter",
        f"--web.listen-address=127.0.0.1:{ports['node']}",
        "--collector.disable-defaults",
        "--collector.meminfo",
        "--collector.filesystem",
    ]
    node_env: dict[str, str] = {}
    if s.systemd:
        node_args.append("--collector.systemd")
        assert s.bus_address is not None
        node_env["DBUS_SYSTEM_BUS_ADDRESS"] = s.bus_address
    procs: list[Started] = []
    try:
        procs.append(
            start(
                "ours",
                [EXPORTER_PYTHON, "-m", "exporter", "--config", str(config_path),
                 "--web.listen-address", f"127.0.0.1:{ports['ours']}", "--log.level", "warning"],
                folder,
            )
        )  # fmt: skip
        procs.append(start("node_exporter", node_args, folder, node_env))
        procs.append(
            start(
                "blackbox_exporter",
                ["prometheus-blackbox-exporter", f"--config.file={bb_config}",
                 f"--web.listen-address=127.0.0.1:{ports['blackbox']}"],
                folder,
            )
        )  # fmt: skip
        procs.append(
            start(
                "mtail",
                ["mtail", "--progs", str(progs), "--logs", str(s.error_log), "--address", "127.0.0.1",
                 "--port", str(ports["mtail"]), "--logtostderr", "--emit_prog_label=false"],
                folder,
            )
        )  # fmt: skip
        ours, node, blackbox, mtail = procs
        ours_url = f"http://127.0.0.1:{ports['ours']}/metrics"
        node_url = f"http://127.0.0.1:{ports['node']}/metrics"
        target = f"http://127.0.0.1:{s.backend_port}/"
        probe_url = str(
            httpx.URL(
                f"http://127.0.0.1:{ports['blackbox']}/probe", params={"target": target, "module": "http_2xx"}
            )
        )
        with httpx.Client(timeout=30, trust_env=False) as client:
            for url, started in ((ours_url, ours), (node_url, node), (probe_url, blackbox)):
                wait_http(client, url, started)
            wait_http(client, f"http://127.0.0.1:{ports['mtail']}/metrics", mtail)
            facts += sanity(client, ours_url, node_url, probe_url, s)
            note("warm-up")
            alternate(client, (ours_url, node_url, probe_url), 30)
            cpu_before = [p.cpu_seconds() for p in procs]
            spy = start_profiler(profile, ours.proc.pid, folder) if profile else None
            note(f"{scrapes} rounds: ours, node_exporter, blackbox in rotating order")
            scraped = alternate(client, (ours_url, node_url, probe_url), scrapes)
            if spy is not None:
                spy.proc.send_signal(signal.SIGINT)
                spy.proc.wait(timeout=60)
            cpu = [
                after - before
                for after, before in zip([p.cpu_seconds() for p in procs], cpu_before, strict=True)
            ]
            rss = [p.rss_bytes() for p in procs]
            usage = Usage(
                cpu_ours=cpu[0],
                cpu_peers={p.name: c for p, c in zip(procs[1:], cpu[1:], strict=True)},
                rss_ours=rss[0],
                rss_peers={p.name: r for p, r in zip(procs[1:], rss[1:], strict=True)},
            )
            note(f"{hung} scrapes with PHP-FPM SIGSTOPped")
            hung_times = hung_scrapes(client, ours_url, s, hung)
            deadline = float(HUNG_SCRAPE_TIMEOUT) - 0.5  # scrape_timeout_margin_seconds (default)
            note(f"stopping PHP-FPM {repeats} times")
            to_cause = stop_to_cause(client, ours_url, s, repeats)
        for p in procs:
            if p.proc.poll() is not None:
                raise SystemExit(f"{p.name} died during the run:\n{p.tail()}")
        return scraped, usage, hung_times, deadline, to_cause, facts
    finally:
        for p in procs:
            p.stop()


def sanity(client: httpx.Client, ours_url: str, node_url: str, probe_url: str, s: Site) -> list[str]:
    """Check that each exporter sees the real stack; return what the table should say about it."""
    facts = []
    ours = client.get(ours_url).text
    if php_fpm_down(ours) or 'badgateway_fastcgi_up{socket="' not in ours:
        raise SystemExit("our exporter does not see a healthy PHP-FPM")
    units = [
        line
        for line in ours.splitlines()
        if line.startswith("badgateway_unit_state{") and 'state="active"' in line and line.endswith(" 1.0")
    ]
    probe = client.get(probe_url).text
    if not re.search(r"^probe_success 1$", probe, re.MULTILINE):
        raise SystemExit(f"blackbox probe failed:\n{probe}")
    node = client.get(node_url).text
    if s.systemd:
        seen = set(re.findall(r'node_systemd_unit_state\{name="([^"]+)",state="active"[^}]*\} 1', node))
        if PHP_FPM not in seen:
            raise SystemExit("node_exporter's systemd collector does not see the harness's systemd")
        facts.append(
            f"both read the same real systemd (PID namespace, D-Bus {s.bus_address}): node_exporter sees "
            f"{len(seen)} active units, ours checks {len(units)} (all active)"
        )
    else:
        facts.append(f"node_exporter WITHOUT its systemd collector: no real systemd here ({s.reason})")
    return facts


def start_profiler(output: Path, pid: int, folder: Path) -> Started | None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        note("py-spy not installed (.venv/bin/pip install py-spy); no profile")
        return None
    fmt = {".json": "speedscope", ".txt": "raw"}.get(output.suffix, "flamegraph")
    return start("py-spy", [spy, "record", "--pid", str(pid), "--rate", "500", "--threads", "--gil", "--format", fmt,
                            "--output", str(output), "--nonblocking"], folder)  # fmt: skip


def measure_logs(lines: int, folder: Path) -> tuple[float, float, bool]:
    log = folder / "error.log"
    note(f"generating a {lines:,}-line error.log")
    expected = logs_bench.generate(log, lines)
    subprocess.run(["cat", str(log)], stdout=subprocess.DEVNULL, timeout=300, check=True)  # page cache
    note("classifying it: ours, then mtail --one_shot")
    ours = logs_bench.run_ours(log, python=EXPORTER_PYTHON)
    mtail_seconds, mtail_kinds = logs_bench.run_mtail(log, folder)
    agree = ours["kinds"] == expected and mtail_kinds == expected
    return lines / float(ours["seconds"]), lines / mtail_seconds, agree


# -- the table -----------------------------------------------------------------------------------


def row(what: str, ours: str, theirs: str, ratio: str, target: str, ok: bool | None) -> list[str]:
    return [what, ours, theirs, ratio, target, "" if ok is None else verdict(ok)]


def render(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    out = [
        " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip(),
        "-+-".join("-" * w for w in widths),
    ]
    out += [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scrapes", type=int, default=400, help="alternating rounds (each exporter once)")
    parser.add_argument("--hung-scrapes", type=int, default=20, help="scrapes with PHP-FPM SIGSTOPped")
    parser.add_argument("--stops", type=int, default=5, help="times PHP-FPM is stopped for the cause delay")
    parser.add_argument("--lines", type=int, default=1_000_000, help="error.log lines for the log benchmark")
    parser.add_argument("--no-systemd", action="store_true", help="skip the real systemd harness")
    parser.add_argument("--profile", type=Path, help="py-spy record our exporter during the scrapes")
    args = parser.parse_args(argv)
    missing = [b for b in ("prometheus-node-exporter", "prometheus-blackbox-exporter", "mtail", "nginx")
               if shutil.which(b, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None]  # fmt: skip
    if missing:
        print(
            f"missing: {', '.join(missing)} (run bash benchmarks/run, which installs them)", file=sys.stderr
        )
        return 2
    folder = Path(tempfile.mkdtemp(prefix="bgw-compare-"))
    folder.chmod(0o755)
    try:
        with site(not args.no_systemd) as s:
            scraped, usage, hung, deadline, to_cause, facts = measure_scrapes(
                s, folder, args.scrapes, args.hung_scrapes, args.stops, args.profile
            )
            systemd = s.systemd
        ours_rate, mtail_rate, logs_agree = measure_logs(args.lines, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    p50_ours, p99_ours = percentile(scraped.ours, 0.5) * MS, percentile(scraped.ours, 0.99) * MS
    theirs = scraped.theirs
    p50_theirs, p99_theirs = percentile(theirs, 0.5) * MS, percentile(theirs, 0.99) * MS
    p50_node, p50_bb = percentile(scraped.node, 0.5) * MS, percentile(scraped.blackbox, 0.5) * MS
    n = len(scraped.ours)
    cpu_ours = usage.cpu_ours / n * 1000
    cpu_peers = sum(usage.cpu_peers.values()) / n * 1000
    rss_ours = usage.rss_ours / MIB
    rss_peers = sum(usage.rss_peers.values()) / MIB
    hung_p99 = percentile(hung, 0.99) * MS
    log_ratio = ours_rate / mtail_rate
    node_what = (
        "node_exporter (systemd, meminfo, filesystem)" if systemd else "node_exporter (meminfo, filesystem)"
    )
    peers_rss = " + ".join(f"{name} {value / MIB:.1f}" for name, value in usage.rss_peers.items())
    peers_cpu = " + ".join(f"{name} {value / n * 1000:.2f}" for name, value in usage.cpu_peers.items())
    rows = [
        row("scrape p50 (ms)", f"{p50_ours:.2f}", f"{p50_theirs:.2f}", f"{p50_ours / p50_theirs:.2f}x",
            f"<= {TARGET_P50_RATIO:.2f}x", p50_ours <= TARGET_P50_RATIO * p50_theirs),
        row("scrape p99 (ms)", f"{p99_ours:.2f}", f"{p99_theirs:.2f}", f"{p99_ours / p99_theirs:.2f}x", "", None),
        row("CPU s / 1,000 scrapes", f"{cpu_ours:.2f}", f"{cpu_peers:.2f}", f"{cpu_ours / cpu_peers:.2f}x",
            f"<= {TARGET_CPU_RATIO:.1f}x", cpu_ours <= TARGET_CPU_RATIO * cpu_peers),
        row("steady RSS (MiB)", f"{rss_ours:.1f}", f"{rss_peers:.1f}", f"{rss_ours / rss_peers:.2f}x",
            f"<= {TARGET_RSS_RATIO:.1f}x", rss_ours <= TARGET_RSS_RATIO * rss_peers),
        row("error.log lines/s", f"{ours_rate:,.0f}", f"{mtail_rate:,.0f}", f"{log_ratio:.1f}x",
            f">= {TARGET_LOG_RATIO:.0f}x", log_ratio >= TARGET_LOG_RATIO and logs_agree),
        row("PHP-FPM SIGSTOPped: p99 (ms)", f"{hung_p99:.0f}", f"deadline {deadline * MS:.0f}", "",
            f"<= {deadline * MS + TARGET_HUNG_SLACK_MS:.0f}", hung_p99 <= deadline * MS + TARGET_HUNG_SLACK_MS),
        row("stop PHP-FPM -> php_fpm_down (ms)", f"{statistics.median(to_cause) * MS:.0f}", "", "",
            "", None),
    ]  # fmt: skip
    print(
        f"badgateway-exporter vs node_exporter + blackbox_exporter + mtail - one run, {time.strftime('%Y-%m-%d %H:%M')}"
    )
    print(
        f"machine: {platform.node()}, {psutil.cpu_count()} cores ({platform.processor() or platform.machine()}), "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB, Linux {platform.release()}, "
        f"harness Python {platform.python_version()}; load avg {os.getloadavg()[0]:.2f} (shared machine: figures are noisy)"
    )
    print(f"peers: {version_of('prometheus-node-exporter')}; {version_of('prometheus-blackbox-exporter')}; "
          f"{version_of('mtail')}")  # fmt: skip
    native = subprocess.run(
        [EXPORTER_PYTHON, "-c", "import exporter.logs.classify as c; print(c.NATIVE_SCAN)"],
        capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT, check=False, cwd="/",
    ).stdout.strip() == "True"  # fmt: skip
    print(f"ours: {EXPORTER_PYTHON} -m exporter ({version_of(EXPORTER_PYTHON)}; every check on, log tailer on;"
          f" native log scan {'built' if native else 'NOT built'})")  # fmt: skip
    print(f"stack: real nginx + PHP-FPM + uvicorn; {facts[0]}")
    print(
        f"'theirs' = {node_what} + blackbox /probe of the backend, summed per round; {n} rounds, rotating order"
    )
    print()
    print(render(rows, ["measure", "ours", "theirs", "ours/theirs", "target", ""]))
    print()
    print(f"  scrape p50 split: node_exporter {p50_node:.2f} ms, blackbox {p50_bb:.2f} ms")
    print(f"  CPU s / 1,000 scrapes of the peers: {peers_cpu}")
    print(f"  RSS of the peers (MiB): {peers_rss}")
    print(f"  error.log: {args.lines:,} lines; counts by kind {'agree' if logs_agree else 'DISAGREE'} "
          f"(ours, mtail, generated)")  # fmt: skip
    print(f"  PHP-FPM SIGSTOPped: {len(hung)} scrapes sent X-Prometheus-Scrape-Timeout-Seconds: "
          f"{HUNG_SCRAPE_TIMEOUT:g} (round deadline {deadline * MS:.0f} ms); max {max(hung) * MS:.0f} ms")  # fmt: skip
    how = "StopUnit over the harness's D-Bus (systemctl stop)" if systemd else "SIGTERM to the PHP-FPM child"
    print(f"  stop -> cause: {how}, /metrics polled every {POLL_INTERVAL * MS:.0f} ms; "
          f"{len(to_cause)} stops: {', '.join(f'{t * MS:.0f}' for t in to_cause)} ms")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
