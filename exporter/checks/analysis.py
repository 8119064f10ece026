"""Conclusions drawn from discovered configuration: socket access, alternatives, timeouts."""

from __future__ import annotations

import functools
import os
import stat
from dataclasses import dataclass
from urllib.parse import urlsplit

from exporter.checks.sockets import SocketResult, UserIdentity, accounts_stamp, try_connect
from exporter.discovery.model import Discovered, Origin, Pass, PoolFacts, Timeout, listen_address


@dataclass(frozen=True)
class PredictedAccess:
    """Owner, group and mode the pool gives its socket, and whether ``user`` may connect."""

    pool: PoolFacts
    user: str
    owner: str
    group: str
    mode: int
    acl: bool
    allowed: bool
    origins: dict[str, Origin]

    def describe(self) -> str:
        """``www.conf:53 listen.owner = nobody, ...`` — the settings that decide."""
        parts = []
        for key, value in (
            ("listen.owner", self.owner),
            ("listen.group", self.group),
            ("listen.mode", f"{self.mode:04o}"),
        ):
            origin = self.origins[key]
            where = f"line {origin.line}" if origin.line and origin.kind != "default" else "default"
            parts.append(f"{key} = {value} ({where})")
        return ", ".join(parts)


def _gid(name: str) -> int | None:
    return _cached_gid(name, accounts_stamp())


def _uid(name: str) -> int | None:
    return _cached_uid(name, accounts_stamp())


def _primary_group(user: str) -> str:
    return _cached_primary_group(user, accounts_stamp())


# Each pool's prediction looks up the same few names: read /etc/passwd and /etc/group again only when
# they change (or a minute passes), not once per pool and round.
@functools.lru_cache(maxsize=256)
def _cached_gid(name: str, stamp: tuple[int, ...]) -> int | None:
    import grp

    del stamp
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return int(name) if name.isdigit() else None


@functools.lru_cache(maxsize=256)
def _cached_uid(name: str, stamp: tuple[int, ...]) -> int | None:
    import pwd

    del stamp
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return int(name) if name.isdigit() else None


@functools.lru_cache(maxsize=256)
def _cached_primary_group(user: str, stamp: tuple[int, ...]) -> str:
    import grp
    import pwd

    del stamp
    try:
        return grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name
    except KeyError:
        return user


_PREDICTED: dict[tuple[int, str, tuple[int, ...]], tuple[PoolFacts, PredictedAccess | None]] = {}
_PREDICTED_LIMIT = 4096


def predict_access(pool: PoolFacts, user: str) -> PredictedAccess | None:
    """What the pool's ``listen.owner/group/mode`` (or ACLs) mean for ``user``; None for TCP or unknown users.

    Remembered per pool, user and state of the account files (:func:`accounts_stamp`): the diagnosis
    asks for every pool every round, and it was a quarter of the diagnosis with 100 pools. The entry
    holds the pool, so its ``id`` is not reused while the entry is there.
    """
    key = (id(pool), user, accounts_stamp())
    found = _PREDICTED.get(key)
    if found is not None and found[0] is pool:
        return found[1]
    if len(_PREDICTED) >= _PREDICTED_LIMIT:
        _PREDICTED.clear()
    predicted = _predict(pool, user)
    _PREDICTED[key] = (pool, predicted)
    return predicted


def _predict(pool: PoolFacts, user: str) -> PredictedAccess | None:
    listen = pool.listen
    who = UserIdentity.cached(user)
    if listen is None or not listen.startswith("/") or who is None:
        return None
    settings = _socket_settings(pool)
    if settings is None:
        return None
    owner, group, mode, origins = settings
    acl_users = pool.get("listen.acl_users")
    acl_groups = pool.get("listen.acl_groups")
    if acl_users or acl_groups:
        # listen.acl_* replace owner/group: rw for the listed users and groups.
        allowed = _acl_allows(who, user, acl_users, acl_groups)
        return PredictedAccess(pool, user, owner, group, mode, True, allowed, origins)
    allowed = _mode_allows(who, owner, group, mode)
    return PredictedAccess(pool, user, owner, group, mode, False, allowed, origins)


def _socket_settings(pool: PoolFacts) -> tuple[str, str, int, dict[str, Origin]] | None:
    """``(owner, group, mode, origins)`` the pool gives its socket; None when the mode is not octal."""
    default = Origin("default", pool.file, None, "php-fpm default")
    owner_setting = pool.settings.get("listen.owner")
    group_setting = pool.settings.get("listen.group")
    mode_setting = pool.settings.get("listen.mode")
    owner = owner_setting.value if owner_setting else "root"  # the master's user
    group = group_setting.value if group_setting else _primary_group(owner)
    try:
        mode = int(mode_setting.value, 8) if mode_setting else 0o660
    except ValueError:
        return None
    origins = {
        "listen.owner": owner_setting.origin if owner_setting else default,
        "listen.group": group_setting.origin if group_setting else default,
        "listen.mode": mode_setting.origin if mode_setting else default,
    }
    return owner, group, mode, origins


