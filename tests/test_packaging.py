"""Packaging: the hardened systemd unit, the sysusers snippet, the Dockerfile, the sudo helper, the version."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import httpx
import pytest
from harness.process import serving

from exporter import __version__
from exporter.checks.nginx_config import parse_test_output

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "packaging" / "badgateway-exporter.service"
SYSUSERS = REPO / "packaging" / "badgateway-exporter.sysusers"
SUDOERS = REPO / "packaging" / "sudoers.d" / "badgateway-exporter"
WRAPPER = REPO / "packaging" / "nginx-test-via-sudo"
DOCKERFILE = REPO / "Dockerfile"
SETUP = REPO / "scripts" / "setup"
MAX_EXPOSURE = 2.0


def need(binary: str) -> str:
    found = shutil.which(binary)
    if found is None:
        pytest.skip(f"{binary} not installed")
    return found


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text(encoding="utf-8").splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


# -- systemd unit ------------------------------------------------------------------------------


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = need("systemd-analyze")
    # verify checks that ExecStart's program exists. The unit points at the install location
    # (/opt/badgateway-exporter, docs/security.md), absent on a test host: verify a copy whose
    # ExecStart names this checkout's real console script, and check the original's only
    # complaint is that missing program.
    program = Path(sys.executable).parent / "badgateway-exporter"
    assert program.exists(), program
    text = UNIT.read_text(encoding="utf-8")
    installed = "/opt/badgateway-exporter/bin/badgateway-exporter"
    assert f"ExecStart={installed} " in text
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(installed, str(program)), encoding="utf-8")
    done = subprocess.run(
        [analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "", done.stderr
    original = subprocess.run(
        [analyze, "verify", str(UNIT)], capture_output=True, text=True, timeout=60, check=False
    )
    complaints = [line for line in original.stderr.splitlines() if line.strip()]
    assert all(f"Command {installed} is not executable" in line for line in complaints), original.stderr


def test_unit_security_score(tmp_path: Path) -> None:
    analyze = need("systemd-analyze")
    done = subprocess.run(
        [analyze, "security", "--offline=true", "--no-pager", str(UNIT)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    match = re.search(
        r"Overall exposure level for badgateway-exporter\.service: (\d+\.\d+) (\w+)", done.stdout
    )
    assert match, done.stdout + done.stderr
    score, verdict = float(match.group(1)), match.group(2)
    print(f"\nsystemd-analyze security --offline=true: {score} {verdict}")
    assert score <= MAX_EXPOSURE, done.stdout
    assert verdict == "OK"


def test_unit_grants_exactly_the_documented_access() -> None:
    settings = unit_settings()
    assert settings["User"] == ["badgateway-exporter"]
    assert settings["SupplementaryGroups"] == ["adm www-data"]
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "CapabilityBoundingSet": "",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "ReadOnlyPaths": "/var/log/nginx /run/php",
    }.items():
        assert settings[key] == [value], key
    # psutil must see nginx, php-fpm and the backend (other users' processes) and read
    # /proc/meminfo and /proc/vmstat: hidepid and subset=pid would blind the process and memory checks.
    assert "ProtectProc" not in settings
    assert "ProcSubset" not in settings
    # a bad configuration exits 2: restarting would only loop
    assert settings["RestartPreventExitStatus"] == ["2"]


def test_sysusers_snippet_makes_a_locked_system_user(tmp_path: Path) -> None:
    sysusers = need("systemd-sysusers")
    (tmp_path / "etc").mkdir()
    subprocess.run(
        [sysusers, f"--root={tmp_path}", str(SYSUSERS)], capture_output=True, timeout=30, check=True
    )
    passwd = (tmp_path / "etc" / "passwd").read_text(encoding="utf-8").splitlines()
    entry = next(line.split(":") for line in passwd if line.startswith("badgateway-exporter:"))
    assert int(entry[2]) < 1000  # a system user
    assert entry[5:] == ["/nonexistent", "/usr/sbin/nologin"]
    groups = (tmp_path / "etc" / "group").read_text(encoding="utf-8").splitlines()
    assert [g.split(":")[0] for g in groups] == ["badgateway-exporter"]  # no memberships granted here


# -- sudo helper for nginx -t --------------------------------------------------------------------


def test_sudoers_line_is_narrow() -> None:
    rules = [
        line for line in SUDOERS.read_text(encoding="utf-8").splitlines() if line and not line.startswith("#")
    ]
    assert rules == ["badgateway-exporter ALL=(root) NOPASSWD: /usr/sbin/nginx -t"]
    visudo = shutil.which("visudo")
    if visudo is not None:
        done = subprocess.run(
            [visudo, "-cf", str(SUDOERS)], capture_output=True, text=True, timeout=30, check=False
        )
        assert done.returncode == 0, done.stdout + done.stderr


def test_nginx_test_wrapper(tmp_path: Path) -> None:
    shellcheck = need("shellcheck")
    lint = subprocess.run([shellcheck, str(WRAPPER)], capture_output=True, text=True, timeout=60, check=False)
    assert lint.returncode == 0, lint.stdout
    assert os.access(WRAPPER, os.X_OK)
    refused = subprocess.run(
        [str(WRAPPER), "-t"], env={"PATH": "/usr/bin:/bin", "BADGATEWAY_SUDO": "/bin/false"},
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert refused.returncode == 1
    # the exporter reads this as "could not run", never as "the config is invalid"
    valid, error, _ = parse_test_output(refused.stderr, refused.returncode, is_root=False)
    assert (valid, error) == (None, "permission_denied"), refused.stderr
    fake = tmp_path / "sudo"
    fake.write_text(
        '#!/bin/sh\n[ "$1" = -n ] || exit 9\nshift\n[ "$1" = -l ] && exit 0\n'
        'echo "nginx: the configuration file $* syntax is ok" >&2\n',
        encoding="utf-8",
    )
    fake.chmod(0o755)
    allowed = subprocess.run(
        [str(WRAPPER), "-t"], env={"PATH": "/usr/bin:/bin", "BADGATEWAY_SUDO": str(fake)},
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert allowed.returncode == 0, allowed.stderr
    assert "/usr/sbin/nginx -t syntax is ok" in allowed.stderr
    other = subprocess.run(
        [str(WRAPPER), "-t", "-c", "/tmp/x"], capture_output=True, text=True, timeout=30, check=False
    )
    assert other.returncode == 64


# -- Dockerfile ----------------------------------------------------------------------------------


def dockerfile_runs() -> list[str]:
    """The shell of every RUN instruction, continuation lines joined."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    logical = re.sub(r"\\\n", " ", text)
    return [line.strip()[4:].strip() for line in logical.splitlines() if line.strip().startswith("RUN ")]


