"""Faults whose cause only nginx's, PHP-FPM's or the backend's own log lines prove.

Each is injected for real on a demo stack: a PHP script that sends a 16 KiB header or kills its own
worker with SIGSEGV, a pool whose ``request_terminate_timeout`` or ``listen.backlog`` is too small, a
``fastcgi_pass`` at an HTTP port, an ``https://`` ``proxy_pass`` to a plain port, ``worker_connections``
too small for the load, and an upstream name a real resolver (a DNS server on loopback) says does not
exist. Requests go through nginx while the fault holds.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import struct
import threading
from collections.abc import Callable

from exporter.causes import Cause
from exporter.demo.fault import Fault, FaultContext
from exporter.demo.load import RequestLoop

BIG_HEADER_SCRIPT = "badgateway-big-header.php"
CRASH_SCRIPT = "badgateway-crash.php"
UNRESOLVABLE = "backend-svc.invalid"
_STATE_LOOP = "log_fault_loop"


def _loop(
    ctx: FaultContext, *paths: str, threads: int = 1, interval: float = 0.3, timeout: float = 10.0
) -> None:
    ctx.state[_STATE_LOOP] = RequestLoop(
        ctx.stack.nginx_port, paths, threads=threads, interval=interval, timeout=timeout, max_seconds=300.0,
        max_requests=3000, name="log-fault",
    ).start()  # fmt: skip


def _stop_loop(ctx: FaultContext) -> None:
    loop = ctx.state.pop(_STATE_LOOP, None)
    if isinstance(loop, RequestLoop):
        loop.stop()


# -- PHP scripts ----------------------------------------------------------------------------------


def _big_header(ctx: FaultContext) -> None:
    ctx.stack.write_script(
        BIG_HEADER_SCRIPT, "<?php\nheader('X-Padding: ' . str_repeat('a', 16384));\necho \"ok\\n\";\n"
    )
    _loop(ctx, f"/{BIG_HEADER_SCRIPT}")


def _crash(ctx: FaultContext) -> None:
    # The worker dies of a real SIGSEGV mid-request, as a broken extension makes it die.
    ctx.stack.write_script(CRASH_SCRIPT, '<?php\nposix_kill(getmypid(), 11);\nsleep(1);\necho "alive\\n";\n')
    _loop(ctx, f"/{CRASH_SCRIPT}", interval=0.5)


def _remove_script(name: str) -> Callable[[FaultContext], None]:
    def heal(ctx: FaultContext) -> None:
        _stop_loop(ctx)
        (ctx.stack.web_root / name).unlink(missing_ok=True)

    return heal


# -- pool settings ---------------------------------------------------------------------------------


def _terminate_early(ctx: FaultContext) -> None:
    ctx.stack.set_pool_lines(["request_terminate_timeout = 1s"])
    ctx.services.restart("php_fpm")
    _loop(ctx, "/slow.php?s=2", interval=0.5)


def _tiny_backlog(ctx: FaultContext) -> None:
    ctx.stack.set_pool_lines(["listen.backlog = 0"])
    ctx.stack.set_max_children(1)
    ctx.services.restart("php_fpm")
    _loop(ctx, "/slow.php?s=1", threads=6, interval=0.0)


def _pool_heal(ctx: FaultContext) -> None:
    loop = ctx.state.pop(_STATE_LOOP, None)
    if isinstance(loop, RequestLoop):
        loop.halt()
    ctx.stack.set_pool_lines([])
    ctx.stack.set_max_children(ctx.original_max_children)
    ctx.services.restart("php_fpm")
    if isinstance(loop, RequestLoop):
        loop.stop()


# -- nginx's configuration --------------------------------------------------------------------------


def _proxy_pass(ctx: FaultContext) -> str:
    return f"proxy_pass http://127.0.0.1:{ctx.stack.backend_port}/;"


def _edit_and_reload(ctx: FaultContext, replacements: dict[str, str]) -> None:
    ctx.stack.edit_nginx_config(replacements)
    ctx.services.reload("nginx")


def _fastcgi_to_http(ctx: FaultContext) -> None:
    ctx.stack.point_fastcgi_pass(f"127.0.0.1:{ctx.stack.backend_port}")
    ctx.services.reload("nginx")


def _https_to_plain(ctx: FaultContext) -> None:
    _edit_and_reload(ctx, {_proxy_pass(ctx): f"proxy_pass https://127.0.0.1:{ctx.stack.backend_port}/;"})
    _loop(ctx, "/api/health")


def _few_connections(ctx: FaultContext) -> None:
    _edit_and_reload(ctx, {"worker_connections 256;": "worker_connections 5;"})
    _loop(ctx, "/api/slow?s=1", threads=8, interval=0.0)


def _unresolvable(ctx: FaultContext) -> None:
    server = NxDomainServer().start()
    ctx.state["dns"] = server
    resolve = (
        f"resolver 127.0.0.1:{server.port} valid=1s ipv6=off;\n            resolver_timeout 2s;\n"
        f'            set $badgateway_upstream "{UNRESOLVABLE}";\n'
        f"            proxy_pass http://$badgateway_upstream:{ctx.stack.backend_port};"
    )
    _edit_and_reload(ctx, {_proxy_pass(ctx): resolve})
    _loop(ctx, "/api/health")


def _restore_nginx(ctx: FaultContext) -> None:
    _stop_loop(ctx)
    ctx.stack.restore_nginx_config()
    ctx.services.reload("nginx")
    server = ctx.state.pop("dns", None)
    if isinstance(server, NxDomainServer):
        server.stop()


def _deny_tcp_connect(ctx: FaultContext) -> None:
    stack = ctx.stack
    (stack.selinux_root / "booleans").mkdir(parents=True, exist_ok=True)
    (stack.selinux_root / "enforce").write_text("1", encoding="ascii")
    (stack.selinux_root / "booleans" / "httpd_can_network_connect").write_text("0 0", encoding="ascii")
    stack.deny_connect_flag.touch()
    ctx.services.restart("nginx")
    _loop(ctx, "/api/health")


def _allow_tcp_connect(ctx: FaultContext) -> None:
    _stop_loop(ctx)
    ctx.stack.deny_connect_flag.unlink(missing_ok=True)
    ctx.services.restart("nginx")
    shutil.rmtree(ctx.stack.selinux_root, ignore_errors=True)


def _no_seccomp(ctx: FaultContext) -> str | None:
    if ctx.stack.nginx_argv()[0] == ctx.stack.nginx_binary:
        return f"no seccomp filter for {os.uname().machine}: nginx cannot be refused TCP connects here"
    return None


class NxDomainServer:
    """A DNS server on loopback that answers every query NXDOMAIN (name does not exist), for real."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self.port: int = self._sock.getsockname()[1]
        self.answered = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="nxdomain", daemon=True)

    def start(self) -> NxDomainServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                query, peer = self._sock.recvfrom(512)
            except (TimeoutError, OSError):
                continue
            answer = nxdomain(query)
            if answer is not None:
                with contextlib.suppress(OSError):
                    self._sock.sendto(answer, peer)
                    self.answered += 1


