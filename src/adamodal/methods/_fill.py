"""Filling a row's missing modality with a stand-in: the kit of the imputation methods
(``prototype``, ``retrieval``).

A filled modality is an input like any other: its features go where the real ones would and
its mask is set, so the gated fusion reads it. Training fills through a batch transform
(:data:`~adamodal.kit.train.BatchTransform`, which may use the row's label); prediction
fills inside the model (:class:`FillingNet`), where the label is unknown.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from adamodal.kit.tensors import Tensors

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


def label_agreement(y: torch.Tensor, bank_y: torch.Tensor, task: str) -> torch.Tensor:
    """[rows, bank] how far labels agree: 1/0 for the same class, or the Jaccard similarity
    of positive findings (two rows without any positive finding agree fully)."""
    if task != "multilabel":
        return (y.view(-1, 1) == bank_y.view(1, -1)).float()
    a = (torch.nan_to_num(y.float(), nan=0.0) > 0.5).float()
    b = (bank_y.float() > 0.5).float()
    both = a @ b.T
    either = a.sum(1, keepdim=True) + b.sum(1).unsqueeze(0) - both
    return torch.where(either > 0, both / either.clamp(min=1), torch.ones_like(both))


def nearest(query: torch.Tensor, bank: torch.Tensor, agreement: torch.Tensor | None = None) -> torch.Tensor:
    """Index of each query row's nearest bank row by cosine similarity, among the bank rows of
    highest label ``agreement`` with it when given."""
    sim = unit(query) @ unit(bank).T
    if agreement is not None:
        best = agreement == agreement.max(dim=1, keepdim=True).values
        sim = sim.masked_fill(~best, float("-inf"))
    return sim.argmax(dim=1)


def fill_from_pairs(batch: Tensors, bank: dict[str, torch.Tensor], bank_y: torch.Tensor | None, *,
                    task: str, k: int) -> Tensors:
    """Each row lacking a modality gets it from a bank of pairs (``bank[m]`` features, one row
    per pair), matched by the present modality's cosine similarity. With ``bank_y`` (training,
    the row's label known): the nearest pair among those whose label agrees best. Without
    (prediction): the mean of the ``k`` nearest pairs."""
    for missing, rows in to_fill(batch).items():
        if not bool(rows.any()):
            continue
        present = "text" if missing == "image" else "image"
        x_p, _ = features(batch, present)
        query = x_p[rows].to(bank[present].device)
        if bank_y is not None:
            agree = label_agreement(batch.y[rows].to(bank_y.device), bank_y, task)
            values = bank[missing][nearest(query, bank[present], agree)]
        else:
            top = (unit(query) @ unit(bank[present]).T).topk(min(k, len(bank[present])), dim=1).indices
            values = bank[missing][top].mean(dim=1)
        batch = put(batch, missing, rows, values.to(rows.device))
    return batch
