"""FedCLIP (seed 004): frozen encoders, an attention adapter on the image features, trained
against the text embeddings of class prompts; only the adapter is federated.

The pretrained towers stay frozen and their features come from the cache (``towers=frozen``):
EfficientNet-Lite0 for images (1280-d), all-MiniLM-L6-v2 for texts (384-d). The class prompts
(``fedclip.prompt`` filled with each class name) are embedded once by the same MiniLM and cached
on disk like any other text feature; every client computes them itself from the public class
names, so they are never sent. A client model is::

    I  = W f_img(x)                                   bridge: 1280 -> 384 (the text space)
    I* = AttAI(I) * I,   AttAI = Linear-Tanh-Linear-Softmax (softmax over the feature axis)
    logit_c = cos(I*, T_c) / temperature,  T_c = f_txt(prompt(c))

Training is CLIP's symmetric contrastive loss between a batch's adapted images and the prompt
embeddings of their labels. The server averages the adapter (bridge + AttAI) by the number of
image rows; nothing else exists to send.

Where this departs from the original, and why:

* The bridge. CLIP's two encoders were trained together, so FedCLIP's AttAI works in one
  shared space and starts from CLIP's zero-shot accuracy. Our towers were not: EfficientNet's
  ImageNet features and MiniLM's sentence space are unrelated, so a trained linear map into the
  text space is part of the adapter (and of the upload). There is no zero-shot start.
  ``fedclip.bridge_rank`` > 0 factors the bridge through that rank to shrink the upload.
* Duplicate labels in a batch. CLIP's loss takes the diagonal as the only positive; with class
  prompts, two images of the same class share one prompt, so every same-class pair is a
  positive (uniform soft targets), or the loss would push an image away from its own prompt.
* Rows with text but no image (text-only clients, the server's text view) are scored with their
  frozen MiniLM embedding against the prompts: zero-shot, untrained, since the adapter is on the
  image side (as in the original). Clients without images therefore do not train.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from adamodal.cache import cache_dir
from adamodal.errors import ConfigError
from adamodal.kit.train import make_optimizer, minibatch_epochs
from adamodal.methods.base import (
    ClientContext,
    ClientInfo,
    Message,
    Method,
    load_arrays,
    state_arrays,
    weighted_average,
)
from adamodal.model import ModelSpec


class AttAI(nn.Module):
    """Attention weights over the feature axis: Linear(d, d) - Tanh - Linear(d, d) - Softmax."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, dim), nn.Softmax(dim=-1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class FedCLIPNet(nn.Module):
    """Bridge + AttAI over frozen image features, classifying by the nearest class prompt.

    The prompt embeddings are a non-persistent buffer: not parameters, not in ``state_dict``,
    so they can never be part of an upload.
    """

    def __init__(self, img_dim: int, prompts: torch.Tensor, temperature: float, bridge_rank: int = 0) -> None:
        super().__init__()
        dim = int(prompts.shape[1])
        # rank r > 0: a factored bridge (img_dim + dim) * r parameters instead of img_dim * dim
        self.bridge = (nn.Linear(img_dim, dim) if bridge_rank <= 0 else
                       nn.Sequential(nn.Linear(img_dim, bridge_rank, bias=False), nn.Linear(bridge_rank, dim)))
        self.attai = AttAI(dim)
        self.register_buffer("prompts", F.normalize(prompts.float(), dim=-1), persistent=False)
        self.scale = 1.0 / temperature

    def embed_image(self, x_img: torch.Tensor) -> torch.Tensor:
        """I* = AttAI(I) * I with I the bridged image features."""
        i = self.bridge(x_img)
        return self.attai(i) * i

    def logits_of(self, emb: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(emb, dim=-1) @ self.prompts.T

    def forward(
        self, x_img: torch.Tensor | None, x_txt: torch.Tensor | None, m_img: torch.Tensor, m_txt: torch.Tensor,
    ) -> torch.Tensor:
        out = torch.zeros(m_img.shape[0], self.prompts.shape[0], device=m_img.device)
        if x_txt is not None and x_txt.shape[-1] == self.prompts.shape[1]:
            out = torch.where(m_txt.unsqueeze(1), self.logits_of(x_txt.float()), out)
        if x_img is not None:  # the image decides wherever there is one
            out = torch.where(m_img.unsqueeze(1), self.logits_of(self.embed_image(x_img.float())), out)
        return out


def contrastive_loss(img_emb: torch.Tensor, y: torch.Tensor, prompts: torch.Tensor, scale: float) -> torch.Tensor:
    """Symmetric CLIP loss between images and the (normalised) prompts of their labels; every
    same-label pair counts as a positive."""
    logits = scale * F.normalize(img_emb, dim=-1) @ prompts[y].T
    same = (y[:, None] == y[None, :]).float()
    target = same / same.sum(dim=1, keepdim=True)
    loss_img = -(target * logits.log_softmax(dim=1)).sum(dim=1).mean()
    loss_txt = -(target * logits.T.log_softmax(dim=1)).sum(dim=1).mean()
    return (loss_img + loss_txt) / 2


@functools.cache
def _class_names(dataset: str, options: tuple[tuple[str, Any], ...]) -> tuple[str, ...]:
    from adamodal.data import get_source

    return tuple(get_source(dataset, dict(options)).load(cache_dir()).classes)


def class_names(cfg: dict[str, Any]) -> tuple[str, ...]:
    """The task's class names (public, like the label set every client already knows)."""
    prefix = f"{cfg['dataset']}."
    options = tuple(sorted((k[len(prefix):], v) for k, v in cfg.items() if k.startswith(prefix)))
    return _class_names(str(cfg["dataset"]), options)


@functools.cache
def _prompt_embeddings(prompts: tuple[str, ...]) -> np.ndarray:
    from adamodal.towers.features import build_inputs

    inputs = build_inputs(SimpleNamespace(images=None, texts=list(prompts)), "frozen", cache_dir(), progress=False)
    assert inputs.txt is not None
    return inputs.txt.numpy().astype(np.float32, copy=True)


def prompt_embeddings(template: str, names: tuple[str, ...]) -> np.ndarray:
    """``[C, 384]`` MiniLM embeddings of the filled prompts, cached on disk by content."""
    if "{}" not in template:
        raise ConfigError(f"fedclip.prompt must contain {{}} for the class name, got {template!r}")
    return _prompt_embeddings(tuple(template.replace("{}", n.lower()) for n in names))


class FedCLIP(Method):
    name = "fedclip"
    description = "frozen towers + AttAI adapter vs class-prompt text embeddings; FedAvg of the adapter only"
    input_kinds = ("features",)
    config_defaults = {
        "fedclip.prompt": "an emoji of {}",
        "fedclip.temperature": 0.05,
        "fedclip.bridge_rank": 0,
    }

    def __init__(self, cfg: dict, spec: ModelSpec, clients: list[ClientInfo]) -> None:
        super().__init__(cfg, spec, clients)
        if spec.input_kind != "features" or "image" not in spec.modalities or spec.img_dim is None:
            raise ConfigError("fedclip adapts frozen image features: set towers=frozen on a data set with images")
        if spec.task != "multiclass":
            raise ConfigError("fedclip picks the nearest class prompt: it needs a multi-class task")
        temperature = float(cfg["fedclip.temperature"])
        if temperature <= 0:
            raise ConfigError(f"fedclip.temperature must be > 0, got {temperature}")
        self.temperature = temperature
        self.bridge_rank = int(cfg["fedclip.bridge_rank"])
        if self.bridge_rank < 0:
            raise ConfigError(f"fedclip.bridge_rank must be >= 0 (0 = full bridge), got {self.bridge_rank}")
        names = class_names(cfg)
        if len(names) != spec.num_classes:
            raise ConfigError(f"fedclip: {len(names)} class names for {spec.num_classes} classes")
        self.prompts = torch.from_numpy(prompt_embeddings(str(cfg["fedclip.prompt"]), names))

    # ---- the model ---------------------------------------------------------------------
    def _build(self) -> FedCLIPNet:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return FedCLIPNet(int(self.spec.img_dim or 0), self.prompts, self.temperature, self.bridge_rank)

    def model(self) -> nn.Module:
        if self._model is None:
            self._model = self._build().to(self.device)
        return self._model

    def initial_params(self) -> dict[str, np.ndarray]:
        return state_arrays(self._build())

    # ---- server ------------------------------------------------------------------------
    def init_server(self) -> None:
        self.global_params = self.initial_params()

    def participants(self, phase: str, rnd: int, sampled: list[int]) -> list[int]:
        return [c for c in sampled if "image" in self.clients[c].modalities]  # the adapter is image-side

    def configure(self, phase: str, rnd: int, cids: list[int]) -> dict[int, Message]:
        return {cid: Message(self.global_params) for cid in cids}

    def aggregate(self, phase: str, rnd: int, replies: dict[int, Message]) -> None:
        live = [c for c in sorted(replies) if float(replies[c].scalars.get("num_examples", 0)) > 0]
        if live:
            self.global_params = weighted_average(
                [replies[c].arrays for c in live], [float(replies[c].scalars["num_examples"]) for c in live])

    def eval_message(self, cid: int) -> Message:
        return Message(self.global_params)

    def global_model(self) -> nn.Module | None:
        return load_arrays(self.model(), self.global_params)

    def server_state(self) -> dict[str, np.ndarray]:
        return dict(self.global_params)

    def load_server_state(self, state: dict[str, np.ndarray]) -> None:
        self.global_params = dict(state)

    # ---- client ------------------------------------------------------------------------
    def client_step(self, phase: str, rnd: int, ctx: ClientContext, msg: Message) -> Message:
        model = load_arrays(self.model(), msg.arrays)
        data = ctx.train.subset(torch.nonzero(ctx.train.m_img).flatten()).to(self.device)
        loss = self.train_adapter(model, data.x_img, data.y, ctx.cfg, ctx.generator)
        return Message(state_arrays(model), {"num_examples": len(data), "loss": loss})

    def train_adapter(self, model: FedCLIPNet, x: torch.Tensor | None, y: torch.Tensor, cfg: dict,
                      generator: torch.Generator) -> float:
        """``local_epochs`` of mini-batch contrastive training of the adapter; the mean loss."""
        if x is None or len(y) == 0:
            return float("nan")
        model.train()

        def batch_loss(rows: torch.Tensor) -> torch.Tensor:
            rows = rows.to(x.device)
            return contrastive_loss(model.embed_image(x[rows].float()), y[rows], model.prompts, model.scale)

        return minibatch_epochs(len(y), int(cfg["local_epochs"]), int(cfg["batch_size"]),
                                make_optimizer(model.parameters(), cfg), batch_loss, generator)

    def client_model(self, ctx: ClientContext, msg: Message) -> nn.Module:
        return load_arrays(self.model(), msg.arrays)


METHOD = FedCLIP
