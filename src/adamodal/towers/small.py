"""Small trainable towers for ``towers=small``: no pretrained weights, trained from scratch.

They take the inputs built by :func:`adamodal.towers.features.build_inputs` with
``towers="small"`` (raw uint8 pixels, hashed word ids) and accept any leading batch dimensions,
so ``[B, C, H, W]`` and ``[B, D, C, H, W]`` both work.
"""

from __future__ import annotations

import torch
from torch import nn

from adamodal.errors import ConfigError

IMAGE_TOWERS: tuple[str, ...] = ("cnn", "mlp")
TEXT_TOWERS: tuple[str, ...] = ("bow",)


def _check_shape(in_shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(in_shape) != 3 or min(in_shape) < 1:
        raise ConfigError(f"image tower input shape must be (C, H, W), got {tuple(in_shape)}")
    c, h, w = (int(v) for v in in_shape)
    return c, h, w


def _to_unit_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> [-1, 1] (mean 0.5, std 0.5); float input is taken as already in [0, 1]."""
    x = x.float().div(255.0) if x.dtype == torch.uint8 else x.float()
    return (x - 0.5) / 0.5


class LeNetTower(nn.Module):
    """conv6-conv16-fc120-fc84, the CNN of the non-IID FL benchmarks, without its classifier.

    Output ``[..., 84]``; the flatten size follows ``in_shape`` so 1x28x28 and 3x64x64 both work.
    """

    def __init__(self, in_shape: tuple[int, ...]) -> None:
        super().__init__()
        c, h, w = _check_shape(in_shape)
        fh, fw = ((h - 4) // 2 - 4) // 2, ((w - 4) // 2 - 4) // 2
        if fh < 1 or fw < 1:
            raise ConfigError(f"images of {h}x{w} are too small for the cnn tower (needs >= 16x16)")
        self.in_shape = (c, h, w)
        self.out_dim = 84
        self.features = nn.Sequential(
            nn.Conv2d(c, 6, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * fh * fw, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-3]
        x = _to_unit_float(x.reshape(-1, *self.in_shape))
        return self.head(self.features(x)).reshape(*lead, self.out_dim)


class MLPTower(nn.Module):
    """Two hidden layers of ``hidden`` units on the flattened pixels (the FL benchmarks' MLP)."""

    def __init__(self, in_shape: tuple[int, ...], hidden: int = 200) -> None:
        super().__init__()
        c, h, w = _check_shape(in_shape)
        self.in_shape = (c, h, w)
        self.out_dim = hidden
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c * h * w, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-3]
        x = _to_unit_float(x.reshape(-1, *self.in_shape))
        return self.net(x).reshape(*lead, self.out_dim)


class BagOfWordsTower(nn.Module):
    """Mean of hashed-token embeddings then LayerNorm: a fast text encoder with no tokenizer.

    A text with no tokens (all padding) gives an exact zero vector, never NaN, so an empty
    document looks like a missing one rather than like LayerNorm's bias.
    """

    def __init__(self, vocab: int, dim: int = 64) -> None:
        super().__init__()
        if vocab < 2 or dim < 1:
            raise ConfigError(f"bow tower needs vocab >= 2 and dim >= 1, got {vocab}, {dim}")
        self.vocab = vocab
        self.out_dim = dim
        self.embed = nn.EmbeddingBag(vocab, dim, mode="mean", padding_idx=0)
        self.norm = nn.LayerNorm(dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        lead = ids.shape[:-1]
        ids = ids.reshape(-1, ids.shape[-1]).long()
        has_tokens = (ids != 0).any(dim=1, keepdim=True)
        out = self.norm(self.embed(ids)) * has_tokens
        return out.reshape(*lead, self.out_dim)


def make_image_tower(name: str, in_shape: tuple[int, ...]) -> nn.Module:
    """The trainable image tower called ``name`` (``cnn`` or ``mlp``)."""
    if name == "cnn":
        return LeNetTower(in_shape)
    if name == "mlp":
        return MLPTower(in_shape)
    raise ConfigError(f"unknown image tower {name!r}; valid values: {', '.join(IMAGE_TOWERS)}")


def make_text_tower(name: str, vocab: int) -> nn.Module:
    """The trainable text tower called ``name`` (``bow``)."""
    if name == "bow":
        return BagOfWordsTower(vocab)
    raise ConfigError(f"unknown text tower {name!r}; valid values: {', '.join(TEXT_TOWERS)}")
