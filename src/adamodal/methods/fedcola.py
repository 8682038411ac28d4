"""FedCola (seed 002, arXiv 2404.12467): federated modality complementary and collaboration
on a small modality-agnostic transformer (:mod:`adamodal.transformer`).

Every client group is its own data set with its own objective: image-only clients classify
images, text-only clients classify texts, multimodal clients classify pairs and align them for
retrieval (symmetric InfoNCE, weight ``fedcola.contrastive``). The server therefore keeps one
model per group; they share the self-attention weights of each modality and nothing else.

Complementary local training (uni-modal clients)
    Every block linear of the client's modality (``fedcola.aux_layers``: all four, or the two
    attention ones) computes with ``W + g * W_aux``, where ``W_aux`` is the same layer of the
    other modality's global model (frozen, downloaded) and ``g`` a learnable scalar per layer,
    0 at the start of every round. By linearity the upload is the merged ``W + g * W_aux``:
    as large as ``W`` and understood by the server without the gates.
Collaborative aggregation (server)
    For the model of group ``G`` and a parameter ``p`` of modality ``m`` (``heads.both`` has
    the group's modalities), each sender ``i`` gets the coefficient ``n_i / N`` and
    ``p_G <- p_G + sum_i n_i / N * (w_i - p_G)``:

    * self-attention weights: senders = every client that uploaded ``p`` (image-only and
      multimodal clients for an image block), ``N`` = their samples: a weighted mean across
      modalities' data sets;
    * everything else (MLPs, norms, embeddings, heads): senders = clients of group ``G`` only,
      and ``N`` = the samples of *every* sender whose modalities overlap ``p``'s (the
      compensation denominator, ``fedcola.compensation``). So each layer of a data set's model
      moves by the same fraction of its clients' updates as its attention layers do, instead
      of the full step a within-group mean would take (the seed's layer-level alignment).
      Without compensation ``N`` is the group's own samples.

``fedcola.variant=fedavg|fedprox`` runs the baselines on the same model and the same local
objectives: one global model, every parameter averaged over the clients that uploaded it
(FedProx adds ``fedcola.mu / 2 * ||w - w_global||^2``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from adamodal.errors import ConfigError
from adamodal.kit.train import make_optimizer, minibatch_epochs, task_loss
from adamodal.methods.base import (
    ClientContext,
    ClientInfo,
    Message,
    Method,
    load_arrays,
    state_arrays,
)
from adamodal.model import ModelSpec
from adamodal.transformer import (
    BLOCK_LINEARS,
    CoLaNet,
    RoutedNet,
    TransformerSpec,
    build_transformer,
    is_attention,
    param_modality,
)

VARIANTS = ("fedcola", "fedavg", "fedprox")
AUX_LAYERS = {"all": BLOCK_LINEARS, "attn": ("attn.qkv", "attn.proj")}
GROUP_MODALITIES = {"multimodal": ("image", "text"), "image_only": ("image",), "text_only": ("text",)}
GROUP_TASK = {"multimodal": "both", "image_only": "image", "text_only": "text"}
OTHER = {"image": "text", "text": "image"}
GLOBAL = "global"
AUX = "aux."


@dataclass(frozen=True)
class Sender:
    """What the server knows about one reply: who sent it, its size and what it holds."""

    group: str
    modalities: frozenset[str]
    n: float
    names: frozenset[str]


def coefficients(name: str, target: str, senders: dict[int, Sender], *, collaborative: bool = True,
                 compensation: bool = True) -> dict[int, float]:
    """Weight of each sender's ``name`` in the update of ``target``'s model (FedCola).

    ``target`` is a client group, or ``"global"`` for the single model of the baselines
    (plain FedAvg over the senders that hold ``name``). Weights need not sum to 1: with
    compensation a data set's own layers take a partial step (see the module docstring).
    """
    holders = {c: s for c, s in senders.items() if name in s.names}
    if target == GLOBAL or (collaborative and is_attention(name)):
        chosen = holders
        total = sum(s.n for s in chosen.values())
    else:
        chosen = {c: s for c, s in holders.items() if s.group == target}
        if compensation:
            mod = param_modality(name)
            mods = {mod} if mod is not None else set(GROUP_MODALITIES[target])
            total = sum(s.n for s in senders.values() if s.modalities & mods)
        else:
            total = sum(s.n for s in chosen.values())
    if total <= 0:
        return {}
    return {c: s.n / total for c, s in chosen.items()}


def apply_update(old: np.ndarray, uploads: dict[int, np.ndarray], coef: dict[int, float]) -> np.ndarray:
    """``old + sum_i coef_i * (w_i - old)`` in float64, back in ``old``'s dtype."""
    if not coef:
        return old
    acc = old.astype(np.float64).copy()
    for c, w in coef.items():
        acc += w * (uploads[c].astype(np.float64) - old.astype(np.float64))
    return acc.astype(old.dtype)


