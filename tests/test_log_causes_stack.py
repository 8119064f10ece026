"""The causes only the logs prove, on a real stack: each fault injected for real, seen by ``diagnose``
and by ``/metrics``, and gone once its lines stop; forged lines and unix-socket backends."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import wait_until
from harness.exporters import diagnose_json, diagnosed_causes, running_exporter, stack_config, write_config

from exporter.demo.catalogue import FAULTS_BY_NAME
from exporter.demo.fault import FaultContext
from exporter.demo.services import ProcessServices
from exporter.demo.stack import ROOT_ENV, Stack
from exporter.discovery.merge import load_config

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: nginx workers must run as www-data")
WINDOW = 20.0  # the evidence window of these tests: a cause from the logs clears this long after


def _overrides(stack: Stack, **more: object) -> dict[str, object]:
    logs = {"nginx": [str(stack.nginx_error_log)], "php_fpm": [str(stack.php_fpm_log)], "start": "beginning",
            "evidence_window_seconds": WINDOW}  # fmt: skip
    discovery = {"nginx_config": str(stack.nginx_conf), "php_fpm_configs": [str(stack.php_fpm_conf)]}
    return {"logs": logs, "discovery": discovery, **more}


def _diagnosed(stack: Stack, **more: object) -> tuple[set[str], dict[str, Any]]:
    code, document = diagnose_json(write_config(stack, **_overrides(stack, **more)))
    assert code in (0, 1), document
    return diagnosed_causes(document), document


def _wait_for_cause(stack: Stack, cause: str) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def named() -> bool:
        causes, document = _diagnosed(stack)
        found.update(document)
        return causes == {cause}

    wait_until(
        named, 30.0, f"diagnose to name {cause} alone", interval=1.0, detail=lambda: str(found.get("causes"))
    )
    return found


@pytest.mark.parametrize(
    ("fault", "cause", "fix_words"),
    [
        ("php_header_too_big", "upstream_header_too_big", "fastcgi_buffer_size 32k;"),
        ("php_worker_segfault", "php_fpm_workers_crashing", "coredumpctl list php-fpm8.2"),
        ("proxy_pass_https_to_plain", "upstream_tls_failed", "speaks plain HTTP: proxy_pass http://"),
        ("upstream_name_unresolvable", "upstream_host_not_found", "getent hosts backend-svc.invalid"),
    ],
)
def test_a_fault_only_the_logs_show_is_named_with_its_fix_and_clears(
    stack: Stack, fault: str, cause: str, fix_words: str
) -> None:
    ctx = FaultContext(stack, ProcessServices(stack))
    injected = FAULTS_BY_NAME[fault]
    injected.inject(ctx)
    try:
        document = _wait_for_cause(stack, cause)
        (found,) = document["causes"]
        assert any(fix_words in line for line in found["fix"]), found["fix"]
        with running_exporter(load_config(str(write_config(stack, **_overrides(stack))))) as exporter:
            scrape = exporter.scrape()
        assert scrape.causes() == {cause}
        fixes = [dict(labels)["fix"] for (name, labels) in scrape.samples
                 if name == "badgateway_cause_info" and dict(labels)["cause"] == cause]  # fmt: skip
        assert any(fix_words in fix for fix in fixes), fixes
    finally:
        injected.heal(ctx)
    wait_until(lambda: _diagnosed(stack)[0] == set(), WINDOW + 20, f"{cause} to clear once its lines stop",
               interval=1.0)  # fmt: skip


def test_a_backend_slower_than_nginx_but_not_the_probe_is_upstream_timeout_from_the_logs(
    stack: Stack,
) -> None:
    # nginx waits 2 s (proxy_read_timeout); the probe waits 5 s and gets its answer in 3 s.
    http = [{"name": "backend", "url": stack.backend_url, "role": "backend", "timeout_seconds": 5.0},
            {"name": "front", "url": stack.front_url, "role": "front", "timeout_seconds": 2.0}]  # fmt: skip
    stack.set_backend_delay(3.0)
    statuses = [
        httpx.get(f"http://127.0.0.1:{stack.nginx_port}/api/health", timeout=10).status_code for _ in range(3)
    ]
    assert statuses == [504, 504, 504]
    causes, document = _diagnosed(stack, http=http)
    assert causes == {"upstream_timeout"}
    backend = next(f for f in document["findings"] if f["step"] == "http:backend")
    assert backend["verdict"] == "ok"  # the probe itself got its answer: only the logs show it


def test_a_proxy_pass_to_php_fpm_is_a_protocol_mismatch_from_the_files_alone(stack: Stack) -> None:
    # PHP-FPM resets an HTTP request: nginx logs only "recv() failed (104: ...)", the files say why.
    stack.edit_nginx_config({f"proxy_pass http://127.0.0.1:{stack.backend_port}/;":
                             f"proxy_pass http://unix:{stack.socket_path}:/;"})  # fmt: skip
    stack.reload_nginx()
    assert httpx.get(f"http://127.0.0.1:{stack.nginx_port}/api/health", timeout=10).status_code == 502
    causes, document = _diagnosed(stack)
    assert causes == {"upstream_protocol_mismatch"}
    (found,) = document["causes"]
    assert f"use fastcgi_pass unix:{stack.socket_path}" in found["fix"][0]


@ROOT_ONLY
def test_a_request_path_holding_an_upstream_error_is_no_evidence(stack: Stack) -> None:
    forged = (
        "upstream timed out (110: Connection timed out) while reading response header from upstream, client: "
        '1.2.3.4, server: x, request: "GET / HTTP/1.1", upstream: "fastcgi://unix:/run/php/FORGED.sock:", host: "x"'
    )
    with running_exporter(stack_config(stack, **_overrides(stack))) as exporter:
        for i in range(20):
            path = "/static/" + urllib.parse.quote(f"{forged} {i}", safe="")
            assert httpx.get(f"http://127.0.0.1:{stack.nginx_port}{path}", timeout=10).status_code == 404
        wait_until(lambda: b"FORGED" in stack.nginx_error_log.read_bytes(), 10.0, "nginx to log the paths")
        scrape = exporter.scrape()
    assert [
        labels for (name, labels) in scrape.samples if name == "badgateway_nginx_upstream_errors_total"
    ] == []
    causes, document = _diagnosed(stack)
    assert causes == set() and document["unexplained"] == [], document["unexplained"]


# -- unix-socket backends -------------------------------------------------------------------------------


@contextlib.contextmanager
def _uds_backend(stack: Stack) -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    """A second uvicorn listening on a unix socket, behind ``location /uds/`` of the stack's nginx."""
    sock = stack.root / "run" / "app.sock"
    package_parent = Path(__file__).resolve().parents[1]
    app = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "exporter.demo.backend:app", "--app-dir", str(package_parent),
         "--uds", str(sock)],
        env={**os.environ, ROOT_ENV: str(stack.root)}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_until(sock.exists, 15.0, f"uvicorn to listen on {sock}")
        stack.edit_nginx_config({"        location /api/ {": f"        location /uds/ {{\n            proxy_pass "
                                 f"http://unix:{sock}:/;\n        }}\n\n        location /api/ {{"})  # fmt: skip
        stack.reload_nginx()
        yield sock, app
    finally:
        app.kill()
        app.wait(timeout=10)
        stack.restore_nginx_config()
        stack.reload_nginx()


