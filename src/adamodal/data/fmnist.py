"""Fashion-MNIST: 70,000 grey 28x28 clothing images, 10 classes, an image-only data set.

Source: the Debian package ``dataset-fashion-mnist`` (``apt-get download`` + ``dpkg-deb -x``,
no root needed), because Debian mirrors are reachable offline. The IDX files are parsed here
with numpy, so no extra reader is needed.
"""

from __future__ import annotations

import gzip
import zipfile
import zlib
from pathlib import Path
from typing import ClassVar

import numpy as np

from adamodal.cache import atomic_save_npz
from adamodal.data.base import Bundle, DatasetSource
from adamodal.data.fetch import debian_download
from adamodal.errors import DataError

PACKAGE = "dataset-fashion-mnist"
CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
_COUNTS = {"train": 60_000, "test": 10_000}
_REFETCH = f"delete it and run `adamodal data fetch fmnist` (Debian package {PACKAGE})"


def read_idx(path: Path) -> np.ndarray:
    """Parse one (gzipped) IDX file: magic ``0 0 dtype ndim``, big-endian dims, then data."""
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: unreadable ({exc}); {_REFETCH}") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in dtypes:
        raise DataError(f"{path}: not an IDX file (bad magic number); {_REFETCH}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = tuple(int(d) for d in np.frombuffer(raw[4:header], dtype=">u4"))
    dtype = np.dtype(dtypes[raw[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: {len(raw) - header} data bytes for shape {dims}, expected {expected}; "
            f"{_REFETCH}"
        )
    return (
        np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))
    )


def _find_files(root: Path) -> dict[str, Path]:
    """Locate the four IDX files anywhere in the unpacked package (its layout may change)."""
    found: dict[str, Path] = {}
    for key, fname in _FILES.items():
        hits = sorted(root.rglob(fname)) or sorted(root.rglob(fname.removesuffix(".gz")))
        if not hits:
            raise DataError(
                f"{root}: no {fname} in the unpacked {PACKAGE} package; delete {root.parent} "
                "and run `adamodal data fetch fmnist`"
            )
        found[key] = hits[0]
    return found


class FashionMnistSource(DatasetSource):
    """Fashion-MNIST, official 60k train then 10k test (``fixed_test`` marks the test part)."""

    name: ClassVar[str] = "fmnist"
    modalities = ("image",)
    task = "multiclass"
    description: ClassVar[str] = (
        "Fashion-MNIST: 70,000 28x28 grey clothing images, 10 classes (Debian dataset-fashion-mnist)"
    )
    options_defaults: ClassVar[dict[str, object]] = {}

    def fetch(self, cache: Path) -> Path:
        """Download and unpack the Debian package into ``cache/fmnist``; return the tree."""
        return debian_download(PACKAGE, Path(cache) / self.name)

    def decoded_path(self, cache: Path) -> Path:
        return Path(cache) / self.name / "decoded.npz"

    def _decode(self, cache: Path) -> dict[str, np.ndarray]:
        files = _find_files(self.fetch(cache))
        parts: dict[str, np.ndarray] = {k: read_idx(p) for k, p in files.items()}
        for split, n in _COUNTS.items():
            imgs, labs = parts[f"{split}_images"], parts[f"{split}_labels"]
            if imgs.shape != (n, 28, 28) or labs.shape != (n,):
                raise DataError(
                    f"{files[f'{split}_images']}: {split} shapes {imgs.shape}/{labs.shape}, "
                    f"expected ({n}, 28, 28)/({n},); {_REFETCH}"
                )
            if labs.min() < 0 or labs.max() >= len(CLASSES):
                raise DataError(f"{files[f'{split}_labels']}: labels outside 0..9; {_REFETCH}")
        images = np.concatenate([parts["train_images"], parts["test_images"]]).astype(np.uint8)
        labels = np.concatenate([parts["train_labels"], parts["test_labels"]]).astype(np.int64)
        return {"images": images, "labels": labels}

    def load(self, cache: Path) -> Bundle:
        """Parse the IDX files once into an npz; later loads read only that file."""
        path = self.decoded_path(cache)
        arrays: dict[str, np.ndarray] | None = None
        if path.is_file():
            try:
                with np.load(path, allow_pickle=False) as z:
                    arrays = {"images": z["images"], "labels": z["labels"]}
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
                arrays = None  # corrupt cache: rebuild it from the package
        if arrays is None:
            arrays = self._decode(cache)
            atomic_save_npz(path, **arrays)
        n = len(arrays["labels"])
        n_train = _COUNTS["train"]
        return Bundle(
            name=self.name,
            task="multiclass",
            classes=list(CLASSES),
            labels=arrays["labels"].astype(np.int64),
            groups=np.arange(n, dtype=np.int64),
            images=arrays["images"].reshape(n, 1, 28, 28, 1),
            domains=["default"],
            texts=None,
            fixed_test=np.arange(n) >= n_train,
            meta={
                "source": f"Debian {PACKAGE}",
                "train": n_train,
                "test": n - n_train,
                "licence": "MIT (Zalando Research)",
                "decoded_cache": str(path),
            },
        )


SOURCE = FashionMnistSource

__all__ = ["CLASSES", "SOURCE", "FashionMnistSource", "read_idx"]
