"""Classify nginx error.log and PHP-FPM log lines by the cause they name.

Pure functions over ``bytes`` (no decoding on the hot path). Classification is by content, not
by position, so Docker/journald/syslog/compose prefixes, a missing timestamp, or a line cut short
do not matter. The nginx classifier is called for every line of every tailed error.log: it
rejects lines without ``upstream`` with one substring test and then uses ``bytes.find`` only,
never a regular expression.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Final, Literal

# -- nginx kinds ---------------------------------------------------------------------------------

SOCKET_MISSING: Final = "socket_missing"
PERMISSION_DENIED: Final = "permission_denied"
BACKLOG_FULL: Final = "backlog_full"
CONNECTION_REFUSED: Final = "connection_refused"
CONNECT_TIMEOUT: Final = "connect_timeout"
READ_TIMEOUT: Final = "read_timeout"
PREMATURE_CLOSE: Final = "premature_close"
CONNECTION_RESET: Final = "connection_reset"
NO_LIVE_UPSTREAMS: Final = "no_live_upstreams"
HEADER_TOO_BIG: Final = "header_too_big"
INVALID_HEADER: Final = "invalid_header"
PROTOCOL_MISMATCH: Final = "protocol_mismatch"
SSL_HANDSHAKE_FAILED: Final = "ssl_handshake_failed"
CONNECTIONS_EXHAUSTED: Final = "connections_exhausted"
HOST_NOT_FOUND: Final = "host_not_found"
OTHER_UPSTREAM: Final = "other_upstream"
NONE: Final = "none"

KINDS: Final[tuple[str, ...]] = (
    SOCKET_MISSING,
    PERMISSION_DENIED,
    BACKLOG_FULL,
    CONNECTION_REFUSED,
    CONNECT_TIMEOUT,
    READ_TIMEOUT,
    PREMATURE_CLOSE,
    CONNECTION_RESET,
    NO_LIVE_UPSTREAMS,
    HEADER_TOO_BIG,
    INVALID_HEADER,
    PROTOCOL_MISMATCH,
    SSL_HANDSHAKE_FAILED,
    CONNECTIONS_EXHAUSTED,
    HOST_NOT_FOUND,
    OTHER_UPSTREAM,
    NONE,
)
"""Every value :func:`classify_nginx` can return as ``kind``."""

# -- PHP-FPM events ------------------------------------------------------------------------------

MAX_CHILDREN_REACHED: Final = "max_children_reached"
CHILD_KILLED: Final = "child_killed"
EXECUTION_TIMEOUT: Final = "execution_timeout"
BUSY: Final = "busy"
BIND_ERROR: Final = "bind_error"
CONFIG_ERROR: Final = "config_error"

EVENTS: Final[tuple[str, ...]] = (
    MAX_CHILDREN_REACHED,
    CHILD_KILLED,
    EXECUTION_TIMEOUT,
    BUSY,
    BIND_ERROR,
    CONFIG_ERROR,
    NONE,
)
"""Every value :func:`classify_phpfpm` can return as ``event``."""

Source = Literal["nginx", "php-fpm"]
SOURCES: Final[tuple[Source, ...]] = ("nginx", "php-fpm")

MAX_LINE_BYTES: Final = 64 * 1024
"""Longer lines are cut to this length before classification and counted once."""

_ERRNO_KIND: Final[dict[bytes, str]] = {
    b"2": SOCKET_MISSING,
    b"13": PERMISSION_DENIED,
    b"11": BACKLOG_FULL,
    b"111": CONNECTION_REFUSED,
    b"104": CONNECTION_RESET,
    b"24": CONNECTIONS_EXHAUSTED,
    b"99": CONNECTIONS_EXHAUSTED,
}
# Errnos that name the cause only when the failing call is connect(): open() of a temp file
# failing with 13 while reading upstream is nginx's own problem, not the upstream's.
_CONNECT_ONLY: Final = frozenset({b"2", b"13", b"11", b"111"})

# Messages that mention an upstream but are not a failure to talk to it.
_NOT_FAILURES: Final[tuple[bytes, ...]] = (
    b"client prematurely closed",
    b"client closed",
    b"buffered to a temporary file",
    b"temporarily disabled",
    b"limiting requests",
    b"limiting connections",
)

_UPSTREAM_CONTEXT: Final[tuple[bytes, ...]] = (b" to upstream", b" from upstream", b"reading upstream")

_CACHE_LIMIT: Final = 4096
_CACHED_KEY_BYTES: Final = 1024  # longer keys are classified again each time: the caches stay small
_address_cache: dict[bytes, str | None] = {}
_key_cache: dict[tuple[bytes, bytes], tuple[str, str | None]] = {}

Block = bytes | memoryview
"""Whole lines, each ending in a newline (the last one may lack it)."""

NginxKey = tuple[bytes, bytes]
"""``(message, upstream)`` of a line in nginx's own shape: see :func:`nginx_key`."""


