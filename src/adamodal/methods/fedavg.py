"""FedAvg: every client trains the whole model from the global weights; the server averages
all parameters weighted by the number of training samples, across ALL clients.

A missing modality is zero-filled (and masked in the fusion gate), the baseline behaviour of
multimodal FL benchmarks. Image-only clients return their text projection untouched, which
dilutes it in the average: that is FedAvg's known weakness with missing modalities.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from adamodal.engine import batched
from adamodal.engine.train import ExtraLoss, train_epochs
from adamodal.methods.base import (
    ClientContext,
    Message,
    Method,
    load_arrays,
    state_arrays,
    weighted_average,
)


class FedAvg(Method):
    name = "fedavg"
    description = "FedAvg over all clients, missing modality zero-filled"

    def init_server(self) -> None:
        self.global_params = self.initial_params()

    # which clients are averaged together; fedavg_group overrides this
    def cohort(self, cid: int) -> str:
        return "all"

    def params_for(self, cid: int) -> dict[str, np.ndarray]:
        return self.global_params

    def configure(self, phase: str, rnd: int, cids: list[int]) -> dict[int, Message]:
        return {cid: Message(self.params_for(cid)) for cid in cids}

    def client_step(self, phase: str, rnd: int, ctx: ClientContext, msg: Message) -> Message:
        model = load_arrays(self.model(), msg.arrays)
        loss = train_epochs(
            model, ctx.train, ctx.cfg, task=ctx.spec.task, generator=ctx.generator,
            extra_loss=self.extra_loss(msg), device=self.device,
        )
        return Message(state_arrays(model), {"num_examples": len(ctx.train), "loss": loss})

    def client_steps(self, phase: str, rnd: int, ctxs: list[ClientContext], msgs: list[Message]) -> list[Message] | None:
        model = self.model()
        custom_loss = type(self).extra_loss is not FedAvg.extra_loss
        if not batched.supports(model) or (custom_loss and type(self).param_penalty is FedAvg.param_penalty):
            return None
        starts = [{k: torch.as_tensor(v) for k, v in m.arrays.items()} for m in msgs]
        states, losses = batched.train_clients(
            model, starts, [c.train for c in ctxs], ctxs[0].cfg, task=ctxs[0].spec.task,
            generators=[c.generator for c in ctxs], penalty=self.param_penalty(),
        )
        return [
            Message({k: v.numpy() for k, v in st.items()}, {"num_examples": len(c.train), "loss": loss})
            for st, c, loss in zip(states, ctxs, losses, strict=True)
        ]

    def extra_loss(self, msg: Message) -> ExtraLoss | None:
        """Hook for regularised variants (FedProx)."""
        return None

    def param_penalty(self) -> batched.ParamPenalty | None:
        """:meth:`extra_loss` as a function of (parameters, start parameters), for batched
        training; a variant that overrides one must override both to be batched."""
        return None

    def aggregate(self, phase: str, rnd: int, replies: dict[int, Message]) -> None:
        if not replies:
            return
        cohorts: dict[str, list[int]] = {}
        for cid in sorted(replies):
            cohorts.setdefault(self.cohort(cid), []).append(cid)
        for cohort, cids in cohorts.items():
            averaged = weighted_average(
                [replies[c].arrays for c in cids], [float(replies[c].scalars["num_examples"]) for c in cids]
            )
            self.set_cohort_params(cohort, averaged)

    def set_cohort_params(self, cohort: str, params: dict[str, np.ndarray]) -> None:
        self.global_params = params

    def eval_message(self, cid: int) -> Message:
        return Message(self.params_for(cid))

    def client_model(self, ctx: ClientContext, msg: Message) -> nn.Module:
        return load_arrays(self.model(), msg.arrays)

    def global_model(self) -> nn.Module | None:
        return load_arrays(self.model(), self.global_params)

    def server_state(self) -> dict[str, np.ndarray]:
        return dict(self.global_params)

    def load_server_state(self, state: dict[str, np.ndarray]) -> None:
        self.global_params = dict(state)


METHOD = FedAvg
