"""Local: every client trains alone on its own data (the lower bound). Nothing is exchanged."""

from __future__ import annotations

from torch import nn

from adamodal.kit.train import train_epochs
from adamodal.methods.base import ClientContext, Message, Method, load_arrays, state_arrays


class Local(Method):
    name = "local"
    description = "each client alone (lower bound)"
    relative_cost = 1.2

    def configure(self, phase: str, rnd: int, cids: list[int]) -> dict[int, Message]:
        return {cid: Message() for cid in cids}

    def client_step(self, phase: str, rnd: int, ctx: ClientContext, msg: Message) -> Message:
        model = self.client_model(ctx, msg)
        train_epochs(model, ctx.train, ctx.cfg, task=ctx.spec.task, generator=ctx.generator, device=self.device)
        ctx.state = state_arrays(model)
        return Message()

    def aggregate(self, phase: str, rnd: int, replies: dict[int, Message]) -> None:
        pass

    def client_model(self, ctx: ClientContext, msg: Message) -> nn.Module:
        return load_arrays(self.model(), ctx.state or self.initial_params())


METHOD = Local
