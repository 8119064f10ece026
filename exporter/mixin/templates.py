"""Pieces of Prometheus alert templates (Go ``text/template``) and PromQL literals."""

from __future__ import annotations

import re
from dataclasses import dataclass

INSTANCE = "{{ $labels.instance }}"
"""The alert's instance in a summary or description."""

_PLACEHOLDER_RE = re.compile(r"\{([a-z_]+)\}")
_METRIC_RE = re.compile(r"(?<![\w:])(badgateway_[a-z0-9_]+)(?![\w:])(\{\s*\}?)?")
_GROUPING_RE = re.compile(r"\b(by|on) \(instance\b")
_IDENTITY_SLOT = "instance=%q"


@dataclass(frozen=True)
class Scope:
    """What identifies one host in the rules: the labels every aggregation, join and inhibition keeps
    (``identity_labels``, always with ``instance``), and label matchers added to every series the rules
    read (``selector``, e.g. ``job="badgateway"``; empty: none).
    """

    labels: tuple[str, ...] = ("instance",)
    selector: str = ""

    @property
    def by(self) -> str:
        """The identity labels as a ``by (…)`` list: ``cluster, instance``."""
        return ", ".join(self.labels)

    def series(self, promql: str) -> str:
        """``promql`` with :attr:`selector` added to every ``badgateway_*`` series it reads."""
        if not self.selector:
            return promql

        def add(match: re.Match[str]) -> str:
            braces = match.group(2)
            if braces is None or braces.replace(" ", "") == "{}":
                return f"{match.group(1)}{{{self.selector}}}"
            return f"{match.group(1)}{{{self.selector},"

        return _METRIC_RE.sub(add, promql)

    def expr(self, promql: str) -> str:
        """An alert or recording expression scoped: every ``by (instance…)`` and ``on (instance…)`` keeps
        all identity labels, every series carries the selector.
        """
        grouped = _GROUPING_RE.sub(lambda m: f"{m.group(1)} ({self.by}", promql)
        return self.series(grouped)


DEFAULT_SCOPE = Scope()


def promql_string(text: str) -> str:
    """A PromQL double-quoted string literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def query(promql: str, *more: str, scope: Scope = DEFAULT_SCOPE) -> str:
    """A ``query`` call for the alert's host.

    Each ``instance=%q`` in ``promql`` matches the alert's identity labels (``$labels.instance``, and
    ``$labels.cluster`` … when :attr:`Scope.labels` has more); every other ``%q`` takes the values in
    ``more``, in order. Without ``more``, every ``%q`` is the instance.
    """
    if not more:
        promql = promql.replace("instance=%q", "%q").replace("%q", _IDENTITY_SLOT)
    promql = scope.series(promql)
    args = [f"$labels.{label}" for label in scope.labels]
    extra = iter(range(len(args) + 1, len(args) + len(more) + 1))
    pieces = promql.split("%q")
    slots: list[int] = []
    out: list[str] = [pieces[0]]
    for piece in pieces[1:]:
        if out[-1].endswith("instance="):
            out[-1] = out[-1].removesuffix("instance=")
            out.append(",".join(f"{label}=%[{n}]q" for n, label in enumerate(scope.labels, start=1)))
            slots.extend(range(1, len(args) + 1))
        else:
            slots.append(next(extra))
            out.append(f"%[{slots[-1]}]q")
        out.append(piece)
    text = "".join(out)
    if slots == list(range(1, len(slots) + 1)):
        text = re.sub(r"%\[\d+\]q", "%q", text)  # each value once, in order: the plain form
    return f"query (printf `{text}` {' '.join((*args, *more))})"


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
