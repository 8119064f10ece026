"""The pure parts of ``badgateway-exporter fleet``: since when a cause holds, host names, escaping."""

from __future__ import annotations

import math

from exporter.fleet.cli import _ago, _safe
from exporter.fleet.prometheus import Series
from exporter.fleet.view import _run_start, host_key, host_name


def _series(*times: float) -> Series:
    return Series({"cause": "php_fpm_down"}, tuple((t, 1.0) for t in times))


def test_since_is_the_start_of_the_last_unbroken_run() -> None:
    # 1 s steps over [100, 200]: a first episode 110-120, a gap, the current one from 150.
    points = [*range(110, 121), *range(150, 201)]
    assert _run_start(_series(*points), 100, 200, 1.0) == (150, False)


def test_a_run_from_the_start_of_the_lookback_may_be_older() -> None:
    assert _run_start(_series(*range(100, 201)), 100, 200, 1.0) == (100, True)


def test_a_run_that_ended_is_no_start() -> None:
    assert _run_start(_series(*range(110, 150)), 100, 200, 1.0) == (None, False)
    assert _run_start(Series({}, ((200.0, math.nan),)), 100, 200, 1.0) == (None, False)


def test_a_host_is_its_target_labels() -> None:
    labels = {"__name__": "badgateway_cause", "cause": "x", "job": "badgateway", "instance": "web-1:9502",
              "cluster": "eu", "region": "eu-west"}  # fmt: skip
    key = host_key(labels)
    assert dict(key) == {"job": "badgateway", "instance": "web-1:9502", "cluster": "eu", "region": "eu-west"}
    assert host_name(key) == "web-1:9502 (cluster=eu, region=eu-west)"
    assert host_key({**labels, "cluster": "us"}) != key  # the same instance in another cluster


def test_label_values_cannot_drive_the_terminal() -> None:
    assert (
        _safe("sudo systemctl start php8.2-fpm\n\x1b[2Jrm") == "sudo systemctl start php8.2-fpm\n\\x1b[2Jrm"
    )
    assert _ago(3725) == "1h2m" and _ago(0.4) == "0s"
