"""The sockets check walks a socket's folders as pathlib would, without pathlib's objects."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.checks.sockets import _folders

PATHS = [
    "/run/php/php8.2-fpm.sock",
    "/x.sock",
    "/run//php/x.sock",
    "/run/php/",
    "/a/b/../c/x.sock",
    "/a/./b/x.sock",
    "rel/x.sock",
    "./x/y.sock",
    "x.sock",
    "/",
    ".",
    "/var/www/site with space/app.sock",
]


@pytest.mark.parametrize("path", PATHS)
def test_the_folders_are_pathlibs_parents_outermost_first(path: str) -> None:
    assert _folders(path) == [str(folder) for folder in reversed(Path(path).parents)]
