"""nginx cannot resolve an upstream's name (a Docker or Kubernetes service name, a typo)."""

from __future__ import annotations

from exporter.causes import commands
from exporter.causes.model import AlertText, Cause, CauseSpec

SPEC = CauseSpec(
    cause=Cause.UPSTREAM_HOST_NOT_FOUND,
    alert="UpstreamHostNotFound",
    title="nginx cannot resolve an upstream's name",
    status_code=502,
    evidence=("logs", "nginx_config"),
    page=AlertText(
        summary="nginx cannot resolve an upstream's name on {instance} (nginx answers 502)",
        meaning="nginx on {instance} logs 'could not be resolved' or 'host not found in upstream': the"
        " upstream's name (a container or service name, a typo) does not resolve, and nginx answers 502"
        " (or refuses to load the configuration).",
        for_seconds=60,
    ),
    faults=("upstream_name_unresolvable",),
)


def resolve(name: str, where: str, resolver: str) -> tuple[str, ...]:
    """``name`` (from ``where``) does not resolve through ``resolver`` (``HOST`` or ``HOST:PORT``)."""
    host, _, port = resolver.partition(":") if resolver.count(":") == 1 else (resolver, "", "")
    dig = f"dig -p {port} @{host} {name}" if port else f"dig @{host} {name}"
    return (
        f"getent hosts {name}; {dig}   # does it resolve, and where",
        f"in {where}: fix the name, start the container/service it names, or set a resolver that knows it"
        " (Docker: resolver 127.0.0.11 valid=10s;)",
        commands.NGINX_TEST_AND_RELOAD,
    )