def classify_nginx(line: bytes) -> tuple[str, str | None]:
    """Return ``(kind, upstream)`` for one nginx error.log line (without or with its newline).

    ``upstream`` is the normalised address (``unix:/run/php/php8.2-fpm.sock``,
    ``127.0.0.1:8000``, ``[::1]:8080``) or None when the line names none or is not an upstream
    failure (``kind == "none"``).
    """
    line = line.rstrip(b"\r\n")
    if b"upstream" not in line and b"could not be resolved" not in line:
        return NONE, None
    key = nginx_key(line)
    return _classify_general(line) if key is None else classify_key(*key)


def nginx_key(line: bytes) -> NginxKey | None:
    """The parts of a line in nginx's own shape that decide its kind and upstream, else None.

    nginx writes ``... PID#TID: *CID MESSAGE, client: ..., upstream: "ADDRESS/URI", ...``: the
    key is ``MESSAGE`` and the upstream field cut before its URI (after ``unix:PATH`` or at the
    first ``/`` past the scheme), so that lines differing only in client, request or URI share
    one key. The field is the first one after ``, client: ``: what a client sends (request,
    host, referrer) cannot put one before it. ``_scan.c`` computes the same key in C.
    """
    find = line.find
    p = find(b": *", 0, 512)
    if p < 0:
        return None
    space = find(b" ", p + 3, p + 24)
    if space < 0:
        return None
    client = find(b", client: ", space + 1)
    if client < 0:
        return None
    field = find(b'upstream: "', client)
    if field < 0:
        return None
    s = field + 11
    e = find(b'"', s)
    if e < 0:
        return None
    unix = find(b"unix:", s, min(s + 16, e))
    stop = find(b":", unix + 5, e) if unix >= 0 else find(b"/", s + 10, e)
    return line[space + 1 : client], line[s : stop if stop >= 0 else e]


def classify_key(message: bytes, upstream: bytes) -> tuple[str, str | None]:
    """``(kind, upstream)`` of the lines whose :func:`nginx_key` is ``(message, upstream)``."""
    key = (message, upstream)
    cached = _key_cache.get(key)
    if cached is not None:
        return cached
    kind = _message_kind(message, 0, len(message))
    if kind is NONE or kind is OTHER_UPSTREAM:
        spaced = _respaced(message)
        if spaced is not None:
            kind = _message_kind(spaced, 0, len(spaced))
    value = (NONE, None) if kind is NONE else (kind, upstream_address(upstream) or _connect_address(message))
    if len(message) + len(upstream) <= _CACHED_KEY_BYTES:
        if len(_key_cache) >= _CACHE_LIMIT:
            _key_cache.clear()
        _key_cache[key] = value
    return value


def tally_nginx(lines: Iterable[bytes], counts: dict[tuple[str, str | None], int]) -> int:
    """Add each upstream failure among ``lines`` to ``counts[(kind, upstream)]``; return how many.

    Lines of kind ``none`` are not added. Lines are grouped by :func:`nginx_key` and each
    distinct key is classified once; lines of any other shape are classified one by one.
    """
    keyed: dict[NginxKey, int] = {}
    other: list[bytes] = []
    for line in lines:
        if b"upstream" not in line and b"could not be resolved" not in line:
            continue
        key = nginx_key(line)
        if key is None:
            other.append(line)
        else:
            keyed[key] = keyed.get(key, 0) + 1
    return _add_up(keyed, other, counts)


