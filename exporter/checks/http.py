"""HTTP probes of the backend's health endpoint and of the site through nginx (``curl``)."""

from __future__ import annotations

import errno
import time
from collections.abc import Iterable
from dataclasses import dataclass

import httpx
from prometheus_client.core import GaugeMetricFamily, Metric

from exporter.config import HttpTarget
from exporter.deadline import Deadline


@dataclass(frozen=True)
class HttpResult:
    """The outcome of one HTTP probe."""

    target: str
    url: str
    role: str
    up: bool
    status_code: int | None
    duration_seconds: float
    error: str | None  # "connection_refused", "timeout", "connect_error", "protocol_error", "tls_error"
    detail: str | None
    host: str | None = None
    """The Host header (and SNI) sent, when the target names one."""

    @property
    def curl(self) -> str:
        """The same request as a person types it."""
        return f"curl -H 'Host: {self.host}' {self.url}" if self.host else f"curl {self.url}"

    @property
    def gateway_error(self) -> bool:
        """nginx answered 502 Bad Gateway or 504 Gateway Timeout."""
        return self.status_code in (502, 504)


def _refused(exc: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if (
            isinstance(current, ConnectionRefusedError)
            or getattr(current, "errno", None) == errno.ECONNREFUSED
        ):
            return True
        if "Connection refused" in str(current):
            return True
        current = current.__cause__ or current.__context__
    return False


class HttpCheck:
    """One GET without redirects or keep-alive, like ``curl -I``: up means a 2xx or 3xx answer.

    With ``host`` set it is ``curl --resolve HOST:PORT:ADDRESS https://HOST/``: that ``Host`` header
    and TLS server name, sent to the URL's address.
    """

    collector = "http"

    def __init__(self, target: HttpTarget, client: httpx.Client | None = None) -> None:
        self.target = target
        # Without redirects a plain-http probe never speaks TLS: no certificate store for it
        # (httpx loads the whole CA bundle per client for verify=True, ~3 MB of resident memory).
        https = target.url.lower().startswith("https:")
        transport = httpx.HTTPTransport(uds=target.unix_socket) if target.unix_socket else None
        self._client = client or httpx.Client(
            transport=transport,
            verify=target.verify_tls and https,
            follow_redirects=False,
            trust_env=False,
            limits=httpx.Limits(max_keepalive_connections=0),
            headers={"User-Agent": "badgateway-exporter"},
        )
        # ``host``: nginx picks the server block by the Host header (and, over TLS, by the SNI name),
        # not by the address the probe connects to.
        self._headers = {"Host": target.host} if target.host else {}
        self._extensions = {"sni_hostname": target.host} if target.host and https else {}

    def close(self) -> None:
        self._client.close()

    def run(self, deadline: Deadline) -> HttpResult:
        deadline = deadline.capped(self.target.timeout_seconds)
        started = time.monotonic()
        budget = deadline.remaining()
        status: int | None = None
        error: str | None = None
        detail: str | None = None
        try:
            with self._client.stream(
                "GET", self.target.url, timeout=budget, headers=self._headers, extensions=self._extensions
            ) as response:
                status = response.status_code
                # Only the first chunk: enough to see the page is served, bounded for huge pages.
                for _ in response.iter_raw(chunk_size=4096):
                    break
        except httpx.TimeoutException as exc:
            error, detail = "timeout", f"no answer within {budget:.3g} s ({type(exc).__name__})"
        except httpx.ConnectError as exc:
            error = "connection_refused" if _refused(exc) else "connect_error"
            detail = str(exc) or type(exc).__name__
        except httpx.HTTPError as exc:
            error, detail = "protocol_error", str(exc) or type(exc).__name__
        duration = time.monotonic() - started
        up = status is not None and 200 <= status < 400
        if status is not None and not up:
            detail = f"HTTP {status}"
        return HttpResult(
            target=self.target.name,
            url=self.target.url,
            role=self.target.role,
            up=up,
            status_code=status,
            duration_seconds=duration,
            error=error,
            detail=detail,
            host=self.target.host,
        )


def metric_families(results: Iterable[HttpResult]) -> Iterable[Metric]:
    """``http_up``, ``http_status_code``, ``http_probe_duration_seconds``."""
    up = GaugeMetricFamily(
        "badgateway_http_up", "1 if the target answered with a 2xx or 3xx.", labels=["target"]
    )
    code = GaugeMetricFamily(
        "badgateway_http_status_code",
        "HTTP status code of the last probe; 0 when no answer came.",
        labels=["target"],
    )
    duration = GaugeMetricFamily(
        "badgateway_http_probe_duration_seconds", "Wall time of the HTTP probe.", labels=["target"]
    )
    for result in results:
        up.add_metric([result.target], float(result.up))
        code.add_metric([result.target], float(result.status_code or 0))
        duration.add_metric([result.target], result.duration_seconds)
    return (up, code, duration)
