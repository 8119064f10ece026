"""``diagnose --bundle FILE.tar.gz``: the runbook's "collect the logs of all services", in one file.

The bundle holds the diagnosis, the recent lines of every watched log, each unit's journal,
``nginx -T``, the PHP-FPM files discovery read, the backend's environment and the versions, with
every secret value redacted (:mod:`exporter.bundle.redact`). It is written on this host only
(atomically, mode 0600); nothing is sent anywhere. What could not be collected is listed in its
``README.txt``.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass

from exporter import __version__
from exporter.app import Checked
from exporter.bundle.archive import BundleError, Member, PendingBundle
from exporter.bundle.parts import Part, Source, collect
from exporter.bundle.redact import redact_text
from exporter.config import Config
from exporter.deadline import Deadline

__all__ = ["BUNDLE_SECONDS", "BundleError", "PendingBundle", "Written", "write_bundle"]

BUNDLE_SECONDS = 60.0
"""Deadline for collecting everything (each program also has its own, shorter one)."""


@dataclass(frozen=True)
class Written:
    """A bundle on disk: where, its size, its member names and what it lacks."""

    path: str
    size: int
    names: tuple[str, ...]
    notes: tuple[str, ...]


def write_bundle(
    pending: PendingBundle, config: Config, checked: Checked, seconds: float = BUNDLE_SECONDS
) -> Written:
    """Collect every part for ``checked`` and write them into ``pending``; :class:`BundleError` if it cannot."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    collected = collect(Source(config, checked, Deadline.after(seconds)))
    members = [_readme(collected, checked, stamp), *collected.members]
    size = pending.commit(f"badgateway-bundle-{stamp}", members)
    return Written(pending.path, size, tuple(m.name for m in members), tuple(collected.notes))


def _readme(collected: Part, checked: Checked, stamp: str) -> Member:
    diagnosis = checked.diagnosis
    causes = ", ".join(sorted(c.value for c in diagnosis.causes)) or "none"
    lines = [
        "badgateway-exporter support bundle",
        "",
        f"Written {stamp} on {socket.gethostname()} by badgateway-exporter {__version__}.",
        f"diagnose exit code {diagnosis.exit_code}; causes: {causes}.",
        "",
        "Secret values are redacted in every file (passwords, tokens, keys, DSNs, credentials in URLs,",
        "Authorization headers). The bundle was only written to this host's disk; nothing was sent.",
        "",
        "Files:",
        *(f"  {m.name}: {m.about}" for m in collected.members),
        "",
        "Not collected, or collected with a problem:" if collected.notes else "Every part was collected.",
        *(f"  {note}" for note in collected.notes),
    ]
    return Member("README.txt", redact_text("\n".join(lines) + "\n").encode("utf-8"), "this file")
