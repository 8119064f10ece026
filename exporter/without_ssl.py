"""asyncio without OpenSSL, for a process that will not serve TLS.

asyncio imports ``ssl`` whenever it can, and ``ssl`` maps OpenSSL: 4 MiB of a 29 MiB exporter
(``docs/performance.md``) that serves plain HTTP. ``serve`` without TLS in its web config imports
asyncio here, with ``ssl`` hidden as on a Python built without it (asyncio then serves plain
connections only); ``ssl`` is left importable for whatever needs it later (an https probe loads it
then). A process that serves TLS, or has loaded ``ssl`` already, imports asyncio as usual.
"""

from __future__ import annotations

import importlib
import sys


def import_asyncio_without_ssl() -> bool:
    """Import asyncio with ``ssl`` hidden; False (and nothing done) when either is imported already."""
    if "ssl" in sys.modules or "asyncio" in sys.modules:
        return False
    sys.modules["ssl"] = None  # type: ignore[assignment]  # `import ssl` raises ImportError
    try:
        importlib.import_module("asyncio")
    finally:
        del sys.modules["ssl"]
    return True
