"""Where fetched data and computed features live: ``~/.cache/adamodal`` or ``$ADAMODAL_CACHE``."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np


def cache_dir() -> Path:
    """The cache root; created on first use so every caller can write into it."""
    root = os.environ.get("ADAMODAL_CACHE") or os.path.join(Path.home(), ".cache", "adamodal")
    path = Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def content_hash(*parts: object) -> str:
    """A stable hash of arrays, strings and lists of strings, used to key cached features.

    Keying by content (not by file name) means a changed data set or tower can never silently
    reuse stale features.
    """
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            h.update(str(part.dtype).encode())
            h.update(str(part.shape).encode())
            # the buffer itself, not a tobytes() copy: the same bytes (so the same keys as
            # before) without copying a large image array once more per run
            h.update(memoryview(np.ascontiguousarray(part)).cast("B"))
        elif isinstance(part, (list, tuple)):
            for item in part:
                h.update(str(item).encode("utf-8", "surrogatepass"))
                h.update(b"\x00")
        else:
            h.update(str(part).encode())
        h.update(b"\x01")
    return h.hexdigest()[:20]


def atomic_save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write an ``.npz`` through a temporary file and a rename, so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # the process id in the name: two runs writing the same entry at once never share a file
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
