"""The PHP-FPM socket, as ``ls -la`` shows it and as the nginx worker user can reach it."""

from __future__ import annotations

import dataclasses
import errno
import functools
import grp
import os
import pwd
import socket
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass

from exporter.deadline import Deadline
from exporter.families import GaugeMetricFamily, Metric

_IDENTITY_TTL_SECONDS = 60.0


@dataclass(frozen=True)
class UserIdentity:
    """The uid, gid and supplementary groups a process of ``name`` runs with."""

    name: str
    uid: int
    gids: frozenset[int]

    @classmethod
    def lookup(cls, name: str) -> UserIdentity | None:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            return None
        gids = {entry.pw_gid} | {g.gr_gid for g in grp.getgrall() if name in g.gr_mem}
        return cls(name=name, uid=entry.pw_uid, gids=frozenset(gids))

    @classmethod
    def cached(cls, name: str) -> UserIdentity | None:
        """:meth:`lookup`, read again when ``/etc/passwd`` or ``/etc/group`` changes and every minute."""
        return _cached_identity(name, accounts_stamp())


_ACCOUNT_FILES = ("/etc/passwd", "/etc/group")


def accounts_stamp() -> tuple[int, ...]:
    """Changes whenever ``/etc/passwd`` or ``/etc/group`` is rewritten, and every minute anyway (NSS
    may read other sources): the key of lookups cached across the pools of a round and across rounds.
    The files are looked at once a second at most (each pool's prediction asks several times)."""
    now = time.monotonic()
    until, last = _LAST_STAMP.get("accounts", (0.0, ()))
    if now < until:
        return last
    stamp = [int(now // _IDENTITY_TTL_SECONDS)]
    for path in _ACCOUNT_FILES:
        try:
            st = os.stat(path)
        except OSError:
            stamp.append(-1)
            continue
        stamp += (st.st_ino, st.st_mtime_ns, st.st_size)
    _LAST_STAMP["accounts"] = (now + _STAMP_SECONDS, tuple(stamp))
    return tuple(stamp)


_STAMP_SECONDS = 1.0
_LAST_STAMP: dict[str, tuple[float, tuple[int, ...]]] = {}


@functools.lru_cache(maxsize=64)
def _cached_identity(name: str, stamp: tuple[int, ...]) -> UserIdentity | None:
    del stamp
    return UserIdentity.lookup(name)


@dataclass(frozen=True)
class BlockedPath:
    """The first path component that denies the user what it needs, and why."""

    path: str
    needs: str  # "search" (x on a folder) or "write" (w on the socket)
    owner: str
    group: str
    mode: str


@dataclass(frozen=True)
class SocketResult:
    """What one PHP-FPM unix socket looks like."""

    path: str
    exists: bool
    is_socket: bool
    owner: str | None
    group: str | None
    mode: str | None  # e.g. "0660"
    user: str
    user_known: bool
    accessible: bool | None  # None when the user does not exist on this host
    blocked_by: BlockedPath | None
    connectable: bool | None
    """``connect()`` succeeded; None until the round fills in the FastCGI probe's own connect
    (:func:`with_connect`): a check of its own was one more connection per pool for PHP-FPM to take."""
    connect_errno: int | None
    connect_error: str | None


class SocketsCheck:
    """Existence, ownership, the worker user's access and ``connect()`` of each unix socket.

    ``probed``: the sockets the FastCGI probe connects to in the same round; their ``connect()`` is
    the probe's (:func:`with_connect`), not a second one.
    """

    collector = "sockets"

    def __init__(self, paths: Iterable[str], user: str, probed: Iterable[str] = ()) -> None:
        self._paths = tuple(paths)
        self._probed = frozenset(probed)
        self._user = user
        self._identity: UserIdentity | None = None
        self._identity_read_at = -_IDENTITY_TTL_SECONDS

    def run(self, deadline: Deadline) -> tuple[SocketResult, ...]:
        del deadline  # nothing here waits: stat() and a non-blocking connect()
        now = time.monotonic()
        if now - self._identity_read_at >= _IDENTITY_TTL_SECONDS:
            # Reading /etc/group on every scrape would cost more than the rest of the check.
            self._identity, self._identity_read_at = UserIdentity.lookup(self._user), now
        identity = self._identity
        folders: dict[str, BlockedPath | None] = {}  # the sockets' shared parents, looked at once a run
        return tuple(
            inspect_socket(path, self._user, identity, folders, connect=path not in self._probed)
            for path in self._paths
        )


def _name_of_uid(uid: int) -> str:
    return _cached_user_name(uid, accounts_stamp())


def _name_of_gid(gid: int) -> str:
    return _cached_group_name(gid, accounts_stamp())


# Every socket of a host has the same few owners: /etc/passwd and /etc/group are read again when they
# change (or a minute passes), not twice per socket and round.
@functools.lru_cache(maxsize=256)
def _cached_user_name(uid: int, stamp: tuple[int, ...]) -> str:
    del stamp
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


@functools.lru_cache(maxsize=256)
def _cached_group_name(gid: int, stamp: tuple[int, ...]) -> str:
    del stamp
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _permits(st: os.stat_result, who: UserIdentity, bit_user: int, bit_group: int, bit_other: int) -> bool:
    if who.uid == 0:
        # root passes permission checks; only search on a folder needs at least one x bit.
        return bit_user != stat.S_IXUSR or bool(st.st_mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH))
    if st.st_uid == who.uid:
        return bool(st.st_mode & bit_user)
    if st.st_gid in who.gids:
        return bool(st.st_mode & bit_group)
    return bool(st.st_mode & bit_other)


def _folders(path: str) -> list[str]:
    """The folders above ``path``, outermost first: ``Path(path).parents`` reversed, as strings
    (pathlib's objects were a tenth of the sockets check with 100 pools). Like pathlib, empty and
    ``.`` parts are dropped and ``..`` kept (resolving it is the kernel's business: symlinks)."""
    parts = [part for part in path.split("/") if part and part != "."]
    if not parts:
        return []
    if path.startswith("/"):
        return ["/"] + ["/" + "/".join(parts[:end]) for end in range(1, len(parts))]
    return ["."] + ["/".join(parts[:end]) for end in range(1, len(parts))]


def find_blocker(
    path: str, who: UserIdentity, folders: dict[str, BlockedPath | None] | None = None
) -> BlockedPath | None:
    """The first folder lacking search permission or the socket lacking write permission for ``who``.

    ``folders``: what earlier calls of the same run found for each folder (filled in as it goes).
    """
    seen = {} if folders is None else folders
    for key in _folders(path):
        if key not in seen:
            st = os.stat(key)
            permitted = _permits(st, who, stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH)
            seen[key] = None if permitted else _blocked(key, "search", st)
        if seen[key] is not None:
            return seen[key]
    st = os.stat(path)
    if not _permits(st, who, stat.S_IWUSR, stat.S_IWGRP, stat.S_IWOTH):
        return _blocked(path, "write", st)
    return None


def _blocked(path: str, needs: str, st: os.stat_result) -> BlockedPath:
    return BlockedPath(
        path=path,
        needs=needs,
        owner=_name_of_uid(st.st_uid),
        group=_name_of_gid(st.st_gid),
        mode=f"{stat.S_IMODE(st.st_mode):04o}",
    )


def inspect_socket(
    path: str,
    user: str,
    identity: UserIdentity | None,
    folders: dict[str, BlockedPath | None] | None = None,
    connect: bool = True,
) -> SocketResult:
    """Look at one socket path: ``ls -la``, the user's access, then a real ``connect()`` (``connect``
    False: left to the round, ``connectable`` None)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        return SocketResult(
            path=path, exists=False, is_socket=False, owner=None, group=None, mode=None,
            user=user, user_known=identity is not None, accessible=False if identity else None,
            blocked_by=None, connectable=False, connect_errno=exc.errno,
            connect_error=os.strerror(exc.errno) if exc.errno else str(exc),
        )  # fmt: skip
    is_socket = stat.S_ISSOCK(st.st_mode)
    blocked = find_blocker(path, identity, folders) if identity else None
    connect_errno: int | None = None
    if not is_socket:
        connect_errno = errno.ENOTSOCK
    elif connect:
        connect_errno = try_connect(path)
    return SocketResult(
        path=path,
        exists=True,
        is_socket=is_socket,
        owner=_name_of_uid(st.st_uid),
        group=_name_of_gid(st.st_gid),
        mode=f"{stat.S_IMODE(st.st_mode):04o}",
        user=user,
        user_known=identity is not None,
        accessible=(blocked is None and is_socket) if identity else None,
        blocked_by=blocked,
        connectable=None if is_socket and not connect else connect_errno is None,
        connect_errno=connect_errno,
        connect_error=_connect_error(connect_errno),
    )


def _connect_error(number: int | None) -> str | None:
    return None if number is None else ("not a socket" if number == errno.ENOTSOCK else os.strerror(number))


def try_connect(path: str) -> int | None:
    """``connect()`` to a unix socket: None if it succeeds, else the errno. Non-blocking: a full
    backlog answers EAGAIN at once rather than holding the check."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    try:
        sock.connect(path)
    except OSError as exc:
        return exc.errno or errno.EIO
    finally:
        sock.close()
    return None


def with_connect(result: SocketResult, probe_errno: int | None) -> SocketResult:
    """``result`` with the ``connect()`` the FastCGI probe made to it (``probe_errno``: 0 when it
    connected); one of its own if the probe gave none (it did not run or finish)."""
    if result.connectable is not None:
        return result
    number = try_connect(result.path) if probe_errno is None else (probe_errno or None)
    return dataclasses.replace(
        result, connectable=number is None, connect_errno=number, connect_error=_connect_error(number)
    )


def metric_families(results: Iterable[SocketResult]) -> Iterable[Metric]:
    """``socket_exists``, ``socket_info``, ``socket_accessible``, ``socket_connectable``."""
    exists = GaugeMetricFamily(
        "badgateway_socket_exists", "1 if the PHP-FPM socket path exists and is a socket.", labels=["socket"]
    )
    info = GaugeMetricFamily(
        "badgateway_socket_info",
        "Owner, group and mode of the PHP-FPM socket (always 1).",
        labels=["socket", "owner", "group", "mode"],
    )
    accessible = GaugeMetricFamily(
        "badgateway_socket_accessible",
        "1 if the user may connect: write on the socket and search on every parent folder.",
        labels=["socket", "user"],
    )
    connectable = GaugeMetricFamily(
        "badgateway_socket_connectable", "1 if connect() to the socket succeeds.", labels=["socket"]
    )
    results = tuple(results)
    exists.add_rows(((r.path,), float(r.exists and r.is_socket)) for r in results)
    info.add_rows(
        ((r.path, r.owner, r.group or "", r.mode or ""), 1.0)
        for r in results
        if r.exists and r.owner is not None
    )
    accessible.add_rows(((r.path, r.user), float(r.accessible)) for r in results if r.accessible is not None)
    connectable.add_rows(((r.path,), float(r.connectable)) for r in results if r.connectable is not None)
    return (exists, info, accessible, connectable)
