"""PHP-FPM's configuration on disk fails ``php-fpm -t``: PHP-FPM cannot start (or restart, or reload)."""

from __future__ import annotations

from exporter.causes import commands
from exporter.causes.model import AlertText, Cause, CauseSpec, Inhibition

SPEC = CauseSpec(
    cause=Cause.PHP_FPM_CONFIG_INVALID,
    alert="PhpFpmConfigInvalid",
    title="PHP-FPM's configuration on disk fails php-fpm -t",
    status_code=502,
    evidence=("php_fpm_config",),
    page=AlertText(
        summary="PHP-FPM's configuration on {instance} fails php-fpm -t",
        meaning="php-fpm -t fails on {instance}: PHP-FPM cannot start with the configuration on disk"
        " (a running PHP-FPM dies at its next restart or reload), and nginx answers 502 for every PHP page"
        " while it is down. Starting it again fails until the file is fixed.",
        for_seconds=60,
    ),
    faults=("php_fpm_config_broken",),
    explains=(
        Inhibition(
            ("PhpFpmDown",),
            why="PHP-FPM is down because its configuration does not load: starting it fails until the"
            " file is fixed",
        ),
    ),
    latent_while_serving=True,
    serving="php_fpm",
)


def fix_file(file: str | None, line: int | None, unit: str, binary: str, running: bool) -> tuple[str, ...]:
    """Fix the file PHP-FPM names, test it, then start (or restart) PHP-FPM."""
    where = f"{file}:{line}" if file and line else (file or "the file php-fpm -t names")
    then = commands.restart(unit) if running else commands.start(unit)
    return f"fix {where}, then: {commands.php_fpm_test(binary)}", then
