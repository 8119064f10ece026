"""The fleet test's machinery: several hosts, each a real stack and a real exporter in its own network
namespace, watched by Prometheus's own distributed machinery.

- :class:`Host`: ``badgateway-exporter demo --no-alerting`` (nginx + PHP-FPM + uvicorn on the
  namespace's loopback, the exporter and a small load) run by ``ip netns exec`` in a namespace of its
  own, joined to the root namespace by a veth pair: the exporter answers on the namespace's address,
  the stack's loopback ports are that host's alone. Faults go through the demo's control socket (the
  catalogue of ``demo break``). Where the kernel refuses namespaces, the hosts share loopback.
- :class:`PrometheusServer`: Debian's Prometheus with a whole configuration of its own: an agent
  (``--enable-feature=agent``) remote-writing, a leaf server for federation, or the central server
  (``--web.enable-remote-write-receiver``) evaluating the bundled rules rendered with
  ``identity_labels=cluster,instance`` and sending to the bundled Alertmanager configuration.
- :func:`central_pipeline`: Alertmanager + webhook + the central Prometheus + the agents or the leaves.

Everything is stopped by PID and the namespaces deleted in ``finally`` blocks.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from exporter.demo.alerting import (
    ERROR_RATE_WINDOW,
    FOR_SCALE,
    GATEWAY_ERROR_RATE,
    Alertmanager,
    ChildProcess,
    Prometheus,
    alertmanager_config,
    find_program,
)
from exporter.demo.catalogue import find_fault
from exporter.demo.cli import control_request
from exporter.demo.stack import StackError, make_root, stop_process, tail, wait_until
from exporter.demo.webhook import Notification, WebhookReceiver
from exporter.mixin.cli import dashboards_main, rules_main
from exporter.mixin.inhibitions import ALERTMANAGER_FILE
from exporter.mixin.rules import RULES_FILE
from harness import free_port, poll

PREFIX = "bgwfleet"
EXPORTER_PORT = 9502
JOB = "badgateway"
IDENTITY = "region,cluster,instance"  # every label the pages must carry
INTERVAL = "1s"
Mode = Literal["remote_write", "federation"]
_CONTROL_TIMEOUT = 60.0


# ---------------------------------------------------------------- network namespaces


def namespace_refusal() -> str | None:
    """Why this machine cannot give each host a network namespace (None: it can)."""
    if os.geteuid() != 0:
        return "needs root for ip netns"
    if shutil.which("ip") is None:
        return "no ip command (Debian package iproute2)"
    name = f"{PREFIX}-probe-{os.getpid()}"
    done = subprocess.run(
        ["ip", "netns", "add", name], capture_output=True, text=True, timeout=10, check=False
    )
    if done.returncode != 0:
        return f"ip netns add refused: {' '.join(done.stderr.split())}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10, check=False)
    return None


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=False)
    if done.returncode != 0:
        raise StackError(f"ip {' '.join(args)}: {' '.join(done.stderr.split())}")


@dataclass
class Namespace:
    """A network namespace joined to the root one by a veth pair: ``host_ip`` is the namespace's side."""

    name: str
    outer: str
    host_ip: str

    @classmethod
    def create(cls, index: int) -> Namespace:
        pid = os.getpid()
        name = f"{PREFIX}-{pid}-{index}"
        net = f"10.{100 + pid % 100}.{index}"
        outer, inner = f"bgf{pid % 100000}x{index}", f"bgf{pid % 100000}y{index}"
        _ip("netns", "add", name)
        made = cls(name, outer, f"{net}.2")
        try:
            _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
            _ip("link", "set", inner, "netns", name)
            _ip("addr", "add", f"{net}.1/30", "dev", outer)
            _ip("link", "set", outer, "up")
            for args in (("addr", "add", f"{net}.2/30", "dev", inner), ("link", "set", inner, "up"),
                         ("link", "set", "lo", "up")):  # fmt: skip
                _ip("netns", "exec", name, "ip", *args)
        except StackError:
            made.delete()
            raise
        return made

    def delete(self) -> None:
        subprocess.run(["ip", "link", "del", self.outer], capture_output=True, timeout=10, check=False)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=10, check=False)


# ---------------------------------------------------------------- one host


