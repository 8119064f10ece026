"""A real PostgreSQL on loopback in a folder of its own: for the demo's database fault and the tests.

``initdb`` refuses to run as root, so as root the cluster belongs to the ``postgres`` user (the
Debian package's) and every PostgreSQL program runs as that user; otherwise as the current user.
The server listens on 127.0.0.1 and a unix socket in the folder only. :meth:`Postgres.stop` stops it
for real (``pg_ctl stop -m fast``, waited for); :meth:`Postgres.close` also removes the folder.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
from pathlib import Path

from exporter.demo.stack import StackError, free_port, make_root, reap

_TIMEOUT = 30.0


def find_bindir() -> Path | None:
    """The newest ``/usr/lib/postgresql/N/bin`` with ``initdb`` and ``pg_ctl``, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[4]))
    return Path(found[-1]).parent if found else None


class Postgres:
    """One PostgreSQL cluster in ``root`` (made when None) on a free 127.0.0.1 port."""

    def __init__(self, root: Path | None = None, port: int | None = None) -> None:
        bindir = find_bindir()
        if bindir is None:
            raise StackError("PostgreSQL is not installed (Debian package postgresql-15)")
        self.bindir = bindir
        self.root = root or make_root("badgateway-postgres-")
        self.port = port or free_port()
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        self.running = False

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        as_user = {"user": self.user} if os.geteuid() == 0 else {}
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=_TIMEOUT, check=False, cwd=self.root,
            stdin=subprocess.DEVNULL, **as_user,  # type: ignore[call-overload]
        )  # fmt: skip
        if done.returncode != 0:
            raise StackError(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
        return done  # type: ignore[no-any-return]

    def init(self) -> None:
        """``initdb`` (trust authentication on loopback only: a throwaway cluster)."""
        if os.geteuid() == 0:
            entry = pwd.getpwnam(self.user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self._run([str(self.bindir / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "-N"])

    def start(self) -> None:
        """``pg_ctl start -w``: returns once the server accepts connections."""
        if not self.data.exists():
            self.init()
        options = f"-k {self.root} -p {self.port} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.log),
                   "-w", "-t", str(int(_TIMEOUT)), "start"])  # fmt: skip
        self.running = True

    def stop(self) -> None:
        """``pg_ctl stop -m fast -w``: returns once the server is gone."""
        if not self.running:
            return
        postmaster = self._postmaster_pid()
        self._run([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"])
        self.running = False
        if postmaster is not None:
            reap([postmaster], _TIMEOUT)  # adopted by this (sub)reaper: no zombie left behind

    def _postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text(encoding="ascii").split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def close(self) -> None:
        """Stop the server if it runs and remove the folder."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Postgres:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
