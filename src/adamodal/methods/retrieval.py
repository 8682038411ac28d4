"""Retrieval imputation, after CAR-MFL (Poudel et al., MICCAI 2024): the server holds a small
PUBLIC paired set (image + text + labels; ``split.public`` of the identity groups, held out
from every client and from the test set) and a client fills a row's missing modality from the
nearest public pair. The model is otherwise FedAvg of every parameter.

- Public features go down. Being public, the server sends the public pairs' frozen-tower
  features and labels with the model every round (a byte cost counted like any other); the
  clients' uploads are their trained parameters only.
- Nearest by the present modality: cosine similarity of frozen-tower features (the inputs; a
  fixed space, so retrieval does not depend on a model still untrained in early rounds; CAR-MFL
  compares its encoders' outputs). Training: among the public pairs whose label agrees best
  with the row's (multi-class: the same class; multi-label: the highest Jaccard similarity of
  positive findings), the nearest; when no public pair shares the class every pair ties and
  the nearest overall is taken. This is CAR-MFL's label refinement over the whole public set
  instead of its top-10 candidates. Prediction: the label is unknown, so the mean of the
  missing modality over the ``retrieval.k`` nearest public pairs.
- Aggregation: the projection of modality m (``img_proj``/``txt_proj``, the encoders on top of
  the frozen towers) trained by a client that lacks m learnt from retrieved, not real, inputs,
  so its weight n_i is multiplied by ``retrieval.alpha`` for those parameters before the
  weights are normalised; every other parameter is averaged by n_i. (CAR-MFL's code applies a
  softmax to the scaled, normalised weights, which makes them nearly uniform; here alpha is the
  factor itself.) Under ``aggregation=median|trimmed`` the weights, alpha included, are unused.
- Left out: CAR-MFL also trains a model on the public set on the server and averages it in;
  here the public set is used for retrieval only.
``retrieval.impute=false`` keeps the aggregation rule but fills nothing (zero-fill), which is
the ablation of the retrieval stage. ``split.public=0`` is an error.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from adamodal.errors import ConfigError
from adamodal.kit.tensors import Tensors
from adamodal.kit.train import BatchTransform, compose
from adamodal.methods._fill import FillingNet, fill_from_pairs
from adamodal.methods.base import ClientContext, Message, aggregate_arrays, load_arrays
from adamodal.methods.fedavg import FedAvg

ENCODERS = {"image": ("img_tower.", "img_proj."), "text": ("txt_tower.", "txt_proj.")}


class Public:
    """The public pairs as a client holds them (from the message): features and labels."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.x = {"image": torch.as_tensor(arrays["public.x_img"]), "text": torch.as_tensor(arrays["public.x_txt"])}
        self.y = torch.as_tensor(arrays["public.y"])

    def label_fill(self, task: str) -> BatchTransform:
        """Training: the partner of a row lacking a modality is the nearest public pair (by the
        present modality) among those whose label agrees best with the row's."""
        def run(batch: Tensors) -> Tensors:
            return fill_from_pairs(batch, self.x, self.y, task=task, k=1)

        return run


class RetrievalNet(FillingNet):
    """Prediction: the missing modality as the mean over the ``k`` nearest public pairs."""

    def __init__(self, net: nn.Module, public: Public, k: int) -> None:
        super().__init__(net)
        device = next(net.parameters()).device
        self.register_buffer("public_image", public.x["image"].float().to(device))
        self.register_buffer("public_text", public.x["text"].float().to(device))
        self.k = int(k)

    def fill(self, batch: Tensors) -> Tensors:
        bank = {"image": self.public_image, "text": self.public_text}
        return fill_from_pairs(batch, bank, None, task="", k=self.k)