def tally_nginx_block(block: Block, counts: dict[tuple[str, str | None], int]) -> int:
    """:func:`tally_nginx` over the lines of ``block`` (see ``LineSplitter.feed_blocks``).

    Returns how many lines the block holds. Uses the native scan (``exporter.logs._scan``) when
    it was built, which reads the block without making one Python object per line.
    """
    if _native_scan is not None:
        lines, keyed, other = _native_scan(block, MAX_LINE_BYTES)
        _add_up(keyed, other, counts)
        return lines
    split = split_block(block)
    tally_nginx(split, counts)
    return len(split)


def split_block(block: Block) -> list[bytes]:
    """The lines of a block, each cut to ``MAX_LINE_BYTES``."""
    lines = bytes(block).split(b"\n")
    if not lines[-1]:
        lines.pop()
    if lines and max(map(len, lines)) > MAX_LINE_BYTES:
        lines = [line[:MAX_LINE_BYTES] for line in lines]
    return lines


def _add_up(
    keyed: Mapping[NginxKey, int], other: Iterable[bytes], counts: dict[tuple[str, str | None], int]
) -> int:
    found = 0
    for (message, upstream), n in keyed.items():
        kind, address = classify_key(message, upstream)
        if kind is not NONE:
            counts[kind, address] = counts.get((kind, address), 0) + n
            found += n
    for line in other:
        kind, address = _classify_general(line)
        if kind is not NONE:
            counts[kind, address] = counts.get((kind, address), 0) + 1
            found += 1
    return found


NativeScan = Callable[[Block, int], tuple[int, dict[NginxKey, int], list[bytes]]]


def _load_native_scan() -> NativeScan | None:
    try:
        from exporter.logs._scan import scan_nginx
    except ImportError:  # built without a C compiler: the pure-Python path counts the same
        return None
    return scan_nginx


_native_scan: NativeScan | None = _load_native_scan()
NATIVE_SCAN: Final = _native_scan is not None
"""Whether the native scan of ``exporter/logs/_scan.c`` was built and is used."""


def _escaped_field_address(line: bytes, start: int) -> str | None:
    """``upstream: \\"...\\"`` as it appears inside a JSON string (Docker's json-file logs)."""
    k = line.find(b'upstream: \\"', start)
    if k < 0:
        return None
    e = line.find(b'\\"', k + 12)
    return upstream_address(line[k + 12 : e]) if e > k + 12 else None


def _field_address(line: bytes, start: int) -> str | None:
    """The normalised value of the first ``upstream: "..."`` field at or after ``start``."""
    find = line.find
    k = find(b'upstream: "', start)
    if k < 0:
        return _escaped_field_address(line, start)
    s = k + 11
    e = find(b'"', s)
    if e <= s:
        return None
    return upstream_address(line[s:e])


def _connect_address(message: bytes) -> str | None:
    """The ``X`` of ``connect() to X failed`` in a message, normalised."""
    k = message.find(b"connect() to ")
    if k >= 0:
        e = message.find(b" failed", k + 13)
        if e > k + 13:
            return upstream_address(message[k + 13 : e])
    return None


def _classify_general(line: bytes) -> tuple[str, str | None]:
    """Classify a line of any shape (Docker JSON, no client field, cut short, re-spaced) by its content."""
    start = message_start(line)
    end = line.find(b", client: ", start)
    if end < 0:
        end = len(line)
    kind = _message_kind(line, start, end)
    if kind is NONE or kind is OTHER_UPSTREAM:
        spaced = _respaced(line)
        if spaced is not None:
            return _classify_general(spaced)
        if kind is NONE:
            return NONE, None
    # The upstream: "..." field follows client/server/request, all written by nginx; taking the
    # first occurrence after the message keeps a hostile referrer from choosing the label.
    return kind, _field_address(line, end) or _connect_address(line[:end])


BytesFind = Callable[..., int]
"""A message's bound ``find``: deciders search through the one :func:`_message_kind` made."""

