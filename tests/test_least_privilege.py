"""The real exporter as the unprivileged ``badgateway-exporter`` user against the real stack.

The user is made from ``packaging/badgateway-exporter.sysusers`` with the real ``systemd-sysusers``
when missing (a system user with no login and no group memberships). The process gets exactly the
supplementary groups the systemd unit grants (``adm`` for logs, ``www-data`` for the PHP-FPM
socket) via ``setpriv``, with every capability dropped and no_new_privs set, as in the unit.

The project's venv python lives under /root (0700) here, which other users cannot read: the
exporter runs on the system ``/usr/bin/python3`` (same minor version, so the venv's compiled
wheels load) with ``PYTHONPATH`` naming the checkout and the venv's site-packages, both
world-readable in this checkout; otherwise they are copied into a 0755 temporary folder first.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import sysconfig
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from harness import wait_until
from harness.exporters import Scrape, parse, write_config
from harness.process import ExporterProcess, exporter_process

from exporter.demo.stack import Stack, make_root

USER = "badgateway-exporter"
REPO = Path(__file__).resolve().parent.parent
SYSUSERS = REPO / "packaging" / "badgateway-exporter.sysusers"
SYSTEM_PYTHON = Path("/usr/bin/python3")
# dev-only packages not needed to run the exporter (skipped when site-packages must be copied)
_DEV_ONLY = ("mypy", "mypyc", "ruff", "hypothesis", "_pytest", "pytest", "pygments", "pip", "setuptools")

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and setpriv (util-linux) to switch to the exporter's user",
)


def ensure_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["systemd-sysusers", str(SYSUSERS)], check=True, capture_output=True, timeout=30)
        return pwd.getpwnam(USER)


def _world_readable(path: Path) -> bool:
    """Every parent searchable and ``path`` itself readable and searchable by others."""
    for part in [path, *path.parents]:
        mode = part.stat().st_mode
        if not mode & 0o001 or (part == path and not mode & 0o004):
            return False
    return True


def runtime_pythonpath(scratch: Path) -> str:
    """PYTHONPATH giving another user the ``exporter`` package and its dependencies."""
    site = Path(sysconfig.get_paths()["purelib"])
    paths = []
    for source, name in ((REPO, "src"), (site, "site-packages")):
        if _world_readable(source):
            paths.append(str(source))
            continue
        target = scratch / name
        if source == REPO:
            shutil.copytree(
                REPO / "exporter", target / "exporter", ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", *_DEV_ONLY))
        paths.append(str(target))
    for dirpath, dirnames, filenames in os.walk(scratch):
        os.chmod(dirpath, 0o755)
        for filename in filenames:
            os.chmod(os.path.join(dirpath, filename), 0o644)
        del dirnames
    return os.pathsep.join(paths)


def system_python() -> str:
    if not SYSTEM_PYTHON.exists():
        pytest.skip(f"{SYSTEM_PYTHON} missing: no python another user may run")
    version = subprocess.run(
        [str(SYSTEM_PYTHON), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout.strip()  # fmt: skip
    ours = sysconfig.get_python_version()
    if version != ours:
        pytest.skip(f"{SYSTEM_PYTHON} is {version}, the venv's compiled packages are for {ours}")
    return str(SYSTEM_PYTHON)


def debian_log_permissions(stack: Stack) -> None:
    """Logs as on Debian: root:adm, 0640 files in a 0750 folder; only group adm may read them."""
    adm = grp.getgrnam("adm").gr_gid
    log_dir = stack.nginx_error_log.parent
    for path in log_dir.iterdir():
        os.chown(path, 0, adm)
        path.chmod(0o640)
    os.chown(log_dir, 0, adm)
    log_dir.chmod(0o750)


@contextmanager
def unprivileged(stack: Stack, scratch: Path, groups: list[str]) -> Iterator[ExporterProcess]:
    user = ensure_user()
    gids = ",".join(str(grp.getgrnam(group).gr_gid) for group in groups) or "-"
    prefix = [
        "setpriv",
        f"--reuid={user.pw_uid}",
        f"--regid={user.pw_gid}",
        f"--groups={gids}" if groups else "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--no-new-privs",
        "--",
    ]
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "PYTHONPATH": runtime_pythonpath(scratch),
        "PYTHONDONTWRITEBYTECODE": "1",
        "HOME": "/nonexistent",
        "LANG": "C.UTF-8",
    }
    args = ["--config", str(write_config(stack))]
    log = scratch / f"exporter-{'-'.join(groups) or 'nogroups'}.log"
    with exporter_process(args, log, prefix=prefix, python=system_python(), env=env) as proc:
        owner = Path(f"/proc/{proc.pid}/status").read_text()
        assert f"Uid:\t{user.pw_uid}\t{user.pw_uid}" in owner, owner
        assert "CapEff:\t0000000000000000" in owner, owner
        yield proc


def scrape(proc: ExporterProcess) -> Scrape:
    response = httpx.get(f"{proc.url()}/metrics", timeout=15)
    assert response.status_code == 200, response.text
    return parse(response.text)


def collectors(result: Scrape) -> dict[str, float]:
    return {
        dict(labels)["collector"]: value
        for (name, labels), value in result.samples.items()
        if name == "badgateway_collector_success"
    }


@pytest.fixture
def scratch() -> Iterator[Path]:
    folder = make_root("badgateway-lp-")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_unprivileged_exporter_gets_every_metric(stack: Stack, scratch: Path) -> None:
    debian_log_permissions(stack)
    sock = str(stack.socket_path)
    with exporter_process(["--config", str(write_config(stack))], scratch / "exporter-root.log") as proc:
        as_root = scrape(proc)
    with unprivileged(stack, scratch, ["adm", "www-data"]) as proc:
        as_user = scrape(proc)
        # the groups really are what gives access: the logs are readable through adm, not without it
        for groups, readable in ((f"--groups={grp.getgrnam('adm').gr_gid}", True), ("--clear-groups", False)):
            read = subprocess.run(
                ["setpriv", f"--reuid={USER}", f"--regid={USER}", groups, "--", "head", "-c", "1",
                 str(stack.php_fpm_log)],
                capture_output=True, timeout=10, check=False,
            )  # fmt: skip
            assert (read.returncode == 0) is readable, (groups, read.stderr)
    names_root = {name for name, _ in as_root.samples}
    names_user = {name for name, _ in as_user.samples}
    # nginx -t and php-fpm -t need root: each verdict is replaced by its exported reason, nothing else is lost
    assert names_root - names_user == {"badgateway_nginx_config_valid", "badgateway_php_fpm_config_valid"}
    assert names_user - names_root == set()
    assert as_user.value("badgateway_nginx_config_test_error", reason="permission_denied") == 1
    assert as_root.value("badgateway_nginx_config_test_error", reason="permission_denied") == 0
    assert collectors(as_user) == collectors(as_root)
    assert as_user.value("badgateway_socket_connectable", socket=sock) == 1
    assert as_user.value("badgateway_fastcgi_up", socket=sock) == 1
    assert as_user.value("badgateway_phpfpm_total_processes", socket=sock, pool="www") == 2
    assert as_user.value("badgateway_http_up", target="backend") == 1
    assert as_user.value("badgateway_http_status_code", target="front") == 200
    for service in ("nginx", "php_fpm", "backend"):
        # processes of root and www-data are visible to another user through /proc
        assert as_user.value("badgateway_processes", service=service) == as_root.value(
            "badgateway_processes", service=service
        )
    assert as_user.causes() == as_root.causes() == set()
    log = str(stack.nginx_error_log)
    assert as_user.value("badgateway_log_read_errors_total", log=log) == 0
    assert as_user.value("badgateway_nginx_error_log_lines_total", log=log) == as_root.value(
        "badgateway_nginx_error_log_lines_total", log=log
    )


def test_without_group_adm_the_logs_are_unreadable(stack: Stack, scratch: Path) -> None:
    debian_log_permissions(stack)
    log = str(stack.nginx_error_log)
    with unprivileged(stack, scratch, ["www-data"]) as proc:
        errors: list[float] = []

        def failed_to_read() -> bool:
            result = scrape(proc)
            errors[:] = [result.value("badgateway_log_read_errors_total", log=log)]
            return errors[0] >= 1

        wait_until(failed_to_read, 10, "the log watcher to report the unreadable log")
        result = scrape(proc)
    assert result.value("badgateway_nginx_error_log_lines_total", log=log) == 0
    assert (
        result.value("badgateway_fastcgi_up", socket=str(stack.socket_path)) == 1
    )  # the socket group still works


def test_without_the_socket_group_php_fpm_is_unreachable(stack: Stack, scratch: Path) -> None:
    sock = str(stack.socket_path)
    with unprivileged(stack, scratch, ["adm"]) as proc:
        result = scrape(proc)
    assert result.value("badgateway_socket_exists", socket=sock) == 1
    assert result.value("badgateway_socket_connectable", socket=sock) == 0
    assert result.value("badgateway_fastcgi_up", socket=sock) == 0
    assert result.value("badgateway_fastcgi_probe_failure", socket=sock, reason="permission_denied") == 1
    # the exporter's own lack of access is not mistaken for nginx's: www-data can still connect
    assert result.value("badgateway_socket_accessible", socket=sock, user="www-data") == 1