class Retrieval(FedAvg):
    name = "retrieval"
    description = "CAR-MFL: a missing modality retrieved from the server's public pairs (split.public)"
    config_defaults: ClassVar[dict[str, Any]] = {"retrieval.impute": True, "retrieval.alpha": 0.3, "retrieval.k": 5}
    input_kinds = ("features",)
    needs_public = True

    def __init__(self, cfg: dict[str, Any], spec, clients) -> None:
        super().__init__(cfg, spec, clients)
        if float(cfg.get("split.public", 0.0)) <= 0:
            raise ConfigError("retrieval needs a public paired set on the server: set split.public > 0 "
                              "(the fraction of identity groups held out for it, e.g. split.public=0.1)")
        if spec.input_kind != "features":
            raise ConfigError("retrieval: the public pairs are matched by frozen-tower features; use towers=frozen")
        self.alpha = float(cfg["retrieval.alpha"])
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"retrieval.alpha must be in [0, 1], got {self.alpha}")
        self.k = int(cfg["retrieval.k"])
        if self.k < 1:
            raise ConfigError(f"retrieval.k must be at least 1, got {self.k}")
        self.impute = bool(cfg["retrieval.impute"])
        self.public_arrays: dict[str, np.ndarray] = {}

    # ---- server ---------------------------------------------------------------------------
    def set_public(self, public: Tensors) -> None:
        if public.x_img is None or public.x_txt is None:
            raise ConfigError("split.public: retrieval needs public pairs with both an image and a text")
        y = public.y.numpy()
        y = np.nan_to_num(y.astype(np.float32), nan=0.0) if self.spec.task == "multilabel" else y.astype(np.int64)
        self.public_arrays = {"public.x_img": public.x_img.numpy().astype(np.float32),
                              "public.x_txt": public.x_txt.numpy().astype(np.float32), "public.y": y}

    def init_server(self) -> None:
        if not self.public_arrays:
            raise ConfigError("retrieval: the runtime handed over no public set although split.public > 0 "
                              "(the data set has no paired items to hold out?)")
        super().init_server()

    def broadcast(self) -> dict[str, np.ndarray]:
        return self.public_arrays if self.impute else {}

    def configure(self, phase: str, rnd: int, cids: list[int]) -> dict[int, Message]:
        return {cid: Message({**self.params_for(cid), **self.broadcast()}) for cid in cids}

    def eval_message(self, cid: int) -> Message:
        return Message({**self.params_for(cid), **self.broadcast()})

    def model_arrays(self, msg: Message) -> dict[str, np.ndarray]:
        return {k: v for k, v in msg.arrays.items() if not k.startswith("public.")}

    def combine(self, cids: list[int], updates: list[dict[str, np.ndarray]], weights: list[float]) -> dict[str, np.ndarray]:
        """Every parameter averaged by n_i, except that the encoder of a modality a client lacks
        counts ``alpha * n_i`` from it (see the module docstring)."""
        rule = str(self.cfg["aggregation"])
        keys = list(updates[0])
        parts = {m: [k for k in keys if k.startswith(prefixes)] for m, prefixes in ENCODERS.items()}
        rest = [k for k in keys if not any(k in ks for ks in parts.values())]
        out = aggregate_arrays([{k: u[k] for k in rest} for u in updates], weights, rule) if rest else {}
        for m, ks in parts.items():
            if not ks:
                continue
            w = [wi * (1.0 if m in self.clients[c].modalities else self.alpha) for c, wi in zip(cids, weights, strict=True)]
            if sum(w) <= 0:  # no client holds m and alpha = 0: nothing better than the plain mean
                w = weights
            out.update(aggregate_arrays([{k: u[k] for k in ks} for u in updates], w, rule))
        return {k: out[k] for k in keys}

    def global_model(self) -> nn.Module | None:
        return self.client_model(None, Message({**self.global_params, **self.broadcast()}))

    # ---- client ---------------------------------------------------------------------------
    def batch_transform(self, ctx: ClientContext, msg: Message) -> BatchTransform | None:
        fill = Public(msg.arrays).label_fill(ctx.spec.task) if "public.x_img" in msg.arrays else None
        return compose(super().batch_transform(ctx, msg), fill)

    def client_model(self, ctx: ClientContext | None, msg: Message) -> nn.Module:
        net = load_arrays(self.model(), self.model_arrays(msg))
        return RetrievalNet(net, Public(msg.arrays), self.k) if "public.x_img" in msg.arrays else net


METHOD = Retrieval
