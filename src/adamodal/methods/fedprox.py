"""FedProx: FedAvg plus a proximal term mu/2 * ||w - w_global||^2 in every local step, which
keeps heterogeneous clients from drifting far from the global model (``fedprox.mu``)."""

from __future__ import annotations

import torch
from torch import nn

from adamodal.kit.train import ExtraLoss
from adamodal.methods.base import Message
from adamodal.methods.fedavg import FedAvg


class FedProx(FedAvg):
    name = "fedprox"
    description = "FedAvg with a proximal term (fedprox.mu)"
    config_defaults = {"fedprox.mu": 0.01}

    def extra_loss(self, msg: Message) -> ExtraLoss | None:
        mu = float(self.cfg["fedprox.mu"])
        if mu == 0:
            return None
        anchors = {k: torch.as_tensor(v, device=self.device) for k, v in msg.arrays.items()}

        def proximal(model: nn.Module, batch, logits) -> torch.Tensor:
            terms = [((p - anchors[n]) ** 2).sum() for n, p in model.named_parameters() if p.requires_grad]
            return 0.5 * mu * torch.stack(terms).sum()

        return proximal

    def param_penalty(self):
        mu = float(self.cfg["fedprox.mu"])
        if mu == 0:
            return None

        def proximal(params: dict[str, torch.Tensor], anchors: dict[str, torch.Tensor]) -> torch.Tensor:
            return 0.5 * mu * torch.stack([((params[n] - anchors[n]) ** 2).sum() for n in params]).sum()

        return proximal


METHOD = FedProx
