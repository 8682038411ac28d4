"""The client model of DESIGN section 3.

::

    x_img -> f_img -> P_img (d) \\
                                  adapter A (d->d) -> gated fusion G(a_img, a_txt, mask) -> classifier C
    x_txt -> f_txt -> P_txt (d) /

``f_*`` are identity on cached frozen-tower features, or small trainable towers on raw inputs
(``towers=small``). Module names (``img_tower``, ``img_proj``, ``txt_proj``, ``adapter``,
``fusion``, ``classifier``) are the parameter prefixes methods use to pick what they share.
On single-modality data with small towers, projection and adapter are dropped so that
``model=cnn`` is exactly the conv6-conv16-fc120-fc84 network of the non-IID FL benchmarks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from adamodal.towers.small import make_image_tower, make_text_tower


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to build identical models on the server and on every client."""

    task: str
    num_classes: int
    modalities: tuple[str, ...]
    input_kind: str  # "features" | "raw"
    img_dim: int | None
    txt_dim: int | None
    img_shape: tuple[int, ...] | None
    dim: int = 256
    dropout: float = 0.1
    image_tower: str = "cnn"
    text_tower: str = "bow"

    @property
    def unimodal(self) -> bool:
        return len(self.modalities) == 1


class Projection(nn.Module):
    """P_m: maps one modality's tower output into the shared d-space."""

    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.linear(x))


class Adapter(nn.Module):
    """A: a residual MLP shared by both modalities (the global part the seeds average)."""

    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class GatedFusion(nn.Module):
    """G: softmax gate over the modalities a sample has (masked), late fusion by weighted sum.

    A modality absent from a sample gets weight 0, so a zero-filled slot cannot pull the fused
    vector toward zero; with one modality present the fused vector is that modality's.
    """

    def __init__(self, dim: int, num_modalities: int = 2) -> None:
        super().__init__()
        hidden = max(8, dim // 4)
        self.score = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        self.modality_bias = nn.Parameter(torch.zeros(num_modalities))

    def weights(self, reps: list[torch.Tensor], masks: list[torch.Tensor]) -> torch.Tensor:
        scores = torch.stack([self.score(r).squeeze(-1) + self.modality_bias[i] for i, r in enumerate(reps)], dim=1)
        mask = torch.stack(masks, dim=1)
        scores = scores.masked_fill(~mask, float("-inf"))
        w = torch.softmax(scores, dim=1)
        return torch.nan_to_num(w, nan=0.0)  # rows with no modality at all -> zero vector

    def forward(self, reps: list[torch.Tensor], masks: list[torch.Tensor]) -> torch.Tensor:
        w = self.weights(reps, masks)
        return (w.unsqueeze(-1) * torch.stack(reps, dim=1)).sum(dim=1)


class MultimodalNet(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        raw = spec.input_kind == "raw"
        slim = raw and spec.unimodal  # plain benchmark network: tower -> classifier
        rep_dim = spec.dim
        if "image" in spec.modalities:
            assert spec.img_dim is not None
            self.img_tower = make_image_tower(spec.image_tower, spec.img_shape) if raw else nn.Identity()
            feat = self.img_tower.out_dim if raw else spec.img_dim
            self.img_proj = nn.Identity() if slim else Projection(feat, spec.dim)
            if slim:
                rep_dim = feat
        if "text" in spec.modalities:
            assert spec.txt_dim is not None
            self.txt_tower = make_text_tower(spec.text_tower, spec.txt_dim) if raw else nn.Identity()
            feat = self.txt_tower.out_dim if raw else spec.txt_dim
            self.txt_proj = nn.Identity() if slim else Projection(feat, spec.dim)
            if slim:
                rep_dim = feat
        self.rep_dim = rep_dim
        self.adapter = nn.Identity() if slim else Adapter(spec.dim, spec.dropout)
        self.fusion = None if spec.unimodal else GatedFusion(spec.dim, 2)
        self.classifier = nn.Linear(rep_dim, spec.num_classes)

    def encode(
        self, x_img: torch.Tensor | None, x_txt: torch.Tensor | None,
        m_img: torch.Tensor | None = None, m_txt: torch.Tensor | None = None, skip_absent: bool = True,
    ) -> dict[str, torch.Tensor]:
        """Projections P_img / P_txt into the shared space. A modality no row of the batch has
        is not computed at all (saves the tower's forward pass on single-modality clients),
        unless ``skip_absent`` is False: batched training over many clients cannot branch on
        one client's data, and computes it masked instead (the same output)."""
        reps: dict[str, torch.Tensor] = {}
        if x_img is not None and hasattr(self, "img_proj") and (not skip_absent or m_img is None or bool(m_img.any())):
            reps["image"] = self.img_proj(self.img_tower(x_img))
        if x_txt is not None and hasattr(self, "txt_proj") and (not skip_absent or m_txt is None or bool(m_txt.any())):
            reps["text"] = self.txt_proj(self.txt_tower(x_txt))
        return reps

    def fuse(self, reps: dict[str, torch.Tensor], m_img: torch.Tensor, m_txt: torch.Tensor) -> torch.Tensor:
        """Adapter on each modality, then the masked gate. Missing slots are zeros, masked out."""
        if self.fusion is None:
            (only,) = reps.values()
            return self.adapter(only)
        if len(reps) == 1 and not torch.is_grad_enabled():
            # inference on one modality: the gate's weight is exactly 1 on its rows and 0
            # elsewhere (softmax over one unmasked slot), so it is not computed. Training still
            # runs it, so its parameters get their (zero) gradients and any weight decay, as in
            # the batched path
            (m, only), = reps.items()
            present = m_img if m == "image" else m_txt
            fused = self.adapter(only)
            return fused if bool(present.all()) else fused * present.unsqueeze(-1).to(fused.dtype)
        batch = m_img.shape[0]
        ref = next(iter(reps.values()))
        zeros = torch.zeros(batch, self.rep_dim, device=ref.device, dtype=ref.dtype)
        a_img = self.adapter(reps["image"]) if "image" in reps else zeros
        a_txt = self.adapter(reps["text"]) if "text" in reps else zeros
        mi = m_img if "image" in reps else torch.zeros_like(m_img)
        mt = m_txt if "text" in reps else torch.zeros_like(m_txt)
        return self.fusion([a_img, a_txt], [mi, mt])

    def forward(
        self, x_img: torch.Tensor | None, x_txt: torch.Tensor | None, m_img: torch.Tensor, m_txt: torch.Tensor,
        skip_absent: bool = True,
    ) -> torch.Tensor:
        return self.classifier(self.fuse(self.encode(x_img, x_txt, m_img, m_txt, skip_absent), m_img, m_txt))


def build_model(spec: ModelSpec, seed: int) -> MultimodalNet:
    """Same spec + same seed -> bit-identical initial weights on every machine."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MultimodalNet(spec)
