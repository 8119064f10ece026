"""Offline reading of logs: a summary of old files (``logs analyze``) and the recent tail of a
live log as evidence for ``diagnose`` (:func:`recent`)."""

from __future__ import annotations

import glob
import gzip
import os
import typing
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from exporter.config import LogSettings, printable
from exporter.logs.classify import (
    MAX_LINE_BYTES,
    NONE,
    Block,
    Source,
    classify_key,
    classify_phpfpm,
    detect_source,
    line_time,
    tally_nginx,
)
from exporter.logs.episodes import EpisodeIndex, line_epoch
from exporter.logs.evidence import Evidence, evidence_of
from exporter.logs.incidents import incident_key, incidents, new_index
from exporter.logs.lines import nginx_cause, phpfpm_cause
from exporter.logs.tailer import OTHER, UNKNOWN, LineSplitter

READ_BYTES = 1 << 20
MAX_DISTINCT = 1000
"""Distinct upstreams/pools kept by ``analyze`` before the rest count as ``other``."""
INCIDENT_WINDOW_SECONDS = 300.0
"""An incident ends when no line of it came for this long."""
MAX_MINUTES = 10_000
"""Distinct minutes counted by ``analyze`` (about a week of errors every minute): beyond it, the
quietest half is dropped, so the busiest minutes stay exact unless a dropped minute comes back."""


class AnalyzeError(Exception):
    """A file given to ``analyze`` cannot be read; the message names it."""


def open_log(path: str) -> IO[bytes]:
    """Open a plain or gzip-compressed log (recognised by its magic bytes, not its name)."""
    handle: IO[bytes] = open(path, "rb")  # noqa: SIM115 - returned to the caller
    try:
        magic = handle.read(2)
        handle.seek(0)
    except OSError:
        handle.close()
        raise
    if magic == b"\x1f\x8b":
        handle.close()
        return typing.cast(IO[bytes], gzip.open(path, "rb"))
    return handle


def iter_lines(handle: IO[bytes]) -> Iterator[list[bytes]]:
    """Yield lists of lines (64 KiB cap, a last line without newline included)."""
    splitter = LineSplitter()
    while data := handle.read(READ_BYTES):
        lines = splitter.feed(data)
        if lines:
            yield lines
    last = splitter.flush()
    if last:
        yield last


@dataclass
class _Seen:
    count: int = 0
    first: str | None = None
    last: str | None = None

    def add(self, when: str | None, n: int = 1, until: str | None = None) -> None:
        """``n`` lines from ``when`` to ``until`` (the same time when None)."""
        self.count += n
        if when is not None:
            last = until or when
            if self.first is None or when < self.first:
                self.first = when
            if self.last is None or last > self.last:
                self.last = last

    def as_dict(self) -> dict[str, Any]:
        return {"count": self.count, "first": self.first, "last": self.last}


