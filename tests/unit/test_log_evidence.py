"""Pure functions behind log evidence: episodes and their window, what explains a line, incidents,
the NXDOMAIN answer and the seccomp program of the demo's faults."""

from __future__ import annotations

import struct

import pytest

from exporter.causes import Cause
from exporter.config import config_from_dict
from exporter.demo.deny_connect import program
from exporter.demo.log_faults import nxdomain
from exporter.diagnosis.explain import explained, explainers, upstream_role
from exporter.logs.episodes import Episode, EpisodeIndex, EpisodeKey, line_epoch
from exporter.logs.incidents import incidents
from exporter.logs.lines import classify_line, nginx_cause, phpfpm_cause

KEY = EpisodeKey("/var/log/nginx/error.log", "nginx", "header_too_big", "unix:/run/php.sock",
                 Cause.UPSTREAM_HEADER_TOO_BIG)  # fmt: skip


def test_lines_within_the_window_are_one_episode_and_a_gap_starts_another() -> None:
    index = EpisodeIndex(window_seconds=300)
    for when in (1000.0, 1100.0, 1390.0):
        index.add(KEY, when, 2, f"line at {when:g}")
    index.add(KEY, 1391.0 + 300.5, 1, "after the gap")
    first, second = index.episodes()
    assert (first.first, first.last, first.count, first.line) == (1000.0, 1390.0, 6, "line at 1390")
    assert (second.first, second.count, second.line) == (1691.5, 1, "after the gap")
    assert first.current(now=1690.0, window=300) and not first.current(now=1691.0, window=300)


def test_an_older_line_read_late_never_replaces_the_newest() -> None:
    index = EpisodeIndex(window_seconds=300)
    index.add(KEY, 2000.0, 1, "newest")
    index.add(KEY, 1990.0, 1, "older, read later")
    (episode,) = index.episodes()
    assert (episode.first, episode.last, episode.line) == (1990.0, 2000.0, "newest")


def test_the_index_stays_bounded_whatever_the_keys() -> None:
    index = EpisodeIndex(window_seconds=10, max_episodes=8)
    for i in range(1000):
        index.add(EpisodeKey("/l", "nginx", "read_timeout", f"10.0.0.{i}:80"), float(i))
    kept = index.episodes()
    assert len(kept) <= 8 and kept[-1].key.where == "10.0.0.999:80"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("2026-12-01 10:00:00", True), (None, False), ("2026-13-01 10:00:00", False), ("garbage", False)],
)
def test_line_epoch_parses_the_shape_line_time_writes(text: str | None, expected: bool) -> None:
    assert (line_epoch(text, -1.0) != -1.0) is expected


@pytest.mark.parametrize(
    ("kind", "upstream", "cause"),
    [
        ("permission_denied", "unix:/run/php/php8.2-fpm.sock", Cause.SOCKET_PERMISSION_DENIED),
        ("permission_denied", "127.0.0.1:8000", Cause.SELINUX_DENIED),
        ("permission_denied", None, None),
        ("connection_refused", "127.0.0.1:8000", None),  # down or restarted: only the context decides
        ("protocol_mismatch", "127.0.0.1:8000", Cause.UPSTREAM_PROTOCOL_MISMATCH),
        ("read_timeout", "127.0.0.1:8000", Cause.UPSTREAM_TIMEOUT),
    ],
)
def test_the_cause_one_nginx_line_proves(kind: str, upstream: str | None, cause: Cause | None) -> None:
    assert nginx_cause(kind, upstream) is cause


@pytest.mark.parametrize(
    ("signal", "cause"),
    [("SIGSEGV", Cause.PHP_FPM_WORKERS_CRASHING), ("7", Cause.PHP_FPM_WORKERS_CRASHING),
     ("SIGABRT", Cause.PHP_FPM_WORKERS_CRASHING), ("SIGTERM", None), ("SIGKILL", None)],
)  # fmt: skip
def test_only_a_crash_signal_is_workers_crashing(signal: str, cause: Cause | None) -> None:
    assert phpfpm_cause("child_killed", signal) is cause


def test_a_line_without_any_known_shape_is_nginx_and_no_evidence() -> None:
    line = classify_line(b"\x00\xff random bytes")
    assert (line.source, line.kind, line.cause) == ("nginx", "none", None)


