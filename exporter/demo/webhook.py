"""A webhook receiver on loopback recording every Alertmanager notification it is sent."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Notification:
    """One POST from Alertmanager."""

    received: float  # time.monotonic()
    path: str
    payload: dict[str, Any]

    def alerts(self, status: str | None = None) -> list[dict[str, Any]]:
        found = self.payload.get("alerts", [])
        if not isinstance(found, list):
            return []
        return [a for a in found if isinstance(a, dict) and (status is None or a.get("status") == status)]


class WebhookReceiver:
    """A tiny threaded HTTP server on loopback recording every notification it is sent."""

    def __init__(self, on_notification: Callable[[Notification], None] | None = None) -> None:
        self.notifications: list[Notification] = []
        self._lock = threading.Lock()
        self._callback = on_notification
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = min(int(self.headers.get("Content-Length") or 0), 4 << 20)
                body = self.rfile.read(length)
                try:
                    payload = json.loads(body)
                except ValueError:
                    payload = {"invalid": body.decode("utf-8", "replace")}
                receiver._record(Notification(time.monotonic(), self.path, payload))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                del format, args

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="webhook", daemon=True)

    def _record(self, notification: Notification) -> None:
        with self._lock:
            self.notifications.append(notification)
        if self._callback is not None:
            self._callback(notification)

    def start(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def since(self, index: int) -> list[Notification]:
        with self._lock:
            return list(self.notifications[index:])

    def count(self) -> int:
        with self._lock:
            return len(self.notifications)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)
