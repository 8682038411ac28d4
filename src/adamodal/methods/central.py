"""Central: all training data pooled on the server, one model (the upper bound).

Not federated: in round 1 every client uploads its training rows (the bytes show what that
costs); the server then trains ``local_epochs`` epochs per round on the pool.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from adamodal.kit.tensors import Tensors
from adamodal.kit.train import train_epochs
from adamodal.methods.base import (
    ClientContext,
    ClientInfo,
    Message,
    Method,
    load_arrays,
    state_arrays,
)
from adamodal.model import ModelSpec


class Central(Method):
    name = "central"
    description = "pooled data, one model (upper bound; not federated)"
    moves_raw_data = True
    relative_cost = 0.8

    def __init__(self, cfg: dict, spec: ModelSpec, clients: list[ClientInfo]) -> None:
        super().__init__(cfg, spec, clients)
        self.pool: dict[int, Tensors] = {}

    def init_server(self) -> None:
        self.params = self.initial_params()

    def phases(self, rnd: int) -> list[str]:
        return ["upload"] if not self.pool else []

    def participants(self, phase: str, rnd: int, sampled: list[int]) -> list[int]:
        return sorted(self.clients)  # the pool is built once, from everybody

    def configure(self, phase: str, rnd: int, cids: list[int]) -> dict[int, Message]:
        return {cid: Message() for cid in cids}

    def client_step(self, phase: str, rnd: int, ctx: ClientContext, msg: Message) -> Message:
        return Message(ctx.train.arrays())

    def aggregate(self, phase: str, rnd: int, replies: dict[int, Message]) -> None:
        for cid, reply in replies.items():
            self.pool[cid] = Tensors.from_arrays(reply.arrays)

    def end_round(self, rnd: int) -> None:
        model = load_arrays(self.model(), self.params)
        data = Tensors.concat([self.pool[c] for c in sorted(self.pool)])
        gen = torch.Generator()
        gen.manual_seed(self.seed * 1_000_003 + rnd)
        train_epochs(model, data, self.cfg, task=self.spec.task, generator=gen, device=self.device)
        self.params = state_arrays(model)

    def eval_message(self, cid: int) -> Message:
        return Message(self.params)

    def client_model(self, ctx: ClientContext, msg: Message) -> nn.Module:
        return load_arrays(self.model(), msg.arrays)

    def global_model(self) -> nn.Module | None:
        return load_arrays(self.model(), self.params)

    def server_state(self) -> dict[str, np.ndarray]:
        state = {f"params/{k}": v for k, v in self.params.items()}
        for cid, t in self.pool.items():
            state.update({f"pool/{cid}/{k}": v for k, v in t.arrays().items()})
        return state

    def load_server_state(self, state: dict[str, np.ndarray]) -> None:
        self.params = {k[len("params/"):]: v for k, v in state.items() if k.startswith("params/")}
        pools: dict[int, dict[str, np.ndarray]] = {}
        for k, v in state.items():
            if k.startswith("pool/"):
                _, cid, name = k.split("/", 2)
                pools.setdefault(int(cid), {})[name] = v
        self.pool = {cid: Tensors.from_arrays(a) for cid, a in pools.items()}


METHOD = Central
