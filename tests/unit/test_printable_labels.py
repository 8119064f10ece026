"""Label values reach /metrics printable: control characters escaped, ``fix``'s newlines kept."""

from __future__ import annotations

from exporter.app import printable_labels
from exporter.families import GaugeMetricFamily


def _family(*rows: tuple[str, str]) -> GaugeMetricFamily:
    family = GaugeMetricFamily("badgateway_x", "x", labels=["socket", "fix"])
    for row in rows:
        family.add_metric(list(row), 1.0)
    return family


def test_control_characters_are_escaped_and_fix_keeps_its_lines() -> None:
    clean = ("/run/php/a.sock", "systemctl start php8.2-fpm")
    hostile = ("/run/php/\x1b[2Jb.sock", "line one\nline\x07two")
    for _ in range(2):  # the second time the clean row is known printable: the same answer
        (family,) = printable_labels([_family(clean, hostile)])
        assert [row for row, _ in family.rows] == [
            clean,
            ("/run/php/\\x1b[2Jb.sock", "line one\nline\\x07two"),
        ]


def test_a_family_with_nothing_to_escape_is_left_as_it_is() -> None:
    family = _family(("/run/php/c.sock", "fix\nsecond line"))
    rows = family.rows
    (out,) = printable_labels([family])
    assert out.rows is rows
