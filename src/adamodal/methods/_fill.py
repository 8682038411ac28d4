"""Filling a row's missing modality with a stand-in: the kit of the imputation baselines
(``prototype``, ``retrieval``).

A filled modality is an input like any other: its features go where the real ones would and
its mask is set, so the gated fusion reads it. Training fills through a batch transform
(:data:`~adamodal.engine.train.BatchTransform`, which may use the row's label); prediction
fills inside the model (:class:`FillingNet`), where the label is unknown.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from adamodal.engine.tensors import Tensors

#: (the modality to fill, the modality it is filled from)
DIRECTIONS = (("image", "text"), ("text", "image"))


def unit(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit length (cosine similarity is then a dot product)."""
    return F.normalize(x.float(), dim=-1)


def features(batch: Tensors, modality: str) -> tuple[torch.Tensor | None, torch.Tensor]:
    return (batch.x_img, batch.m_img) if modality == "image" else (batch.x_txt, batch.m_txt)


def to_fill(batch: Tensors) -> dict[str, torch.Tensor]:
    """Per modality, the rows that lack it but have the other one (computed before any fill)."""
    out = {}
    for missing, present in DIRECTIONS:
        x, m = features(batch, missing)
        x_p, m_p = features(batch, present)
        if x is not None and x_p is not None:
            out[missing] = ~m & m_p
    return out


def put(batch: Tensors, modality: str, rows: torch.Tensor, values: torch.Tensor) -> Tensors:
    """``batch`` with ``values`` (one per selected row) as those rows' ``modality``, now present."""
    if not bool(rows.any()):
        return batch
    x, m = features(batch, modality)
    assert x is not None
    x = x.clone()
    x[rows] = values.to(x.dtype).view(-1, *x.shape[1:])
    m = m | rows
    if modality == "image":
        return Tensors(x, batch.x_txt, m, batch.m_txt, batch.y)
    return Tensors(batch.x_img, x, batch.m_img, m, batch.y)


class FillingNet(nn.Module):
    """A trained model that first fills each row's missing modality (prediction only).

    Subclasses hold what they fill from as buffers (so the prediction memo's fingerprint sees
    it) and implement :meth:`fill`; a row that has both modalities, or neither, is untouched.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def fill(self, batch: Tensors) -> Tensors:
        raise NotImplementedError

    def forward(self, x_img: torch.Tensor | None, x_txt: torch.Tensor | None, m_img: torch.Tensor,
                m_txt: torch.Tensor, skip_absent: bool = True) -> torch.Tensor:
        b = self.fill(Tensors(x_img, x_txt, m_img, m_txt, torch.zeros(len(m_img))))
        return self.net(b.x_img, b.x_txt, b.m_img, b.m_txt, skip_absent)