KindDecider = Callable[[BytesFind, bytes, int], str | None]
"""Given ``(message.find, message, where the row's phrase starts)``: the kind, or None to walk on."""

_TIMEOUT_PHASES: Final[dict[bytes, str]] = {b"c": CONNECT_TIMEOUT, b"S": SSL_HANDSHAKE_FAILED}
"""The first letter after ``upstream timed out (...) while ``: connecting, SSL handshaking; else reading."""


def _timed_out_kind(find: BytesFind, message: bytes, i: int) -> str:
    """``upstream timed out (110: ...) while PHASE``: the phase names the kind."""
    w = find(b" while ", i + 18)
    return _TIMEOUT_PHASES.get(message[w + 7 : w + 8], READ_TIMEOUT) if w > 0 else READ_TIMEOUT


def _ssl_handshake_kind(find: BytesFind, message: bytes, i: int) -> str | None:
    """``SSL_do_handshake() failed (SSL: ...) while SSL handshaking``; None without ``SSL``."""
    return SSL_HANDSHAKE_FAILED if find(b"SSL") >= 0 else None


def _failed_call_kind(find: BytesFind, message: bytes, i: int) -> str:
    """``CALL() failed (ERRNO: ...) ... upstream``: the errno names the kind."""
    if find(b"upstream", i) < 0:
        return NONE
    j = find(b":", i + 8, i + 14)
    errno = message[i + 8 : j] if j > 0 else b""
    if errno == b"110":
        return CONNECT_TIMEOUT if find(b"while connecting to upstream", i) >= 0 else READ_TIMEOUT
    kind = _ERRNO_KIND.get(errno, OTHER_UPSTREAM)
    if errno in _CONNECT_ONLY and find(b"connect()", 0, i) < 0:
        kind = OTHER_UPSTREAM
    return _other_upstream_kind(find) if kind == OTHER_UPSTREAM else kind


def _upstream_sent_kind(find: BytesFind, message: bytes, i: int) -> str:
    """``upstream sent ...``: a too big header, an invalid one, or something else it should not."""
    if find(b"too big header", i) >= 0:
        return HEADER_TOO_BIG
    if find(b"no valid HTTP", i) >= 0 or find(b"unsupported FastCGI protocol", i) >= 0:
        return PROTOCOL_MISMATCH  # proxy_pass at a FastCGI server, fastcgi_pass at an HTTP one ("H" is 72)
    if find(b"invalid", i) >= 0 or find(b"no valid", i) >= 0:
        return INVALID_HEADER
    return _other_upstream_kind(find)


def _other_upstream_kind(find: BytesFind) -> str:
    """``other_upstream``, unless the message is one of :data:`_NOT_FAILURES`."""
    for phrase in _NOT_FAILURES:
        if find(phrase) >= 0:
            return NONE
    return OTHER_UPSTREAM


_MESSAGE_KINDS: Final[tuple[tuple[bytes, str | KindDecider], ...]] = (
    # FastCGI stderr: PHP's own output ("Primary script unknown", PHP warnings), may say anything.
    (b"sent in stderr", NONE),
    (b"upstream timed out", _timed_out_kind),
    (b"worker_connections are not enough", CONNECTIONS_EXHAUSTED),
    (b"could not be resolved", HOST_NOT_FOUND),
    (b"host not found in upstream", HOST_NOT_FOUND),
    (b"upstream SSL certificate", SSL_HANDSHAKE_FAILED),
    (b"handshak", _ssl_handshake_kind),
    (b"failed (", _failed_call_kind),
    (b"upstream prematurely closed", PREMATURE_CLOSE),
    (b"no live upstreams", NO_LIVE_UPSTREAMS),
    (b"upstream sent ", _upstream_sent_kind),
    *((phrase, NONE) for phrase in _NOT_FAILURES),
    (b"(", lambda find, message, i: _errno_kind(message)),
    *((phrase, OTHER_UPSTREAM) for phrase in _UPSTREAM_CONTEXT),
)
"""``(phrase, kind or decider)``, walked in order: the first row whose phrase the message holds
names its kind, or its decider does (a decider returning None walks on). No row: ``none``."""


