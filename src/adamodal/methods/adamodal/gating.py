"""Stage 4, propagation and gating: a sample's representation meets its cluster's global one.

Each row's representation ``r`` is mixed with the global prototype ``z_k`` of its nearest server
centroid by a learned forget gate, ``r' = g * r + (1 - g) * z_k``, and local training pulls
``r`` toward ``z_k`` (feature distillation, ``beta * ||r - z_k||^2``). The gate is a global
part: a client cannot learn from its own few classes when to distrust its representation on
classes it has never seen.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ForgetGate(nn.Module):
    """``r' = g * r + (1 - g) * z`` with ``g = sigmoid((W_g [r; z] + b) / tau)``.

    ``W_g`` maps ``[r; z]`` to one gate per dimension through a rank-``rank`` factorisation
    (``2d x rank + rank x d`` weights instead of ``2d x d``: the gate is uploaded, so its size
    is upload). ``b`` starts at +1 so a fresh gate trusts the sample's own representation
    (g ~ 0.73 at tau=1) and learns where the prototype is the better guide. ``tau`` is a fixed
    temperature: larger is softer (g nearer 1/2), smaller is closer to a hard switch.
    """

    def __init__(self, dim: int, tau: float = 1.0, rank: int = 16) -> None:
        super().__init__()
        self.tau = float(tau)
        self.linear = nn.Sequential(nn.Linear(2 * dim, rank, bias=False), nn.Linear(rank, dim))
        nn.init.constant_(self.linear[1].bias, 1.0)

    def gate(self, r: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        logits = self.linear(torch.cat([r, z], dim=-1))
        return torch.sigmoid(logits if self.tau == 1.0 else logits / self.tau)

    def forward(self, r: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The mixed representation and the gate values (returned, for the round's metrics)."""
        g = self.gate(r, z)
        return torch.lerp(z, r, g), g  # z + g * (r - z), one kernel


def propagation_loss(reps: dict[str, torch.Tensor], protos: dict[str, torch.Tensor],
                     rows: dict[str, torch.Tensor], beta: float) -> torch.Tensor | None:
    """``beta * mean ||r - z_k||^2`` over the rows that really have each modality: pulls a
    client's representation toward the global prototype of its cluster. None when off."""
    if beta <= 0:
        return None
    loss = None
    for m, z in protos.items():
        keep = rows[m]
        if bool(keep.all()):  # every row has the modality: no gather
            term = beta * F.mse_loss(reps[m], z)
        elif bool(keep.any()):
            term = beta * F.mse_loss(reps[m][keep], z[keep])
        else:
            continue
        loss = term if loss is None else loss + term
    return loss