@dataclass(eq=False)
class Host:
    """One host: the demo (stack + exporter + load) in its namespace; ``labels`` its target labels."""

    name: str  # the instance label the agents give it, e.g. web-1:9502
    cluster: str
    region: str
    address: str  # where the exporter answers, host:port
    root: Path
    proc: subprocess.Popen[bytes]
    namespace: Namespace | None = None

    @property
    def log(self) -> Path:
        return self.root.parent / f"{self.root.name}.log"

    @property
    def labels(self) -> dict[str, str]:
        return {"cluster": self.cluster, "region": self.region, "instance": self.name}

    @property
    def key(self) -> tuple[str, str]:
        return (self.cluster, self.name)

    def control(self, action: str, fault: str | None = None) -> str:
        """``demo break FAULT`` / ``demo heal`` through the demo's control socket; its answer."""
        answer = json.loads(control_request(self.root, action, fault, _CONTROL_TIMEOUT))
        if not answer.get("ok"):
            raise StackError(f"{self.name}: demo {action} {fault or ''}: {answer.get('message')}")
        return str(answer.get("message", ""))

    def metrics_up(self) -> bool:
        host, _, port = self.address.rpartition(":")
        try:
            with socket.create_connection((host, int(port)), timeout=1.0) as conn:
                conn.sendall(f"GET /metrics HTTP/1.0\r\nHost: {self.address}\r\n\r\n".encode())
                conn.settimeout(10.0)
                status = conn.recv(64).split(b"\r\n", 1)[0].split()
                return len(status) >= 2 and status[1] == b"200"
        except OSError:
            return False

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGTERM, 30.0)


@contextlib.contextmanager
def host(index: int, name: str, cluster: str, region: str, use_netns: bool) -> Iterator[Host]:
    """Start one host; stop its demo and delete its namespace afterwards."""
    with contextlib.ExitStack() as exits:
        namespace = Namespace.create(index) if use_netns else None
        if namespace is not None:
            exits.callback(namespace.delete)
        root = make_root(f"{PREFIX}-host{index}-")
        exits.callback(shutil.rmtree, root, True)
        address = f"{namespace.host_ip}:{EXPORTER_PORT}" if namespace else f"127.0.0.1:{free_port()}"
        prefix = ["ip", "netns", "exec", namespace.name] if namespace else []
        argv = [*prefix, sys.executable, "-m", "exporter", "demo", "--dir", str(root), "--no-alerting",
                "--web.listen-address", address, "--duration", "3600"]  # fmt: skip
        log = root.parent / f"{root.name}.log"
        exits.callback(log.unlink, True)
        with log.open("wb") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)  # fmt: skip
        made = Host(name, cluster, region, address, root, proc, namespace)
        exits.callback(made.stop)

        def ready() -> bool:
            if proc.poll() is not None:
                raise StackError(f"host {name} exited with {proc.returncode}\n{tail(log)}")
            return (root / "control.sock").exists() and made.metrics_up()

        wait_until(ready, 90.0, f"host {name} to serve", interval=0.2, detail=lambda: tail(log))
        yield made


# ---------------------------------------------------------------- Prometheus in its roles


class PrometheusServer(Prometheus):
    """Debian's Prometheus with a whole configuration and extra flags (agent, remote-write receiver)."""

    def __init__(self, workdir: Path, name: str, config: dict[str, Any], flags: Sequence[str] = ()) -> None:
        binary = find_program("prometheus")
        if binary is None:
            raise StackError("prometheus is not installed")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        agent = "--enable-feature=agent" in flags
        storage = (
            f"--storage.agent.path={workdir / 'wal'}" if agent else f"--storage.tsdb.path={workdir / 'data'}"
        )
        ChildProcess.__init__(
            self,
            name,
            [binary, f"--config.file={self.config_path}", storage, f"--web.listen-address=127.0.0.1:{self.port}",
             "--log.level=warn", *flags],
            workdir / "prometheus.log",
            f"{self.url}/-/ready",
        )  # fmt: skip


def _scrape_job(hosts: Sequence[Host]) -> dict[str, Any]:
    return {
        "job_name": JOB,
        "static_configs": [{"targets": [h.address], "labels": {"instance": h.name}} for h in hosts],
    }


def _global(cluster: str, region: str) -> dict[str, Any]:
    return {"scrape_interval": INTERVAL, "scrape_timeout": INTERVAL, "evaluation_interval": INTERVAL,
            "external_labels": {"cluster": cluster, "region": region}}  # fmt: skip