def message_start(line: bytes) -> int:
    """Where nginx's message starts: after ``PID#TID: *CID `` when the line has it, else 0."""
    p = line.find(b": *", 0, 512)
    if p < 0:
        return 0
    space = line.find(b" ", p + 3, p + 24)
    return space + 1 if space > 0 and line[p + 3 : space].isdigit() else 0


def _message_kind(line: bytes, start: int, end: int) -> str:
    """The kind named by nginx's message ``line[start:end]``, read up to its first quote.

    nginx quotes everything a client chose (a path in ``open() "..." failed``, a header, the request):
    the words before the first quote are nginx's own, so a request path that contains the text of an
    upstream error never makes a line that error.
    """
    quote = line.find(b'"', start, end)
    message = line[start : quote if quote >= 0 else end] if start or quote >= 0 or end < len(line) else line
    find = message.find
    for phrase, kind in _MESSAGE_KINDS:
        i = find(phrase)
        if i >= 0:
            if isinstance(kind, str):
                return kind
            decided = kind(find, message, i)
            if decided is not None:
                return decided
    return NONE


_ERRNO_RE: Final = re.compile(rb"\((\d{1,3}): [A-Z][a-z]")
_SPACES_RE: Final = re.compile(rb"(?:[ \t\r\n\v\f]|\xc2\xa0|\xe2\x80[\x80-\x8b\xaf]|\xe3\x80\x80)+")


def _errno_kind(message: bytes) -> str | None:
    """A line cut at its start (no ``connect()``, no ``upstream timed out``): its errno and context."""
    m = _ERRNO_RE.search(message)
    if m is None or message.find(b"upstream", m.end()) < 0:
        return None
    errno = m.group(1)
    connecting = message.find(b"connect", 0) >= 0
    if errno == b"110":
        return CONNECT_TIMEOUT if message.find(b"while connecting") >= 0 else READ_TIMEOUT
    if errno in _CONNECT_ONLY and not connecting:
        return OTHER_UPSTREAM
    return _ERRNO_KIND.get(errno, OTHER_UPSTREAM)


def _respaced(line: bytes) -> bytes | None:
    """``line`` with every run of spaces (tabs, newlines, no-break and ideographic spaces) as one space,
    or None when it has none to change: a line pasted through a translator or re-wrapped."""
    spaced = _SPACES_RE.sub(b" ", line).strip()
    return None if spaced == line else spaced


def upstream_address(raw: bytes) -> str | None:
    """Normalise an upstream as nginx logs it: no scheme, no URI path, ``unix:`` kept.

    ``fastcgi://unix:/run/php.sock:`` -> ``unix:/run/php.sock``;
    ``http://[::1]:8080/x?y`` -> ``[::1]:8080``; ``unix:///x`` -> ``unix:/x``.
    """
    cached = _address_cache.get(raw)
    if cached is not None or raw in _address_cache:
        return cached
    value = _normalise(raw)
    if len(raw) <= _CACHED_KEY_BYTES:
        if len(_address_cache) >= _CACHE_LIMIT:
            _address_cache.clear()
        _address_cache[raw] = value
    return value


def _normalise(raw: bytes) -> str | None:
    quote = raw.find(b'"')
    value = (raw[:quote] if quote >= 0 else raw).strip()
    if not value.startswith(b"unix:"):
        scheme = value.find(b"://")
        if 0 < scheme <= 16:
            value = value[scheme + 3 :]
    if value.startswith(b"unix:"):
        path = value[5:]
        colon = path.find(b":")
        if colon >= 0:
            path = path[:colon]
        if path.startswith(b"/"):
            path = b"/" + path.lstrip(b"/")
        if not path:
            return None
        return "unix:" + path.decode("utf-8", "replace")[:256]
    for stop in (b"/", b"?", b" "):
        cut = value.find(stop)
        if cut >= 0:
            value = value[:cut]
    if not value:
        return None
    return value.decode("utf-8", "replace")[:256]


# -- PHP-FPM -------------------------------------------------------------------------------------

_SIGNAL_RE: Final = re.compile(rb"exited on signal (\d+)(?: \((SIG[A-Z0-9]+))?")


