"""The HTTP server: ``/metrics``, a landing page, and a health endpoint."""

from __future__ import annotations

import gzip
import html
import logging
import socket
import threading
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

from prometheus_client.core import Metric
from prometheus_client.exposition import choose_encoder

from exporter import __version__
from exporter.config import Config
from exporter.diagnosis import Diagnosis, diagnose
from exporter.metrics import round_metric_families, scrape_registry
from exporter.rounds import Prober, RoundResults

log = logging.getLogger(__name__)

MAX_SCRAPE_TIMEOUT_SECONDS = 120.0
MAX_CONCURRENT_REQUESTS = 32


class Exporter:
    """Rounds of checks, their diagnosis, and any background sources of metrics (logs, ...)."""

    def __init__(self, config: Config, extra_sources: Iterable[Callable[[], Iterable[Metric]]] = ()) -> None:
        self.config = config
        self.prober = Prober(config)
        self.extra_sources = tuple(extra_sources)

    def timeout_for(self, header: str | None) -> float:
        """The round's deadline: Prometheus's scrape timeout (or the configured one) minus the margin."""
        timeout = self.config.scrape_timeout_seconds
        if header:
            try:
                timeout = min(float(header), MAX_SCRAPE_TIMEOUT_SECONDS)
            except ValueError:
                log.warning("ignoring bad X-Prometheus-Scrape-Timeout-Seconds %r", header)
        margin = self.config.scrape_timeout_margin_seconds
        return timeout - margin if timeout > 2 * margin else timeout / 2

    def check(self, timeout_seconds: float) -> tuple[RoundResults, Diagnosis]:
        results = self.prober.collect(timeout_seconds)
        return results, diagnose(results, self.config)

    def render(self, timeout_seconds: float, accept: str | None) -> tuple[bytes, str]:
        results, diagnosis = self.check(timeout_seconds)
        registry = scrape_registry(lambda: round_metric_families(results, diagnosis), *self.extra_sources)
        encoder, content_type = choose_encoder(accept or "")
        return encoder(registry), content_type

    def close(self) -> None:
        self.prober.close()


LANDING_PAGE = """<!doctype html>
<html><head><title>badgateway-exporter</title></head>
<body>
<h1>badgateway-exporter {version}</h1>
<p>Why is nginx answering 502 Bad Gateway? Every check of the runbook, as metrics.</p>
<ul>
<li><a href="metrics">/metrics</a></li>
<li><a href="-/healthy">/-/healthy</a></li>
</ul>
<p>Watching: {watching}</p>
</body></html>
"""


class _Handler(BaseHTTPRequestHandler):
    exporter: ClassVar[Exporter]
    slots: ClassVar[threading.BoundedSemaphore]
    timeout = 30  # a stalled client loses its connection, it does not keep a thread forever
    server_version = f"badgateway-exporter/{__version__}"

    def do_GET(self) -> None:
        if not self.slots.acquire(blocking=False):
            self._send(503, b"too many concurrent requests\n", "text/plain; charset=utf-8")
            return
        try:
            self._route()
        finally:
            self.slots.release()

    def _route(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            timeout = self.exporter.timeout_for(self.headers.get("X-Prometheus-Scrape-Timeout-Seconds"))
            body, content_type = self.exporter.render(timeout, self.headers.get("Accept"))
            self._send(200, body, content_type)
        elif path == "/":
            config = self.exporter.config
            watching = ", ".join(
                [pool.socket for pool in config.php_fpm] + [target.url for target in config.http]
            )
            page = LANDING_PAGE.format(version=__version__, watching=html.escape(watching))
            self._send(200, page.encode(), "text/html; charset=utf-8")
        elif path == "/-/healthy":
            self._send(200, b"OK\n", "text/plain; charset=utf-8")
        else:
            self._send(404, b"not found\n", "text/plain; charset=utf-8")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        if "gzip" in (self.headers.get("Accept-Encoding") or "") and len(body) > 1024:
            body = gzip.compress(body, compresslevel=1)
            encoding: str | None = "gzip"
        else:
            encoding = None
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if encoding:
            self.send_header("Content-Encoding", encoding)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s " + format, self.address_string(), *args)


def parse_listen_address(address: str) -> tuple[str, int]:
    """``:9502``, ``127.0.0.1:9502`` or ``[::1]:9502`` to (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--web.listen-address: expected [host]:port, got {address!r}")
    return host.strip("[]"), int(port)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class _Server6(_Server):
    address_family = socket.AF_INET6


def make_server(exporter: Exporter, address: str) -> ThreadingHTTPServer:
    """Bind the server (not yet serving)."""
    host, port = parse_listen_address(address)
    handler = type(
        "Handler",
        (_Handler,),
        {"exporter": exporter, "slots": threading.BoundedSemaphore(MAX_CONCURRENT_REQUESTS)},
    )
    return (_Server6 if ":" in host else _Server)((host, port), handler)
