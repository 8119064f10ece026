"""``php-fpm -t``: does PHP-FPM's configuration on disk load (and if not, which file and line)?"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from exporter.causes import Cause, Facts, Finding, Verdict, php_fpm_config_invalid, php_fpm_down
from exporter.checks.php_fpm_config import php_fpm_binary
from exporter.diagnosis.context import StepContext
from exporter.discovery.units import default_php_fpm_unit

TITLE = "php-fpm -t accepts PHP-FPM's configuration"
STEP = "php_fpm_config"


@dataclass(frozen=True)
class ConfigProblem:
    """Why PHP-FPM's configuration does not load: from ``php-fpm -t``, else from its unit's journal."""

    message: str
    file: str | None
    line: int | None
    binary: str
    source: str  # "php-fpm -t" or "journal"


def invalid_config(ctx: StepContext) -> ConfigProblem | None:
    """``php-fpm -t``'s verdict when it failed; without a verdict, the ``ERROR: [FILE:LINE]`` of the journal."""
    result = ctx.results.php_fpm_config
    if result is not None and result.valid is False:
        return ConfigProblem(
            result.message or "test failed", result.file, result.line, result.binary, "php-fpm -t"
        )
    if result is not None and result.valid is True:
        return None
    said = _journal_error(ctx)
    if said is None or said[1] is None:
        return None
    binary = result.binary if result is not None else php_fpm_binary(ctx.config)
    return ConfigProblem(said[0], said[1], said[2], binary, "journal")


def _journal_error(ctx: StepContext) -> tuple[str, str | None, int | None] | None:
    units = ctx.results.units
    wanted = ctx.config.units.php_fpm or default_php_fpm_unit()
    if units is None or not units.available:
        return None
    unit = next((u for u in units.units if u.name == wanted), None)
    return unit.journal.php_fpm_error if unit is not None and unit.journal is not None else None


def php_fpm_start_fix(ctx: StepContext, unit: str) -> tuple[str, ...]:
    """How to bring PHP-FPM back: start it, or first fix the file ``php-fpm -t`` names."""
    problem = invalid_config(ctx)
    if problem is None:
        return php_fpm_down.start(unit)
    return php_fpm_down.start_after_fix(problem.file, problem.line, unit, problem.binary)


def php_fpm_test(ctx: StepContext, earlier: Sequence[Finding]) -> list[Finding]:
    """``php-fpm8.2 -t``: the file and line PHP-FPM cannot load."""
    del earlier
    result = ctx.results.php_fpm_config
    problem = invalid_config(ctx)
    if problem is not None and problem.source == "journal":
        return [_failed(ctx, problem, "PHP-FPM's journal (php-fpm -t gave no verdict)")]
    if not ctx.config.php_fpm_test.test:
        return [Finding(STEP, TITLE, Verdict.SKIP, ("disabled",))]
    if result is None:
        return [ctx.not_checked(STEP, TITLE)]
    command = " ".join(result.command)
    if result.valid is None:
        return [
            Finding(STEP, TITLE, Verdict.SKIP, (f"could not run {command}: {result.message}",),
                    fix=(f"sudo {result.binary.rsplit('/', 1)[-1]} -t",))
        ]  # fmt: skip
    if result.valid or problem is None:
        return [Finding(STEP, TITLE, Verdict.OK, (command,))]
    return [_failed(ctx, problem, f"$ {command}")]


def _failed(ctx: StepContext, problem: ConfigProblem, how: str) -> Finding:
    unit = ctx.units["php_fpm"]
    running = ctx.answering["php_fpm"] or bool(ctx.running.get("php_fpm"))
    where = f"{problem.file}:{problem.line}" if problem.file and problem.line else problem.file
    title = f"php-fpm -t fails: {where}" if where else "php-fpm -t fails"
    evidence = [how, problem.message]
    evidence.append(
        "PHP-FPM still runs its previous configuration: do not restart or reload it before php-fpm -t passes"
        if running
        else "PHP-FPM is not running and cannot start with this configuration: starting it fails again"
    )
    return Finding(
        STEP, title, Verdict.FAIL, tuple(evidence), Cause.PHP_FPM_CONFIG_INVALID,
        php_fpm_config_invalid.fix_file(problem.file, problem.line, unit, problem.binary, running),
        Facts(unit=unit, file=problem.file or "", line=problem.line),
    )  # fmt: skip
