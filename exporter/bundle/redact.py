"""Secrets out of text before it goes into a support bundle: a pure function of the text.

What counts as a secret is decided by the *name* a value is given (a key, a variable, a parameter,
a header) and by where a value sits (the password of a URL); never by guessing at the value itself.
Redaction errs on the safe side: a key that merely looks secret (``monkey``, ``bypass``) loses its
value too; that costs a support engineer one value, a leak costs more.

The rules, applied to every line in this order:

1. credentials in URLs: ``scheme://user:password@host`` becomes ``scheme://user:***@host``;
2. ``Authorization:`` / ``Proxy-Authorization:`` headers: the whole value;
3. nginx directives naming a parameter or a header: ``fastcgi_param NAME value;``, ``uwsgi_param``,
   ``scgi_param``, ``proxy_set_header``, ``grpc_set_header``, ``add_header``, ``set $name value;``
   (a value that is only an nginx variable, ``$http_authorization``, is kept: it is no secret);
4. a line that is ``key = value`` or ``key: value`` (INI, YAML, PHP-FPM ``env[NAME] = value`` and
   ``php_value[…]`` / ``php_admin_value[…]``, environment ``NAME=value``, ``export NAME=value``,
   commented out or not);
5. ``NAME=value`` inside a line (a query string, ``Environment=NAME=value``, a command line) and
   ``"name": "value"`` (JSON or YAML text).

A key looks secret when it contains, case-insensitively, one of :data:`SECRET_WORDS` (so
``DB_PASSWORD``, ``mail.smtp_password``, ``API_TOKEN``, ``aws_secret_access_key``, ``AUTH_SALT``),
except the shell's working-directory variables ``PWD`` and ``OLDPWD``.
"""

from __future__ import annotations

import re
from collections.abc import Callable

REDACTED = "***"

SECRET_WORDS = (
    "pass",  # password, passwd, passphrase, DB_PASS
    "pwd",
    "secret",
    "token",
    "key",  # api_key, apikey, private_key, access_key
    "auth",  # authorization, auth_token, oauth
    "credential",
    "dsn",
    "salt",
    "private",
    "cookie",
)
_NOT_SECRET = frozenset({"pwd", "oldpwd"})
_WORDS = "|".join(re.escape(word) for word in SECRET_WORDS)
_SECRET_NAME = re.compile(_WORDS, re.IGNORECASE)

_URL_CREDENTIALS = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@'\"<>]*:)[^\s@'\"<>]+(?=@)")
_AUTHORIZATION = re.compile(
    r"((?<![A-Za-z])(?:proxy-)?authorization[\"']?\s*[:=]\s*)\S[^\r\n]*", re.IGNORECASE
)
_NGINX_PARAM = re.compile(
    r"^(?P<head>\s*(?:[a-z_]+_param|[a-z_]+_set_header|add_header|more_set_headers|set)\s+"
    r"[\"']?(?P<name>[^\s\"';]+)[\"']?\s+)(?P<value>[^;]*?)(?P<tail>\s*;.*)?$",
    re.IGNORECASE,
)
_KEY_VALUE = re.compile(
    r"^(?P<head>\s*(?:[#;]+\s*)?(?:-\s+)?(?:export\s+)?[\"']?(?P<key>[A-Za-z_][\w.\-\[\]$]*)[\"']?"
    r"\s*[:=]\s*)(?P<value>\S.*?)\s*$"
)
_INLINE_ASSIGNMENT = re.compile(
    rf"(?P<name>[\w.\-\[\]]*(?:{_WORDS})[\w.\-\[\]]*)=(?P<value>\"[^\"]*\"|'[^']*'|[^\s&;,\"'<>]+)",
    re.IGNORECASE,
)
_QUOTED_PAIR = re.compile(
    rf"(?P<head>[\"'](?P<name>[^\"'\n]*(?:{_WORDS})[^\"'\n]*)[\"']\s*:\s*)"
    r"(?P<value>\"(?:[^\"\\\n]|\\.)*\"|'[^'\n]*')",
    re.IGNORECASE,
)
_NGINX_VARIABLE = re.compile(r"[\"']?\$\{?\w+\}?[\"']?")


def looks_secret(name: str) -> bool:
    """Whether a value named ``name`` (a key, variable, parameter or header) is kept out of bundles."""
    return name.lower() not in _NOT_SECRET and _SECRET_NAME.search(name) is not None


def _nginx_param(match: re.Match[str]) -> str:
    value = match["value"]
    if not value or not looks_secret(match["name"]) or _NGINX_VARIABLE.fullmatch(value):
        return match[0]
    return match["head"] + REDACTED + (match["tail"] or "")


def _key_value(match: re.Match[str]) -> str:
    if not looks_secret(match["key"]):
        return match[0]
    return match["head"] + REDACTED


def _inline(match: re.Match[str]) -> str:
    if not looks_secret(match["name"]):
        return match[0]
    return f"{match['name']}={REDACTED}"


def _quoted(match: re.Match[str]) -> str:
    if not looks_secret(match["name"]):
        return match[0]
    return f'{match["head"]}"{REDACTED}"'


_LINE_RULES: tuple[Callable[[str], str], ...] = (
    lambda line: _URL_CREDENTIALS.sub(rf"\g<1>{REDACTED}", line),
    lambda line: _AUTHORIZATION.sub(rf"\g<1>{REDACTED}", line),
    lambda line: _NGINX_PARAM.sub(_nginx_param, line),
    lambda line: _KEY_VALUE.sub(_key_value, line),
    lambda line: _INLINE_ASSIGNMENT.sub(_inline, line),
    lambda line: _QUOTED_PAIR.sub(_quoted, line),
)


def redact_line(line: str) -> str:
    """One line (without its line break) with every secret value replaced by :data:`REDACTED`."""
    for rule in _LINE_RULES:
        line = rule(line)
    return line


def redact_text(text: str) -> str:
    """``text`` with every secret value replaced by :data:`REDACTED`; line breaks are kept as they are."""
    return "".join(_redact_keeping_break(line) for line in text.splitlines(keepends=True))


def _redact_keeping_break(line: str) -> str:
    body = line.rstrip("\r\n")
    return redact_line(body) + line[len(body) :]


def redact_environ(raw: bytes) -> str:
    """A process's ``/proc/PID/environ`` (NUL-separated ``NAME=value``) as redacted lines."""
    entries = [entry for entry in raw.decode("utf-8", "replace").split("\0") if entry]
    return "".join(redact_line(_one_line(entry)) + "\n" for entry in entries)


def _one_line(entry: str) -> str:
    """An environment entry on one line: a value with line breaks would escape the line rules."""
    name, sep, _ = entry.partition("=")
    if sep and looks_secret(name):
        return f"{name}={REDACTED}"
    return entry.replace("\r", "\\r").replace("\n", "\\n")


def redact_json(value: object) -> object:
    """A JSON-able document with every string redacted and the string values of secret keys replaced."""
    if isinstance(value, dict):
        return {
            key: REDACTED
            if isinstance(item, str) and isinstance(key, str) and looks_secret(key)
            else redact_json(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact_json(item) for item in value]
    if isinstance(value, str):
        return redact_text(value)
    return value
