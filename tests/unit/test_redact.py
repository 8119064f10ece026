"""Redaction of support bundles: a pure function, one row per rule and per near miss."""

from __future__ import annotations

import json

import pytest

from exporter.bundle.redact import (
    REDACTED,
    looks_secret,
    redact_environ,
    redact_json,
    redact_line,
    redact_text,
)

LINES = [
    # PHP-FPM pool files: env[...], php_value[...], php_admin_value[...], plain INI keys
    ("env[DB_PASSWORD] = hunter2", f"env[DB_PASSWORD] = {REDACTED}"),
    ("env[DB_PASSWORD]=hunter2", f"env[DB_PASSWORD]={REDACTED}"),
    ("  env[API_TOKEN] = 'abc def'", f"  env[API_TOKEN] = {REDACTED}"),
    ("php_admin_value[mail.smtp_password] = s3cr3t", f"php_admin_value[mail.smtp_password] = {REDACTED}"),
    ("php_value[session.save_handler] = redis", "php_value[session.save_handler] = redis"),
    ("env[PATH] = /usr/local/bin:/usr/bin", "env[PATH] = /usr/local/bin:/usr/bin"),
    ("env[REDIS_DSN] = tcp://cache:6379", f"env[REDIS_DSN] = {REDACTED}"),
    (";env[DB_PASS] = commented-out", f";env[DB_PASS] = {REDACTED}"),
    ("listen.owner = www-data", "listen.owner = www-data"),
    ("pm.max_children = 5", "pm.max_children = 5"),
    # environment lines
    ("DB_PASSWD=x", f"DB_PASSWD={REDACTED}"),
    ("export AWS_SECRET_ACCESS_KEY=AKIAsecret", f"export AWS_SECRET_ACCESS_KEY={REDACTED}"),
    ("API_KEY=abc", f"API_KEY={REDACTED}"),
    ("GITHUB_TOKEN=ghp_x", f"GITHUB_TOKEN={REDACTED}"),
    ("SENTRY_DSN=https://k@sentry.example/1", f"SENTRY_DSN={REDACTED}"),
    ("AUTH_SALT=pepper", f"AUTH_SALT={REDACTED}"),
    ("OAUTH_CLIENT_CREDENTIALS=c", f"OAUTH_CLIENT_CREDENTIALS={REDACTED}"),
    ("HTTP_AUTHORIZATION=Bearer abc def", f"HTTP_AUTHORIZATION={REDACTED}"),
    ("PWD=/srv/app", "PWD=/srv/app"),
    ("OLDPWD=/root", "OLDPWD=/root"),
    ("HOME=/var/www", "HOME=/var/www"),
    ("LANG=C.UTF-8", "LANG=C.UTF-8"),
    # YAML and INI
    ("password: hunter2", f"password: {REDACTED}"),
    ("  db_password: 'hunter2'", f"  db_password: {REDACTED}"),
    ("  - api_key: abc", f"  - api_key: {REDACTED}"),
    ("Secret = x", f"Secret = {REDACTED}"),
    ("name: backend", "name: backend"),
    ("password:", "password:"),
    # credentials in URLs, whatever the key
    ("DATABASE_URL=postgresql://app:pg-pass@127.0.0.1/app", f"DATABASE_URL=postgresql://app:{REDACTED}@127.0.0.1/app"),
    ("url: redis://:r3d1s@cache:6379/0", f"url: redis://:{REDACTED}@cache:6379/0"),
    ("upstream amqp://guest:guest@mq//", f"upstream amqp://guest:{REDACTED}@mq//"),
    ("see https://user@example.com/x", "see https://user@example.com/x"),
    ("http://127.0.0.1:8000/health", "http://127.0.0.1:8000/health"),
    (
        'upstream: "fastcgi://unix:/run/php/php8.2-fpm.sock:", host: "localhost"',
        'upstream: "fastcgi://unix:/run/php/php8.2-fpm.sock:", host: "localhost"',
    ),
    # Authorization headers
    ("Authorization: Bearer eyJhbGciOi", f"Authorization: {REDACTED}"),
    ("proxy-authorization: Basic dXNlcjpw", f"proxy-authorization: {REDACTED}"),
    ("> authorization: Basic abc", f"> authorization: {REDACTED}"),
    # nginx -T
    ("    fastcgi_param DB_PASSWORD hunter2;", f"    fastcgi_param DB_PASSWORD {REDACTED};"),
    ('    fastcgi_param APP_SECRET "a b c";', f"    fastcgi_param APP_SECRET {REDACTED};"),
    ("    fastcgi_param SCRIPT_FILENAME $document_root$fastcgi_script_name;",
     "    fastcgi_param SCRIPT_FILENAME $document_root$fastcgi_script_name;"),
    ("    fastcgi_param HTTP_AUTHORIZATION $http_authorization;",
     "    fastcgi_param HTTP_AUTHORIZATION $http_authorization;"),
    ('    proxy_set_header Authorization "Basic dXNlcjpw";', f"    proxy_set_header Authorization {REDACTED};"),
    ("    proxy_set_header X-Api-Key k3y;", f"    proxy_set_header X-Api-Key {REDACTED};"),
    ("    proxy_set_header Host $host;", "    proxy_set_header Host $host;"),
    ('    set $api_token "t0k";', f"    set $api_token {REDACTED};"),
    ("    fastcgi_pass unix:/run/php/php8.2-fpm.sock;", "    fastcgi_pass unix:/run/php/php8.2-fpm.sock;"),
    ("    ssl_certificate_key /etc/ssl/private/site.key;", "    ssl_certificate_key /etc/ssl/private/site.key;"),
    # inside a line: query strings, Environment=, JSON text
    ('"GET /index.php?user=a&token=abc&x=1 HTTP/1.1"', f'"GET /index.php?user=a&token={REDACTED}&x=1 HTTP/1.1"'),
    ("Environment=DB_PASSWORD=hunter2 APP_ENV=prod", f"Environment=DB_PASSWORD={REDACTED} APP_ENV=prod"),
    ('php -d mail.smtp_password="x y" run.php', f"php -d mail.smtp_password={REDACTED} run.php"),
    ('{"user": "app", "password": "hunter2"}', f'{{"user": "app", "password": "{REDACTED}"}}'),
    # log lines are left alone
    (
        "2026/12/01 10:00:00 [crit] 12#12: *3 connect() to unix:/run/php/php8.2-fpm.sock failed (2: No such file)",
        "2026/12/01 10:00:00 [crit] 12#12: *3 connect() to unix:/run/php/php8.2-fpm.sock failed (2: No such file)",
    ),
    ("[01-Dec-2026 10:00:00] WARNING: [pool www] server reached pm.max_children setting (5)",
     "[01-Dec-2026 10:00:00] WARNING: [pool www] server reached pm.max_children setting (5)"),
    ("       cause: php_fpm_down", "       cause: php_fpm_down"),
    ("", ""),
]  # fmt: skip


