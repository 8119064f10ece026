"""Tail nginx error logs and PHP-FPM logs in a background thread and count what they say.

One thread polls every configured file and glob; the scrape path only copies counters
(:meth:`LogWatcher.snapshot`). Rotation by rename-and-create, copytruncate, delete-and-recreate
and files that appear later are followed; a state file (inode, offset, first bytes) lets a
restart continue exactly where the last run stopped.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import stat
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

from exporter.causes import Cause
from exporter.config import LogSettings
from exporter.logs.classify import (
    MAX_LINE_BYTES,
    NONE,
    Block,
    classify_phpfpm,
    line_time,
    split_block,
    tally_nginx_block,
)
from exporter.logs.episodes import MAX_EPISODES, Episode, EpisodeIndex, EpisodeKey, line_epoch
from exporter.logs.evidence import Evidence, evidence_of
from exporter.logs.lines import classify_app, nginx_cause, phpfpm_cause

Source = Literal["nginx", "php-fpm", "app"]
"""What writes a tailed log: nginx, PHP-FPM, or the backend (gunicorn, uvicorn) into its own file."""

log = logging.getLogger(__name__)

CHUNK_BYTES: Final = 1 << 20
"""Read size while a file has much to read."""
IDLE_CHUNK_BYTES: Final = 64 << 10
"""Read size otherwise: the buffer an idle watcher keeps."""
POLL_BUDGET_BYTES: Final = 64 << 20
"""At most this much is read from one file per poll, so that one busy log cannot starve the rest."""
HEAD_BYTES: Final = 256
"""How many first bytes of a file identify it (copytruncate detection, restarts)."""
RETIRE_GRACE_SECONDS: Final = 5.0
"""How long a rotated-away file is still read: nginx writes to it until it reopens its logs."""
SAVE_INTERVAL_SECONDS: Final = 5.0
RETRY_INTERVAL_SECONDS: Final = 1.0
RECENT_LINES: Final = 200
"""Upstream errors and PHP-FPM events kept, newest last, as the round's evidence of what the logs say."""
RECENT_PER_BLOCK: Final = 20
"""At most this many of them are taken from one block of a PHP-FPM or backend log (its last ones)."""
NGINX_LINES_LOOKED_AT: Final = 5
"""How many of the last upstream lines of an nginx block are classified again as evidence."""
PENDING_EVIDENCE_BYTES: Final = 64 << 10
EVIDENCE_INTERVAL_SECONDS: Final = 0.2
"""Blocks of one file are looked at for evidence at most this often: in an error storm the counts stay
exact and the lines kept are at most this much older than the newest (costs < 2 % of the scan)."""
GLOB_INTERVAL_SECONDS: Final = 1.0
UNKNOWN: Final = "unknown"
OTHER: Final = "other"
_COMPRESSED: Final = (".gz", ".bz2", ".xz", ".zst", ".lz4", ".zip")
_SEEN_LIMIT: Final = 1024


@dataclass(frozen=True)
class LogCounters:
    """What one log file has said so far (a copy, safe to read without a lock)."""

    source: Source
    lines: int = 0
    upstream_errors: Mapping[tuple[str, str], int] = field(default_factory=dict)
    """``(kind, upstream)`` -> count, nginx logs only; ``kind`` is never ``none``."""
    phpfpm_events: Mapping[tuple[str, str], int] = field(default_factory=dict)
    """``(pool, event)`` -> count, PHP-FPM and backend logs; ``pool`` is ``""`` when the line has none
    (always, in a backend's log)."""
    rotations: int = 0
    read_errors: int = 0
    lag_bytes: int = 0


@dataclass(frozen=True)
class LogSnapshot:
    """Counters of every tailed log, keyed by path (the ``log`` label)."""

    logs: Mapping[str, LogCounters]
    skipped_files: int = 0
    """Files the patterns match beyond ``logs.max_files``: not tailed."""


