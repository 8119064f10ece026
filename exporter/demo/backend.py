"""The demo Python backend: a tiny FastAPI app run by uvicorn.

It reads its root folder from the ``BADGATEWAY_DEMO_ROOT`` environment variable and, on every
request to ``/health``, the files ``backend/health_status`` and ``backend/health_delay`` below it,
so a test can change the answer without restarting the process.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from urllib.parse import urlsplit

from fastapi import FastAPI, Query
from fastapi.responses import JSONResponse

from exporter.demo.stack import BACKEND_DELAY_FILE, BACKEND_STATUS_FILE, ROOT_ENV

BOOT_ERROR_ENV = "BADGATEWAY_DEMO_BOOT_ERROR"
"""Set (e.g. in the backend's EnvironmentFile), the app raises it as it is imported: a crash at boot."""

if os.environ.get(BOOT_ERROR_ENV):
    raise RuntimeError(os.environ[BOOT_ERROR_ENV])

app = FastAPI(title="badgateway demo backend", docs_url=None, redoc_url=None, openapi_url=None)


def _root() -> Path | None:
    value = os.environ.get(ROOT_ENV)
    return Path(value) if value else None


def _read_number(name: str) -> float | None:
    root = _root()
    if root is None:
        return None
    try:
        return float((root / name).read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return None


async def _database_error() -> str | None:
    """Why the database in ``DATABASE_URL`` cannot be reached (a TCP connect), None when it can or is none."""
    url = os.environ.get("DATABASE_URL")
    if not url:
        return None
    parts = urlsplit(url)
    host, port = parts.hostname or "localhost", parts.port or 5432
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout=1.0)
    except (OSError, TimeoutError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "timeout expired"
        # What psycopg2 says when PostgreSQL is down: the backend's own log tells why /health fails.
        print(f'could not connect to server: {reason}\n\tIs the server running on host "{host}" and'
              f" accepting\n\tTCP/IP connections on port {port}?", file=sys.stderr, flush=True)  # fmt: skip
        return reason
    writer.close()
    return None


@app.get("/health")
async def health() -> JSONResponse:
    """200 ``{"status": "ok"}`` unless the status/delay files say otherwise or the database is unreachable."""
    if await _database_error() is not None:
        return JSONResponse({"status": "error", "database": "unavailable"}, status_code=503)
    delay = _read_number(BACKEND_DELAY_FILE)
    if delay is not None and delay > 0:
        await asyncio.sleep(delay)
    status = _read_number(BACKEND_STATUS_FILE)
    code = int(status) if status is not None else 200
    return JSONResponse({"status": "ok" if code < 400 else "error"}, status_code=code)


@app.get("/slow")
async def slow(s: float = Query(1.0, ge=0.0, le=3600.0)) -> dict[str, float]:
    """Sleep ``s`` seconds, then answer."""
    await asyncio.sleep(s)
    return {"slept": s}


@app.get("/ready")
async def ready() -> dict[str, str]:
    """Readiness of the process itself (ignores the fault files); names the stack root."""
    root = _root()
    return {"root": str(root) if root is not None else ""}