def agent_config(cluster: str, region: str, hosts: Sequence[Host], central: str) -> dict[str, Any]:
    """An agent scraping ``hosts`` and remote-writing to ``central`` with short batches (1 s deadline)."""
    return {
        "global": _global(cluster, region),
        "scrape_configs": [_scrape_job(hosts)],
        "remote_write": [
            {"url": f"{central}/api/v1/write",
             "queue_config": {"batch_send_deadline": "1s", "min_backoff": "100ms", "max_backoff": "1s"}}
        ],
    }  # fmt: skip


def leaf_config(cluster: str, region: str, hosts: Sequence[Host]) -> dict[str, Any]:
    return {"global": _global(cluster, region), "scrape_configs": [_scrape_job(hosts)]}


def central_config(rule_file: Path, alertmanager: str, leaves: Sequence[str] = ()) -> dict[str, Any]:
    config: dict[str, Any] = {
        "global": {"scrape_interval": INTERVAL, "scrape_timeout": INTERVAL, "evaluation_interval": INTERVAL},
        "rule_files": [str(rule_file)],
        "alerting": {
            "alertmanagers": [{"static_configs": [{"targets": [alertmanager.removeprefix("http://")]}]}]
        },
        "scrape_configs": [],
    }
    if leaves:
        config["scrape_configs"].append(
            {"job_name": "federate", "honor_labels": True, "metrics_path": "/federate",
             "params": {"match[]": [f'{{job="{JOB}"}}']},
             "static_configs": [{"targets": [leaf.removeprefix("http://") for leaf in leaves]}]}
        )  # fmt: skip
    return config


FLEET_SETTINGS = (
    f"error_rate_window={ERROR_RATE_WINDOW}",
    f"gateway_error_rate={GATEWAY_ERROR_RATE:g}",
    f"identity_labels={IDENTITY}",
)
"""The ``--set`` values the fleet's rules and dashboards are rendered with (and ``--for-scale 0.05``)."""


def render_fleet(folder: Path) -> tuple[Path, Path]:
    """``rules render`` and ``dashboards render`` with :data:`FLEET_SETTINGS`: the two output folders."""
    sets = [arg for value in FLEET_SETTINGS for arg in ("--set", value)]
    with contextlib.redirect_stdout(None):
        code = rules_main(["render", "--out", str(folder / "rules"), "--for-scale", f"{FOR_SCALE:g}", *sets])
        code = code or dashboards_main(["render", "--out", str(folder / "dashboards"), *sets])
    if code != 0:
        raise StackError(f"rendering the fleet's rules and dashboards failed with exit code {code}")
    return folder / "rules", folder / "dashboards"


# ---------------------------------------------------------------- the central pipeline


@dataclass
class Central:
    mode: Mode
    prometheus: PrometheusServer
    alertmanager: Alertmanager
    webhook: WebhookReceiver
    dashboards: Path
    feeders: list[PrometheusServer] = field(default_factory=list)
    log: Callable[[str], None] = print

    def firing_pages(self, since: int) -> list[tuple[Notification, dict[str, Any]]]:
        return [(n, a) for n in self.webhook.since(since) for a in n.alerts("firing")]

    def causes_now(self) -> set[tuple[str, str, str]]:
        return {(r["metric"].get("cluster", ""), r["metric"].get("instance", ""), r["metric"].get("cause", ""))
                for r in self.prometheus.query(f'badgateway_cause{{job="{JOB}"}} == 1')}  # fmt: skip

    def quiet(self) -> bool:
        return not self.prometheus.query("ALERTS") and not self.causes_now()


@contextlib.contextmanager
def central_pipeline(
    mode: Mode, hosts: Sequence[Host], work: Path, log: Callable[[str], None]
) -> Iterator[Central]:
    """Alertmanager, the webhook, the central Prometheus and its two feeders (agents or leaves)."""
    with contextlib.ExitStack() as exits:
        rules_dir, dashboards_dir = render_fleet(work)
        webhook = WebhookReceiver().start()
        exits.callback(webhook.close)
        am_config = alertmanager_config(webhook.url, rules_dir / ALERTMANAGER_FILE)
        alertmanager = Alertmanager(work / "alertmanager", am_config)
        exits.callback(alertmanager.stop)
        alertmanager.start()
        clusters = _clusters(hosts)
        feeders: list[PrometheusServer] = []
        if mode == "federation":
            for cluster, (region, members) in clusters.items():
                leaf = PrometheusServer(
                    work / f"leaf-{cluster}", f"leaf {cluster}", leaf_config(cluster, region, members)
                )
                exits.callback(leaf.stop)
                leaf.start()
                feeders.append(leaf)
        central_cfg = central_config(rules_dir / RULES_FILE, alertmanager.url, [f.url for f in feeders])
        flags = ["--web.enable-remote-write-receiver"] if mode == "remote_write" else []
        central = PrometheusServer(work / "central", "central prometheus", central_cfg, flags)
        exits.callback(central.stop)
        central.start()
        if mode == "remote_write":
            for cluster, (region, members) in clusters.items():
                agent = PrometheusServer(work / f"agent-{cluster}", f"agent {cluster}",
                                         agent_config(cluster, region, members, central.url), ["--enable-feature=agent"])  # fmt: skip
                exits.callback(agent.stop)
                agent.start()
                feeders.append(agent)
        yield Central(mode, central, alertmanager, webhook, dashboards_dir, feeders, log)