def test_dockerfile_shell_passes_shellcheck(tmp_path: Path) -> None:
    shellcheck = need("shellcheck")
    runs = dockerfile_runs()
    assert len(runs) >= 3
    for index, run in enumerate(runs):
        script = tmp_path / f"run{index}.sh"
        script.write_text(f"#!/bin/sh\n{run}\n", encoding="utf-8")
        done = subprocess.run(
            [shellcheck, "--shell=sh", str(script)], capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, f"RUN {run}\n{done.stdout}"


def _commands(shell: str) -> list[list[str]]:
    """Simple commands of a script (split at && and newlines), redirections dropped."""
    parts = [part for part in re.split(r"&&|\n", shell) if part.strip() and not part.strip().startswith("#")]
    return [[t for t in shlex.split(part) if not re.match(r"^\d?>", t)] for part in parts]


def test_dockerfile_installs_with_the_commands_of_scripts_setup() -> None:
    """Same apt-get and pip invocations as scripts/setup; only the targets differ (runtime, not [dev])."""
    setup = SETUP.read_text(encoding="utf-8")
    apt_packages = set(re.search(r"APT_PACKAGES=\(([^)]*)\)", setup, re.S).group(1).split())  # type: ignore[union-attr]
    setup_cmds = _commands(setup)
    docker_cmds = [cmd for run in dockerfile_runs() for cmd in _commands(run)]

    def apt_options(cmd: list[str]) -> list[str]:
        return [
            t
            for t in cmd
            if t.startswith("-") or t in ("DEBIAN_FRONTEND=noninteractive", "apt-get", "install")
        ]

    setup_apt = [apt_options(c) for c in setup_cmds if "apt-get" in c and "install" in c]
    docker_apt = [c for c in docker_cmds if "apt-get" in c and "install" in c]
    assert len(setup_apt) == 1 and docker_apt
    for cmd in docker_apt:
        assert apt_options(cmd) == setup_apt[0], cmd
        packages = {t for t in cmd if t not in apt_options(cmd)}
        assert packages <= apt_packages, packages - apt_packages
    assert any(c[:2] == ["apt-get", "update"] for c in docker_cmds)

    def pip(cmd: list[str]) -> list[str] | None:
        if "pip" not in cmd or "install" not in cmd:
            return None
        return cmd[cmd.index("pip") :]

    setup_pip = [p for p in map(pip, setup_cmds) if p]
    docker_pip = [p for p in map(pip, docker_cmds) if p]
    assert setup_pip[0] == docker_pip[0] == [
        "pip", "install", "-q", "--disable-pip-version-check", "--upgrade", "pip"
    ]  # fmt: skip
    assert setup_pip[1] == ["pip", "install", "-q", "--disable-pip-version-check", "-e", ".[dev]"]
    assert docker_pip[1] == ["pip", "install", "-q", "--disable-pip-version-check", "--no-cache-dir", "."]
    assert any(c[-3:-1] == ["-m", "venv"] for c in setup_cmds if len(c) >= 3)
    assert any(c[:3] == ["python3", "-m", "venv"] for c in docker_cmds)


def test_dockerfile_final_image_is_non_root_with_healthcheck_and_labels() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    final = text[text.rindex("\nFROM ") :]
    assert "\nUSER badgateway-exporter\n" in final
    assert "\nHEALTHCHECK " in final and "/-/healthy" in final
    for label in ("title", "description", "version", "licenses"):
        assert f"org.opencontainers.image.{label}=" in final
    assert f"ARG VERSION={__version__}\n" in final
    assert "COPY --from=build /opt/badgateway-exporter /opt/badgateway-exporter" in final
    assert "pip install" not in final  # no build tools in the final stage
    ignored = (REPO / ".dockerignore").read_text(encoding="utf-8").split()
    assert ".git" in ignored and ".venv" in ignored


# -- release basics ------------------------------------------------------------------------------


def test_version_comes_from_one_place(tmp_path: Path) -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert "version" not in pyproject["project"]
    assert "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "exporter.__version__"}
    done = subprocess.run(
        [sys.executable, "-m", "exporter", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.strip() == f"badgateway-exporter {__version__}"
    changelog = (REPO / "CHANGELOG.md").read_text(encoding="utf-8")
    first = re.search(r"^## \[?(\d+\.\d+\.\d+)\]?", changelog, re.M)
    assert first and first.group(1) == __version__
    with serving(tmp_path, None) as url:
        text = httpx.get(f"{url}/metrics", timeout=10).text
    assert f'badgateway_build_info{{version="{__version__}"}} 1.0' in text
