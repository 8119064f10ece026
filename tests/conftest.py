"""Shared fixtures: a real nginx + PHP-FPM + uvicorn stack in a fresh temp folder.

The stack root is made with :func:`exporter.demo.stack.make_root` (a 0755 folder under the
system temp folder), not pytest's ``tmp_path``: pytest keeps ``/tmp/pytest-of-<user>`` at 0700
and re-tightens it whenever a session starts, and www-data workers must traverse the path.
Set ``BADGATEWAY_KEEP_STACK=1`` to keep the folders (configs and logs) after the tests.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest
from harness.tree import remove_unless_kept, require_stack_binaries

from exporter.demo.stack import Stack, StackError, make_root


class StackFactory(Protocol):
    """Signature of the ``make_stack`` fixture: the keyword arguments of :class:`Stack`."""

    def __call__(
        self, *, pm: str = "static", max_children: int = 2, request_terminate_timeout: float | None = None
    ) -> Stack: ...


@pytest.fixture
def make_stack() -> Iterator[StackFactory]:
    """A factory ``make_stack(**Stack kwargs)`` returning started stacks, all stopped at teardown."""
    require_stack_binaries()
    made: list[tuple[Stack, Path]] = []

    def factory(
        *, pm: str = "static", max_children: int = 2, request_terminate_timeout: float | None = None
    ) -> Stack:
        root = make_root()
        try:
            stack = Stack(
                root, pm=pm, max_children=max_children, request_terminate_timeout=request_terminate_timeout
            )
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
        made.append((stack, root))
        stack.start()
        return stack

    yield factory
    errors: list[str] = []
    for stack, root in reversed(made):
        try:
            stack.stop()
        except StackError as exc:
            errors.append(str(exc))
        remove_unless_kept(root)
    if errors:
        pytest.fail("stack teardown failed:\n" + "\n".join(errors))


@pytest.fixture
def stack(make_stack: StackFactory) -> Stack:
    """A started default stack (pm static, 2 children) in a fresh temp folder."""
    return make_stack()
