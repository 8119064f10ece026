"""The backend's database: found where the backend finds it, probed as pg_isready does, on a real PostgreSQL 15.

Each test starts its own throwaway cluster on 127.0.0.1 in a temporary folder
(:class:`exporter.demo.postgres.Postgres`: initdb + pg_ctl, as ``postgres`` when root) and stops it
for real (``pg_ctl stop``): accepting, rejecting while it shuts down, no response once stopped.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import wait_until
from harness.exporters import running_exporter, stack_config

from exporter.causes import Cause
from exporter.checks.database import (
    DatabaseCheck,
    DatabaseTarget,
    probe,
    startup_message,
    target_from_environment,
    target_from_url,
    unit_file_environment,
)
from exporter.config import DatabaseSettings
from exporter.deadline import Deadline
from exporter.demo.postgres import Postgres, find_bindir
from exporter.demo.stack import Stack, http_status, make_root
from exporter.diagnosis import diagnose
from exporter.rounds import Prober

NEEDS_POSTGRES = pytest.mark.skipif(find_bindir() is None, reason="postgresql-15 is not installed")


@pytest.fixture
def postgres() -> Iterator[Postgres]:
    pg = Postgres()
    try:
        pg.start()
        yield pg
    finally:
        pg.close()


def _target(pg: Postgres) -> DatabaseTarget:
    return DatabaseTarget("127.0.0.1", pg.port, "test")


def _isready(pg: Postgres) -> int:
    argv = [str(pg.bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(pg.port), "-t", "2"]
    return subprocess.run(argv, capture_output=True, timeout=10, check=False).returncode


@NEEDS_POSTGRES
def test_accepting_then_no_response_once_stopped_as_pg_isready_says(postgres: Postgres) -> None:
    assert probe(_target(postgres), Deadline.after(2.0)) == ("accepting", None)
    assert _isready(postgres) == 0
    postgres.stop()
    state, detail = probe(_target(postgres), Deadline.after(2.0))
    assert state == "no_response" and "Connection refused" in (detail or "")
    assert _isready(postgres) == 2
    # A unix socket in the cluster's folder (host = the folder, as libpq takes it).
    postgres.start()
    assert (
        probe(DatabaseTarget(str(postgres.root), postgres.port, "test"), Deadline.after(2.0))[0]
        == "accepting"
    )


@NEEDS_POSTGRES
def test_rejecting_while_it_shuts_down(postgres: Postgres) -> None:
    """``pg_ctl stop -m smart`` waits for the open session; meanwhile new ones are refused (57P03)."""
    session = socket.create_connection(("127.0.0.1", postgres.port), timeout=5)
    try:
        session.sendall(startup_message("postgres", "postgres"))
        assert session.recv(1) == b"R"  # logged in (trust): the session stays open
        stop = [str(postgres.bindir / "pg_ctl"), "-D", str(postgres.data), "-m", "smart", "-W", "stop"]
        subprocess.run(stop, capture_output=True, timeout=10, check=True, user=postgres.user)
        seen: list[tuple[str, str | None]] = []

        def rejecting() -> bool:
            seen[:] = [probe(_target(postgres), Deadline.after(2.0))]
            return seen[0][0] == "rejecting"

        wait_until(rejecting, 10, "new connections to be refused", detail=lambda: str(seen))
        assert "shutting down" in (seen[0][1] or "") and "57P03" in (seen[0][1] or "")
        assert _isready(postgres) == 1  # pg_isready says the same: rejecting
    finally:
        session.sendall(b"X\0\0\0\4")
        session.close()
    wait_until(
        lambda: probe(_target(postgres), Deadline.after(1.0))[0] == "no_response", 15, "the server to stop"
    )
    postgres.running = False


def test_a_database_that_never_answers_is_cut_at_the_deadline() -> None:
    """A listener that accepts and never writes (a hung server): no_response when the deadline passes."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    thread = threading.Thread(target=lambda: accepted.append(server.accept()[0]), daemon=True)
    thread.start()
    try:
        check = DatabaseCheck(
            DatabaseSettings(url=f"postgresql://app@127.0.0.1:{server.getsockname()[1]}/shop", timeout_seconds=5.0),
            r"\bno-such-backend\b", None,
        )  # fmt: skip
        started = time.monotonic()
        result = check.run(Deadline.after(0.5))
        took = time.monotonic() - started
    finally:
        thread.join(5)
        for conn in accepted:
            conn.close()
        server.close()
    assert took < 1.0
    assert result.state == "no_response" and "no answer before the deadline" in (result.detail or "")
    assert result.target is not None and (result.target.user, result.target.database) == ("app", "shop")


