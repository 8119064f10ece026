"""Classification of nginx and PHP-FPM log lines: a table of real-world shapes, every kind and
event, and property tests (no input raises, fast path == general path, bounded memory)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.logs import classify as c
from exporter.logs.classify import (
    EVENTS,
    KINDS,
    classify_nginx,
    classify_phpfpm,
    detect_source,
    line_time,
    nginx_key,
    split_block,
    tally_nginx,
    tally_nginx_block,
    upstream_address,
)
from exporter.logs.tailer import LineSplitter

MAX_LINE = c.MAX_LINE_BYTES

TS = "2024/05/01 12:34:56"
PHP = "fastcgi://unix:/run/php/php8.3-fpm.sock:"
TAIL = ', client: 203.0.113.7, server: shop.example, request: "GET /index.php?id=1 HTTP/1.1"'


def ngx(message: str, upstream: str | None = PHP, level: str = "error", prefix: str = f"{TS} ") -> bytes:
    """A line as nginx 1.22 writes it."""
    line = f"{prefix}[{level}] 4242#4242: *77 {message}{TAIL}"
    if upstream is not None:
        line += f', upstream: "{upstream}"'
    return (line + ', host: "shop.example", referrer: "https://shop.example/"').encode()


SOCK_MISSING = "connect() to unix:/run/php/php8.3-fpm.sock failed (2: No such file or directory) while connecting to upstream"
READ_TIMEOUT = "upstream timed out (110: Connection timed out) while reading response header from upstream"

# (line, kind, upstream)
NGINX_TABLE: list[tuple[bytes, str, str | None]] = [
    # every kind
    (ngx(SOCK_MISSING, level="crit"), "socket_missing", "unix:/run/php/php8.3-fpm.sock"),
    (
        ngx(
            "connect() to unix:/run/php/php8.3-fpm.sock failed (13: Permission denied) while connecting to upstream"
        ),
        "permission_denied",
        "unix:/run/php/php8.3-fpm.sock",
    ),
    (
        ngx(
            "connect() to 10.0.0.5:9000 failed (13: Permission denied) while connecting to upstream",
            "fastcgi://10.0.0.5:9000",
        ),
        "permission_denied",
        "10.0.0.5:9000",
    ),
    (
        ngx(
            "connect() to unix:/run/php/php8.3-fpm.sock failed (11: Resource temporarily unavailable) while connecting to upstream"
        ),
        "backlog_full",
        "unix:/run/php/php8.3-fpm.sock",
    ),
    (
        ngx(
            "connect() to unix:/run/php/php8.3-fpm.sock failed (111: Connection refused) while connecting to upstream"
        ),
        "connection_refused",
        "unix:/run/php/php8.3-fpm.sock",
    ),
    (
        ngx(
            "connect() failed (111: Connection refused) while connecting to upstream",
            "http://127.0.0.1:8000/api/x?y=1",
        ),
        "connection_refused",
        "127.0.0.1:8000",
    ),
    (
        ngx(
            "upstream timed out (110: Connection timed out) while connecting to upstream",
            "http://10.1.2.3:8000/",
        ),
        "connect_timeout",
        "10.1.2.3:8000",
    ),
    (
        ngx(
            "connect() failed (110: Connection timed out) while connecting to upstream",
            "http://10.1.2.3:8000/",
        ),
        "connect_timeout",
        "10.1.2.3:8000",
    ),
    (ngx(READ_TIMEOUT), "read_timeout", "unix:/run/php/php8.3-fpm.sock"),
    (
        ngx(
            "upstream timed out (110: Connection timed out) while reading upstream",
            "http://127.0.0.1:8000/big",
        ),
        "read_timeout",
        "127.0.0.1:8000",
    ),
    (
        ngx(
            "upstream timed out (110: Connection timed out) while sending request to upstream",
            "http://127.0.0.1:8000/u",
        ),
        "read_timeout",
        "127.0.0.1:8000",
    ),
    # old errno wording
    (
        ngx("upstream timed out (110: Operation timed out) while reading response header from upstream"),
        "read_timeout",
        "unix:/run/php/php8.3-fpm.sock",
    ),
    (
        ngx(
            "upstream prematurely closed connection while reading response header from upstream",
            "http://127.0.0.1:8000/r",
        ),
        "premature_close",
        "127.0.0.1:8000",
    ),
    (
        ngx("recv() failed (104: Connection reset by peer) while reading response header from upstream"),
        "connection_reset",
        "unix:/run/php/php8.3-fpm.sock",
    ),
    (
        ngx(
            "readv() failed (104: Connection reset by peer) while reading upstream", "http://127.0.0.1:8000/r"
        ),
        "connection_reset",
        "127.0.0.1:8000",
    ),
    (
        ngx(
            "writev() failed (104: Connection reset by peer) while sending request to upstream",
            "http://127.0.0.1:8000/",
        ),
        "connection_reset",
        "127.0.0.1:8000",
    ),
    (
        ngx("no live upstreams while connecting to upstream", "http://backend/api/orders"),
        "no_live_upstreams",
        "backend",
    ),
    (
        ngx("upstream sent too big header while reading response header from upstream"),
        "header_too_big",
        "unix:/run/php/php8.3-fpm.sock",
    ),
    (
        ngx(
            'upstream sent invalid header: "\\x01\\x02..." while reading response header from upstream',
            "http://127.0.0.1:8000/",
        ),
        "invalid_header",
        "127.0.0.1:8000",
    ),
    (
        ngx(
            "upstream sent no valid HTTP/1.0 header while reading response header from upstream",
            "http://127.0.0.1:8000/",
        ),
        "protocol_mismatch",
        "127.0.0.1:8000",
    ),
    (
        ngx(
            'upstream sent invalid status "abc" while reading response header from upstream',
            "http://127.0.0.1:8000/",
        ),
        "invalid_header",
        "127.0.0.1:8000",
    ),
    (
        ngx(
            "SSL_do_handshake() failed (SSL: error:0A00010B:SSL routines::wrong version number) "
            "while SSL handshaking to upstream",
            "https://10.0.0.9:8443/",
        ),
        "ssl_handshake_failed",
        "10.0.0.9:8443",
    ),
    (
        ngx(
            "peer closed connection in SSL handshake (104: Connection reset by peer) while SSL handshaking to upstream",
            "https://10.0.0.9:8443/",
        ),
        "ssl_handshake_failed",
        "10.0.0.9:8443",
    ),
    (
        ngx(
            "upstream timed out (110: Connection timed out) while SSL handshaking to upstream",
            "https://10.0.0.9:8443/",
        ),
        "ssl_handshake_failed",
        "10.0.0.9:8443",
    ),
    (
        ngx(
            "writev() failed (32: Broken pipe) while sending request to upstream",
            "http://127.0.0.1:8000/upload",
        ),
        "other_upstream",
        "127.0.0.1:8000",
    ),
    (
        ngx(
            "connect() to [2001:db8::5]:8080 failed (113: No route to host) while connecting to upstream",
            None,
        ),
        "other_upstream",
        "[2001:db8::5]:8080",
    ),
    (
        ngx(
            'open() "/var/lib/nginx/proxy/1/00/0000000001" failed (13: Permission denied) while reading upstream',
            "http://127.0.0.1:8000/",
        ),
        # A file nginx opens (its temp file): not an upstream failure, and what follows open() " is
        # what a client may choose (a request path), so such a line is never upstream evidence.
        "none",
        None,
    ),
    # upstream address shapes: IPv6, uwsgi, unix:///, http over unix socket, no URI
    (ngx(READ_TIMEOUT, "http://[::1]:8080/api?x=1"), "read_timeout", "[::1]:8080"),
    (ngx(READ_TIMEOUT, "uwsgi://127.0.0.1:3031"), "read_timeout", "127.0.0.1:3031"),
    (ngx(READ_TIMEOUT, "unix:///run/app.sock"), "read_timeout", "unix:/run/app.sock"),
    (ngx(READ_TIMEOUT, "http://unix:/run/uvicorn.sock:/api/x"), "read_timeout", "unix:/run/uvicorn.sock"),
    (
        ngx(READ_TIMEOUT, "fastcgi://unix:/run/php/php8.3-fpm.sock"),
        "read_timeout",
        "unix:/run/php/php8.3-fpm.sock",
    ),
    (ngx(READ_TIMEOUT, "fastcgi://127.0.0.1:9000"), "read_timeout", "127.0.0.1:9000"),
    # no upstream field: the address comes from the connect() text, or there is none
    (ngx(SOCK_MISSING, None), "socket_missing", "unix:/run/php/php8.3-fpm.sock"),
    (ngx(READ_TIMEOUT, None), "read_timeout", None),
    # prefixes: docker logs / compose / journald / syslog / CRI (kubernetes)
    (b"web-1  | " + ngx(READ_TIMEOUT), "read_timeout", "unix:/run/php/php8.3-fpm.sock"),
    (
        b"Nov 27 01:02:03 web01 nginx[812]: " + ngx(SOCK_MISSING),
        "socket_missing",
        "unix:/run/php/php8.3-fpm.sock",
    ),
    (
        b"<11>May  1 12:34:56 web01 nginx: " + ngx(READ_TIMEOUT),
        "read_timeout",
        "unix:/run/php/php8.3-fpm.sock",
    ),
    (
        b"2024-05-01T12:34:56.123456789Z stderr F " + ngx(READ_TIMEOUT),
        "read_timeout",
        "unix:/run/php/php8.3-fpm.sock",
    ),
    (
        b'{"log":"'
        + ngx(READ_TIMEOUT, "http://127.0.0.1:8000/x").replace(b'"', b'\\"')
        + b'\\n","stream":"stderr"}',
        "read_timeout",
        "127.0.0.1:8000",
    ),
    # no timestamp at all, no "*CID"
    (ngx(READ_TIMEOUT, prefix=""), "read_timeout", "unix:/run/php/php8.3-fpm.sock"),
    (
        (READ_TIMEOUT + TAIL + ', upstream: "http://127.0.0.1:8000/"').encode(),
        "read_timeout",
        "127.0.0.1:8000",
    ),
    # cut short
    (ngx(READ_TIMEOUT)[:150], "read_timeout", None),
    (
        ngx(SOCK_MISSING)[: ngx(SOCK_MISSING).index(b"upstream") + 12],
        "socket_missing",
        "unix:/run/php/php8.3-fpm.sock",
    ),
    # cut before the word "upstream": nothing says it was an upstream (a resolver also connects)
    (ngx(SOCK_MISSING)[:120], "none", None),
    (ngx(READ_TIMEOUT, "http://127.0.0.1:8000/x")[:-80], "read_timeout", None),
    # not upstream failures
    (
        f'{TS} [error] 4242#4242: *1 open() "/var/www/html/favicon.ico" failed (2: No such file or directory)'.encode()
        + TAIL.encode(),
        "none",
        None,
    ),
    (
        ngx('FastCGI sent in stderr: "Primary script unknown" while reading response header from upstream'),
        "none",
        None,
    ),
    (
        ngx(
            'FastCGI sent in stderr: "PHP message: PHP Warning: connect() failed (111: Connection refused) '
            'upstream timed out" while reading response header from upstream'
        ),
        "none",
        None,
    ),
    (
        f'{TS} [error] 4242#4242: *9 limiting requests, excess: 20.5 by zone "one"'.encode() + TAIL.encode(),
        "none",
        None,
    ),
    (
        ngx(
            "an upstream response is buffered to a temporary file /var/lib/nginx/fastcgi/1/00/0000000001 while reading upstream",
            level="warn",
        ),
        "none",
        None,
    ),
    (
        ngx("1024 worker_connections are not enough while connecting to upstream", level="alert"),
        "connections_exhausted",
        "unix:/run/php/php8.3-fpm.sock",
    ),
    (
        ngx("socket() failed (24: Too many open files) while connecting to upstream"),
        "connections_exhausted",
        "unix:/run/php/php8.3-fpm.sock",
    ),
    (
        ngx(
            "connect() to 10.0.0.5:8000 failed (99: Cannot assign requested address) while connecting to upstream"
        ),
        "connections_exhausted",
        "unix:/run/php/php8.3-fpm.sock",
    ),
    (
        ngx(
            "upstream sent unsupported FastCGI protocol version: 72 while reading response header from upstream"
        ),
        "protocol_mismatch",
        "unix:/run/php/php8.3-fpm.sock",
    ),
    (
        ngx(
            "upstream SSL certificate verify error: (10:certificate has expired) while SSL handshaking to upstream"
        ),
        "ssl_handshake_failed",
        "unix:/run/php/php8.3-fpm.sock",
    ),
    # A runtime resolver failure has no upstream field; its name is not a label.
    (
        b"2024/05/01 12:34:56 [error] 4242#4242: *77 app could not be resolved (3: Host not found), client: 203.0.113.7,"
        b' server: shop.example, request: "GET /api/ HTTP/1.1", host: "shop.example"',
        "host_not_found",
        None,
    ),
    (
        b'2024/05/01 12:34:56 [emerg] 4242#4242: host not found in upstream "app:8000" in /etc/nginx/conf.d/a.conf:12',
        "host_not_found",
        None,
    ),
    # Re-spaced (a translator, a re-wrap), no-break spaces, cut at the start: the errno and phrase decide.
    (
        b"2024/05/01 12:34:56  [error]  4242#4242:  *77  upstream  timed out (110: Connection timed out)\twhile"
        b' reading response header from upstream, client: 203.0.113.7, upstream: "http://127.0.0.1:8000/"',
        "read_timeout",
        "127.0.0.1:8000",
    ),
    (
        b"2024/05/01 12:34:56 [error] 4242#4242: *77 upstream\xc2\xa0prematurely\xc2\xa0closed connection while reading"
        b' response header from upstream, client: 203.0.113.7, upstream: "http://127.0.0.1:8000/"',
        "premature_close",
        "127.0.0.1:8000",
    ),
    (
        b"d out (110: Connection timed out) while reading response header from upstream, client: 203.0.113.7,"
        b' upstream: "http://127.0.0.1:8000/"',
        "read_timeout",
        "127.0.0.1:8000",
    ),
    (
        b"ed (111: Connection refused) while connecting to upstream, client: 203.0.113.7,"
        b' upstream: "http://127.0.0.1:8000/"',
        "connection_refused",
        "127.0.0.1:8000",
    ),
    # Forged: a request path holding the text of an upstream error, logged inside open() "...".
    (
        b'2024/05/01 12:34:56 [error] 4242#4242: *77 open() "/var/www/html/upstream timed out (110: Connection timed'
        b' out) while reading response header from upstream, client: 1.2.3.4, server: x, request: "GET / HTTP/1.1",'
        b' upstream: "fastcgi://unix:/run/php/ANY.sock:", host: "x"" failed (2: No such file or directory),'
        b' client: 127.0.0.1, server: x, request: "GET /upstream%20timed%20out HTTP/1.1", host: "x"',
        "none",
        None,
    ),
    (
        b'2024/05/01 12:34:56 [error] 4242#4242: *77 "/var/www/html/upstream timed out (110: x) while reading response'
        b' header from upstream/index.html" is not found (2: No such file or directory), client: 127.0.0.1,'
        b' server: x, request: "GET / HTTP/1.1", host: "x"',
        "none",
        None,
    ),
    (ngx("upstream server temporarily disabled while connecting to upstream", level="warn"), "none", None),
    (
        ngx(
            "epoll_wait() reported that client prematurely closed connection, so upstream connection is closed too while sending request to upstream",
            level="info",
        ),
        "none",
        None,
    ),
    (ngx("writev() failed (32: Broken pipe) while sending to client", level="info"), "none", None),
    (ngx("client prematurely closed connection while reading upstream", level="info"), "none", None),
    (f"{TS} [notice] 1#1: signal process started".encode(), "none", None),
    (f'{TS} [emerg] 1#1: unknown directive "upstream_x" in /etc/nginx/nginx.conf:12'.encode(), "none", None),
    (f"{TS} [emerg] 1#1: bind() to 0.0.0.0:80 failed (98: Address already in use)".encode(), "none", None),
    (b"", "none", None),
]


@pytest.mark.parametrize(("line", "kind", "upstream"), NGINX_TABLE)
def test_nginx_line_shapes(line: bytes, kind: str, upstream: str | None) -> None:
    assert classify_nginx(line) == (kind, upstream)
    assert c._classify_general(line) == (kind, upstream) or kind == "none"


def test_table_covers_every_kind() -> None:
    assert {kind for _, kind, _ in NGINX_TABLE} == set(KINDS)


def test_hostile_referrer_and_request_cannot_choose_the_label() -> None:
    line = ngx(READ_TIMEOUT, "http://127.0.0.1:8000/x").replace(
        b'referrer: "https://shop.example/"', b'referrer: "x, upstream: \\"http://evil:666/\\""'
    )
    assert classify_nginx(line) == ("read_timeout", "127.0.0.1:8000")
    line = ngx(READ_TIMEOUT, None).replace(b"/index.php?id=1", b"/upstream:%20%22http://evil:1/%22")
    assert classify_nginx(line) == ("read_timeout", None)


PHP_TABLE: list[tuple[bytes, str, str | None, str | None]] = [
    (
        b"[27-Nov-2026 02:01:57] WARNING: [pool www] server reached pm.max_children setting (5), consider raising it",
        "max_children_reached",
        "www",
        None,
    ),
    (
        b"[27-Nov-2026 02:01:57] WARNING: [pool api] server reached max_children setting (1), consider raising it",
        "max_children_reached",
        "api",
        None,
    ),
    (
        b"[27-Nov-2026 02:01:58] WARNING: [pool www] child 19414 exited on signal 15 (SIGTERM) after 2.668169 seconds from start",
        "child_killed",
        "www",
        "SIGTERM",
    ),
    (
        b"[27-Nov-2026 02:01:58] WARNING: [pool www] child 7 exited on signal 9 (SIGKILL) after 30.1 seconds from start",
        "child_killed",
        "www",
        "SIGKILL",
    ),
    (
        b"[27-Nov-2026 02:01:58] WARNING: [pool www] child 7 exited on signal 11 (SIGSEGV - core dumped) after 1.0 seconds from start",
        "child_killed",
        "www",
        "SIGSEGV",
    ),
    (
        b"WARNING: [pool www] child 7 exited on signal 6 after 1.0 seconds from start",
        "child_killed",
        "www",
        "6",
    ),
    (
        b"[27-Nov-2026 02:01:58] WARNING: [pool www] child 19414, script '/var/www/slow.php' (request: \"GET /slow.php?s=5\") "
        b"execution timed out (2.631307 sec), terminating",
        "execution_timeout",
        "www",
        None,
    ),
    (
        b"[27-Nov-2026 02:01:58] WARNING: [pool www] seems busy (you may need to increase pm.start_servers, or "
        b"pm.min/max_spare_servers), spawning 8 children, there are 0 idle, and 13 total children",
        "busy",
        "www",
        None,
    ),
    (
        b"[27-Nov-2026 02:01:58] ERROR: unable to bind listening socket for address '/run/php/php8.3-fpm.sock': "
        b"Address already in use (98)",
        "bind_error",
        None,
        None,
    ),
    (b"[27-Nov-2026 02:01:58] NOTICE: [pool www] child 19465 started", "none", "www", None),
    (b"[27-Nov-2026 02:01:56] NOTICE: fpm is running, pid 19413", "none", None, None),
    (
        b'[27-Nov-2026 02:01:58] WARNING: [pool www] child 12 said into stderr: "execution timed out exited on signal '
        b'[pool evil] max_children setting"',
        "none",
        "www",
        None,
    ),
    # journald prefix, truncated
    (
        b"Nov 27 02:01:57 web01 php-fpm8.3[512]: [pool www] server reached pm.max_children setting (5)",
        "max_children_reached",
        "www",
        None,
    ),
    (b"[27-Nov-2026 02:01:58] WARNING: [pool www] child 19414 exited on sig", "none", "www", None),
    (
        b"[01-Dec-2026 10:00:00] ERROR: [/etc/php/8.2/fpm/pool.d/www.conf:127] unable to parse value for entry"
        b" 'pm.max_children'",
        "config_error",
        None,
        None,
    ),
    (b"[01-Dec-2026 10:00:00] ERROR: FPM initialization failed", "config_error", None, None),
    (b"", "none", None, None),
]


@pytest.mark.parametrize(("line", "event", "pool", "signal"), PHP_TABLE)
def test_phpfpm_lines(line: bytes, event: str, pool: str | None, signal: str | None) -> None:
    assert classify_phpfpm(line) == (event, pool, signal)


def test_php_table_covers_every_event() -> None:
    assert {event for _, event, _, _ in PHP_TABLE} == set(EVENTS)


@pytest.mark.parametrize(
    ("raw", "address"),
    [
        (b"fastcgi://unix:/run/php.sock:", "unix:/run/php.sock"),
        (b"http://[::1]:8080/x?y", "[::1]:8080"),
        (b"unix:///x", "unix:/x"),
        (b"grpc://127.0.0.1:50051", "127.0.0.1:50051"),
        (b"http://backend", "backend"),
        (b"", None),
        (b"http://", None),
    ],
)
def test_upstream_address(raw: bytes, address: str | None) -> None:
    assert upstream_address(raw) == address


def test_line_time_forms() -> None:
    assert line_time(ngx(READ_TIMEOUT)) == "2024-05-01 12:34:56"
    assert line_time(b"[27-Nov-2026 02:01:58] WARNING: x") == "2026-11-27 02:01:58"
    assert line_time(b"2024-05-01T12:34:56.1Z stderr F upstream timed out") == "2024-05-01 12:34:56"
    assert line_time(b"upstream timed out") is None


def test_detect_source() -> None:
    assert detect_source(b"\n".join(line for line, *_ in NGINX_TABLE)) == "nginx"
    assert detect_source(b"\n".join(line for line, *_ in PHP_TABLE)) == "php-fpm"


# -- properties -----------------------------------------------------------------------------------

MESSAGES = [
    SOCK_MISSING,
    READ_TIMEOUT,
    "upstream timed out (110: Connection timed out) while connecting to upstream",
    "upstream timed out (110: Operation timed out) while SSL handshaking to upstream",
    "connect() failed (111: Connection refused) while connecting to upstream",
    "connect() failed (11: Resource temporarily unavailable) while connecting to upstream",
    "connect() to 127.0.0.1:9 failed (99: Cannot assign requested address) while connecting to upstream",
    "recv() failed (104: Connection reset by peer) while reading response header from upstream",
    "send() failed (110: Connection timed out) while sending request to upstream",
    "readv() failed (32: Broken pipe) while sending to client",
    "upstream prematurely closed connection while reading upstream",
    "no live upstreams while connecting to upstream",
    'FastCGI sent in stderr: "Primary script unknown" while reading response header from upstream',
]
UPSTREAMS = [
    None,
    PHP,
    "http://127.0.0.1:8000/a/b",
    "http://[::1]:8080/",
    "unix:///x.sock",
    "fastcgi://10.0.0.1:9000",
]


@given(
    message=st.sampled_from(MESSAGES),
    upstream=st.sampled_from(UPSTREAMS),
    prefix=st.sampled_from(["", f"{TS} ", "web-1  | ", "Nov 27 01:02:03 h nginx[1]: "]),
    cut=st.integers(min_value=0, max_value=400),
)
def test_fast_path_agrees_with_general_path(
    message: str, upstream: str | None, prefix: str, cut: int
) -> None:
    line = ngx(message, upstream, prefix=prefix)
    line = line[: len(line) - cut] if cut < len(line) else line
    fast = classify_nginx(line)
    general = c._classify_general(line)
    assert fast == general


@given(st.binary(max_size=2000))
def test_random_bytes_never_raise(data: bytes) -> None:
    kind, upstream = classify_nginx(data)
    assert kind in KINDS
    assert upstream is None or len(upstream) <= 261
    event, _pool, _signal = classify_phpfpm(data)
    assert event in EVENTS
    line_time(data)
    detect_source(data)


@given(
    st.lists(st.binary(max_size=300).map(lambda b: b'upstream: "' + b + b" connect() to " + b), max_size=50)
)
def test_random_upstream_lines_never_raise(lines: list[bytes]) -> None:
    counts: dict[tuple[str, str | None], int] = {}
    found = tally_nginx(lines, counts)
    assert found == sum(counts.values()) <= len(lines)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    filler=st.binary(min_size=1, max_size=64),
    size=st.integers(min_value=64 * 1024 + 1, max_value=2 * 1024 * 1024),
)
def test_megabyte_lines_are_cut_and_counted_once(filler: bytes, size: int) -> None:
    body = (filler.replace(b"\n", b"x") * (size // len(filler) + 1))[:size]
    stream = ngx(READ_TIMEOUT) + b"\n" + body + b"\n" + ngx(SOCK_MISSING) + b"\n"
    splitter = LineSplitter()
    lines: list[bytes] = []
    for i in range(0, len(stream), 100_000):
        lines += splitter.feed(stream[i : i + 100_000])
    assert len(lines) == 3
    assert max(len(line) for line in lines) <= 64 * 1024
    assert len(lines[1]) == 64 * 1024
    assert splitter.consumed == len(stream)
    counts: dict[tuple[str, str | None], int] = {}
    tally_nginx(lines, counts)
    assert counts[("read_timeout", "unix:/run/php/php8.3-fpm.sock")] == 1
    assert counts[("socket_missing", "unix:/run/php/php8.3-fpm.sock")] == 1


@given(data=st.binary(max_size=5000), cuts=st.lists(st.integers(min_value=0, max_value=5000), max_size=20))
def test_splitter_any_chunking_gives_the_same_lines(data: bytes, cuts: list[int]) -> None:
    points = sorted({0, len(data), *(x for x in cuts if x <= len(data))})
    splitter = LineSplitter()
    lines: list[bytes] = []
    for a, b in itertools.pairwise(points):
        lines += splitter.feed(data[a:b])
    expected = data.split(b"\n")[:-1]
    assert lines == expected
    assert splitter.consumed == data.rfind(b"\n") + 1
    assert splitter.flush() == ([data.split(b"\n")[-1]] if data.split(b"\n")[-1] else [])


@given(
    data=st.binary(max_size=3000).map(lambda b: b.replace(b"\0", b"\n")),
    cuts=st.lists(st.integers(min_value=0, max_value=3000), max_size=20),
    max_line=st.sampled_from([MAX_LINE, 16]),
)
def test_blocks_from_a_reused_buffer_give_the_same_lines(data: bytes, cuts: list[int], max_line: int) -> None:
    """The tailer reads into one buffer and counts each block before the next read."""
    points = sorted({0, len(data), *(x for x in cuts if x <= len(data))})
    buffer = bytearray(b"\xff" * 4096)
    splitter = LineSplitter()
    lines: list[bytes] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("exporter.logs.tailer.MAX_LINE_BYTES", max_line)
        patch.setattr(c, "MAX_LINE_BYTES", max_line)
        for a, b in itertools.pairwise(points):
            buffer[: b - a] = data[a:b]
            for block in splitter.feed_blocks(buffer, b - a):
                lines += split_block(block)
            buffer[:] = b"\xee" * len(buffer)  # the next read overwrites what the blocks showed
        lines += split_block(splitter.flush_block())
    expected = [line[:max_line] for line in data.split(b"\n")]
    if not expected[-1]:
        expected.pop()
    assert lines == expected
    assert splitter.consumed == len(data)


def test_native_scan_is_built() -> None:
    """scripts/setup installs a C compiler, so the native scan must be there (and used)."""
    assert c.NATIVE_SCAN, "exporter/logs/_scan.c was not built: pip install needs gcc and python3-dev"


def python_scan(
    block: bytes, max_line: int
) -> tuple[int, list[tuple[tuple[bytes, bytes], int]], list[bytes]]:
    """What the native scan must return, computed with the pure-Python functions."""
    lines = block.split(b"\n")
    if not lines[-1]:
        lines.pop()
    keyed: dict[tuple[bytes, bytes], int] = {}
    other: list[bytes] = []
    for line in (line[:max_line] for line in lines):
        key = nginx_key(line)
        if key is not None:
            keyed[key] = keyed.get(key, 0) + 1
        elif b"upstream" in line or b"could not be resolved" in line:
            other.append(line)
    return len(lines), list(keyed.items()), other


TOKENS = [
    b": *", b"*", b"77", b" ", b", client: ", b", ", b"upstream", b" could not be resolved", b'upstream: "', b'"', b"unix:", b":",
    b"/", b"//", b"http://", b"fastcgi://", b"[::1]:8080", b"127.0.0.1", b"x", b"\n", b"\r",
    b"connect() to ", b" failed (111: Connection refused)", READ_TIMEOUT.encode(),
]  # fmt: skip
token_lines = st.lists(st.sampled_from(TOKENS) | st.binary(max_size=8), max_size=40).map(b"".join)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    lines=st.lists(token_lines | st.sampled_from([line for line, _, _ in NGINX_TABLE]), max_size=30),
    newline_at_end=st.booleans(),
    max_line=st.sampled_from([64 * 1024, 200, 40, 0]),
)
def test_native_scan_equals_python(lines: list[bytes], newline_at_end: bool, max_line: int) -> None:
    if not c.NATIVE_SCAN:
        pytest.skip("native scan not built")
    from exporter.logs._scan import scan_nginx

    block = b"\n".join(lines) + (b"\n" if newline_at_end and lines else b"")
    lines_count, keyed, other = scan_nginx(block, max_line)
    assert (lines_count, list(keyed.items()), other) == python_scan(block, max_line)
    assert scan_nginx(memoryview(block), max_line)[0] == lines_count


def test_native_scan_rejects_bad_arguments() -> None:
    if not c.NATIVE_SCAN:
        pytest.skip("native scan not built")
    from exporter.logs._scan import scan_nginx

    with pytest.raises(TypeError):
        scan_nginx("text", 10)  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="max_line"):
        scan_nginx(b"x", -1)
    with pytest.raises(TypeError):
        scan_nginx(b"x")  # type: ignore[call-overload]


@given(lines=st.lists(st.sampled_from([line for line, _, _ in NGINX_TABLE]) | token_lines, max_size=40))
def test_block_tally_equals_line_by_line(lines: list[bytes]) -> None:
    """The tailer's path (native scan, keys classified once) counts what classify_nginx says per line."""
    block = b"".join(line + b"\n" for line in lines)
    counts: dict[tuple[str, str | None], int] = {}
    assert tally_nginx_block(block, counts) == len(split_block(block))
    expected: dict[tuple[str, str | None], int] = {}
    for line in split_block(block):
        kind, upstream = classify_nginx(line)
        if kind != "none":
            expected[kind, upstream] = expected.get((kind, upstream), 0) + 1
    assert counts == expected


