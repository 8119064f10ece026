"""SELinux forbids nginx (httpd_t) to connect to a TCP upstream: connect() fails with EACCES."""

from __future__ import annotations

from exporter.causes.model import AlertText, Cause, CauseSpec

SPEC = CauseSpec(
    cause=Cause.SELINUX_DENIED,
    alert="SelinuxDenied",
    title="SELinux forbids nginx to connect to the upstream",
    status_code=502,
    evidence=("logs",),
    page=AlertText(
        summary="SELinux denies nginx's connections to an upstream on {instance} (nginx answers 502)",
        meaning="nginx on {instance} gets '(13: Permission denied)' connecting to a TCP upstream: no file"
        " permission applies to a TCP connect, SELinux (or another security module) refuses it. nginx"
        " answers 502.",
        for_seconds=60,
    ),
    faults=("tcp_connect_denied",),
)

FIX_BOOLEAN: tuple[str, ...] = (
    "sudo setsebool -P httpd_can_network_connect 1",
    "sudo ausearch -m avc -ts recent | audit2why   # confirm the denial it was",
)

FIX_UNKNOWN_MODULE: tuple[str, ...] = (
    "sudo dmesg | grep -iE 'avc|apparmor|denied' | tail   # which security module refuses it",
    "allow nginx's connect to the upstream's port in that module's policy",
)
