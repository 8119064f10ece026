"""The landing page ``/`` from hand-built diagnoses: healthy, a cause now, latent only, hostile evidence.

:func:`exporter.diagnosis.html.render_html` is a pure function of a diagnosis and the round's time,
so each row says exactly what a person at a browser reads. The HTML is parsed back with the
standard library's parser: what the tests read is what a browser builds, not a substring of markup.
"""

from __future__ import annotations

from dataclasses import dataclass
from html.parser import HTMLParser

import pytest

from exporter.causes import CAUSES, Cause, Facts, Finding, Verdict
from exporter.diagnosis import Diagnosis
from exporter.diagnosis.html import STALE_AFTER_SECONDS, render_html

ROUND_AT = 1_764_626_400.0  # 2025-12-01 22:00:00 UTC
NOW = ROUND_AT + 7
HOSTILE = '<script>alert("pwned")</script> & <img src=x onerror=alert(1)>'

OK_SOCKET = Finding(
    "sockets", "PHP-FPM socket /run/php/php8.2-fpm.sock exists", Verdict.OK, ("srw-rw---- www-data",)
)
OK_BACKEND = Finding("probes", "backend answers /health", Verdict.OK, ("http://127.0.0.1:8000/health: 200",))
SKIPPED = Finding("units", "systemd units are active", Verdict.SKIP, ("systemd is not running",))
PHP_DOWN = Finding(
    "services",
    "PHP-FPM is running",
    Verdict.FAIL,
    ("no php-fpm process", "connect() to unix:/run/php/php8.2-fpm.sock failed"),
    cause=Cause.PHP_FPM_DOWN,
    fix=("sudo systemctl start php8.2-fpm", "sudo systemctl enable php8.2-fpm"),
    facts=Facts(unit="php8.2-fpm.service"),
)
CONFIG_INVALID = Finding(
    "nginx",
    "nginx -t accepts the configuration on disk",
    Verdict.FAIL,
    ('unknown directive "fastcgi_pas" in /etc/nginx/sites-enabled/shop:12',),
    cause=Cause.NGINX_CONFIG_INVALID,
    fix=("sudoedit /etc/nginx/sites-enabled/shop +12", "sudo nginx -t && sudo systemctl reload nginx"),
)
NOT_ENABLED = Finding(
    "units",
    "php8.2-fpm.service is enabled at boot",
    Verdict.WARN,
    ("php8.2-fpm.service: disabled",),
    fix=("sudo systemctl enable php8.2-fpm",),
    latent=True,
)
HOSTILE_LOG = Finding(
    "logs",
    "nginx error log has no upstream errors",
    Verdict.FAIL,
    (f"2025/12/01 21:59:58 [error] 12#12: upstream prematurely closed {HOSTILE}",),
    cause=Cause.PHP_FPM_DOWN,
    fix=(f"sudo tail -50 /var/log/nginx/{HOSTILE}.log",),
)


