"""``diagnose --bundle``: a real stack with planted secrets, a fault, and nothing secret in the bundle."""

from __future__ import annotations

import json
import os
import shutil
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from harness.exporters import cli, write_config
from harness.tree import remove_unless_kept, require_stack_binaries

from exporter.app import Checked
from exporter.bundle import PendingBundle, write_bundle
from exporter.bundle.parts import Part, Source, collect, journal_part
from exporter.cli import main
from exporter.config import config_from_dict
from exporter.deadline import Deadline
from exporter.demo.stack import Stack, make_root
from exporter.diagnosis import Diagnosis
from exporter.rounds import RoundResults

PLANTED = ("hunter2-planted", "s3cr3t-planted", "pg-planted", "tok-planted")
POOL_SECRETS = "\nenv[DB_PASSWORD] = hunter2-planted\nphp_admin_value[mail.smtp_password] = s3cr3t-planted\n"
BACKEND_ENV = {"DATABASE_URL": "postgresql://app:pg-planted@127.0.0.1/app", "API_TOKEN": "tok-planted"}


@pytest.fixture
def planted_stack() -> Iterator[Stack]:
    """A started stack whose pool file and backend environment hold secrets."""
    require_stack_binaries()
    root = make_root()
    try:
        stack = Stack(root, backend_env=BACKEND_ENV)
        with stack.php_fpm_conf.open("a", encoding="utf-8") as pool:
            pool.write(POOL_SECRETS)
        stack.start()
        try:
            yield stack
        finally:
            stack.stop()
    finally:
        remove_unless_kept(root)


def members(path: Path) -> dict[str, bytes]:
    """Every file of the bundle by its name below the bundle's one top folder."""
    found: dict[str, bytes] = {}
    with tarfile.open(path, "r:gz") as tar:
        tops = {info.name.split("/", 1)[0] for info in tar.getmembers()}
        assert len(tops) == 1 and next(iter(tops)).startswith("badgateway-bundle-"), tops
        for info in tar.getmembers():
            assert info.isfile() and info.mode == 0o600, info.name
            handle = tar.extractfile(info)
            assert handle is not None
            found[info.name.split("/", 1)[1]] = handle.read()
    return found


def test_bundle_of_a_stack_with_php_fpm_down(planted_stack: Stack) -> None:
    stack = planted_stack
    config = write_config(stack, discovery={"php_fpm_configs": [str(stack.php_fpm_conf)]})
    stack.stop_php_fpm()
    bundle = stack.root / "out" / "502.tar.gz"
    bundle.parent.mkdir()
    done = cli("--config", str(config), "diagnose", "--bundle", str(bundle), timeout=120)
    assert done.returncode == 1, done.stderr
    assert "php_fpm_down" in done.stdout
    assert f"wrote the bundle {bundle}" in done.stderr
    assert stat.S_IMODE(bundle.stat().st_mode) == 0o600
    assert sorted(os.listdir(bundle.parent)) == ["502.tar.gz"]  # no temporary file left

    files = members(bundle)
    print("bundle members:\n  " + "\n  ".join(sorted(files)))
    for name, data in files.items():
        for secret in PLANTED:
            assert secret.encode() not in data, f"{secret} in {name}"

    def text(name: str) -> str:
        return files[name].decode("utf-8")

    def logged(path: Path) -> str:
        return "logs" + str(path)

    assert "php_fpm_down" in text("diagnosis.txt")
    document = json.loads(text("diagnosis.json"))
    assert "php_fpm_down" in {c["cause"] for c in document["causes"]} and document["exit_code"] == 1
    assert f"connect() to unix:{stack.socket_path} failed" in text(logged(stack.nginx_error_log))
    assert logged(stack.php_fpm_log) in files
    nginx_t = text("nginx-T.txt")
    assert (
        f"# configuration file {stack.nginx_conf}:" in nginx_t
        and f"fastcgi_pass unix:{stack.socket_path};" in nginx_t
    )
    pool = text("php-fpm" + str(stack.php_fpm_conf))
    assert "env[DB_PASSWORD] = ***" in pool and "php_admin_value[mail.smtp_password] = ***" in pool
    assert "listen = " + str(stack.socket_path) in pool
    environ = text("backend/environ.txt")
    assert "API_TOKEN=***" in environ and "DATABASE_URL=postgresql://app:***@127.0.0.1/app" in environ
    assert f"BADGATEWAY_DEMO_ROOT={stack.root}" in environ
    versions = text("versions.txt")
    for expected in (
        "badgateway-exporter: ",
        "python: ",
        "nginx version: nginx/",
        "PHP 8.",
        "/etc/os-release:",
    ):
        assert expected in versions, versions
    readme = text("README.txt")
    assert "redacted" in readme and "nothing was sent" in readme
    if shutil.which("journalctl"):
        assert any(name.startswith("journal/") for name in files)
    else:
        assert "journalctl is not installed" in readme


