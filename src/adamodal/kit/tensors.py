"""Client data as tensors: one split of one client, ready for a model."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from adamodal.data.scenario import View
from adamodal.towers.features import Inputs


@dataclass
class Tensors:
    """Rows for a model: inputs (zero where a modality is missing), masks and labels.

    ``x_img`` / ``x_txt`` are ``None`` when the data set has no such modality at all.
    """

    x_img: torch.Tensor | None
    x_txt: torch.Tensor | None
    m_img: torch.Tensor
    m_txt: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, rows: torch.Tensor | np.ndarray) -> Tensors:
        rows = torch.as_tensor(rows, dtype=torch.long)
        return Tensors(
            None if self.x_img is None else self.x_img[rows],
            None if self.x_txt is None else self.x_txt[rows],
            self.m_img[rows], self.m_txt[rows], self.y[rows],
        )

    def slice(self, start: int, stop: int) -> Tensors:
        """Rows ``start:stop`` as views, no copy (``subset`` gathers, so it copies)."""
        cut = lambda t: None if t is None else t[start:stop]  # noqa: E731
        return Tensors(cut(self.x_img), cut(self.x_txt), self.m_img[start:stop], self.m_txt[start:stop],
                       self.y[start:stop])

    def to(self, device: torch.device | str) -> Tensors:
        if str(device) == "cpu":
            return self
        mv = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Tensors(mv(self.x_img), mv(self.x_txt), mv(self.m_img), mv(self.m_txt), mv(self.y))

    @staticmethod
    def concat(parts: list[Tensors]) -> Tensors:
        cat = lambda xs: None if xs[0] is None else torch.cat(xs)  # noqa: E731
        return Tensors(
            cat([p.x_img for p in parts]), cat([p.x_txt for p in parts]),
            torch.cat([p.m_img for p in parts]), torch.cat([p.m_txt for p in parts]), torch.cat([p.y for p in parts]),
        )

    def arrays(self) -> dict[str, np.ndarray]:
        """As named numpy arrays (used only by methods that explicitly move raw data, i.e. central)."""
        out = {"m_img": self.m_img.numpy(), "m_txt": self.m_txt.numpy(), "y": self.y.numpy()}
        if self.x_img is not None:
            out["x_img"] = self.x_img.numpy()
        if self.x_txt is not None:
            out["x_txt"] = self.x_txt.numpy()
        return out

    @staticmethod
    def from_arrays(a: dict[str, np.ndarray]) -> Tensors:
        t = lambda k: torch.from_numpy(np.asarray(a[k])) if k in a else None  # noqa: E731
        return Tensors(t("x_img"), t("x_txt"), t("m_img").bool(), t("m_txt").bool(), t("y"))


def materialize(inputs: Inputs, labels: np.ndarray, view: View) -> Tensors:
    """Gather a view's rows; a modality a row does not have is zero-filled (and masked)."""
    idx = torch.as_tensor(view.idx, dtype=torch.long)
    m_img = torch.as_tensor(view.has_img, dtype=torch.bool)
    m_txt = torch.as_tensor(view.has_txt, dtype=torch.bool)
    x_img = x_txt = None
    if inputs.img is not None:
        x_img = inputs.img[idx, torch.as_tensor(view.dom, dtype=torch.long)].clone()
        x_img[~m_img] = 0
    if inputs.txt is not None:
        x_txt = inputs.txt[idx].clone()
        x_txt[~m_txt] = 0
    y = torch.as_tensor(np.asarray(labels)[view.idx])
    y = y.float() if y.ndim == 2 else y.long()
    return Tensors(x_img, x_txt, m_img, m_txt, y)