@pytest.mark.parametrize(("line", "expected"), LINES)
def test_redact_line(line: str, expected: str) -> None:
    assert redact_line(line) == expected


@pytest.mark.parametrize(("line", "expected"), LINES)
def test_redaction_is_idempotent(line: str, expected: str) -> None:
    assert redact_line(expected) == expected


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("DB_PASSWORD", True), ("passwd", True), ("Api_Key", True), ("X-Auth-Token", True),
        ("client_secret", True), ("SENTRY_DSN", True), ("credentials", True), ("PWD", False),
        ("pm.max_children", False), ("listen.owner", False), ("HOME", False), ("env[PATH]", False),
    ],
)  # fmt: skip
def test_looks_secret(name: str, secret: bool) -> None:
    assert looks_secret(name) is secret


def test_redact_text_keeps_line_breaks() -> None:
    text = "a = 1\r\npassword = x\n\nlast: y"
    assert redact_text(text) == f"a = 1\r\npassword = {REDACTED}\n\nlast: y"


def test_environ_is_one_line_per_variable() -> None:
    raw = b"PATH=/usr/bin\0API_TOKEN=tok\0DATABASE_URL=postgresql://app:pg@db/app\0MOTD=two\nlines\0"
    assert redact_environ(raw) == (
        f"PATH=/usr/bin\nAPI_TOKEN={REDACTED}\nDATABASE_URL=postgresql://app:{REDACTED}@db/app\nMOTD=two\\nlines\n"
    )


def test_environ_secret_with_line_break_stays_hidden() -> None:
    assert redact_environ(b"PRIVATE_KEY=-----BEGIN\nMIIE\n-----END\0") == f"PRIVATE_KEY={REDACTED}\n"


def test_redact_json_stays_json() -> None:
    document = {
        "password": "hunter2",
        "findings": [{"evidence": ["DSN=mysql://u:pw@db/x", "Authorization: Basic abc"], "count": 2}],
        "api_key": None,
    }
    redacted = redact_json(document)
    assert redacted == {
        "password": REDACTED,
        "findings": [{"evidence": [f"DSN={REDACTED}", f"Authorization: {REDACTED}"], "count": 2}],
        "api_key": None,
    }
    assert json.loads(json.dumps(redacted)) == redacted