def _offline_config(folder: Path) -> Path:
    path = folder / "offline.yml"
    settings = {
        "php_fpm": [{"socket": str(folder / "missing.sock"), "timeout_seconds": 0.2}],
        "http": [],
        "nginx": {"test": False, "binary": str(folder / "no-nginx")},
        "units": {"enabled": False, "nginx": "nginx.service", "php_fpm": "php-fpm.service", "backend": "app.service"},
        "filesystems": [str(folder)],
        "logs": {"nginx": [str(folder / "nginx-error.log")], "php_fpm": [str(folder / "none-*.log")]},
        "discovery": {"enabled": False},
        "processes": {"backend": "^no-such-backend-process$", "php_fpm": "^no-such-php-fpm$"},
        "scrape_timeout_seconds": 2.0,
    }  # fmt: skip
    path.write_text(yaml.safe_dump(settings), encoding="utf-8")
    (folder / "nginx-error.log").write_text(
        '2026/12/01 10:00:00 [error] 1#1: *1 upstream: "http://u:p4ss-planted@10.0.0.1/", request: "GET /?token=t0k-planted"\n',
        encoding="utf-8",
    )
    return path


def test_unwritable_bundle_path_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _offline_config(tmp_path)
    for target in (tmp_path / "no" / "such" / "x.tar.gz", tmp_path):
        assert main(["--config", str(config), "diagnose", "--bundle", str(target)]) == 2
        captured = capsys.readouterr()
        assert captured.out == "", "the checks must not run when the bundle cannot be written"
        assert len(captured.err.strip().splitlines()) == 1 and "cannot write the bundle" in captured.err


def test_missing_parts_are_notes_in_the_readme(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _offline_config(tmp_path)
    bundle = tmp_path / "b.tgz"
    code = main(["--config", str(config), "diagnose", "--bundle", str(bundle)])
    assert code == 1  # the PHP-FPM socket is missing
    assert "wrote the bundle" in capsys.readouterr().err
    files = members(bundle)
    assert {"README.txt", "diagnosis.txt", "diagnosis.json", "versions.txt"} <= set(files)
    for data in files.values():
        assert b"planted" not in data
    log = files["logs" + str(tmp_path / "nginx-error.log")].decode()
    assert "http://u:***@10.0.0.1/" in log and "token=***" in log
    readme = files["README.txt"].decode()
    assert "nginx -T: " in readme and "not found" in readme
    assert "backend environment: the processes check found no backend process" in readme
    assert "PHP-FPM configuration: discovery read no PHP-FPM file" in readme


def _empty_source(tmp_path: Path) -> Source:
    config = config_from_dict({"discovery": {"enabled": False}, "logs": {"nginx": [], "php_fpm": []}}, "test")
    return Source(
        config, Checked(RoundResults(timeout_seconds=1.0), Diagnosis(findings=())), Deadline.after(10)
    )


def test_a_failing_part_is_a_note_and_the_others_are_kept(tmp_path: Path) -> None:
    def boom(source: Source) -> Part:
        raise RuntimeError("surprise")

    def fine(source: Source) -> Part:
        part = Part()
        part.add_text("fine.txt", "password = x\n", "a file")
        return part

    collected = collect(_empty_source(tmp_path), [("boom", boom), ("fine", fine)])
    assert collected.notes == ["boom: failed: RuntimeError: surprise"]
    assert [(m.name, m.data) for m in collected.members] == [("fine.txt", b"password = ***\n")]


def test_no_journalctl_is_a_note(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("exporter.bundle.parts.shutil.which", lambda name, path=None: None)
    part = journal_part(_empty_source(tmp_path))
    assert part.members == [] and part.notes == ["unit journals: journalctl is not installed on this host"]


def test_written_bundle_replaces_the_old_file_atomically(tmp_path: Path) -> None:
    target = tmp_path / "b.tar.gz"
    target.write_bytes(b"old")
    target.chmod(0o644)
    source = _empty_source(tmp_path)
    written = write_bundle(PendingBundle(str(target)), source.config, source.checked, seconds=10)
    assert written.path == str(target) and "README.txt" in written.names
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(os.listdir(tmp_path)) == ["b.tar.gz"]
    assert "README.txt" in members(target)
