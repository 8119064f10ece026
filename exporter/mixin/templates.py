"""Pieces of Prometheus alert templates (Go ``text/template``) and PromQL literals."""

from __future__ import annotations

import re

INSTANCE = "{{ $labels.instance }}"
"""The alert's instance in a summary or description."""

_PLACEHOLDER_RE = re.compile(r"\{([a-z_]+)\}")


def promql_string(text: str) -> str:
    """A PromQL double-quoted string literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def query(promql: str, *more: str) -> str:
    """A ``query`` call: each ``%q`` in ``promql`` takes ``$labels.instance``, then the values in ``more``.

    Without ``more``, every ``%q`` is the instance.
    """
    if not more and promql.count("%q") > 1:
        promql = promql.replace("%q", "%[1]q")
    args = " ".join(("$labels.instance", *more))
    return f"query (printf `{promql}` {args})"


def join(query_call: str, item: str, empty: str) -> str:
    """Every sample of ``query_call`` as ``item`` (``$s`` is the sample), separated by commas."""
    body = f"{{{{ range $i, $s := . }}}}{{{{ if $i }}}}, {{{{ end }}}}{item}{{{{ end }}}}"
    return f"{{{{ with {query_call} }}}}{body}{{{{ else }}}}{empty}{{{{ end }}}}"


def first(query_call: str, fmt: str = "", empty: str = "unknown") -> str:
    """The value of the first sample of ``query_call`` through ``fmt`` (e.g. ``humanize``)."""
    pipe = f" | {fmt}" if fmt else ""
    return f"{{{{ with {query_call} }}}}{{{{ . | first | value{pipe} }}}}{{{{ else }}}}{empty}{{{{ end }}}}"


def first_label(query_call: str, label: str, empty: str) -> str:
    """The label ``label`` of the first sample of ``query_call``."""
    return (
        f'{{{{ with {query_call} }}}}{{{{ . | first | label "{label}" }}}}{{{{ else }}}}{empty}{{{{ end }}}}'
    )


def fill(text: str, values: dict[str, str]) -> str:
    """``text`` with every ``{name}`` replaced by ``values[name]``.

    Go's ``{{ … }}`` (always written with spaces) and PromQL selectors (``{a="b"}``) are left alone; a
    placeholder without a value is a bug of the alert table: :class:`KeyError`.
    """
    return _PLACEHOLDER_RE.sub(lambda m: values[m.group(1)], text)


def with_instance(text: str) -> str:
    """A cause spec's text (``{instance}`` for the instance) as an alert template."""
    return fill(text, {"instance": INSTANCE})