def test_address_cache_memory_is_bounded() -> None:
    counts: dict[tuple[str, str | None], int] = {}
    lines = [
        ngx(READ_TIMEOUT, f"http://10.{i // 65536}.{i // 256 % 256}.{i % 256}:80/") for i in range(20_000)
    ]
    tally_nginx(lines, counts)
    assert len(c._address_cache) <= c._CACHE_LIMIT
    assert sum(counts.values()) == 20_000


def test_caches_hold_only_short_keys() -> None:
    """Lines with 64 KiB messages or upstream fields, all different, leave the caches small."""
    c._key_cache.clear()
    c._address_cache.clear()
    counts: dict[tuple[str, str | None], int] = {}
    long_header = [
        ngx(
            f'upstream sent invalid header: "{i:05d}{"x" * 60_000}" while reading response header from upstream'
        )
        for i in range(300)
    ]
    long_upstream = [ngx(READ_TIMEOUT, f"http://{i:05d}{'y' * 60_000}") for i in range(300)]
    block = b"".join(line + b"\n" for line in long_header + long_upstream)
    assert tally_nginx_block(block, counts) == 600
    assert counts[("invalid_header", "unix:/run/php/php8.3-fpm.sock")] == 300
    assert sum(n for (kind, _), n in counts.items() if kind == "read_timeout") == 300
    cached = sum(len(m) + len(u) for m, u in c._key_cache) + sum(len(raw) for raw in c._address_cache)
    assert cached < 64 * 1024