class _Counters:
    __slots__ = (
        "errors",
        "events",
        "lag",
        "lines",
        "pools",
        "read_errors",
        "rotations",
        "source",
        "upstreams",
    )

    def __init__(self, source: Source) -> None:
        self.source: Source = source
        self.lines = 0
        self.errors: dict[tuple[str, str], int] = {}
        self.events: dict[tuple[str, str], int] = {}
        self.rotations = 0
        self.read_errors = 0
        self.lag = 0
        self.upstreams: set[str] = set()
        self.pools: set[str] = set()

    def copy(self) -> LogCounters:
        return LogCounters(
            source=self.source,
            lines=self.lines,
            upstream_errors=dict(self.errors),
            phpfpm_events=dict(self.events),
            rotations=self.rotations,
            read_errors=self.read_errors,
            lag_bytes=self.lag,
        )


class LineSplitter:
    """Cuts a byte stream into lines: a partial last line waits for its newline, a line over
    64 KiB is cut to 64 KiB and counted once (the rest is skipped up to its newline).

    ``consumed`` is the stream offset just past the last byte that will never be returned again
    (the end of the last complete or skipped line): the offset to save in the state file.
    """

    __slots__ = ("consumed", "partial", "skipping")

    def __init__(self, consumed: int = 0, skipping: bool = False) -> None:
        self.consumed = consumed
        self.partial = b""
        self.skipping = skipping

    @property
    def position(self) -> int:
        """Offset of the next byte to read."""
        return self.consumed + len(self.partial)

    def feed(self, data: bytes) -> list[bytes]:
        """Return the lines completed by ``data`` (without their newlines)."""
        return [line for block in self.feed_blocks(data) for line in split_block(block)]

    def feed_blocks(self, data: bytes | bytearray, size: int | None = None) -> list[Block]:
        """Return the lines completed by ``data[:size]`` as blocks of lines ending in newlines.

        Blocks may be views of ``data``: use them before ``data`` changes. A complete line over
        64 KiB stays whole in its block (the reader cuts it); an unfinished one that is already
        over 64 KiB is cut here and ends the last block.
        """
        end = len(data) if size is None else size
        start = 0
        if self.skipping:
            nl = data.find(b"\n", 0, end)
            if nl < 0:
                self.consumed += end
                return []
            self.consumed += nl + 1
            start = nl + 1
            self.skipping = False
        blocks: list[Block] = []
        last = data.rfind(b"\n", start, end) + 1
        if last > 0:
            if self.partial:
                nl = data.find(b"\n", start, end) + 1
                blocks.append(self.partial + data[start:nl])
                self.consumed += len(self.partial) + nl - start
                self.partial = b""
                start = nl
            if last > start:
                blocks.append(memoryview(data)[start:last])
                self.consumed += last - start
                start = last
        if len(self.partial) + end - start > MAX_LINE_BYTES:
            rest = self.partial + data[start:end]
            blocks.append(rest[:MAX_LINE_BYTES] + b"\n")
            self.consumed += len(rest)
            self.partial = b""
            self.skipping = True
        elif end > start:
            self.partial += data[start:end]
        return blocks

    def flush(self) -> list[bytes]:
        """End of a file that will not grow any more: its unterminated last line counts."""
        return split_block(self.flush_block())

    def flush_block(self) -> bytes:
        """:meth:`flush` as a block (see :meth:`feed_blocks`)."""
        rest, self.partial = self.partial, b""
        self.skipping = False
        self.consumed += len(rest)
        return rest + b"\n" if rest else b""


@dataclass
class _Retired:
    fd: int
    tail: _Tail
    splitter: LineSplitter
    until: float


@dataclass
class _Tail:
    path: str
    source: Source
    start: Literal["end", "beginning"]
    resume: dict[str, object] | None = None
    fd: int | None = None
    dev: int = 0
    ino: int = 0
    head: bytes = b""
    splitter: LineSplitter = field(default_factory=LineSplitter)
    size_seen: int = -1
    mtime_seen: int = -1
    failing: bool = False
    retry_at: float = 0.0
    evidence_at: float = -1e9
    """When lines of this file were last kept as evidence (monotonic)."""
    evidence_pending: bytes = b""
    """The end of the last block skipped while :data:`EVIDENCE_INTERVAL_SECONDS` had not passed."""