class Page(HTMLParser):
    """The parsed page: its text, elements, attributes of interest and scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.tags: list[str] = []
        self.causes: list[str] = []
        self.verdict: str | None = None
        self.refresh: str | None = None
        self.links: list[str] = []
        self.step_verdicts: list[str] = []
        self.attribute_values: list[str] = []
        self._open: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self._open.append(tag)
        if tag in BLOCKS:
            self.text.append(" ")
        values = dict(attrs)
        self.attribute_values += [v for v in values.values() if v is not None]
        if cause := values.get("data-cause"):
            self.causes.append(cause)
        if tag == "section" and values.get("id") == "verdict":
            self.verdict = values.get("data-verdict")
        if tag == "tr" and (verdict := values.get("data-verdict")):
            self.step_verdicts.append(verdict)
        if tag == "meta" and values.get("http-equiv") == "refresh":
            self.refresh = values.get("content")
        if tag == "a" and (href := values.get("href")):
            self.links.append(href)

    def handle_endtag(self, tag: str) -> None:
        if tag in self._open:
            del self._open[len(self._open) - 1 - self._open[::-1].index(tag) :]
        if tag in BLOCKS:
            self.text.append(" ")

    def handle_data(self, data: str) -> None:
        if not {"style", "title"} & set(self._open):
            self.text.append(data)

    @property
    def all_text(self) -> str:
        """The visible text, whitespace collapsed, blocks apart (as a browser's ``innerText``)."""
        return " ".join("".join(self.text).split())


BLOCKS = frozenset(
    {"h1", "h2", "h3", "h4", "p", "li", "td", "th", "pre", "section", "article", "tr", "footer"}
)


def parse(page: str) -> Page:
    parsed = Page()
    parsed.feed(page)
    parsed.close()
    return parsed


def diagnosis_of(
    *findings: Finding, latent: frozenset[Cause] = frozenset(), gateway: tuple[str, ...] = ()
) -> Diagnosis:
    evidence: dict[Cause, tuple[Finding, ...]] = {}
    for finding in findings:
        if finding.failing_cause is not None:
            evidence.setdefault(finding.failing_cause, ())
            evidence[finding.failing_cause] += (finding,)
    return Diagnosis(tuple(findings), frozenset(evidence), gateway, evidence, latent)


def render(diagnosis: Diagnosis | None, now: float = NOW) -> Page:
    at = None if diagnosis is None else ROUND_AT
    return parse(render_html(diagnosis, at, now, version="0.1.0", watching="/run/php/php8.2-fpm.sock"))


@dataclass(frozen=True)
class Row:
    name: str
    diagnosis: Diagnosis
    verdict: str
    causes: tuple[str, ...]
    says: tuple[str, ...]
    never_says: tuple[str, ...] = ()


ROWS = [
    Row(
        "healthy",
        diagnosis_of(OK_SOCKET, OK_BACKEND, SKIPPED),
        "healthy",
        (),
        (
            "No cause of 502/504 found",
            "Every runbook step (3: 2 ok, 1 skip)",
            "PHP-FPM socket /run/php/php8.2-fpm.sock exists",
        ),
        ("Happening now", "On the next reload", "sudo systemctl"),
    ),
    Row(
        "php_fpm_down now",
        diagnosis_of(OK_SOCKET, PHP_DOWN, OK_BACKEND),
        "now",
        ("php_fpm_down",),
        (
            "1 cause of 502/504 happening now",
            "Happening now",
            CAUSES[Cause.PHP_FPM_DOWN].title,
            "docs/runbooks/PhpFpmDown.md",
            "alert PhpFpmDown",
            "Fix: sudo systemctl start php8.2-fpm sudo systemctl enable php8.2-fpm",
            "cause: php_fpm_down",
            "connect() to unix:/run/php/php8.2-fpm.sock failed",
        ),
        ("No cause of 502/504 found", "On the next reload"),
    ),
    Row(
        "latent only",
        diagnosis_of(OK_SOCKET, CONFIG_INVALID, NOT_ENABLED, latent=frozenset({Cause.NGINX_CONFIG_INVALID})),
        "latent",
        ("nginx_config_invalid",),
        (
            "Nothing answers 502/504 now, but the next reload or restart will",
            "On the next reload, restart or reboot",
            CAUSES[Cause.NGINX_CONFIG_INVALID].title,
            "docs/runbooks/NginxConfigInvalid.md",
            "sudoedit /etc/nginx/sites-enabled/shop +12",
            "php8.2-fpm.service is enabled at boot",
            "sudo systemctl enable php8.2-fpm",
        ),
        ("Happening now", "No cause of 502/504 found"),
    ),
    Row(
        "gateway errors nobody explains",
        diagnosis_of(OK_SOCKET, gateway=("http://127.0.0.1/ answered 502",)),
        "now",
        (),
        (
            "nginx answers 502/504 and no cause explains it",
            "Gateway errors seen",
            "http://127.0.0.1/ answered 502",
        ),
    ),
]


@pytest.mark.parametrize("row", ROWS, ids=[row.name for row in ROWS])
def test_landing_page(row: Row) -> None:
    page = render(row.diagnosis)
    assert page.verdict == row.verdict
    assert tuple(page.causes) == row.causes
    for text in row.says:
        assert text in page.all_text, f"{text!r} not in {page.all_text}"
    for text in row.never_says:
        assert text not in page.all_text, text
    assert page.step_verdicts == [f.verdict.value for f in row.diagnosis.findings]
    assert "Last round: 2025-12-01 22:00:00 UTC, 7 s ago" in page.all_text
    assert page.refresh == "10"
    assert {"metrics", "-/healthy"} <= set(page.links)
    assert "script" not in page.tags


def test_causes_come_before_the_steps_now_before_latent() -> None:
    diagnosis = diagnosis_of(
        OK_SOCKET, CONFIG_INVALID, PHP_DOWN, NOT_ENABLED, latent=frozenset({Cause.NGINX_CONFIG_INVALID})
    )
    text = render(diagnosis).all_text
    now, latent, steps = (
        text.index("Happening now"),
        text.index("On the next reload"),
        text.index("Every runbook step"),
    )
    assert now < latent < steps
    assert text.index(CAUSES[Cause.PHP_FPM_DOWN].title) < latent
    assert latent < text.index(CAUSES[Cause.NGINX_CONFIG_INVALID].title) < steps


def test_log_text_is_escaped_never_markup() -> None:
    markup = render_html(diagnosis_of(HOSTILE_LOG), ROUND_AT, NOW, version="<b>1</b>", watching=HOSTILE)
    page = parse(markup)
    assert "script" not in page.tags and "img" not in page.tags and "b" not in page.tags
    assert HOSTILE in page.all_text  # as text: evidence, fix (cause and step) and what is watched
    assert page.all_text.count(HOSTILE) == 4
    assert "<script>" not in markup and "&lt;script&gt;" in markup
    assert not any("onerror" in value for value in page.attribute_values)
    assert "badgateway-exporter <b>1</b>" in page.all_text


def test_no_round_yet_says_so_and_links_metrics() -> None:
    page = render(None)
    assert page.verdict == "none"
    assert "No round of checks has run yet" in page.all_text
    assert "metrics" in page.links and "-/healthy" in page.links
    assert page.causes == [] and page.step_verdicts == []
    assert page.refresh == "10"


@pytest.mark.parametrize(
    ("age", "shown"),
    [
        (0, "0 s ago"),
        (59.9, "59 s ago"),
        (61, "1 min 1 s ago"),
        (3 * 3600 + 120, "3 h 2 min ago"),
        (90000, "1 d 1 h ago"),
    ],
)
def test_age(age: float, shown: str) -> None:
    assert shown in render(diagnosis_of(OK_SOCKET), now=ROUND_AT + age).all_text


def test_an_old_round_is_flagged_stale() -> None:
    fresh = render(diagnosis_of(OK_SOCKET), now=ROUND_AT + STALE_AFTER_SECONDS)
    old = render(diagnosis_of(OK_SOCKET), now=ROUND_AT + STALE_AFTER_SECONDS + 1)
    assert "Is Prometheus still scraping" not in fresh.all_text
    assert "nothing has scraped /metrics since" in old.all_text
