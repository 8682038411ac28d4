"""Mix: three sources of different modalities in one run, the setting of FedCola (seed 002).

Fashion-MNIST images go to image-only clients, 20 Newsgroups (or Reuters-8) texts to
text-only clients, and emoji image+name pairs to multimodal clients (the bundle's
``client_group`` tells the scenario). The engine has one label space per run, so each
source's labels are offset into a union (``fmnist`` 0-9, then the text classes, then the emoji
categories), class names carry the source (``fmnist:Trouser``) and :func:`label_ranges` gives
each source's range back, e.g. to score a source's rows against its own classes only. Images
are resized to one common RGB shape (``mix.size``); Fashion-MNIST's grey is repeated over the
three channels, emoji come from one vendor (``mix.vendor``).

Each source is cut to a seeded random subset (``mix.max_train`` / ``mix.max_test`` items per
source) so that a run stays small; Fashion-MNIST and the text corpus keep their official test
splits, emoji hold out ``mix.emoji_test`` of their items as the test split.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from adamodal.data.base import Bundle, DatasetSource
from adamodal.data.emoji import VENDORS
from adamodal.errors import ConfigError

TEXT_SOURCES = ("newsgroups", "reuters8")
#: the kind of client each source's items go to
KINDS = {"fmnist": "image_only", "text": "text_only", "emoji": "multimodal"}


def label_ranges(bundle: Bundle) -> dict[str, tuple[int, int]]:
    """``source -> (first, stop)`` class ids, from the ``source:`` prefix of the class names."""
    out: dict[str, tuple[int, int]] = {}
    for i, name in enumerate(bundle.classes):
        src = name.split(":", 1)[0]
        lo, _ = out.get(src, (i, i))
        out[src] = (lo, i + 1)
    return out


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    """``[N, H, W, C]`` uint8 -> ``[N, size, size, 3]`` uint8 (antialiased bilinear)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _subset(rng: np.random.Generator, test: np.ndarray, max_train: int, max_test: int) -> np.ndarray:
    """Sorted item indices: at most ``max_train`` train and ``max_test`` test items (0 = all)."""
    out = []
    for mask, cap in ((~test, max_train), (test, max_test)):
        idx = np.flatnonzero(mask)
        if cap and len(idx) > cap:
            idx = rng.choice(idx, size=cap, replace=False)
        out.append(idx)
    return np.sort(np.concatenate(out))


class MixSource(DatasetSource):
    """Fashion-MNIST (image-only clients) + a text corpus (text-only) + emoji (multimodal)."""

    name: ClassVar[str] = "mix"
    modalities = ("image", "text")
    task = "multiclass"
    description: ClassVar[str] = (
        "Fashion-MNIST (image-only clients) + 20 Newsgroups/Reuters-8 (text-only) + emoji (multimodal), "
        "one union label space"
    )
    options_defaults: ClassVar[dict[str, object]] = {
        "text": "newsgroups", "vendor": "apple", "size": 32,
        "max_train": 3000, "max_test": 1000, "emoji_test": 0.2,
    }

    def _opt(self, key: str) -> object:
        return self.options.get(key, self.options_defaults[key])

    def _opts(self) -> tuple[str, str, int, int, int, float]:
        text, vendor = str(self._opt("text")), str(self._opt("vendor"))
        if text not in TEXT_SOURCES:
            raise ConfigError(f"mix.text must be one of {', '.join(TEXT_SOURCES)}, got {text!r}")
        if vendor not in VENDORS:
            raise ConfigError(f"mix.vendor must be one of {', '.join(VENDORS)}, got {vendor!r}")
        try:
            size, max_train, max_test = (int(self._opt(k)) for k in ("size", "max_train", "max_test"))  # type: ignore[call-overload]
            frac = float(self._opt("emoji_test"))  # type: ignore[arg-type]
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"mix options must be numbers: {exc}") from None
        if size < 8:
            raise ConfigError(f"mix.size must be at least 8, got {size}")
        if max_train < 0 or max_test < 0:
            raise ConfigError("mix.max_train and mix.max_test must be >= 0 (0 = all)")
        if not 0 < frac < 1:
            raise ConfigError(f"mix.emoji_test must be in (0, 1), got {frac}")
        return text, vendor, size, max_train, max_test, frac

    def _sources(self) -> dict[str, DatasetSource]:
        from adamodal.data import get_source

        text = self._opts()[0]
        return {"fmnist": get_source("fmnist"), "text": get_source(text), "emoji": get_source("emoji")}

    def fetch(self, cache: Path) -> Path:
        for src in self._sources().values():
            src.fetch(cache)
        return Path(cache)

    def load(self, cache: Path) -> Bundle:
        text_name, vendor, size, max_train, max_test, frac = self._opts()
        rng = np.random.default_rng(0)  # the subsets are part of the data set, not of a run's seed
        parts = {k: s.load(cache) for k, s in self._sources().items()}
        emoji = parts["emoji"]
        egroups = np.unique(emoji.groups)
        held = rng.permutation(egroups)[: int(round(frac * len(egroups)))]
        emoji_test = np.isin(emoji.groups, held)

        images, texts, labels, groups, tests, kinds, classes = [], [], [], [], [], [], []
        offset_cls, offset_grp = 0, 0
        for key, b in parts.items():
            test = emoji_test if key == "emoji" else np.asarray(b.fixed_test, bool)
            idx = _subset(rng, test, max_train, max_test)
            n = len(idx)
            if b.images is not None:
                dom = list(b.domains).index(vendor) if key == "emoji" else 0
                images.append(_resize(b.images[idx, dom], size))
            else:
                images.append(np.zeros((n, size, size, 3), np.uint8))
            texts += [str(b.texts[i]) for i in idx] if b.texts is not None else [""] * n
            labels.append(b.labels[idx].astype(np.int64) + offset_cls)
            _, g = np.unique(b.groups[idx], return_inverse=True)
            groups.append(g.astype(np.int64) + offset_grp)
            tests.append(test[idx])
            kinds += [KINDS[key]] * n
            src_name = text_name if key == "text" else key
            classes += [f"{src_name}:{c}" for c in b.classes]
            offset_cls += b.num_classes
            offset_grp += int(g.max()) + 1 if n else 0
        labels_all = np.concatenate(labels)
        bundle = Bundle(
            name=self.name, task="multiclass", classes=classes, labels=labels_all,
            groups=np.concatenate(groups), images=np.concatenate(images)[:, None],
            domains=[vendor], texts=texts, fixed_test=np.concatenate(tests),
            client_group=np.array(kinds, dtype=object),
        )
        ranges = label_ranges(bundle)
        bundle.meta = {
            "sources": f"fmnist, {text_name}, emoji ({vendor})",
            "label_ranges": ", ".join(f"{k} {lo}-{hi - 1}" for k, (lo, hi) in ranges.items()),
            "items": {(text_name if k == "text" else k): int(np.sum(np.array(kinds) == v)) for k, v in KINDS.items()},
            "image_size": f"{size}x{size} RGB",
            "subset": f"at most {max_train} train / {max_test} test items per source (seed 0)",
        }
        return bundle


SOURCE = MixSource

__all__ = ["KINDS", "SOURCE", "MixSource", "label_ranges"]
