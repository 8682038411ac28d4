"""Loaded at start-up by every Python process of the consortium test (this folder is put first
on their PYTHONPATH): records each file or folder the process opens or lists under
``ADAMODAL_AUDIT_WATCH`` (the test's data root) in ``ADAMODAL_AUDIT_DIR/<pid>.log``, after a
first line ``# `` and the process's command line. The test reads these logs to show which process
touched which site's data: an audit hook sees every ``open``, ``os.listdir`` and ``os.scandir``
of the interpreter, whatever library makes it."""

from __future__ import annotations

import os
import sys

_WATCH = os.environ.get("ADAMODAL_AUDIT_WATCH", "")
_DIR = os.environ.get("ADAMODAL_AUDIT_DIR", "")
_EVENTS = {"open", "os.listdir", "os.scandir"}
_fd: list[int] = []


def _hook(event: str, args: tuple) -> None:
    if event not in _EVENTS or not args or isinstance(args[0], int) or args[0] is None:
        return
    try:
        path = os.path.abspath(os.fsdecode(os.fspath(args[0])))
    except (TypeError, ValueError, OSError):
        return
    if not path.startswith(_WATCH):
        return
    if not _fd:  # os.open raises no "open" audit event of a watched path: no recursion
        _fd.append(os.open(os.path.join(_DIR, f"{os.getpid()}.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
        os.write(_fd[0], ("# " + " ".join(sys.argv) + "\n").encode())
    os.write(_fd[0], (path + "\n").encode())


if _WATCH and _DIR:
    sys.addaudithook(_hook)