CONFIG = config_from_dict({
    "php_fpm": [{"socket": "/run/php/php8.2-fpm.sock"}],
    "http": [{"name": "backend", "url": "http://127.0.0.1:8000/health", "role": "backend"}],
    "discovery": {"enabled": False},
})  # fmt: skip


def test_an_upstreams_role_comes_from_the_probes_it_is_one_of() -> None:
    assert upstream_role(CONFIG, "unix:/run/php/php8.2-fpm.sock") == "php_fpm"
    assert upstream_role(CONFIG, "127.0.0.1:8000") == "backend"
    assert upstream_role(CONFIG, "10.9.9.9:80") is None


def test_php_fpms_causes_never_explain_the_backends_lines() -> None:
    assert Cause.PHP_FPM_DOWN not in explainers("connection_refused", "backend")
    assert Cause.BACKEND_DOWN in explainers("connection_refused", "backend")
    assert Cause.MEMORY_EXHAUSTED in explainers("connection_refused", "php_fpm")  # the host's: any upstream
    assert explainers("no_live_upstreams", None) == frozenset(Cause)


def _episode(
    kind: str, first: float, last: float, cause: Cause | None = None, source: str = "nginx"
) -> Episode:
    return Episode(EpisodeKey("/l", source, kind, "127.0.0.1:8000", cause), first, last, 3, f"{kind} line")


def test_refused_lines_of_an_upstream_that_answers_again_are_over() -> None:
    refused = _episode("connection_refused", 900.0, 990.0)
    assert explained(refused, frozenset(), "backend", answering=True, now=991.0)  # the probe reaches it now
    assert not explained(refused, frozenset(), "backend", answering=False, now=1010.0)
    assert explained(refused, frozenset({Cause.BACKEND_DOWN}), "backend", answering=False, now=1000.0)


def test_resets_of_an_upstream_that_answers_are_over_after_a_quiet_while() -> None:
    resets = _episode("connection_reset", 900.0, 990.0)
    assert not explained(
        resets, frozenset(), "backend", answering=True, now=1000.0
    )  # 10 s ago: maybe ongoing
    assert explained(resets, frozenset(), "backend", answering=True, now=1010.0)


def test_a_generic_incident_is_explained_by_an_incident_of_a_cause_at_the_same_time() -> None:
    resets = _episode("connection_reset", 100.0, 160.0)
    crashes = _episode("child_killed", 101.0, 159.0, Cause.PHP_FPM_WORKERS_CRASHING, "php-fpm")
    later = _episode("connection_reset", 5000.0, 5010.0)
    found = [(i.episode.first, i.cause, i.by) for i in incidents([later, crashes, resets])]
    assert found == [
        (100.0, Cause.PHP_FPM_WORKERS_CRASHING, "overlap"),
        (101.0, Cause.PHP_FPM_WORKERS_CRASHING, "line"),
        (5000.0, None, ""),
    ]


def test_the_nxdomain_answer_keeps_the_id_and_question() -> None:
    question = b"\x0bbackend-svc\x07invalid\x00\x00\x01\x00\x01"
    query = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + question
    answer = nxdomain(query)
    assert answer is not None
    ident, flags, qd, an, ns, ar = struct.unpack("!HHHHHH", answer[:12])
    assert (ident, flags & 0x000F, flags & 0x8000, qd, an, ns, ar) == (0x1234, 3, 0x8000, 1, 0, 0, 0)
    assert answer[12:] == question
    assert nxdomain(b"short") is None


def test_the_seccomp_program_refuses_only_a_16_byte_connect() -> None:
    rows = program(0xC000003E, 42)
    assert rows[3] == (0x15, 0, 3, 42) and rows[5] == (0x15, 0, 1, 16)
    assert rows[6][3] == 0x00050000 | 13 and rows[7][3] == 0x7FFF0000
    for index, (code, jt, jf, _k) in enumerate(rows):  # every jump lands inside the program
        if code == 0x15:
            assert index + 1 + max(jt, jf) < len(rows)


def test_refused_lines_before_the_service_restarted_are_the_old_process_s() -> None:
    refused = _episode("connection_refused", 900.0, 990.0)
    # PHP-FPM restarted at 995 (into a full backlog: its probe fails): the refusals were the restart's
    assert explained(refused, frozenset(), "php_fpm", answering=False, now=1000.0, started_at=995.0)
    assert not explained(refused, frozenset(), "php_fpm", answering=False, now=1000.0, started_at=980.0)
