"""Fashion-MNIST from the Debian package: real files, plus the IDX parser on synthetic ones."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from adamodal.cache import cache_dir
from adamodal.data import get_source
from adamodal.data.base import Bundle
from adamodal.data.fmnist import CLASSES, FashionMnistSource, read_idx
from adamodal.errors import DataError


@pytest.fixture(scope="module")
def bundle() -> Bundle:
    return FashionMnistSource().load(cache_dir())


def test_shapes_and_counts(bundle: Bundle) -> None:
    assert bundle.name == "fmnist" and bundle.task == "multiclass"
    assert bundle.images is not None
    assert bundle.images.shape == (70_000, 1, 28, 28, 1) and bundle.images.dtype == np.uint8
    assert bundle.domains == ["default"] and bundle.texts is None
    assert bundle.modalities == ("image",)
    assert bundle.classes == CLASSES and bundle.num_classes == 10
    assert bundle.labels.dtype == np.int64
    assert np.bincount(bundle.labels).tolist() == [7000] * 10
    assert np.array_equal(bundle.groups, np.arange(70_000))


def test_official_test_split_last(bundle: Bundle) -> None:
    assert bundle.fixed_test is not None and bundle.fixed_test.dtype == bool
    assert bundle.fixed_test.sum() == 10_000
    assert not bundle.fixed_test[:60_000].any() and bundle.fixed_test[60_000:].all()
    assert np.bincount(bundle.labels[60_000:]).tolist() == [1000] * 10


def test_pixels_look_like_images(bundle: Bundle) -> None:
    imgs = bundle.images
    assert imgs is not None
    assert imgs.max() == 255 and imgs.min() == 0
    # clothes on a black background: borders dark, centre bright on average
    assert imgs[:1000, 0, :, 0, 0].mean() < 5 < imgs[:1000, 0, 10:18, 10:18, 0].mean()


def test_registry_and_decoded_cache(bundle: Bundle) -> None:
    src = get_source("fmnist")
    assert isinstance(src, FashionMnistSource)
    assert src.decoded_path(cache_dir()).is_file()
    again = src.load(cache_dir())
    assert np.array_equal(again.labels, bundle.labels)


def _write_idx(path: Path, arr: np.ndarray, code: int) -> None:
    header = bytes([0, 0, code, arr.ndim]) + np.array(arr.shape, dtype=">u4").tobytes()
    with gzip.open(path, "wb") as fh:
        fh.write(header + arr.astype(arr.dtype.newbyteorder(">")).tobytes())


def test_read_idx_roundtrip(tmp_path: Path) -> None:
    imgs = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "i.gz", imgs, 0x08)
    assert np.array_equal(read_idx(tmp_path / "i.gz"), imgs)
    ints = np.array([1, -2, 70000], dtype=np.int32)
    _write_idx(tmp_path / "n.gz", ints, 0x0C)
    assert np.array_equal(read_idx(tmp_path / "n.gz"), ints)


def test_read_idx_rejects_bad_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gz"
    with gzip.open(bad, "wb") as fh:
        fh.write(b"\x01\x02\x03\x04rest")
    with pytest.raises(DataError, match="bad.gz: not an IDX file"):
        read_idx(bad)
    short = tmp_path / "short.gz"
    with gzip.open(short, "wb") as fh:
        fh.write(bytes([0, 0, 8, 1]) + np.array([10], dtype=">u4").tobytes() + b"abc")
    with pytest.raises(DataError, match="short.gz: 3 data bytes"):
        read_idx(short)
    notgz = tmp_path / "plain.gz"
    notgz.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="plain.gz: unreadable"):
        read_idx(notgz)