@ROOT_ONLY
def test_a_unix_socket_backend_gets_the_socket_checks_and_the_backends_causes(stack: Stack) -> None:
    with _uds_backend(stack) as (sock, app):
        assert httpx.get(f"http://127.0.0.1:{stack.nginx_port}/uds/health", timeout=10).status_code == 200
        http = [{"name": "app", "url": "http://localhost/health", "unix_socket": str(sock), "role": "backend",
                 "timeout_seconds": 2.0}, {"name": "front", "url": stack.front_url, "role": "front"}]  # fmt: skip
        causes, document = _diagnosed(stack, http=http)
        assert causes == set(), document["causes"]
        steps = {f["step"]: f for f in document["findings"]}
        assert steps[f"backend_socket:{sock}"]["verdict"] == "ok"
        assert steps["http:app"]["verdict"] == "ok"

        sock.chmod(0o600)  # root's alone: nginx's workers (www-data) get EACCES
        assert httpx.get(f"http://127.0.0.1:{stack.nginx_port}/uds/health", timeout=10).status_code == 502
        causes, document = _diagnosed(stack, http=http)
        assert causes == {"socket_permission_denied"}
        (found,) = document["causes"]
        assert found["fix"][0].startswith(f"sudo chgrp www-data {sock} && sudo chmod 660 {sock}")

        sock.chmod(0o666)
        app.kill()
        app.wait(timeout=10)  # SIGKILL: the socket file stays, nothing listens on it
        causes, document = _diagnosed(stack, http=http)
        assert causes == {"backend_down"}
        steps = {f["step"]: f for f in document["findings"]}
        assert steps[f"backend_socket:{sock}"]["title"].endswith("is stale: nothing listens on it")
