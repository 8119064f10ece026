"""A minimal client of the Prometheus HTTP API: instant and range queries, one deadline for all calls."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import httpx


class PrometheusError(Exception):
    """Prometheus cannot be asked or did not answer; the message is one line for the user."""


@dataclass(frozen=True)
class Sample:
    labels: dict[str, str]
    value: float


@dataclass(frozen=True)
class Series:
    labels: dict[str, str]
    points: tuple[tuple[float, float], ...]
    """``(unix time, value)`` in time order."""


class PrometheusAPI:
    """``GET /api/v1/…`` of ``url``; every call shares the deadline ``timeout`` seconds from creation."""

    def __init__(self, url: str, timeout: float, headers: dict[str, str] | None = None) -> None:
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, ValueError) as exc:
            raise PrometheusError(f"--prometheus {url!r}: not a URL: {_one_line(str(exc))}") from None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise PrometheusError(f"--prometheus {url!r}: expected an http:// or https:// URL")
        self.url = url.rstrip("/")
        self.deadline = time.monotonic() + timeout
        self._client = httpx.Client(follow_redirects=False, trust_env=False, headers=headers or {})

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> PrometheusAPI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _get(self, path: str, params: dict[str, str]) -> Any:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise PrometheusError(f"{self.url}: no answer within the deadline")
        try:
            response = self._client.get(f"{self.url}{path}", params=params, timeout=left)
        except httpx.TimeoutException:
            raise PrometheusError(f"{self.url}: no answer within the deadline") from None
        except (httpx.HTTPError, httpx.InvalidURL, ValueError) as exc:
            raise PrometheusError(f"{self.url}: cannot reach Prometheus: {_one_line(str(exc))}") from None
        try:
            document = response.json()
        except ValueError:
            document = None
        if not isinstance(document, dict):
            raise PrometheusError(
                f"{self.url}{path}: HTTP {response.status_code}, not a Prometheus API answer"
            )
        if document.get("status") != "success":
            error = _one_line(str(document.get("error") or f"HTTP {response.status_code}"))
            raise PrometheusError(f"{self.url}{path}: {error}")
        return document.get("data")

    def query(self, expr: str) -> tuple[float, list[Sample]]:
        """The instant vector of ``expr`` now, and the evaluation time Prometheus used."""
        data = self._get("/api/v1/query", {"query": expr})
        result = data.get("result", []) if isinstance(data, dict) else []
        samples = []
        now = time.time()
        for item in result if isinstance(result, list) else []:
            stamp, value = item.get("value", [now, "NaN"])
            now = float(stamp)
            samples.append(Sample(dict(item.get("metric", {})), _float(value)))
        return now, samples

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[Series]:
        data = self._get(
            "/api/v1/query_range",
            {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"},
        )
        result = data.get("result", []) if isinstance(data, dict) else []
        return [
            Series(
                dict(item.get("metric", {})),
                tuple((float(t), _float(v)) for t, v in item.get("values", [])),
            )
            for item in (result if isinstance(result, list) else [])
        ]


def _float(text: object) -> float:
    try:
        return float(str(text))
    except ValueError:
        return math.nan


def _one_line(text: str) -> str:
    return " ".join(text.split())[:300]
