"""The bundle file: a gzipped tar written to a temporary file next to its target, then renamed (mode 0600)."""

from __future__ import annotations

import contextlib
import io
import os
import tarfile
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass


class BundleError(Exception):
    """The bundle file cannot be written where it was asked for."""


@dataclass(frozen=True)
class Member:
    """One file of the bundle, already redacted."""

    name: str
    data: bytes
    about: str
    """What it is, for the bundle's README."""


class PendingBundle:
    """The temporary file the bundle is written to; created at once so that a bad path fails early."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        if os.path.isdir(self.path):
            raise BundleError(f"cannot write the bundle {path}: it is a directory")
        folder, name = os.path.split(self.path)
        try:
            fd, self.temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
        except OSError as exc:
            raise BundleError(f"cannot write the bundle {path}: {exc.strerror or exc}") from None
        os.fchmod(fd, 0o600)
        self._file: io.BufferedWriter | None = os.fdopen(fd, "wb")

    def commit(self, root: str, members: Iterable[Member]) -> int:
        """Write ``members`` under the folder ``root`` of the archive, then rename it into place; its size."""
        if self._file is None:
            raise BundleError(f"the bundle {self.path} was already written or discarded")
        try:
            with tarfile.open(fileobj=self._file, mode="w:gz") as tar:
                for member in members:
                    tar.addfile(_tar_info(f"{root}/{member.name}", len(member.data)), io.BytesIO(member.data))
            self._file.flush()
            os.fsync(self._file.fileno())
            size = self._file.tell()
            self._file.close()
            self._file = None
            os.replace(self.temporary, self.path)
        except OSError as exc:
            self.discard()
            raise BundleError(f"cannot write the bundle {self.path}: {exc.strerror or exc}") from None
        _sync_folder(os.path.dirname(self.path))
        return size

    def discard(self) -> None:
        """Close and remove the temporary file (nothing is left behind when the bundle is not written)."""
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
        with contextlib.suppress(OSError):
            os.unlink(self.temporary)


def _tar_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o600
    info.mtime = int(time.time())
    return info


def _sync_folder(folder: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
