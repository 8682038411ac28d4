"""FedAvg: every client trains the whole model from the global weights; the server averages
all parameters weighted by the number of training samples, across ALL clients.

A missing modality is zero-filled (and masked in the fusion gate), the baseline behaviour of
multimodal FL benchmarks. Image-only clients return their text projection untouched, which
dilutes it in the average: that is FedAvg's known weakness with missing modalities.

Options shared with FedProx and FedAvg-group: ``fedavg.modality_dropout=p`` (while training,
a row that has both modalities hides one of them, image or text at random, with probability
p, so the shared fusion and classifier learn to predict from either alone: the cheap, strong
baseline of the missing-modality literature; evaluation never drops anything),
``aggregation=median|trimmed:beta`` (robust
rules, :func:`~adamodal.methods.base.aggregate_arrays`) and client-level differential privacy
(``dp.noise > 0``; see :mod:`adamodal.kit.privacy`): the client clips its update and, in
``dp.mode=client``, noises it before it leaves; the server then averages with equal weights
(sample counts would leak, and would break the sensitivity bound) and, in ``dp.mode=server``,
adds the noise to the mean.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from adamodal.errors import ConfigError
from adamodal.kit import batched
from adamodal.kit.privacy import add_noise, clip_update, dp_report
from adamodal.kit.train import BatchTransform, ExtraLoss, modality_dropout, stream, train_epochs
from adamodal.methods.base import (
    ArraySpec,
    ClientContext,
    ClientInfo,
    Message,
    Method,
    aggregate_arrays,
    load_arrays,
    state_arrays,
)


class FedAvg(Method):
    name = "fedavg"
    description = "FedAvg over all clients, missing modality zero-filled"
    config_defaults: ClassVar[dict[str, Any]] = {"fedavg.modality_dropout": 0.0}

    def __init__(self, cfg: dict[str, Any], spec, clients: list[ClientInfo]) -> None:
        super().__init__(cfg, spec, clients)
        p = float(cfg.get("fedavg.modality_dropout", 0.0))
        if not 0.0 <= p <= 1.0:
            raise ConfigError(f"fedavg.modality_dropout must be a probability in [0, 1], got {p}")
        self.dropout_p = p

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
        sent = self.model_arrays(msg)
        model = load_arrays(self.model(), sent)
        loss = train_epochs(
            model, ctx.train, ctx.cfg, task=ctx.spec.task, generator=ctx.generator,
            extra_loss=self.extra_loss(msg), device=self.device, batch_transform=self.batch_transform(ctx, msg),
        )
        params = state_arrays(model)
        if self.dp_on:
            params = self.privatize(params, sent, np.random.default_rng([ctx.seed, 17]))
        return Message(params, {"num_examples": len(ctx.train), "loss": loss})

    def model_arrays(self, msg: Message) -> dict[str, np.ndarray]:
        """The model's parameters among a message's arrays (variants send more beside them)."""
        return msg.arrays

    def batch_transform(self, ctx: ClientContext, msg: Message) -> BatchTransform | None:
        """What each training batch goes through: modality dropout when ``p > 0``, drawn from a
        stream of the client step's own seed (the batch order is the same as without it)."""
        if self.dropout_p <= 0:
            return None
        return modality_dropout(self.dropout_p, stream(ctx.seed, 23))

    # ---- differential privacy ---------------------------------------------------------
    @property
    def dp_on(self) -> bool:
        return float(self.cfg.get("dp.noise", 0.0)) > 0

    def privatize(self, params: dict[str, np.ndarray], sent: dict[str, np.ndarray],
                  rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Client side: the update clipped to ``dp.clip`` (and noised in ``dp.mode=client``),
        re-based on the weights received. Integer buffers (batch counters) go back as they
        came, since their values would count the client's batches."""
        clip = float(self.cfg["dp.clip"])
        delta = {k: v - sent[k] for k, v in params.items() if v.dtype.kind == "f"}
        delta, _ = clip_update(delta, clip)
        if self.cfg["dp.mode"] == "client":
            delta = add_noise(delta, float(self.cfg["dp.noise"]) * clip, rng)
        return {k: (sent[k] + delta[k]).astype(v.dtype) if k in delta else np.array(sent[k])
                for k, v in params.items()}

    def privacy_report(self, rounds: int) -> dict[str, Any] | None:
        """Epsilon of the clipped, noised parameter updates under ``dp.adjacency``; what else
        leaves a client un-noised is listed (the epsilon does not cover it)."""
        if not self.dp_on:
            return None
        client = self.cfg["dp.mode"] == "client"
        unnoised = ["num_examples and training loss (scalars of every update)",
                    "evaluation reports: test-split metrics and statistics (score histograms, "
                    "confusion and label counts)"]
        if not client:
            unnoised.insert(0, "each client's clipped update, towards the server (noise is added to the mean)")
        return dp_report(
            "gaussian on each clipped parameter upload (client side)" if client
            else "gaussian on the mean of clipped parameter uploads (server side, DP-FedAvg)",
            float(self.cfg["dp.noise"]), float(self.cfg["dp.clip"]), rounds, float(self.cfg["dp.delta"]),
            1.0 if client else float(self.cfg["participation"]), adjacency=str(self.cfg["dp.adjacency"]),
            unnoised=unnoised, aggregation=str(self.cfg["aggregation"]),
        )

    def reply_schema(self, phase: str, rnd: int, cid: int, sent: Message) -> dict[str, ArraySpec] | None:
        """Exactly the model the client was sent, trained."""
        return {k: ArraySpec.of(v) for k, v in self.model_arrays(sent).items()}

    def client_steps(self, phase: str, rnd: int, ctxs: list[ClientContext], msgs: list[Message]) -> list[Message] | None:
        model = self.model()
        custom_loss = type(self).extra_loss is not FedAvg.extra_loss
        if not batched.supports(model) or (custom_loss and type(self).param_penalty is FedAvg.param_penalty):
            return None
        sent = [self.model_arrays(m) for m in msgs]
        starts = [{k: torch.as_tensor(v) for k, v in s.items()} for s in sent]
        states, losses = batched.train_clients(
            model, starts, [c.train for c in ctxs], ctxs[0].cfg, task=ctxs[0].spec.task,
            generators=[c.generator for c in ctxs], penalty=self.param_penalty(),
            transforms=[self.batch_transform(c, m) for c, m in zip(ctxs, msgs, strict=True)],
        )
        replies = []
        for st, c, s, loss in zip(states, ctxs, sent, losses, strict=True):
            params = {k: v.numpy() for k, v in st.items()}
            if self.dp_on:
                params = self.privatize(params, s, np.random.default_rng([c.seed, 17]))
            replies.append(Message(params, {"num_examples": len(c.train), "loss": loss}))
        return replies

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
        for i, (cohort, cids) in enumerate(cohorts.items()):
            weights = [1.0 if self.dp_on else float(replies[c].scalars["num_examples"]) for c in cids]
            averaged = self.combine(cids, [replies[c].arrays for c in cids], weights)
            if self.dp_on and self.cfg["dp.mode"] == "server":
                std = float(self.cfg["dp.noise"]) * float(self.cfg["dp.clip"]) / len(cids)
                averaged = add_noise(averaged, std, np.random.default_rng([self.seed, rnd, 29, i]))
            self.set_cohort_params(cohort, averaged)

    def combine(self, cids: list[int], updates: list[dict[str, np.ndarray]], weights: list[float]) -> dict[str, np.ndarray]:
        """One cohort's parameter uploads into its new parameters (``aggregation`` rule)."""
        return aggregate_arrays(updates, weights, str(self.cfg["aggregation"]))

    def set_cohort_params(self, cohort: str, params: dict[str, np.ndarray]) -> None:
        self.global_params = params

    def eval_message(self, cid: int) -> Message:
        return Message(self.params_for(cid))

    def client_model(self, ctx: ClientContext, msg: Message) -> nn.Module:
        return load_arrays(self.model(), self.model_arrays(msg))

    def global_model(self) -> nn.Module | None:
        return load_arrays(self.model(), self.global_params)

    def server_state(self) -> dict[str, np.ndarray]:
        return dict(self.global_params)

    def load_server_state(self, state: dict[str, np.ndarray]) -> None:
        self.global_params = dict(state)


METHOD = FedAvg