@dataclass
class _Part:
    """The summary of one source (nginx or PHP-FPM) over every file of that source."""

    what: str  # "kind" or "event"
    where: str  # "upstream" or "pool"
    lines: int = 0
    total: _Seen = field(default_factory=_Seen)
    by_what: dict[str, _Seen] = field(default_factory=dict)
    by_where: dict[str, _Seen] = field(default_factory=dict)
    by_pair: dict[tuple[str, str], _Seen] = field(default_factory=dict)
    minutes: dict[str, dict[str, int]] = field(default_factory=dict)
    minutes_dropped: bool = False
    distinct: set[str] = field(default_factory=set)

    def add(
        self, what: str, where: str | None, when: str | None, n: int = 1, until: str | None = None
    ) -> str:
        """Count ``n`` lines (from ``when`` to ``until``, within one minute); the bounded label their
        upstream or pool is counted under."""
        if where is None:
            label = UNKNOWN
        elif where in self.distinct or len(self.distinct) < MAX_DISTINCT:
            self.distinct.add(where)
            label = where
        else:
            label = OTHER
        self.total.add(when, n, until)
        self.by_what.setdefault(what, _Seen()).add(when, n, until)
        self.by_where.setdefault(label, _Seen()).add(when, n, until)
        self.by_pair.setdefault((what, label), _Seen()).add(when, n, until)
        if when is not None:
            minute = self.minutes.setdefault(when[:16], {})
            minute[what] = minute.get(what, 0) + n
            if len(self.minutes) > MAX_MINUTES:
                self._drop_quiet_minutes()
        return label

    def _drop_quiet_minutes(self) -> None:
        """Keep the busiest half of :data:`MAX_MINUTES` minutes; the summary stays bounded."""
        kept = sorted(self.minutes.items(), key=lambda item: (-sum(item[1].values()), item[0]))
        self.minutes = dict(kept[: MAX_MINUTES // 2])
        self.minutes_dropped = True

    def as_dict(self, top: int) -> dict[str, Any]:
        busiest = sorted(self.minutes.items(), key=lambda item: (-sum(item[1].values()), item[0]))[:top]
        return {
            "lines": self.lines,
            "total": self.total.as_dict(),
            f"by_{self.what}": {k: v.as_dict() for k, v in _by_count(self.by_what)},
            f"by_{self.where}": {k: v.as_dict() for k, v in _by_count(self.by_where)},
            "by_pair": [
                {self.what: what, self.where: where, **seen.as_dict()}
                for (what, where), seen in _by_count(self.by_pair)
            ],
            "busiest_minutes": [
                {
                    "minute": minute,
                    "count": sum(counts.values()),
                    f"by_{self.what}": dict(sorted(counts.items())),
                }
                for minute, counts in busiest
            ],
        }


def _by_count(items: dict[Any, _Seen]) -> list[tuple[Any, _Seen]]:
    return sorted(items.items(), key=lambda item: (-item[1].count, str(item[0])))


@dataclass
class Analysis:
    """What ``logs analyze`` found in a set of files."""

    files: list[dict[str, Any]] = field(default_factory=list)
    nginx: _Part = field(default_factory=lambda: _Part("kind", "upstream"))
    php_fpm: _Part = field(default_factory=lambda: _Part("event", "pool"))
    episodes: EpisodeIndex = field(default_factory=lambda: new_index(INCIDENT_WINDOW_SECONDS))

    def as_dict(self, top: int = 5) -> dict[str, Any]:
        """A JSON-ready dictionary (``logs analyze --format json``)."""
        return {
            "files": self.files, "nginx": self.nginx.as_dict(top), "php_fpm": self.php_fpm.as_dict(top),
            "incidents": [i.as_dict() for i in incidents(self.episodes.episodes())],
        }  # fmt: skip


def analyze(paths: list[str], source: Source | None = None) -> Analysis:
    """Read every file (plain or gzip) and summarise its upstream errors / PHP-FPM events.

    ``source`` None guesses per file from its first 64 KiB. Raises :class:`AnalyzeError`.
    A compressed file that ends early or is corrupt further on is reported with what was read
    before (its entry has ``error``); one that cannot be opened or read at all raises.
    """
    result = Analysis()
    for path in paths:
        progress = [0]
        try:
            with open_log(path) as handle:
                kind = source or detect_source(_head(handle))
                handle.seek(0)
                error = _analyze_stream(handle, kind, result, progress)
        except OSError as exc:
            raise AnalyzeError(f"cannot read {path}: {_reason(exc)}") from None
        if error is not None and progress[0] == 0:  # corrupt from the start: nothing to report
            raise AnalyzeError(f"cannot read {path}: {error}")
        entry: dict[str, Any] = {"path": path, "source": kind, "lines": progress[0]}
        if error is not None:
            entry["error"] = f"{error}: read up to line {progress[0]:,} only"
        result.files.append(entry)
    return result


_BROKEN = (EOFError, zlib.error, gzip.BadGzipFile)
"""What a truncated or corrupt compressed file raises partway through."""


def _head(handle: IO[bytes], size: int = 64 * 1024) -> bytes:
    """The first ``size`` bytes, or as many as a truncated compressed file gives."""
    chunks: list[bytes] = []
    got = 0
    try:
        while got < size and (chunk := handle.read(min(8192, size - got))):
            chunks.append(chunk)
            got += len(chunk)
    except _BROKEN:
        pass
    return b"".join(chunks)


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _analyze_stream(stream: IO[bytes], source: Source, result: Analysis, progress: list[int]) -> str | None:
    """Add the lines of ``stream`` to ``result``; ``progress[0]``: lines read. The reason the read
    stopped early (a truncated or corrupt compressed file), else None."""
    if source == "nginx" and _timed_scan is not None:
        return _analyze_nginx_blocks(stream, result, progress, _timed_scan)
    part = result.nginx if source == "nginx" else result.php_fpm
    add = _add_nginx if source == "nginx" else _add_phpfpm
    try:
        for lines in iter_lines(stream):
            progress[0] += len(lines)
            part.lines += len(lines)
            add(part, lines, result.episodes)
    except _BROKEN as exc:
        return _reason(exc)
    return None


TimedScan = Callable[[Block, int, bool], tuple[int, dict[tuple[bytes, bytes, bytes], list[int]], list[bytes]]]


def _load_timed_scan() -> TimedScan | None:
    try:
        from exporter.logs._scan import scan_nginx
    except ImportError:  # built without a C compiler: line by line, the same counts
        return None
    return scan_nginx


_timed_scan: TimedScan | None = _load_timed_scan()


def _analyze_nginx_blocks(
    stream: IO[bytes], result: Analysis, progress: list[int], scan: TimedScan
) -> str | None:
    """nginx's log by blocks through the native scan: its lines grouped by key and minute (with the
    first and last second), so that Python works once per distinct ``(message, upstream, minute)``."""
    splitter = LineSplitter()
    try:
        while data := stream.read(READ_BYTES):
            for block in splitter.feed_blocks(data):
                _add_nginx_block(result, block, progress, scan)
    except _BROKEN as exc:
        return _reason(exc)
    last = splitter.flush_block()
    if last:
        _add_nginx_block(result, last, progress, scan)
    return None


def _add_nginx_block(result: Analysis, block: Block, progress: list[int], scan: TimedScan) -> None:
    part = result.nginx
    lines, keyed, other = scan(block, MAX_LINE_BYTES, True)
    progress[0] += lines
    part.lines += lines
    for (message, upstream, stamp), (n, first, last) in keyed.items():
        kind, address = classify_key(message, upstream)
        if kind == NONE:
            continue
        minute = stamp.decode("ascii").replace("/", "-")
        when, until = f"{minute}:{first:02d}", f"{minute}:{last:02d}"
        label = part.add(kind, address, when, n, until)
        key = incident_key("nginx", kind, label, nginx_cause(kind, address))
        start = line_epoch(when, 0.0)
        text = f'{until.replace("-", "/")} {message.decode("utf-8", "replace")}, upstream: "{upstream.decode("utf-8", "replace")}"'
        result.episodes.add(key, start, n, None)
        result.episodes.add(key, start + (last - first), 0, text)
    _add_nginx(part, other, result.episodes)


def _add_nginx(part: _Part, lines: list[bytes], episodes: EpisodeIndex) -> None:
    for line in lines:
        if b"upstream" not in line and b"could not be resolved" not in line:
            continue
        found: dict[tuple[str, str | None], int] = {}
        if tally_nginx((line,), found):
            ((kind, upstream),) = found
            when = line_time(line)
            label = part.add(kind, upstream, when)
            if when is not None:
                key = incident_key("nginx", kind, label, nginx_cause(kind, upstream))
                episodes.add(key, line_epoch(when, 0.0), 1, line.decode("utf-8", "replace"))


def _add_phpfpm(part: _Part, lines: list[bytes], episodes: EpisodeIndex) -> None:
    for line in lines:
        event, pool, signal = classify_phpfpm(line)
        if event != NONE:
            when = line_time(line)
            label = part.add(event, pool, when)
            if when is not None:
                key = incident_key("php-fpm", event, label, phpfpm_cause(event, signal))
                episodes.add(key, line_epoch(when, 0.0), 1, line.decode("utf-8", "replace"))


def format_text(analysis: Analysis, top: int = 5) -> str:
    """The readable summary printed by ``logs analyze``."""
    out: list[str] = []
    for entry in analysis.files:
        out.append(f"{printable(entry['path'])}: {entry['source']}, {entry['lines']:,} lines")
        if "error" in entry:
            out.append(f"  incomplete: {printable(entry['error'])}")
    for title, part in (("nginx upstream errors", analysis.nginx), ("PHP-FPM events", analysis.php_fpm)):
        if part.lines == 0:
            continue
        out.append("")
        total = part.total
        span = f" from {total.first} to {total.last}" if total.first else ""
        out.append(f"{title}: {total.count:,} in {part.lines:,} lines{span}")
        if total.count == 0:
            continue
        # Upstreams, pools and times come from the log lines: control characters are shown
        # escaped (\x1b), never sent to the terminal.
        top_pair, seen = _by_count(part.by_pair)[0]
        share = 100.0 * seen.count / total.count
        out.append(
            f"  most: {top_pair[0]} ({part.where} {printable(top_pair[1])}), {seen.count:,} = {share:.0f}%"
        )
        for heading, table in ((f"by {part.what}", part.by_what), (f"by {part.where}", part.by_where)):
            out.append(f"  {heading}:")
            for name, seen in _by_count(table):
                first, last = printable(seen.first or "-"), printable(seen.last or "-")
                out.append(f"    {printable(name):<36} {seen.count:>10,}  first {first}  last {last}")
        out.append(f"  by {part.what} and {part.where}:")
        for (what, where), seen in _by_count(part.by_pair)[: max(top * 4, 10)]:
            out.append(f"    {what:<22} {printable(where):<36} {seen.count:>10,}")
        busiest = part.as_dict(top)["busiest_minutes"]
        if busiest:
            out.append(
                "  busiest minutes:" + (" (of the busiest minutes kept)" if part.minutes_dropped else "")
            )
            for minute in busiest:
                detail = ", ".join(f"{k} {v:,}" for k, v in minute[f"by_{part.what}"].items())
                out.append(f"    {printable(minute['minute'])}  {minute['count']:>8,}  ({detail})")
    out += _incident_lines(analysis)
    if all(part.total.count == 0 for part in (analysis.nginx, analysis.php_fpm)):
        out.append("")
        out.append("no upstream errors and no PHP-FPM events found")
    return "\n".join(out) + "\n"


SHOWN_INCIDENTS = 30


def _incident_lines(analysis: Analysis) -> list[str]:
    found = [i.as_dict() for i in incidents(analysis.episodes.episodes())]
    if not found:
        return []
    out = ["", f"incidents ({len(found)}, a gap of {INCIDENT_WINDOW_SECONDS / 60:g} min ends one):"]
    for item in found[-SHOWN_INCIDENTS:]:
        where = f" ({printable(item['where'])})" if item["where"] else ""
        out.append(f"  {item['start']} .. {item['end']}  {item['count']:>8,} x {item['kind']}{where}"
                   f"  -> {item['cause']}")  # fmt: skip
        out.append(f"      fix: {item['fix']}")
    if len(found) > SHOWN_INCIDENTS:
        out.append(f"  ({len(found) - SHOWN_INCIDENTS} earlier ones in --format json)")
    return out


# -- recent evidence for diagnose ----------------------------------------------------------------


def recent(
    path: str, max_bytes: int = 65536, source: Source | None = None, limit: int = 20
) -> list[Evidence]:
    """The last ``limit`` upstream errors (or PHP-FPM events) in the last ``max_bytes`` of ``path``.

    Oldest first. ``source`` None guesses from the content. Raises OSError when unreadable.
    """
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        start = max(0, size - max_bytes)
        handle.seek(start)
        data = handle.read(size - start)
    if start > 0:
        nl = data.find(b"\n")
        data = data[nl + 1 :] if nl >= 0 else b""
    kind_of = source or detect_source(data)
    found = [e for raw in data.split(b"\n") if (e := evidence_of(raw, kind_of, path)) is not None]
    return found[-limit:] if limit > 0 else []


def recent_from_settings(settings: LogSettings, max_bytes: int = 65536, limit: int = 20) -> list[Evidence]:
    """:func:`recent` over every configured log, merged by time (oldest first); unreadable logs skipped."""
    found: list[Evidence] = []
    for patterns, source in ((settings.nginx, "nginx"), (settings.php_fpm, "php-fpm"), (settings.app, "app")):
        for pattern in patterns:
            for path in sorted(glob.glob(pattern)):
                try:
                    found.extend(recent(path, max_bytes, source, limit))  # type: ignore[arg-type]
                except OSError:
                    continue
    found.sort(key=lambda e: e.time or "")
    return found[-limit:] if limit > 0 else []