def classify_phpfpm(line: bytes) -> tuple[str, str | None, str | None]:
    """Return ``(event, pool, signal)`` for one PHP-FPM log line.

    ``pool`` comes from ``[pool NAME]`` (None when absent); ``signal`` is set only for
    ``child_killed`` (``SIGTERM`` or the number when nginx names none).
    """
    find = line.find
    pool: str | None = None
    p = find(b"[pool ")
    if p >= 0:
        e = find(b"]", p + 6, p + 6 + 256)
        if e > p + 6:
            pool = line[p + 6 : e].decode("utf-8", "replace")
    end = find(b" said into std")  # catch_workers_output: the rest is the script's own output
    if end < 0:
        end = len(line)
    if find(b"execution timed out", 0, end) >= 0:
        return EXECUTION_TIMEOUT, pool, None
    if find(b"exited on signal", 0, end) >= 0:
        m = _SIGNAL_RE.search(line, 0, end)
        signal = None
        if m is not None:
            signal = (m.group(2) or m.group(1)).decode("ascii")
        return CHILD_KILLED, pool, signal
    if find(b"max_children setting", 0, end) >= 0:
        return MAX_CHILDREN_REACHED, pool, None
    if find(b"seems busy", 0, end) >= 0:
        return BUSY, pool, None
    if find(b"unable to bind listening socket", 0, end) >= 0:
        return BIND_ERROR, pool, None
    if _CONFIG_ERROR_RE.search(line, 0, end) is not None:
        return CONFIG_ERROR, pool, None
    return NONE, pool, None


_CONFIG_ERROR_RE: Final = re.compile(
    rb"ERROR: (?:\[[^\]\s]+:\d+\] |FPM initialization failed|failed to load configuration file"
    rb"|failed to post process the configuration|Unable to include )"
)
"""``ERROR: [/etc/php/8.2/fpm/pool.d/www.conf:127] unable to parse value ...`` and its consequences."""


# -- timestamps and source detection (offline paths only) ------------------------------------

_MONTHS: Final = {
    m: f"{i:02d}"
    for i, m in enumerate(
        (b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec"),
        start=1,
    )
}
_TIME_RE: Final = re.compile(
    rb"(\d{4})/(\d\d)/(\d\d) (\d\d:\d\d:\d\d)"  # nginx
    rb"|\[(\d\d)-([A-Z][a-z]{2})-(\d{4}) (\d\d:\d\d:\d\d)"  # PHP-FPM
    rb"|(\d{4})-(\d\d)-(\d\d)[T ](\d\d:\d\d:\d\d)"  # ISO 8601 (Docker, journald --output=short-iso)
)


def line_time(line: bytes) -> str | None:
    """The line's timestamp as ``YYYY-MM-DD HH:MM:SS`` (nginx, PHP-FPM or ISO form), or None."""
    m = _TIME_RE.search(line, 0, 200)
    if m is None:
        return None
    g = m.groups()
    if g[0] is not None:
        return f"{g[0].decode()}-{g[1].decode()}-{g[2].decode()} {g[3].decode()}"
    if g[4] is not None:
        month = _MONTHS.get(g[5])
        if month is None:
            return None
        return f"{g[6].decode()}-{month}-{g[4].decode()} {g[7].decode()}"
    return f"{g[8].decode()}-{g[9].decode()}-{g[10].decode()} {g[11].decode()}"


_NGINX_SHAPE: Final = re.compile(rb"\[(?:debug|info|notice|warn|error|crit|alert|emerg)\] \d+#\d+: ")
_PHPFPM_SHAPE: Final = re.compile(rb"\b(?:DEBUG|NOTICE|WARNING|ERROR|ALERT|CRITICAL|SYSTEM): ")


def detect_source(sample: bytes) -> Source:
    """Guess whether a block of log text is from nginx or PHP-FPM (nginx when unsure)."""
    nginx = len(_NGINX_SHAPE.findall(sample))
    phpfpm = len(_PHPFPM_SHAPE.findall(sample))
    return "php-fpm" if phpfpm > nginx else "nginx"