def test_where_the_database_is_read_from() -> None:
    assert target_from_url("postgresql+psycopg://shop:secret@db.internal:6432/shop", "x") == DatabaseTarget(
        "db.internal", 6432, "x", "shop", "shop"
    )
    assert target_from_url("postgres:///shop?host=/run/postgresql", "x") == DatabaseTarget(
        "/run/postgresql", 5432, "x", "postgres", "shop"
    )
    assert target_from_url("mysql://db/shop", "x") is None
    env = {"POSTGRES_HOST": "10.0.0.5", "POSTGRES_PORT": "5433", "POSTGRES_USER": "app"}
    found = target_from_environment(env, "environment of PID 7")
    assert found is not None and (found.address, found.source) == (
        "10.0.0.5:5433",
        "environment of PID 7 (POSTGRES_HOST)",
    )


def test_a_unit_files_environment_and_environment_file(tmp_path: Path) -> None:
    env_file = tmp_path / "shop.env"
    env_file.write_text(
        '# the backend\nexport DATABASE_URL="postgresql://shop@127.0.0.1:5544/shop"\n', encoding="utf-8"
    )
    unit = f'[Service]\nEnvironment="PGPORT=1" LANG=C\nEnvironmentFile=-{env_file}\nExecStart=/usr/bin/uvicorn app:app\n'
    env = unit_file_environment(unit)
    assert env == {"PGPORT": "1", "LANG": "C", "DATABASE_URL": "postgresql://shop@127.0.0.1:5544/shop"}
    (tmp_path / "shop.service").write_text(unit, encoding="utf-8")
    check = DatabaseCheck(DatabaseSettings(), r"\bno-such-backend\b", "shop.service", [str(tmp_path)])
    located = check.locate()
    assert located is not None and located.address == "127.0.0.1:5544"
    assert located.source == f"{tmp_path}/shop.service (DATABASE_URL)"


@pytest.fixture
def db_stack(postgres: Postgres) -> Iterator[Stack]:
    """The real stack whose backend has DATABASE_URL (its /health checks the database)."""
    root = make_root()
    stack = Stack(root, backend_env={"DATABASE_URL": postgres.url})
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
        shutil.rmtree(root, ignore_errors=True)


@NEEDS_POSTGRES
def test_postgres_stopped_behind_the_backend_is_database_down(postgres: Postgres, db_stack: Stack) -> None:
    config = stack_config(db_stack)
    prober = Prober(config)
    try:
        healthy = prober.run_round(5.0)
        assert healthy.database is not None and healthy.database.state == "accepting"
        assert healthy.database.target is not None
        assert healthy.database.target.source.endswith("(DATABASE_URL)")
        assert healthy.database.target.source.startswith("environment of PID ")  # the running uvicorn's
        assert diagnose(healthy, config).causes == frozenset()

        postgres.stop()  # for real
        assert http_status(db_stack.backend_port, "/health", 2.0) == 503
        down = diagnose(prober.run_round(5.0), config)
        assert down.causes == {Cause.DATABASE_DOWN}  # not backend_unhealthy: explained
        (step,) = [f for f in down.findings if f.step == "database"]
        assert step.facts.socket == f"127.0.0.1:{postgres.port}"
        assert down.fix(Cause.DATABASE_DOWN)[0] == f"pg_isready -h 127.0.0.1 -p {postgres.port}"
        with running_exporter(config) as exporter:
            scrape = exporter.scrape()
        assert scrape.value("badgateway_database_state", state="no_response") == 1
        assert (
            scrape.value(
                "badgateway_database_info", address=f"127.0.0.1:{postgres.port}", source="environment"
            )
            == 1
        )
        assert scrape.value("badgateway_cause", cause="database_down") == 1
        assert scrape.value("badgateway_cause", cause="backend_unhealthy") == 0

        postgres.start()
        assert diagnose(prober.run_round(5.0), config).causes == frozenset()
    finally:
        prober.close()


def test_a_backend_running_without_a_database_forgets_the_last_one_found(tmp_path: Path) -> None:
    """The last database found stands in while no backend process can be read (it is down); a running
    backend whose environment names none has none (the database was taken out of its configuration)."""
    marker = f"badgateway-db-forget-{time.monotonic_ns()}"
    check = DatabaseCheck(DatabaseSettings(), rf"\b{marker}\b", None, unit_dirs=())
    check._last_target = DatabaseTarget("127.0.0.1", 5432, "environment of PID 1 (DATABASE_URL)")
    assert check.locate() == check._last_target  # no backend process: the last one stands
    backend = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)", marker], env={"PATH": "/usr/bin"}
    )
    try:
        wait_until(lambda: Path(f"/proc/{backend.pid}/cmdline").read_bytes().endswith(marker.encode() + b"\0"),
                   5.0, "the stand-in backend to run")  # fmt: skip
        assert check.locate() is None
        assert check._last_target is None
    finally:
        backend.kill()
        backend.wait(timeout=5)
