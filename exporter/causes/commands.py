"""Shell commands the fixes are made of, in one place so every cause says them the same way."""

from __future__ import annotations


def unit_name(unit: str) -> str:
    """``php8.2-fpm.service`` -> ``php8.2-fpm``: how a person types it."""
    return unit.removesuffix(".service")


def start(unit: str) -> str:
    return f"sudo systemctl start {unit_name(unit)}"


def restart(unit: str) -> str:
    return f"sudo systemctl restart {unit_name(unit)}"


def reload(unit: str) -> str:
    return f"sudo systemctl reload {unit_name(unit)}"


def enable(unit: str) -> str:
    return f"sudo systemctl enable {unit_name(unit)}"


def journal(unit: str) -> str:
    return f"sudo journalctl -u {unit_name(unit)} -n 50 --no-pager"


def start_enable_journal(unit: str) -> tuple[str, ...]:
    """Bring a stopped service back, keep it across reboots, and read why it stopped."""
    return start(unit), enable(unit), journal(unit)


NGINX_TEST_AND_RELOAD = "then: sudo nginx -t && sudo systemctl reload nginx"
