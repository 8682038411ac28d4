"""Stage 3, cross-attention imputation: a missing modality read from the paired centroids.

The imputer attends from a row's representation of the modality it has (query) over the
server's centroids of that modality (keys) and reads the Hungarian-paired centroids of the
other modality (values). Its weights are global, trained on multimodal clients against the
real other-modality representation and averaged. The server applies it to the centroid pairs
to make the cluster-level global representations Z that stage 4 propagates.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

IMPUTE_MODES = ("zero", "mean", "cross_attention")


class CrossAttentionImputer(nn.Module):
    """Multi-head cross-attention ``CA(query, keys, values)`` with learned ``W_Q``, ``W_K``,
    ``W_V`` and a learned temperature.

    Each head scores the keys by the cosine of its projected query and keys (cosine keeps the
    scale independent of the representation norm), divided by the temperature; its output is
    the attention-weighted mix of the value centroids. The heads' mixes are averaged and a
    low-rank value map corrects the result (``out = m + W_V m``, ``W_V`` initialised to zero),
    so an untrained imputer is a soft nearest-centroid retrieval rather than noise. ``W_K``
    starts equal to ``W_Q`` for the same reason: query and keys live in the same space.
    """

    def __init__(self, dim: int, heads: int = 4, key_dim: int = 16, rank: int = 32,
                 temperature: float = 0.1) -> None:
        super().__init__()
        self.heads, self.key_dim = heads, key_dim
        self.w_q = nn.Linear(dim, heads * key_dim, bias=False)
        self.w_k = nn.Linear(dim, heads * key_dim, bias=False)
        with torch.no_grad():
            self.w_k.weight.copy_(self.w_q.weight)
        self.w_v_down = nn.Linear(dim, rank, bias=False)
        self.w_v_up = nn.Linear(rank, dim)
        nn.init.zeros_(self.w_v_up.weight)
        nn.init.zeros_(self.w_v_up.bias)
        self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature)))

    def attention(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """Attention weights ``[B, heads, K]`` (each row sums to one)."""
        q = F.normalize(self.w_q(query).view(len(query), self.heads, self.key_dim), dim=-1)
        k = F.normalize(self.w_k(keys).view(len(keys), self.heads, self.key_dim), dim=-1)
        logits = torch.einsum("bhd,khd->bhk", q, k) / self.log_temperature.exp().clamp_min(1e-3)
        return torch.softmax(logits, dim=-1)

    def forward(self, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        mix = torch.einsum("bhk,kd->bd", self.attention(query, keys), values) / self.heads
        return mix + self.w_v_up(self.w_v_down(mix))


def imputation_loss(reps: dict[str, torch.Tensor], imputed: dict[str, torch.Tensor],
                    paired: torch.Tensor, weight: float) -> torch.Tensor | None:
    """``weight * MSE`` between each modality's imputation and its real (detached)
    representation on the rows that have both: what trains the imputer's weights."""
    if weight <= 0 or len(imputed) < 2 or not bool(paired.any()):
        return None
    return weight * 0.5 * sum(torch.mean((imputed[m][paired] - reps[m][paired].detach()) ** 2)
                              for m in ("image", "text"))


@torch.no_grad()
def cluster_prototypes(imputer: CrossAttentionImputer | None, keys: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Z per matched pair j: for each modality, the mean of its centroid and of what the global
    imputer makes of the paired centroid of the other modality (the centroids themselves when
    cross-attention is off). ``keys`` are row-aligned by the pairing."""
    img, txt = keys["image"], keys["text"]
    if imputer is None:
        z_img, z_txt = img, txt
    else:
        z_img = 0.5 * (img + imputer(txt, txt, img))
        z_txt = 0.5 * (txt + imputer(img, img, txt))
    return {"Z_img": z_img.float().cpu().numpy(), "Z_txt": z_txt.float().cpu().numpy()}


@torch.no_grad()
def imputation_quality(reps: dict[str, torch.Tensor], imputed: dict[str, torch.Tensor],
                       paired: torch.Tensor, generator: torch.Generator) -> dict[str, float]:
    """Mean cosine of each imputation to the real other modality on paired rows, against the
    same with the rows shuffled (a pairing that carries no information): the imputation is
    worth something only where the first clearly beats the second. Empty without pairs."""
    n = int(paired.sum())
    if n < 2 or len(imputed) < 2:
        return {}
    perm = torch.randperm(n, generator=generator).to(paired.device)
    real, shuffled = [], []
    for m in ("image", "text"):
        a, b = imputed[m][paired], reps[m][paired]
        real.append(F.cosine_similarity(a, b, dim=-1).mean())
        shuffled.append(F.cosine_similarity(a, b[perm], dim=-1).mean())
    return {"impute_cos": float(sum(real) / 2), "impute_cos_shuffled": float(sum(shuffled) / 2),
            "impute_rows": float(n)}