def _acl_allows(who: UserIdentity, user: str, acl_users: str | None, acl_groups: str | None) -> bool:
    """Whether ``listen.acl_users``/``listen.acl_groups`` (comma-separated) let ``user`` connect."""
    users = {u.strip() for u in (acl_users or "").split(",") if u.strip()}
    groups = {_gid(g.strip()) for g in (acl_groups or "").split(",") if g.strip()}
    return who.uid == 0 or user in users or bool(groups & set(who.gids))


def _mode_allows(who: UserIdentity, owner: str, group: str, mode: int) -> bool:
    """Whether ``mode`` has the write bit of ``who``'s class: owner, else group, else other (root: always)."""
    uid, gid = _uid(owner), _gid(group)
    if who.uid == 0:
        return True
    if uid is not None and uid == who.uid:
        return bool(mode & stat.S_IWUSR)
    if gid is not None and gid in who.gids:
        return bool(mode & stat.S_IWGRP)
    return bool(mode & stat.S_IWOTH)


def _live(path: str) -> bool:
    """A unix socket that accepts a ``connect()`` now (the sockets check's own, non-blocking)."""
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            return False
    except OSError:
        return False
    return try_connect(path) is None


def live_pool_sockets(
    discovered: Discovered | None, sockets: tuple[SocketResult, ...]
) -> dict[str, PoolFacts]:
    """Unix sockets that discovered pools declare and that accept connections now (no scan of /run)."""
    if discovered is None or discovered.php_fpm is None:
        return {}
    probed = {s.path: s.connectable for s in sockets}
    live: dict[str, PoolFacts] = {}
    for pool in discovered.php_fpm.pools:
        path = pool.listen
        if path is None or not path.startswith("/") or path in live:
            continue
        if probed.get(path, False) or (path not in probed and _live(path)):
            live[path] = pool
    return live


def socket_alternatives(
    discovered: Discovered | None, sockets: tuple[SocketResult, ...]
) -> dict[str, dict[str, PoolFacts]]:
    """For each missing socket no pool declares: the live sockets discovered pools listen on instead,
    the likeliest first (:func:`_likeliest_first`)."""
    if discovered is None:
        return {}
    missing = [s.path for s in sockets if not s.exists]
    if not missing:
        return {}
    live = live_pool_sockets(discovered, sockets)
    out: dict[str, dict[str, PoolFacts]] = {}
    for path in missing:
        if discovered.pool_for(path) is not None:
            continue  # a pool declares it: that pool is down, not a wrong path
        alternatives = {alt: pool for alt, pool in live.items() if alt != path}
        if alternatives:
            out[path] = _likeliest_first(discovered, path, alternatives)
    return out


def _likeliest_first(
    discovered: Discovered, missing: str, live: dict[str, PoolFacts]
) -> dict[str, PoolFacts]:
    """Live sockets that no nginx ``*_pass`` uses first (with 100 pools, the one a mistyped
    ``fastcgi_pass`` lost, not the first pool's), then the longest shared beginning with ``missing``."""

    def rank(alternative: str) -> tuple[bool, int, str]:
        used = bool(discovered.passes_to(alternative))
        shared = next((i for i, (x, y) in enumerate(zip(missing, alternative, strict=False)) if x != y), None)
        return used, -(min(len(missing), len(alternative)) if shared is None else shared), alternative

    return {alternative: live[alternative] for alternative in sorted(live, key=rank)}


@dataclass(frozen=True)
class TimeoutHint:
    """An nginx read timeout shorter than what a probe of the same upstream took."""

    probe: str
    slowest_seconds: float
    passes: tuple[tuple[Pass, Timeout], ...]


def _address_of_url(url: str) -> str | None:
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None
    if parts.hostname is None:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return listen_address(f"{host}:{port}")


def proxy_passes_for(discovered: Discovered | None, url: str) -> tuple[Pass, ...]:
    """nginx ``proxy_pass`` directives that send requests where ``url`` points."""
    address = _address_of_url(url)
    if discovered is None or discovered.nginx is None or address is None:
        return ()
    loopback = {address, address.replace("localhost:", "127.0.0.1:")}
    return tuple(
        p for p in discovered.nginx.passes
        if p.directive == "proxy_pass" and any(t.address.replace("localhost:", "127.0.0.1:") in loopback for t in p.targets)
    )  # fmt: skip


def timeout_hint(
    passes: tuple[Pass, ...], timeout_name: str, probe: str, slowest: float | None
) -> TimeoutHint | None:
    """A hint when ``slowest`` is above the ``timeout_name`` of any of ``passes``."""
    if slowest is None:
        return None
    short = tuple(
        (p, t) for p in passes for t in (p.timeout(timeout_name),) if t is not None and t.seconds < slowest
    )
    return TimeoutHint(probe, slowest, short) if short else None