def info_nce(zi: torch.Tensor, zt: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE between paired unit vectors (row i of both is a positive pair)."""
    logits = zi @ zt.t() / temperature
    target = torch.arange(len(zi), device=zi.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


def gate_key(name: str) -> str:
    return name.replace(".", "__")


class Complementary(nn.Module):
    """A uni-modal client's view of the model: the chosen linears compute with
    ``W + g * W_aux`` (``W_aux`` frozen, ``g`` learnable, 0 at start), the rest as is."""

    def __init__(self, net: CoLaNet, aux: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.net = net
        self.names = sorted(aux)
        self.aux = {n: aux[n].detach() for n in self.names}
        device = next(net.parameters()).device
        self.gates = nn.ParameterDict({gate_key(n): nn.Parameter(torch.zeros((), device=device)) for n in self.names})

    def effective(self) -> dict[str, torch.Tensor]:
        params = dict(self.net.named_parameters())
        return {n: params[n] + self.gates[gate_key(n)] * self.aux[n] for n in self.names}

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return functional_call(self.net, self.effective(), args, kwargs)

    @torch.no_grad()
    def merged(self) -> dict[str, np.ndarray]:
        """The upload of the mixed layers: ``W + g * W_aux``, the size of ``W``."""
        return {n: t.detach().cpu().numpy().copy() for n, t in self.effective().items()}

    def gate_values(self) -> dict[str, float]:
        return {n: float(self.gates[gate_key(n)].detach()) for n in self.names}


class FedCola(Method):
    name = "fedcola"
    description = "FedCola: transformer, complementary training, attention shared across modalities (fedcola.variant)"
    input_kinds = ("raw",)
    config_defaults = {
        "fedcola.variant": "fedcola",
        "fedcola.width": 192,
        "fedcola.depth": 4,
        "fedcola.heads": 3,
        "fedcola.mlp_ratio": 4.0,
        "fedcola.patch": 0,
        "fedcola.vocab": 8192,
        "fedcola.max_tokens": 64,
        "fedcola.proj_dim": 128,
        "fedcola.contrastive": 1.0,
        "fedcola.temperature": 0.07,
        "fedcola.complementary": True,
        "fedcola.aux_layers": "all",
        "fedcola.collaborative": True,
        "fedcola.compensation": True,
        "fedcola.mu": 0.01,
    }

    def __init__(self, cfg: dict[str, Any], spec: ModelSpec, clients: list[ClientInfo]) -> None:
        super().__init__(cfg, spec, clients)
        self.variant = str(cfg["fedcola.variant"])
        if self.variant not in VARIANTS:
            raise ConfigError(f"fedcola.variant: {self.variant!r} is not one of {', '.join(VARIANTS)}")
        if str(cfg["fedcola.aux_layers"]) not in AUX_LAYERS:
            raise ConfigError(f"fedcola.aux_layers: {cfg['fedcola.aux_layers']!r} is not one of {', '.join(AUX_LAYERS)}")
        if spec.input_kind != "raw":
            raise ConfigError("method=fedcola trains its own embeddings on raw inputs: set towers=small")
        for key in ("fedcola.temperature", "fedcola.mlp_ratio"):
            if float(cfg[key]) <= 0:
                raise ConfigError(f"{key} must be positive, got {cfg[key]}")
        if float(cfg["fedcola.contrastive"]) < 0 or float(cfg["fedcola.mu"]) < 0:
            raise ConfigError("fedcola.contrastive and fedcola.mu must be >= 0")
        self.tspec = TransformerSpec(
            num_classes=spec.num_classes, modalities=tuple(spec.modalities), img_shape=spec.img_shape,
            width=int(cfg["fedcola.width"]), depth=int(cfg["fedcola.depth"]), heads=int(cfg["fedcola.heads"]),
            mlp_ratio=float(cfg["fedcola.mlp_ratio"]), patch=int(cfg["fedcola.patch"]), vocab=int(cfg["fedcola.vocab"]),
            max_tokens=int(cfg["fedcola.max_tokens"]), proj_dim=int(cfg["fedcola.proj_dim"]), dropout=spec.dropout,
        )
        self.groups = sorted({c.group for c in clients})
        self.params: dict[str, dict[str, np.ndarray]] = {}
        self._nets: dict[str, CoLaNet] = {}

    # ---- model -----------------------------------------------------------------------
    def model(self) -> CoLaNet:
        if self._model is None:
            self._model = build_transformer(self.tspec, self.seed).to(self.device)
        return self._model  # type: ignore[return-value]

    def initial_params(self) -> dict[str, np.ndarray]:
        return state_arrays(build_transformer(self.tspec, self.seed))

    @property
    def per_group(self) -> bool:
        return self.variant == "fedcola"

    def key_of(self, group: str) -> str:
        return group if self.per_group else GLOBAL

    def owned(self, group: str) -> list[str]:
        """The parameters a client of ``group`` trains and uploads: its modalities' embeddings,
        blocks and norms, and the heads of its task."""
        mods = GROUP_MODALITIES[group]
        out = []
        for name in self.params[self.key_of(group)]:
            kind = name.split(".")[0]
            if kind == "heads":
                keep = name.split(".")[1] == GROUP_TASK[group]
            elif kind == "pair":
                keep = group == "multimodal"
            else:
                keep = param_modality(name) in mods
            if keep:
                out.append(name)
        return out

    def aux_source(self, group: str) -> str | None:
        """Whose global weights a uni-modal client of ``group`` mixes in: the other modality's
        uni-modal data set if the federation has one, else the multimodal one."""
        if not self.per_group or not bool(self.cfg["fedcola.complementary"]) or group == "multimodal":
            return None
        if len(self.tspec.modalities) < 2:
            return None
        other = {"image_only": "text_only", "text_only": "image_only"}[group]
        for g in (other, "multimodal"):
            if g in self.params:
                return g
        return None

    def aux_arrays(self, group: str) -> dict[str, np.ndarray]:
        """``aux.<own layer>`` -> the other modality's global weight of that layer."""
        src = self.aux_source(group)
        if src is None:
            return {}
        (mod,) = GROUP_MODALITIES[group]
        layers = AUX_LAYERS[str(self.cfg["fedcola.aux_layers"])]
        out = {}
        for i in range(self.tspec.depth):
            for layer in layers:
                own = f"blocks.{mod}.{i}.{layer}.weight"
                out[AUX + own] = self.params[src][f"blocks.{OTHER[mod]}.{i}.{layer}.weight"]
        return out

    # ---- server ----------------------------------------------------------------------
    def init_server(self) -> None:
        init = self.initial_params()
        keys = self.groups if self.per_group else [GLOBAL]
        self.params = {k: {n: a.copy() for n, a in init.items()} for k in keys}

    def configure(self, phase: str, rnd: int, cids: list[int]) -> dict[int, Message]:
        out = {}
        for cid in cids:
            group = self.clients[cid].group
            params = self.params[self.key_of(group)]
            arrays = {n: params[n] for n in self.owned(group)}
            arrays.update(self.aux_arrays(group))
            out[cid] = Message(arrays)
        return out

    def aggregate(self, phase: str, rnd: int, replies: dict[int, Message]) -> None:
        if not replies:
            return
        senders = {
            cid: Sender(self.clients[cid].group, frozenset(self.clients[cid].modalities),
                        float(r.scalars["num_examples"]), frozenset(r.arrays))
            for cid, r in replies.items()
        }
        collaborative = bool(self.cfg["fedcola.collaborative"])
        compensation = bool(self.cfg["fedcola.compensation"])
        for key, params in self.params.items():
            for name in list(params):
                coef = coefficients(name, key, senders, collaborative=collaborative, compensation=compensation)
                if coef:
                    params[name] = apply_update(params[name], {c: replies[c].arrays[name] for c in coef}, coef)

    def server_state(self) -> dict[str, np.ndarray]:
        return {f"{key}/{name}": a for key, params in self.params.items() for name, a in params.items()}

    def load_server_state(self, state: dict[str, np.ndarray]) -> None:
        self.params = {}
        for full, a in state.items():
            key, name = full.split("/", 1)
            self.params.setdefault(key, {})[name] = np.asarray(a)

    def eval_message(self, cid: int) -> Message:
        return Message(dict(self.params[self.key_of(self.clients[cid].group)]))

    def group_model(self, group: str) -> CoLaNet:
        """The server's model of one data set (the single global model for the baselines)."""
        key = self.key_of(group) if self.key_of(group) in self.params else next(iter(self.params))
        if key not in self._nets:
            self._nets[key] = build_transformer(self.tspec, self.seed).to(self.device)
        return load_arrays(self._nets[key], self.params[key])  # type: ignore[return-value]

    def global_model(self) -> nn.Module | None:
        if not self.per_group:
            return self.group_model(GLOBAL)
        return RoutedNet({g: self.group_model(g) for g in self.groups})

    # ---- client ----------------------------------------------------------------------
    def client_step(self, phase: str, rnd: int, ctx: ClientContext, msg: Message) -> Message:
        net = self.model()
        own = {k: v for k, v in msg.arrays.items() if not k.startswith(AUX)}
        aux = {k[len(AUX):]: torch.as_tensor(v, device=self.device) for k, v in msg.arrays.items() if k.startswith(AUX)}
        load_arrays(net, own)
        module: nn.Module = Complementary(net, aux) if aux else net
        anchors = None
        if self.variant == "fedprox" and float(self.cfg["fedcola.mu"]) > 0:
            anchors = {k: torch.as_tensor(v, device=self.device) for k, v in own.items()}
        try:
            for n, p in net.named_parameters():
                p.requires_grad_(n in own)
            loss = self.local_train(module, net, ctx, anchors)
        finally:
            for p in net.parameters():
                p.requires_grad_(True)
        arrays = {n: a for n, a in state_arrays(net).items() if n in own}
        scalars: dict[str, Any] = {"num_examples": len(ctx.train), "loss": loss}
        if isinstance(module, Complementary):
            arrays.update(module.merged())
            gates = module.gate_values()
            scalars["gate_abs_mean"] = float(np.mean(np.abs(list(gates.values()))))
            # a few bytes: lets anyone check an upload is W + g * W_aux
            scalars.update({f"gate/{n}": g for n, g in gates.items()})
        return Message(arrays, scalars)

    def local_train(self, module: nn.Module, net: CoLaNet, ctx: ClientContext,
                    anchors: dict[str, torch.Tensor] | None) -> float:
        """``local_epochs`` of mini-batches: the task loss of each row's head, plus InfoNCE on
        paired rows (multimodal clients) and the proximal term (FedProx)."""
        data = ctx.train.to(self.device)
        if len(data) == 0:
            return float("nan")
        cfg = ctx.cfg
        weight, temp = float(cfg["fedcola.contrastive"]), float(cfg["fedcola.temperature"])
        mu = float(cfg["fedcola.mu"])
        module.train()

        def batch_loss(rows: torch.Tensor) -> torch.Tensor:
            batch = data.subset(rows)
            logits, zi, zt = module(batch.x_img, batch.x_txt, batch.m_img, batch.m_txt, return_pairs=True)
            loss = task_loss(logits, batch.y, ctx.spec.task)
            if zi is not None and len(zi) > 1 and weight > 0:
                loss = loss + weight * info_nce(zi, zt, temp)
            if anchors is not None:
                params = dict(net.named_parameters())
                loss = loss + 0.5 * mu * torch.stack([((params[n] - a) ** 2).sum() for n, a in anchors.items()]).sum()
            return loss

        return minibatch_epochs(len(data), int(cfg["local_epochs"]), int(cfg["batch_size"]),
                                make_optimizer(module.parameters(), cfg), batch_loss, ctx.generator)

    def client_model(self, ctx: ClientContext, msg: Message) -> nn.Module:
        return load_arrays(self.model(), msg.arrays)


METHOD = FedCola
