"""Configuration: defaults, the example, and bad input reported in one line with exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness.exporters import cli

from exporter.config import ConfigError, config_from_dict
from exporter.discovery.merge import load_config
from exporter.discovery.units import backend_unit, default_php_fpm_unit

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_fit_a_stock_debian_host() -> None:
    config = config_from_dict({})
    assert [pool.socket for pool in config.php_fpm] == ["/run/php/php-fpm.sock"]
    assert [(t.name, t.url) for t in config.http] == [
        ("backend", "http://127.0.0.1:8000/health"),
        ("front", "http://localhost/"),
    ]
    assert config.listen_address == ":9502"
    assert config.nginx_user == "www-data"
    assert config.units.php_fpm is None and config.units.backend is None  # discovery fills them in


def test_discovery_fills_units_from_the_unit_files_installed(tmp_path: Path) -> None:
    (tmp_path / "php8.2-fpm.service").write_text("[Service]\nExecStart=/usr/sbin/php-fpm8.2 --nodaemonize\n")
    (tmp_path / "shop-api.service").write_text(
        "[Service]\nExecStart=/srv/shop/.venv/bin/gunicorn -k uvicorn.workers.UvicornWorker app:app\n"
    )
    (tmp_path / "cron.service").write_text("[Service]\nExecStart=/usr/sbin/cron -f\n")
    assert backend_unit(r"\b(uvicorn|gunicorn|hypercorn)\b", [tmp_path]) == "shop-api.service"
    assert backend_unit(r"\bhypercorn\b", [tmp_path]) is None
    assert default_php_fpm_unit([tmp_path]) == "php8.2-fpm.service"


def test_example_of_the_runbook_site_loads() -> None:
    config = load_config(str(ROOT / "examples" / "iiko-base.yml"))
    assert config.php_fpm[0].socket == "/var/run/php/php8.3-fpm.sock"
    assert config.units.backend == "iiko-backend.service"
    assert config.logs.nginx == ["/var/log/nginx/error.log", "/var/log/nginx/iiko-base-error.log"]


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"php_fpm": [{"sokcet": "/x"}]}, "f.yml: php_fpm[0].sokcet: unknown key"),
        ({"nginx": {"test": "yes"}}, "f.yml: nginx.test: expected true or false, got 'yes'"),
        (
            {"http": [{"name": "a", "url": "http://x/", "role": "middle"}]},
            "f.yml: http[0].role: expected one of",
        ),
        ({"http": [{"url": "http://x/"}]}, "f.yml: http[0].name: required key missing"),
        (
            {"http": [{"name": "a", "url": "ftp://x/"}]},
            "f.yml: http[0].url: must start with http:// or https://",
        ),
        ({"scrape_timeout_seconds": 0}, "f.yml: scrape_timeout_seconds: must be a number from 0.1 to 120"),
        ({"processes": {"nginx": "("}}, "f.yml: processes.nginx: invalid regular expression"),
        ([1, 2], "f.yml: <top level>: expected a mapping"),
    ],
)
def test_invalid_values_name_the_key(document: object, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        config_from_dict(document, "f.yml")
    assert str(raised.value).startswith(message)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("php_fpm:\n  - socket: /x\n    colour: red\n", ": php_fpm[0].colour: unknown key"),
        ("nginx: [unclosed\n", ": line 2:"),
        (None, ": cannot read: No such file or directory"),
    ],
)
def test_cli_reports_bad_config_in_one_line(tmp_path: Path, content: str | None, expected: str) -> None:
    path = tmp_path / "bad.yml"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    for command in (["diagnose"], []):
        done = cli("--config", str(path), *command, timeout=30)
        assert done.returncode == 2
        assert done.stdout == ""
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert lines[0].startswith(f"badgateway-exporter: {path}")
        assert expected in lines[0]
        assert "Traceback" not in done.stderr


def test_cli_rejects_a_bad_listen_address() -> None:
    done = cli("--web.listen-address", "nowhere", timeout=30)
    assert done.returncode == 2
    assert "listen-address" in done.stderr and "Traceback" not in done.stderr


def test_cli_version() -> None:
    done = cli("--version", timeout=30)
    assert done.returncode == 0
    assert done.stdout.startswith("badgateway-exporter ")
