"""The backend's database does not accept connections: the backend runs, its health check fails."""

from __future__ import annotations

from exporter.causes import commands
from exporter.causes.model import AlertText, Cause, CauseSpec, Inhibition

SPEC = CauseSpec(
    cause=Cause.DATABASE_DOWN,
    alert="DatabaseDown",
    title="The backend's database does not accept connections",
    status_code=502,
    evidence=("database", "http"),
    page=AlertText(
        summary="The backend's database is down on {instance}",
        meaning="The database the Python backend on {instance} uses does not accept connections (as"
        " pg_isready sees it): the backend runs, but its health check and every page that needs the"
        " database fail.",
        for_seconds=60,
    ),
    faults=("database_stopped",),
    explains=(
        Inhibition(
            ("BackendUnhealthy",),
            why="the backend answers with errors because its database does not accept connections",
        ),
    ),
)


def start(address: str, unit: str, backend: str) -> tuple[str, ...]:
    """Bring the database back (its unit on this host when it is local), then check the backend."""
    local = address.startswith(("127.", "localhost", "[::1]", "/"))
    first = (
        f"{commands.start(unit)}   # the database on this host"
        if local
        else f"# the database at {address} is not on this host: bring it back there"
    )
    return f"pg_isready -h {_host(address)} -p {_port(address)}", first, commands.journal(backend)


def _host(address: str) -> str:
    if address.startswith("/"):
        return address.rsplit("/.s.PGSQL.", 1)[0]
    return address.rsplit(":", 1)[0].strip("[]")


def _port(address: str) -> str:
    if address.startswith("/"):
        return address.rsplit(".", 1)[-1]
    return address.rsplit(":", 1)[-1]
