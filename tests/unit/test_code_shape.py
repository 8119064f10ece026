"""No function in exporter/ is a table waiting to be written: complexity and length stay bounded."""

from __future__ import annotations

import ast
from pathlib import Path

from radon.complexity import cc_visit

ROOT = Path(__file__).resolve().parents[2]
MAX_COMPLEXITY = 20
MAX_LINES = 100


def _sources() -> list[Path]:
    return sorted((ROOT / "exporter").rglob("*.py"))


def test_no_function_is_above_complexity_20() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{block.lineno} {block.name} ({block.complexity})"
        for path in _sources()
        for block in cc_visit(path.read_text(encoding="utf-8"))
        if block.complexity > MAX_COMPLEXITY
    ]
    assert not offenders, offenders


def test_no_function_is_longer_than_100_lines() -> None:
    offenders = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_LINES:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)")
    assert not offenders, offenders
