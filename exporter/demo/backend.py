"""The demo Python backend: a tiny FastAPI app run by uvicorn.

It reads its root folder from the ``BADGATEWAY_DEMO_ROOT`` environment variable and, on every
request to ``/health``, the files ``backend/health_status`` and ``backend/health_delay`` below it,
so a test can change the answer without restarting the process.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from fastapi import FastAPI, Query
from fastapi.responses import JSONResponse

from exporter.demo.stack import BACKEND_DELAY_FILE, BACKEND_STATUS_FILE, ROOT_ENV

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


@app.get("/health")
async def health() -> JSONResponse:
    """200 ``{"status": "ok"}`` unless the status/delay files say otherwise."""
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
