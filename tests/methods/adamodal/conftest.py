"""Toy sizes for AdaModal-Fed's parts: tiny problems run on one thread."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adamodal.model import ModelSpec

SPEC = ModelSpec(task="multiclass", num_classes=4, modalities=("image", "text"), input_kind="features",
                 img_dim=12, txt_dim=10, img_shape=(12,), dim=16, dropout=0.0)


@pytest.fixture(autouse=True)
def one_thread():
    """These toy problems are tiny: thread synchronisation would dominate their run time."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def toy_knowledge(k: int = 5, dim: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    c_img = rng.normal(size=(k, dim)).astype(np.float32)
    c_txt = rng.normal(size=(k, dim)).astype(np.float32)
    return {"C_img": c_img, "C_txt": c_txt, "pi": rng.permutation(k), "mean_img": c_img.mean(0),
            "mean_txt": c_txt.mean(0)}


def toy_batch(n: int = 8, img: bool = True, txt: bool = True):
    g = torch.Generator().manual_seed(3)
    return (torch.randn(n, 12, generator=g), torch.randn(n, 10, generator=g), torch.full((n,), img),
            torch.full((n,), txt))