def _clusters(hosts: Sequence[Host]) -> dict[str, tuple[str, list[Host]]]:
    out: dict[str, tuple[str, list[Host]]] = {}
    for h in hosts:
        out.setdefault(h.cluster, (h.region, []))[1].append(h)
    return out


def first_samples(central: Central, hosts: Sequence[Host], timeout: float = 60.0) -> None:
    """Wait until the central Prometheus has every host's ``badgateway_cause`` series."""
    wanted = {h.key for h in hosts}

    def seen() -> bool:
        found = central.prometheus.query(f'badgateway_build_info{{job="{JOB}"}}')
        return wanted <= {(r["metric"].get("cluster", ""), r["metric"].get("instance", "")) for r in found}

    wait_until(seen, timeout, "every host's series in the central Prometheus", interval=0.5,
               detail=lambda: "\n".join(p.log_tail() for p in [central.prometheus, *central.feeders]))  # fmt: skip


def leftovers(roots: Sequence[Path]) -> list[str]:
    """This run's namespaces and the processes of its hosts still present (empty: the host is as found)."""
    mine = f"{PREFIX}-{os.getpid()}-"
    problems = []
    if shutil.which("ip") is not None:
        listed = subprocess.run(
            ["ip", "netns", "list"], capture_output=True, text=True, timeout=10, check=False
        )
        problems += [
            f"namespace left: {n.split()[0]}" for n in listed.stdout.splitlines() if n.startswith(mine)
        ]
    for proc_dir in Path("/proc").iterdir():
        if not proc_dir.name.isdigit() or int(proc_dir.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            cmdline = (proc_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
            if any(str(root) in cmdline for root in roots):
                problems.append(f"still running: {proc_dir.name} {cmdline[:120]}")
    return problems


# ---------------------------------------------------------------- one step: faults on some hosts at once

SYMPTOM = "NginxGatewayErrors"
PAGE_TIMEOUT = 60.0
RESOLVE_TIMEOUT = 60.0
QUIET_TIMEOUT = 60.0
HOLD = 5.0  # keep the faults until the symptom fires in the central Prometheus (inhibition exercised), at most this
FLUSH_MARGIN = 3.0  # one Alertmanager group_interval (2 s) and a bit: late notifications land in the step

AlertKey = tuple[str, str, str]  # alertname, cluster, instance


@dataclass
class StepResult:
    mode: Mode
    name: str
    expected: dict[AlertKey, str]  # -> the cause it must carry
    pages: list[dict[str, str]] = field(default_factory=list)  # firing alerts received, labels + receiver
    visible_seconds: dict[AlertKey, float] = field(default_factory=dict)  # fault -> cause at 1 in the central
    page_seconds: dict[AlertKey, float] = field(default_factory=dict)  # fault -> page at the webhook
    resolve_seconds: dict[AlertKey, float] = field(default_factory=dict)
    symptom_fired: bool = False
    injected_at: dict[AlertKey, float] = field(default_factory=dict)  # time.monotonic() of each injection
    checks: dict[str, Any] = field(default_factory=dict)  # what the on_active callback found
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _key(alert: dict[str, Any]) -> AlertKey:
    labels = alert.get("labels", {})
    return (str(labels.get("alertname")), str(labels.get("cluster")), str(labels.get("instance")))


def run_step(
    central: Central,
    name: str,
    faults: dict[Host, str],
    on_active: Callable[[StepResult], None] | None = None,
) -> StepResult:
    """Inject ``faults`` (host -> catalogue fault) at once, wait for the pages, check, heal, wait for quiet."""
    catalogue = {h: find_fault(f) for h, f in faults.items()}
    result = StepResult(
        central.mode, name, {(f.alert, h.cluster, h.name): f.cause.value for h, f in catalogue.items()}
    )
    if not poll(central.quiet, QUIET_TIMEOUT, 0.5):
        result.problems.append(f"not quiet before the step: ALERTS {central.prometheus.query('ALERTS')}")
    mark = central.webhook.count()
    injected = result.injected_at
    try:
        for h, fault in catalogue.items():
            injected[(fault.alert, h.cluster, h.name)] = time.monotonic()
            h.control("break", fault.name)
        central.log(
            f"-- {central.mode} {name}: injected {', '.join(f'{f.name} on {h.cluster}/{h.name}' for h, f in catalogue.items())}"
        )
        _await_pages(central, result, injected, mark)
        result.symptom_fired = poll(lambda: SYMPTOM in central.prometheus.firing(), HOLD, 0.5)
        if on_active is not None:
            on_active(result)
    except (StackError, OSError, RuntimeError, TimeoutError, ValueError) as exc:
        result.problems.append(f"injecting or checking failed: {exc}")
    finally:
        healed = time.monotonic()
        for h in catalogue:
            try:
                h.control("heal")
            except (StackError, OSError, ValueError) as exc:
                result.problems.append(f"healing {h.name} failed: {exc}")
    _await_resolved(central, result, mark, healed)
    if not poll(central.quiet, QUIET_TIMEOUT, 0.5):
        result.problems.append(
            f"not quiet {QUIET_TIMEOUT:g}s after healing: ALERTS {central.prometheus.query('ALERTS')}"
        )
    flush = time.monotonic() + FLUSH_MARGIN
    poll(lambda: time.monotonic() >= flush, FLUSH_MARGIN + 1)
    _judge(central, result, catalogue, mark)
    central.log(
        f"   pages {sorted(result.page_seconds.items())}; visible {sorted(result.visible_seconds.items())};"
        f" {'ok' if result.ok else '; '.join(result.problems)}"
    )
    return result


def _await_pages(central: Central, result: StepResult, injected: dict[AlertKey, float], mark: int) -> None:
    def done() -> bool:
        now = time.monotonic()
        for cluster, instance, cause in central.causes_now():
            for key, start in injected.items():
                if key[1:] == (cluster, instance) and result.expected[key] == cause:
                    result.visible_seconds.setdefault(key, now - start)
        for note, alert in central.firing_pages(mark):
            key = _key(alert)
            if key in injected:
                result.page_seconds.setdefault(key, note.received - injected[key])
        return set(result.page_seconds) == set(injected)

    if not poll(done, PAGE_TIMEOUT, 0.2):
        missing = sorted(set(injected) - set(result.page_seconds))
        result.problems.append(f"no page within {PAGE_TIMEOUT:g}s for {missing}")


def _await_resolved(central: Central, result: StepResult, mark: int, healed: float) -> None:
    def done() -> bool:
        for note in central.webhook.since(mark):
            for alert in note.alerts("resolved"):
                key = _key(alert)
                if key in result.page_seconds:
                    result.resolve_seconds.setdefault(key, note.received - healed)
        return set(result.resolve_seconds) == set(result.page_seconds)

    if result.page_seconds and not poll(done, RESOLVE_TIMEOUT, 0.25):
        result.problems.append(f"no resolved notification within {RESOLVE_TIMEOUT:g}s of healing")


def _judge(central: Central, result: StepResult, catalogue: dict[Host, Any], mark: int) -> None:
    regions = {(h.cluster, h.name): h.region for h in catalogue}
    seen: dict[AlertKey, dict[str, str]] = {}
    for note, alert in central.firing_pages(mark):
        labels = {str(k): str(v) for k, v in alert.get("labels", {}).items()}
        labels["receiver"] = note.path.strip("/")
        seen.setdefault(_key(alert), labels)
    result.pages = list(seen.values())
    if set(seen) != set(result.expected):
        result.problems.append(f"pages {sorted(seen)}, expected exactly {sorted(result.expected)}")
    for key, labels in seen.items():
        if key not in result.expected:
            continue
        want = {"cause": result.expected[key], "region": regions[key[1:]], "receiver": "oncall"}
        wrong = {k: labels.get(k) for k, v in want.items() if labels.get(k) != v}
        if wrong:
            result.problems.append(f"{key}: labels {wrong}, expected {want}")