def nxdomain(query: bytes) -> bytes | None:
    """The NXDOMAIN answer to a DNS query: its id and question, QR RD RA set, RCODE 3."""
    if len(query) < 12:
        return None
    ident, flags, qdcount = struct.unpack("!HHH", query[:6])
    end = 12
    while end < len(query) and query[end] != 0:
        end += query[end] + 1
    question = query[12 : end + 5]
    rd = flags & 0x0100
    return struct.pack("!HHHHHH", ident, 0x8083 | rd, min(qdcount, 1), 0, 0, 0) + question


LOG_FAULTS: tuple[Fault, ...] = (
    Fault("php_header_too_big", Cause.UPSTREAM_HEADER_TOO_BIG, "a PHP script sends a 16 KiB header",
          _big_header, _remove_script(BIG_HEADER_SCRIPT)),
    Fault("php_worker_segfault", Cause.PHP_FPM_WORKERS_CRASHING, "a PHP worker dies of SIGSEGV mid-request",
          _crash, _remove_script(CRASH_SCRIPT)),
    Fault("php_request_terminated", Cause.UPSTREAM_REQUEST_KILLED,
          "request_terminate_timeout 1s, requests of 2s, fastcgi_read_timeout 3s", _terminate_early, _pool_heal),
    Fault("listen_backlog_tiny", Cause.LISTEN_BACKLOG_FULL, "listen.backlog 0, one worker, bursts of requests",
          _tiny_backlog, _pool_heal),
    Fault("fastcgi_pass_to_http", Cause.UPSTREAM_PROTOCOL_MISMATCH, "fastcgi_pass pointed at the backend's HTTP port",
          _fastcgi_to_http, _restore_nginx),
    Fault("proxy_pass_https_to_plain", Cause.UPSTREAM_TLS_FAILED, "proxy_pass https:// to the backend's plain port",
          _https_to_plain, _restore_nginx),
    Fault("worker_connections_tiny", Cause.NGINX_CONNECTIONS_EXHAUSTED,
          "worker_connections 5 and 8 concurrent slow requests", _few_connections, _restore_nginx),
    Fault("tcp_connect_denied", Cause.SELINUX_DENIED,
          "nginx restarted with TCP connects refused (EACCES), SELinux's state files saying enforcing",
          _deny_tcp_connect, _allow_tcp_connect, _no_seccomp),
    Fault("upstream_name_unresolvable", Cause.UPSTREAM_HOST_NOT_FOUND,
          f"proxy_pass to {UNRESOLVABLE} through a resolver that answers NXDOMAIN", _unresolvable, _restore_nginx),
)  # fmt: skip