class LogWatcher:
    """Tails the logs named in :class:`~exporter.config.LogSettings` in one background thread."""

    def __init__(self, settings: LogSettings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._counters: dict[str, _Counters] = {}
        self._tails: dict[str, _Tail] = {}
        self._retired: list[_Retired] = []
        self._seen: dict[tuple[int, int], tuple[bytes, int]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._first_scan = True
        self._next_glob = 0.0
        self._next_save = 0.0
        self._state = self._load_state()
        self._stopped = False
        self._buffer = bytearray(IDLE_CHUNK_BYTES)
        self._recent: deque[Evidence] = deque(maxlen=RECENT_LINES)
        # Room for a few kinds of every file tailed: a site's episode is not pushed out by its neighbours'.
        self._episodes = EpisodeIndex(
            settings.evidence_window_seconds, max(MAX_EPISODES, 4 * settings.max_files)
        )
        self._skipped: set[str] = set()
        self._episode_keys: dict[tuple[str, str, str, Cause | None], EpisodeKey] = {}
        """Each block's keys built once: an episode key's dataclass hash costs more than a tuple's."""

    # -- public -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the background thread (files are opened on its first poll)."""
        if self._thread is not None:
            return
        if self._stopped:
            # Restarted: continue from where stop() left off, as a new process would.
            self._tails.clear()
            self._first_scan = True
            self._next_glob = 0.0
            self._stopped = False
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="badgateway-logs", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread, finish rotated-away files and save the state file."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        for retired in self._retired:
            self._finish_retired(retired)
        self._retired.clear()
        self._save_state()
        for tail in self._tails.values():
            if tail.fd is not None:
                os.close(tail.fd)
                tail.fd = None
        self._stopped = True

    def snapshot(self) -> LogSnapshot:
        """A consistent copy of every counter; no file I/O."""
        with self._lock:
            counters = {path: c.copy() for path, c in self._counters.items()}
            return LogSnapshot(counters, len(self._skipped))

    def recent(self) -> tuple[Evidence, ...]:
        """The last upstream errors and PHP-FPM events read, oldest first; no file I/O."""
        with self._lock:
            return tuple(self._recent)

    def episodes(self) -> tuple[Episode, ...]:
        """What the logs said, by kind and upstream or pool, since when and until when; no file I/O."""
        return self._episodes.episodes()

    def poll_once(self) -> None:
        """One polling round in the calling thread: find files, read what is new, count it.

        Used by the background thread; call it directly only when the thread is not running.
        """
        now = time.monotonic()
        if now >= self._next_glob:
            self._scan()
            self._next_glob = now + GLOB_INTERVAL_SECONDS
        for tail in list(self._tails.values()):
            if self._stop.is_set() and self._thread is not None:
                break
            try:
                self._poll_tail(tail, now)
            except OSError as exc:
                self._read_error(tail, now, exc)
        still: list[_Retired] = []
        for retired in self._retired:
            self._drain(retired.fd, retired.tail, retired.splitter)
            if now >= retired.until:
                self._finish_retired(retired)
            else:
                still.append(retired)
        self._retired = still
        if now >= self._next_save:
            self._save_state()
            self._next_save = now + SAVE_INTERVAL_SECONDS
        if len(self._buffer) > IDLE_CHUNK_BYTES:
            self._buffer = bytearray(IDLE_CHUNK_BYTES)
        for tail in self._tails.values():  # the end of a burst is evidence too, once the interval passed
            if tail.evidence_pending and now - tail.evidence_at >= EVIDENCE_INTERVAL_SECONDS:
                self._take_evidence(tail, tail.evidence_pending)

    # -- the thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        interval = max(self.settings.poll_interval_seconds, 0.01)
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception:  # never let the thread die: the exporter would silently go blind
                log.exception("log tailer: unexpected error; continuing")
            self._stop.wait(interval)

    # -- files --------------------------------------------------------------------------------

    def _scan(self) -> None:
        patterns: list[tuple[str, Source]] = [(p, "nginx") for p in self.settings.nginx]
        patterns += [(p, "php-fpm") for p in self.settings.php_fpm]
        patterns += [(p, "app") for p in self.settings.app]
        for pattern, source in patterns:
            paths = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
            for path in paths:
                if path in self._tails:
                    continue
                if len(self._tails) >= self.settings.max_files:
                    self._skip(path)
                    continue
                resume = self._state.get(path)
                if self._first_scan:
                    start = self.settings.start
                else:
                    start = "beginning"
                    if self._known_inode(path):
                        continue  # a file we are still reading under its old name
                tail = _Tail(path=path, source=source, start=start, resume=resume)
                self._tails[path] = tail
                with self._lock:
                    self._counters.setdefault(path, _Counters(source))
        self._first_scan = False

    def _skip(self, path: str) -> None:
        """A file beyond ``max_files``: counted in ``badgateway_log_files_skipped``, warned about once."""
        if not self._skipped:
            log.warning("logs: more than %d files match the log patterns; the others are not read"
                        " (logs.max_files)", self.settings.max_files)  # fmt: skip
        if len(self._skipped) < _SEEN_LIMIT * 64:
            with self._lock:
                self._skipped.add(path)

    def _known_inode(self, path: str) -> bool:
        try:
            st = os.stat(path)
        except OSError:
            return False
        key = (st.st_dev, st.st_ino)
        return any((r.tail.dev, r.tail.ino) == key for r in self._retired if r.fd >= 0) or any(
            t.fd is not None and (t.dev, t.ino) == key for t in self._tails.values()
        )

    def _poll_tail(self, tail: _Tail, now: float) -> None:
        if tail.failing and now < tail.retry_at:
            return
        try:
            st = os.stat(tail.path)
        except FileNotFoundError:
            if tail.fd is not None:
                self._retire(tail, now)
            self._set_lag(tail, 0)
            self._ok(tail)
            return
        if tail.fd is not None and (st.st_dev, st.st_ino) != (tail.dev, tail.ino):
            self._retire(tail, now)
        if not stat.S_ISREG(st.st_mode):
            raise IsADirectoryError(21, "not a regular file", tail.path)
        if tail.fd is None:
            self._open(tail, now)
            if tail.fd is None:
                return
        elif self._unchanged(tail, st):
            return
        else:
            position = tail.splitter.position
            changed = st.st_size != tail.size_seen or st.st_mtime_ns != tail.mtime_seen
            if 0 < st.st_size < position and self._same_start(tail, st.st_size):
                self._shrunk(tail, st.st_size)
            elif st.st_size < position or (changed and not self._head_ok(tail)):
                self._truncated(tail)
        tail.size_seen, tail.mtime_seen = st.st_size, st.st_mtime_ns
        assert tail.fd is not None
        self._read_active(tail)
        self._set_lag(tail, max(0, os.fstat(tail.fd).st_size - tail.splitter.position))
        self._ok(tail)

    @staticmethod
    def _unchanged(tail: _Tail, st: os.stat_result) -> bool:
        """Same size and time as last poll, and read to its end: nothing to read, nothing to check
        (the common case of an idle log: one ``stat`` a poll, no read)."""
        return (not tail.failing and st.st_size == tail.size_seen and st.st_mtime_ns == tail.mtime_seen
                and tail.splitter.position == st.st_size)  # fmt: skip

    def _open(self, tail: _Tail, now: float) -> None:
        fd = os.open(tail.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise IsADirectoryError(21, "not a regular file", tail.path)
        except OSError:
            os.close(fd)
            raise
        tail.fd, tail.dev, tail.ino = fd, st.st_dev, st.st_ino
        tail.head = b""
        tail.splitter = LineSplitter()
        resume, tail.resume = tail.resume, None
        start, tail.start = tail.start, "beginning"
        seen = self._seen.pop((st.st_dev, st.st_ino), None)
        if resume is not None:
            self._resume(tail, resume, st)
        elif seen is not None and os.pread(fd, len(seen[0]), 0) == seen[0] and st.st_size >= seen[1]:
            tail.head, tail.splitter = seen[0], LineSplitter(seen[1])
        elif start == "end" and st.st_size > 0:
            last = os.pread(fd, 1, st.st_size - 1)
            # Mid-line: skip to the next newline without counting the rest of that line.
            tail.splitter = LineSplitter(st.st_size, skipping=last != b"\n")
            tail.head = os.pread(fd, HEAD_BYTES, 0)

    def _resume(self, tail: _Tail, state: Mapping[str, object], st: os.stat_result) -> None:
        """Continue from the state file, finishing the file we had been reading first."""
        assert tail.fd is not None
        offset, skipping = state.get("offset"), state.get("skipping")
        dev, ino, head_hex = state.get("dev"), state.get("ino"), state.get("head")
        if not (isinstance(offset, int) and isinstance(dev, int) and isinstance(ino, int)):
            return
        if not isinstance(head_hex, str):
            return
        try:
            head = bytes.fromhex(head_hex)
        except ValueError:
            return
        splitter = LineSplitter(offset, skipping=skipping is True)
        if (st.st_dev, st.st_ino) == (dev, ino):
            if st.st_size >= offset and os.pread(tail.fd, len(head), 0) == head:
                tail.head, tail.splitter = head, splitter
                return
            old = self._find_copy(tail.path, head, offset, exclude=(dev, ino))  # copytruncate
        else:
            old = self._find_inode(tail.path, dev, ino, head)  # renamed while we were stopped
        self._finish_path(old, tail, splitter)
        self._count_rotation(tail)

    def _head_ok(self, tail: _Tail) -> bool:
        assert tail.fd is not None
        head = os.pread(tail.fd, HEAD_BYTES, 0)
        if not head.startswith(tail.head):
            return False
        if len(head) > len(tail.head) and tail.splitter.position > 0:
            tail.head = head
        return True

    def _drain(self, fd: int, tail: _Tail, splitter: LineSplitter) -> None:
        """Read a file that is no longer at its path from the splitter's position to its end."""
        while True:
            buffer, size = self._read_chunk(fd, splitter.position)
            if not size:
                return
            for block in splitter.feed_blocks(buffer, size):
                self._count(tail, block)

    def _read_chunk(self, fd: int, position: int) -> tuple[bytearray, int]:
        """Read at ``position`` into the watcher's buffer: the buffer and how much was read.

        The blocks of one chunk are views of the buffer and are counted before the next read.
        """
        buffer = self._buffer
        size = os.preadv(fd, [buffer], position)
        if size == len(buffer) < CHUNK_BYTES:
            self._buffer = bytearray(CHUNK_BYTES)  # a busy file: read the rest in big chunks
        return buffer, size

    def _read_active(self, tail: _Tail) -> None:
        """Read what is new in the file at ``tail.path``, at most ``POLL_BUDGET_BYTES`` per poll."""
        assert tail.fd is not None
        budget = POLL_BUDGET_BYTES
        while budget > 0:
            splitter = tail.splitter
            position = splitter.position
            buffer, size = self._read_chunk(tail.fd, position)
            if not size:
                return
            if position == 0 and not tail.head:
                tail.head = bytes(buffer[: min(size, HEAD_BYTES)])
            elif not self._head_ok(tail):
                # Truncated after our last check: what we read may be the new content.
                self._truncated(tail)
                continue
            budget -= size
            for block in splitter.feed_blocks(buffer, size):
                self._count(tail, block)
            if self._stop.is_set() and self._thread is not None:
                return

    def _count(self, tail: _Tail, block: Block) -> None:
        if not block:
            return
        if tail.source == "nginx":
            found: dict[tuple[str, str | None], int] = {}
            lines = tally_nginx_block(block, found)
            labelled = self._merge_nginx(tail.path, lines, found)
            if found:
                keys = self._episode_keys
                if len(keys) > 4096:
                    keys.clear()
                counts = [
                    (keys.get((tail.path, *labels)) or keys.setdefault((tail.path, *labels),
                     EpisodeKey(tail.path, "nginx", *labels)), n)
                    for labels, n in labelled.items()
                ]  # fmt: skip
                self._episodes.add_counts(counts, _block_time(block))
                self._keep_evidence(tail, block)
        else:
            self._count_events(tail, block)

    def _count_events(self, tail: _Tail, block: Block) -> None:
        """A PHP-FPM or backend log: every line classified, each event an episode's line."""
        events: dict[tuple[str | None, str], int] = {}
        split = split_block(block)
        found: list[tuple[str | None, str, Cause | None, bytes]] = []
        for line in split:
            if tail.source == "app":
                pool: str | None = None
                event, cause = classify_app(line)
            else:
                event, pool, signal = classify_phpfpm(line)
                cause = phpfpm_cause(event, signal) if event != NONE else None
            key = (pool, event)
            events[key] = events.get(key, 0) + 1
            if event != NONE:
                found.append((pool, event, cause, line))
        pools = self._merge_phpfpm(tail.path, len(split), events)
        if not found:
            return
        now = time.time()
        for pool, event, cause, line in found:
            label = pools.get(pool, "")
            text = line.decode("utf-8", "replace")
            self._episodes.add(EpisodeKey(tail.path, tail.source, event, label, cause),
                               line_epoch(line_time(line), now), 1, text)  # fmt: skip
        self._keep_evidence(tail, block)

    def _keep_evidence(self, tail: _Tail, block: Block) -> None:
        """The last lines of ``block`` that are evidence, for :meth:`recent` (only blocks that have some).

        nginx's lines are found from the end with ``rfind`` (a C search, no split of the block: the
        native scan counts a MiB in well under a millisecond and this must not cost more); PHP-FPM's
        logs are small and are split. In a storm, one block every :data:`EVIDENCE_INTERVAL_SECONDS`.
        """
        if time.monotonic() - tail.evidence_at < EVIDENCE_INTERVAL_SECONDS:
            end = bytes(block[-PENDING_EVIDENCE_BYTES:])
            tail.evidence_pending = (
                end if len(block) <= PENDING_EVIDENCE_BYTES else end[end.find(b"\n") + 1 :]
            )
            return
        self._take_evidence(tail, bytes(block))

    def _take_evidence(self, tail: _Tail, data: bytes) -> None:
        tail.evidence_at, tail.evidence_pending = time.monotonic(), b""
        found = (
            _last_nginx_evidence(data, tail.path)
            if tail.source == "nginx"
            else _last_lines_evidence(data, tail)
        )
        with self._lock:
            self._recent.extend(reversed(found))
            upstreams = set(self._counters[tail.path].upstreams) if tail.source == "nginx" else set()
        if tail.source == "nginx":
            noted: set[EpisodeKey] = set()
            for evidence in found:  # newest first: each episode's most recent line
                label = (
                    evidence.upstream
                    if evidence.upstream in upstreams
                    else (OTHER if evidence.upstream else "")
                )
                key = evidence.key(label)
                if key not in noted:
                    noted.add(key)
                    self._episodes.note_line(key, evidence.line)

    def _merge_nginx(
        self, path: str, lines: int, found: Mapping[tuple[str, str | None], int]
    ) -> dict[tuple[str, str, Cause | None], int]:
        """Add to the counters; the counts by ``(kind, bounded upstream label, cause)``."""
        limit = self.settings.max_upstreams
        labelled: dict[tuple[str, str, Cause | None], int] = {}
        with self._lock:
            c = self._counters[path]
            c.lines += lines
            for (kind, upstream), n in found.items():
                label = _bounded(c.upstreams, upstream, limit, UNKNOWN)
                key = (kind, label)
                c.errors[key] = c.errors.get(key, 0) + n
                cause_key = (kind, label if upstream is not None else "", nginx_cause(kind, upstream))
                labelled[cause_key] = labelled.get(cause_key, 0) + n
        return labelled

    def _merge_phpfpm(
        self, path: str, lines: int, events: Mapping[tuple[str | None, str], int]
    ) -> dict[str | None, str]:
        """Add to the counters; each pool's bounded label."""
        limit = self.settings.max_upstreams
        labels: dict[str | None, str] = {}
        with self._lock:
            c = self._counters[path]
            c.lines += lines
            for (pool, event), n in events.items():
                label = labels.setdefault(pool, _bounded(c.pools, pool, limit, ""))
                key = (label, event)
                c.events[key] = c.events.get(key, 0) + n
        return labels

    # -- rotation -----------------------------------------------------------------------------

    def _retire(self, tail: _Tail, now: float) -> None:
        """The path no longer names our file: keep reading the old one for a while."""
        assert tail.fd is not None
        retired = _Retired(tail.fd, tail, tail.splitter, now + RETIRE_GRACE_SECONDS)
        self._drain(retired.fd, tail, retired.splitter)
        self._retired.append(retired)
        self._remember(tail.dev, tail.ino, tail.head, retired.splitter)
        tail.fd = None
        tail.splitter = LineSplitter()
        tail.head = b""
        tail.size_seen = tail.mtime_seen = -1
        self._count_rotation(tail)

    def _finish_retired(self, retired: _Retired) -> None:
        try:
            self._drain(retired.fd, retired.tail, retired.splitter)
            self._count(retired.tail, retired.splitter.flush_block())
            self._remember(retired.tail.dev, retired.tail.ino, b"", retired.splitter)
        except OSError as exc:
            self._read_error(retired.tail, time.monotonic(), exc)
        finally:
            os.close(retired.fd)

    def _remember(self, dev: int, ino: int, head: bytes, splitter: LineSplitter) -> None:
        """Where a rotated-away file ended, in case a glob matches it under its new name."""
        key = (dev, ino)
        old = self._seen.get(key)
        self._seen[key] = (head or (old[0] if old else b""), splitter.position)
        while len(self._seen) > _SEEN_LIMIT:
            del self._seen[next(iter(self._seen))]

    def _same_start(self, tail: _Tail, size: int) -> bool:
        """Whether the file still starts with the bytes it started with (as far as it is long now)."""
        assert tail.fd is not None
        known = tail.head[: min(size, len(tail.head))]
        return bool(known) and os.pread(tail.fd, len(known), 0) == known

    def _shrunk(self, tail: _Tail, size: int) -> None:
        """Truncated in place to a smaller size, not to zero: what is left was read already, so reading
        goes on where the file now ends (lines appended before this poll noticed are not known apart)."""
        tail.splitter = LineSplitter(size)
        tail.head = tail.head[:size]
        self._count_rotation(tail)

    def _truncated(self, tail: _Tail) -> None:
        """copytruncate: finish from the copy (matched by its first bytes), restart at 0."""
        copy = self._find_copy(tail.path, tail.head, tail.splitter.position, exclude=(tail.dev, tail.ino))
        self._finish_path(copy, tail, tail.splitter)
        tail.splitter = LineSplitter()
        tail.head = b""
        self._count_rotation(tail)

    def _finish_path(self, path: str | None, tail: _Tail, splitter: LineSplitter) -> None:
        if path is not None:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                self._read_error(tail, time.monotonic(), exc)
            else:
                try:
                    self._drain(fd, tail, splitter)
                finally:
                    os.close(fd)
        self._count(tail, splitter.flush_block())

    def _find_copy(self, path: str, head: bytes, offset: int, exclude: tuple[int, int]) -> str | None:
        """The rotated copy of ``path``: a sibling named after it that starts with ``head``."""
        if not head:
            return None
        folder, base = os.path.split(path)
        best: tuple[int, str] | None = None
        with contextlib.suppress(OSError), os.scandir(folder or ".") as entries:
            for entry in entries:
                name = entry.name
                if not name.startswith(base) or name == base or name.endswith(_COMPRESSED):
                    continue
                try:
                    st = entry.stat()
                    if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) == exclude:
                        continue
                    if st.st_size < offset or not _starts_with(entry.path, head):
                        continue
                except OSError:
                    continue
                if best is None or st.st_mtime_ns > best[0]:
                    best = (st.st_mtime_ns, entry.path)
        return best[1] if best else None

    def _find_inode(self, path: str, dev: int, ino: int, head: bytes) -> str | None:
        """The file we were reading, renamed while we were stopped (same folder, same inode)."""
        folder = os.path.dirname(path) or "."
        with contextlib.suppress(OSError), os.scandir(folder) as entries:
            for entry in entries:
                try:
                    if entry.inode() != ino:
                        continue
                    st = entry.stat()
                    if st.st_dev == dev and stat.S_ISREG(st.st_mode) and _starts_with(entry.path, head):
                        return entry.path
                except OSError:
                    continue
        return None

    # -- bookkeeping --------------------------------------------------------------------------

    def _count_rotation(self, tail: _Tail) -> None:
        with self._lock:
            self._counters[tail.path].rotations += 1

    def _set_lag(self, tail: _Tail, lag: int) -> None:
        with self._lock:
            self._counters[tail.path].lag = lag

    def _ok(self, tail: _Tail) -> None:
        tail.failing = False

    def _read_error(self, tail: _Tail, now: float, exc: OSError) -> None:
        if not tail.failing:
            log.warning("cannot read %s: %s", tail.path, exc.strerror or exc)
        tail.failing = True
        tail.retry_at = now + max(RETRY_INTERVAL_SECONDS, self.settings.poll_interval_seconds)
        with self._lock:
            self._counters[tail.path].read_errors += 1

    # -- state file ---------------------------------------------------------------------------

    def _load_state(self) -> dict[str, dict[str, object]]:
        path = self.settings.state_file
        if not path:
            return {}
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("ignoring state file %s: %s", path, exc)
            return {}
        files = data.get("files") if isinstance(data, dict) else None
        if not isinstance(files, dict):
            return {}
        return {k: v for k, v in files.items() if isinstance(k, str) and isinstance(v, dict)}

    def _save_state(self) -> None:
        path = self.settings.state_file
        files: dict[str, dict[str, object]] = {}
        for tail in self._tails.values():
            if tail.fd is not None:
                files[tail.path] = {
                    "dev": tail.dev,
                    "ino": tail.ino,
                    "offset": tail.splitter.consumed,
                    "skipping": tail.splitter.skipping,
                    "head": tail.head.hex(),
                }
            elif tail.resume is not None:
                files[tail.path] = dict(tail.resume)  # not reopened yet: keep what we had
        self._state = files
        if not path:
            return
        tmp = f"{path}.tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as handle:
                json.dump({"version": 1, "files": files}, handle)
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("cannot save state file %s: %s", path, exc.strerror or exc)


def _bounded(seen: set[str], value: str | None, limit: int, missing: str) -> str:
    """``value`` if it is (or may become) one of at most ``limit`` distinct values, else other."""
    if value is None:
        return missing
    if value in seen:
        return value
    if len(seen) < limit:
        seen.add(value)
        return value
    return OTHER


def _block_time(block: Block) -> float:
    """When a block of nginx lines was written: the time in its last line (they are in order)."""
    end = bytes(block[-1024:]).rstrip(b"\n")
    return line_epoch(line_time(end[end.rfind(b"\n") + 1 :]), time.time())


def _starts_with(path: str, head: bytes) -> bool:
    with open(path, "rb") as handle:
        return handle.read(len(head)) == head


def _last_nginx_evidence(data: bytes, path: str) -> list[Evidence]:
    """The upstream errors among the last :data:`NGINX_LINES_LOOKED_AT` lines of ``data`` that mention
    one, newest first, one per kind and upstream: in a storm of one kind, one line a block."""
    kept: list[Evidence] = []
    seen: set[tuple[str, str | None]] = set()
    end = len(data)
    for _ in range(NGINX_LINES_LOOKED_AT):
        at = max(data.rfind(b"upstream", 0, end), data.rfind(b"could not be resolved", 0, end))
        if at < 0:
            break
        start = data.rfind(b"\n", 0, at) + 1
        stop = data.find(b"\n", at)
        found = evidence_of(data[start : stop if stop >= 0 else len(data)], "nginx", path)
        if found is not None and (found.kind, found.upstream) not in seen:
            seen.add((found.kind, found.upstream))
            kept.append(found)
        end = start
    return kept


def _last_lines_evidence(data: bytes, tail: _Tail) -> list[Evidence]:
    kept: list[Evidence] = []
    for raw in reversed(data.split(b"\n")):
        found = evidence_of(raw, tail.source, tail.path)
        if found is not None:
            kept.append(found)
            if len(kept) >= RECENT_PER_BLOCK:
                break
    return kept
