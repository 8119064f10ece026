"""The alerting pipeline a fault is watched through: Prometheus and Alertmanager as child processes.

:class:`Prometheus` and :class:`Alertmanager` run on loopback with the bundled rules (``for:`` scaled
down by ``rules render --for-scale``, see :func:`render_rules`) and the bundled inhibition rules
(:func:`alertmanager_config`, receivers aimed at a :class:`~exporter.demo.webhook.WebhookReceiver`).
The demo and the tests start them through these classes only.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import yaml

from exporter.demo.stack import StackError, free_port, http_status, stop_process, tail, wait_until
from exporter.mixin.cli import rules_main
from exporter.mixin.rules import RULES_FILE

# Timings of the pipeline: 1 s scrape and evaluation, every for: x0.05 (PhpFpmDown 1m -> 3s), the
# symptom's error-rate window scaled the same way with its threshold kept at the same number of
# errors per window (0.05/s over 5m = 15 errors -> 15 errors per 15 s).
FOR_SCALE = 0.05
ERROR_RATE_WINDOW = "15s"
GATEWAY_ERROR_RATE = 1.0
SCRAPE_INTERVAL = "1s"
GROUP_WAIT = "1s"
GROUP_INTERVAL = "2s"
REPEAT_INTERVAL = "1h"

_PROCESS_TIMEOUT = 10.0
_HTTP_TIMEOUT = 5.0


def repo_file(*parts: str) -> Path | None:
    """A file of the source tree (``rules/alertmanager.yml``), when this package runs from one."""
    path = Path(__file__).resolve().parents[2].joinpath(*parts)
    return path if path.is_file() else None


def find_program(*names: str) -> str | None:
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/bin", "/usr/sbin"])
    for name in names:
        found = shutil.which(name, path=search)
        if found:
            return found
    return None


class ChildProcess:
    """A long-running program on loopback: started in its own session, stopped and reaped by PID."""

    def __init__(self, name: str, argv: list[str], log: Path, ready_url: str) -> None:
        self.name = name
        self.argv = argv
        self.log = log
        self.ready_url = ready_url
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        with self.log.open("ab") as handle:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = self.proc

        def ready() -> bool:
            if proc.poll() is not None:
                raise StackError(f"{self.name} exited with {proc.returncode}\n{tail(self.log)}")
            host, _, rest = self.ready_url.removeprefix("http://").partition("/")
            return http_status(int(host.rpartition(":")[2]), "/" + rest, 1.0) == 200

        try:
            wait_until(
                ready, timeout, f"{self.name} to be ready", interval=0.1, detail=lambda: tail(self.log)
            )
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = _PROCESS_TIMEOUT) -> None:
        proc, self.proc = self.proc, None
        stop_process(proc, signal.SIGTERM, timeout)

    def log_tail(self) -> str:
        """The last lines of the program's log (for error messages)."""
        return tail(self.log)


def _get_json(url: str, timeout: float = _HTTP_TIMEOUT) -> Any:
    host, _, rest = url.removeprefix("http://").partition("/")
    conn = http.client.HTTPConnection(host.rpartition(":")[0], int(host.rpartition(":")[2]), timeout=timeout)
    try:
        conn.request("GET", "/" + rest)
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    if response.status != 200:
        raise StackError(f"GET {url}: HTTP {response.status}: {body[:300]!r}")
    return json.loads(body)


def render_rules(folder: Path, for_scale: float = FOR_SCALE) -> Path:
    """``badgateway-exporter rules render --out FOLDER --for-scale F --set ...``: the rule file."""
    code = rules_main(
        [
            "render", "--out", str(folder), "--for-scale", f"{for_scale:g}",
            "--set", f"error_rate_window={ERROR_RATE_WINDOW}",
            "--set", f"gateway_error_rate={GATEWAY_ERROR_RATE:g}",
        ]
    )  # fmt: skip
    if code != 0:
        raise StackError(f"rules render failed with exit code {code}")
    return folder / RULES_FILE


