"""FedAvg inside each modality group only (multimodal / image-only / text-only): three
independent federations that never exchange anything. The baseline of the AdaModal-Fed
reference code; it avoids cross-group dilution at the cost of cross-group knowledge."""

from __future__ import annotations

import numpy as np
from torch import nn

from adamodal.methods.fedavg import FedAvg


class FedAvgGroup(FedAvg):
    name = "fedavg_group"
    description = "FedAvg within each modality group, no exchange across groups"

    def init_server(self) -> None:
        init = self.initial_params()
        self.group_params = {c.group: dict(init) for c in self.clients.values()}

    def cohort(self, cid: int) -> str:
        return self.clients[cid].group

    def params_for(self, cid: int) -> dict[str, np.ndarray]:
        return self.group_params[self.cohort(cid)]

    def set_cohort_params(self, cohort: str, params: dict[str, np.ndarray]) -> None:
        self.group_params[cohort] = params

    def global_model(self) -> nn.Module | None:
        return None  # three models, no single global one: evaluated per client

    def server_state(self) -> dict[str, np.ndarray]:
        return {f"{g}/{k}": v for g, params in self.group_params.items() for k, v in params.items()}

    def load_server_state(self, state: dict[str, np.ndarray]) -> None:
        groups: dict[str, dict[str, np.ndarray]] = {}
        for key, value in state.items():
            g, k = key.split("/", 1)
            groups.setdefault(g, {})[k] = value
        self.group_params = groups


METHOD = FedAvgGroup