def alertmanager_config(webhook_url: str, source: Path | None = None) -> dict[str, Any]:
    """The bundled ``rules/alertmanager.yml`` with its receivers aimed at ``webhook_url`` and short timers.

    The inhibition rules and the routing tree are kept as they are; only the webhook URLs and the
    route's ``group_wait``/``group_interval``/``repeat_interval`` change.
    """
    path = source or repo_file("rules", "alertmanager.yml")
    if path is None:
        raise StackError("rules/alertmanager.yml not found next to this package (run from a source tree)")
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(document, dict) or "route" not in document:
        raise StackError(f"{path}: not an Alertmanager configuration")

    def shorten(route: dict[str, Any]) -> None:
        route["group_wait"] = GROUP_WAIT
        route["group_interval"] = GROUP_INTERVAL
        route["repeat_interval"] = REPEAT_INTERVAL
        for child in route.get("routes", []) or []:
            shorten(child)

    shorten(document["route"])
    for receiver in document.get("receivers", []) or []:
        for hook in receiver.get("webhook_configs", []) or []:
            hook["url"] = f"{webhook_url}/{quote(receiver['name'])}"
            hook["send_resolved"] = True
    return document


class Alertmanager(ChildProcess):
    """Debian's prometheus-alertmanager on a free loopback port, no cluster listener."""

    def __init__(self, workdir: Path, config: dict[str, Any]) -> None:
        binary = find_program("prometheus-alertmanager", "alertmanager")
        if binary is None:
            raise StackError("prometheus-alertmanager is not installed")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "alertmanager.yml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        super().__init__(
            "alertmanager",
            [
                binary,
                f"--config.file={self.config_path}",
                f"--storage.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--cluster.listen-address=",
                "--log.level=warn",
            ],
            workdir / "alertmanager.log",
            f"{self.url}/-/ready",
        )

    def alerts(self) -> list[dict[str, Any]]:
        found = _get_json(f"{self.url}/api/v2/alerts")
        return found if isinstance(found, list) else []


class Prometheus(ChildProcess):
    """Debian's prometheus scraping ``targets`` every second with ``rule_files``, sending to ``alertmanager``.

    ``scrape`` adds settings to the one scrape job (``scheme``, ``tls_config``, ``basic_auth``, ...).
    """

    def __init__(
        self,
        workdir: Path,
        targets: list[str],
        rule_files: Path | Sequence[Path] = (),
        alertmanager: str | None = None,
        *,
        scrape: Mapping[str, Any] | None = None,
    ) -> None:
        binary = find_program("prometheus")
        if binary is None:
            raise StackError("prometheus is not installed")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        config: dict[str, Any] = {
            "global": {
                "scrape_interval": SCRAPE_INTERVAL,
                "scrape_timeout": SCRAPE_INTERVAL,
                "evaluation_interval": SCRAPE_INTERVAL,
            },
        }
        files = [rule_files] if isinstance(rule_files, Path) else list(rule_files)
        if files:
            config["rule_files"] = [str(path) for path in files]
        job: dict[str, Any] = {"job_name": "badgateway", **(scrape or {})}
        job["static_configs"] = [{"targets": targets}]
        config["scrape_configs"] = [job]
        if alertmanager is not None:
            config["alerting"] = {
                "alertmanagers": [{"static_configs": [{"targets": [alertmanager.removeprefix("http://")]}]}]
            }
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        super().__init__(
            "prometheus",
            [
                binary,
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1d",
                "--log.level=warn",
            ],
            workdir / "prometheus.log",
            f"{self.url}/-/ready",
        )

    def get(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        """The ``data`` of the HTTP API's answer to a GET of ``path`` (``/api/v1/...``) with ``params``."""
        document = _get_json(
            f"{self.url}{path}" + (f"?{urlencode(params, quote_via=quote)}" if params else "")
        )
        if not isinstance(document, dict) or document.get("status") != "success":
            raise StackError(f"GET {path} {dict(params or {})}: {str(document)[:300]}")
        return document.get("data", {})

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector of ``expr`` now (a scalar answer as one sample without labels)."""
        data = self.get("/api/v1/query", {"query": expr})
        result = data.get("result", [])
        if data.get("resultType") == "scalar":
            return [{"metric": {}, "value": result}]
        return result if isinstance(result, list) else []

    def firing(self, state: str = "firing") -> set[str]:
        """Alert names in ``ALERTS`` with ``alertstate`` ``state`` now."""
        return {r["metric"].get("alertname", "") for r in self.query(f'ALERTS{{alertstate="{state}"}}')}


@contextlib.contextmanager
def stopping(*children: ChildProcess) -> Iterator[None]:
    """Stop ``children`` (last first) when the block ends."""
    try:
        yield
    finally:
        for child in reversed(children):
            child.stop()
