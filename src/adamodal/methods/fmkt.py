"""FM-kt (seed 003): decentralized federated learning by feature-map knowledge transfer.

There is no global model. Peers sit on a topology (``fmkt.topology``: ``ring`` or ``random``,
``fmkt.neighbors`` each); every round has two exchanges:

``train``
    Each peer trains its own model on its own data (cross-entropy, ``local_epochs``) and
    uploads it. The server is only a relay: it keeps each peer's latest upload, nothing else.
``distill``
    Each peer receives its neighbours' latest models, exactly as they uploaded them, and
    distils them into its own model on its own data (``fmkt.distill_epochs``)::

        L = CE(y, s) + kd_weight * T^2 * KL(mean_j softmax(t_j / T) || softmax(s / T))
                     + fm_weight * sum_{l in layers} mean_j MSE(F_l(student), F_l(teacher_j))

    ``F_l`` are the feature maps after the l-th stage of the image tower (read by forward
    hooks): for the LeNet of ``model=cnn`` 1 = conv1 block (6x12x12 on 28x28), 2 = conv2 block
    (16x4x4), 3 = fc120, 4 = fc84; for ``model=mlp`` the two hidden layers. ``fmkt.layers`` picks
    them: ``all``, ``none`` (logit KD only) or a list such as ``1`` or ``1,3``.

All peers start from the seed's initial weights, so their feature maps are comparable channel
by channel, as in the seed. A peer that was not sampled keeps its last upload on the relay.

Where this departs from the seed: the seed's figure says the "server" distils the received
model into its own; in a decentralized setting the receiving peer plays that role, which is
what is built here. The seed's ResNet-18 on CIFAR-10 becomes the benchmark LeNet on
Fashion-MNIST: 4 feature stages like ResNet-18's 4 layers, and minutes instead of hours.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from adamodal.errors import ConfigError
from adamodal.kit.tensors import Tensors
from adamodal.kit.train import forward, make_optimizer, minibatch_epochs, train_epochs
from adamodal.methods.base import (
    ClientContext,
    ClientInfo,
    Message,
    Method,
    load_arrays,
    state_arrays,
)
from adamodal.model import ModelSpec, build_model
from adamodal.towers.small import LeNetTower, MLPTower

TOPOLOGIES = ("ring", "random")
#: the modules whose outputs are the distilled feature maps, per trainable image tower
FEATURE_POINTS: dict[type[nn.Module], tuple[str, ...]] = {
    LeNetTower: ("features.2", "features.5", "head.2", "head.4"),
    MLPTower: ("net.2", "net.4"),
}


# ---- topology ------------------------------------------------------------------------------

def neighbours(topology: str, peers: Sequence[int], k: int, seed: int, rnd: int) -> dict[int, list[int]]:
    """Whom each peer receives from. ``ring``: the ``k`` nearest peers on a ring over the sorted
    ids, alternating sides (+1, -1, +2, -2, ...); fixed. ``random``: ``k`` distinct other peers
    drawn for every round from ``(seed, round)``. Both are deterministic."""
    ids = sorted(int(p) for p in peers)
    n = len(ids)
    k = max(0, min(int(k), n - 1))
    out: dict[int, list[int]] = {}
    if topology == "ring":
        for pos, peer in enumerate(ids):
            chosen: list[int] = []
            step = 1
            while len(chosen) < k:
                for offset in (step, -step):
                    other = ids[(pos + offset) % n]
                    if other != peer and other not in chosen and len(chosen) < k:
                        chosen.append(other)
                step += 1
            out[peer] = chosen
        return out
    if topology == "random":
        rng = np.random.default_rng([int(seed), int(rnd), 17])
        for peer in ids:
            others = [p for p in ids if p != peer]
            out[peer] = sorted(int(p) for p in rng.choice(others, size=k, replace=False)) if k else []
        return out
    raise ConfigError(f"fmkt.topology: {topology!r} is not one of {', '.join(TOPOLOGIES)}")


# ---- feature maps --------------------------------------------------------------------------

def feature_modules(model: nn.Module) -> list[nn.Module]:
    """The modules after which feature maps are taken, in depth order (layer 1 first)."""
    tower = getattr(model, "img_tower", None)
    for cls, names in FEATURE_POINTS.items():
        if isinstance(tower, cls):
            return [tower.get_submodule(n) for n in names]
    raise ConfigError("fmkt distils the feature maps of a trainable image tower: set towers=small (model=cnn or mlp)")


def parse_layers(value: str, available: int) -> tuple[int, ...]:
    """``all`` -> every layer, ``none`` -> no feature term, ``1,3`` -> layers 1 and 3 (1-based)."""
    text = str(value).strip().lower()
    if text == "all":
        return tuple(range(1, available + 1))
    if text in ("none", ""):
        return ()
    try:
        layers = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise ConfigError(f"fmkt.layers: expected all, none or layer numbers like 1,3; got {value!r}") from None
    bad = [layer for layer in layers if not 1 <= layer <= available]
    if bad:
        raise ConfigError(f"fmkt.layers: layer(s) {bad} out of range; this tower has layers 1-{available}")
    return tuple(layers)


@contextmanager
def tap(model: nn.Module, layers: Sequence[int]) -> Iterator[dict[int, torch.Tensor]]:
    """Record the outputs of the chosen feature layers during forward passes (forward hooks);
    the dict is filled by each forward and the hooks are removed on exit."""
    feats: dict[int, torch.Tensor] = {}
    modules = feature_modules(model)
    handles = []
    for layer in layers:
        def hook(_m: nn.Module, _i: object, out: torch.Tensor, layer: int = layer) -> None:
            feats[layer] = out
        handles.append(modules[layer - 1].register_forward_hook(hook))
    try:
        yield feats
    finally:
        for h in handles:
            h.remove()


def feature_loss(student: dict[int, torch.Tensor], teachers: list[dict[int, torch.Tensor]],
                 layers: Sequence[int]) -> torch.Tensor:
    """sum over ``layers`` of the mean over teachers of the MSE between feature maps. Layers a
    forward pass did not reach (no image rows in the batch) are skipped."""
    ref = next(iter(student.values()), None)
    total = torch.zeros((), device=ref.device if ref is not None else "cpu")
    for layer in layers:
        if layer not in student or not teachers:
            continue
        total = total + sum(F.mse_loss(student[layer], t[layer]) for t in teachers) / len(teachers)
    return total


def kd_loss(student_logits: torch.Tensor, teacher_logits: list[torch.Tensor], temperature: float) -> torch.Tensor:
    """T^2 * KL(mean teacher softmax || student softmax) at temperature T."""
    target = torch.stack([torch.softmax(t / temperature, dim=-1) for t in teacher_logits]).mean(dim=0)
    log_s = torch.log_softmax(student_logits / temperature, dim=-1)
    return temperature**2 * F.kl_div(log_s, target, reduction="batchmean")


# ---- the method ----------------------------------------------------------------------------

class FMKT(Method):
    name = "fmkt"
    description = "decentralized: peers on a ring/random topology distil neighbours (CE + KL + feature-map L2); no global model"
    input_kinds = ("raw",)
    config_defaults = {
        "fmkt.topology": "ring",
        "fmkt.neighbors": 2,
        "fmkt.layers": "all",
        "fmkt.temperature": 3.0,
        "fmkt.kd_weight": 1.0,
        "fmkt.fm_weight": 1.0,
        "fmkt.distill_epochs": 1,
    }

    def __init__(self, cfg: dict, spec: ModelSpec, clients: list[ClientInfo]) -> None:
        super().__init__(cfg, spec, clients)
        if spec.task != "multiclass":
            raise ConfigError("fmkt distils softmax outputs: it needs a multi-class task")
        self.topology = str(cfg["fmkt.topology"])
        if self.topology not in TOPOLOGIES:
            raise ConfigError(f"fmkt.topology: {self.topology!r} is not one of {', '.join(TOPOLOGIES)}")
        self.k = int(cfg["fmkt.neighbors"])
        if self.k < 1:
            raise ConfigError(f"fmkt.neighbors must be >= 1, got {self.k}")
        self.temperature = float(cfg["fmkt.temperature"])
        if self.temperature <= 0:
            raise ConfigError(f"fmkt.temperature must be > 0, got {self.temperature}")
        self.layers = parse_layers(str(cfg["fmkt.layers"]), len(feature_modules(self.model())))
        #: the relay: each peer's latest upload, as it was sent (never averaged)
        self.latest: dict[int, dict[str, np.ndarray]] = {}
        self._teachers: list[nn.Module] = []

    # ---- server: a relay ---------------------------------------------------------------
    def phases(self, rnd: int) -> list[str]:
        return ["train", "distill"]

    def neighbours(self, rnd: int) -> dict[int, list[int]]:
        return neighbours(self.topology, sorted(self.clients), self.k, self.seed, rnd)

    def configure(self, phase: str, rnd: int, cids: list[int]) -> dict[int, Message]:
        if phase == "train":
            return {cid: Message() for cid in cids}
        nbrs = self.neighbours(rnd)
        return {cid: Message({f"{j}/{k}": v for j in nbrs[cid] if j in self.latest for k, v in self.latest[j].items()})
                for cid in cids}

    def aggregate(self, phase: str, rnd: int, replies: dict[int, Message]) -> None:
        if phase == "train":
            for cid, reply in replies.items():
                self.latest[cid] = dict(reply.arrays)

    def global_model(self) -> nn.Module | None:
        return None  # decentralized: there is no server model

    def server_state(self) -> dict[str, np.ndarray]:
        return {f"{cid}/{k}": v for cid, arrays in self.latest.items() for k, v in arrays.items()}

    def load_server_state(self, state: dict[str, np.ndarray]) -> None:
        self.latest = split_peers(state)

    # ---- peer side ---------------------------------------------------------------------
    def own_model(self, ctx: ClientContext) -> nn.Module:
        return load_arrays(self.model(), ctx.state or self.initial_params())

    def client_step(self, phase: str, rnd: int, ctx: ClientContext, msg: Message) -> Message:
        model = self.own_model(ctx)
        if phase == "train":
            loss = train_epochs(model, ctx.train, ctx.cfg, task=ctx.spec.task, generator=ctx.generator,
                                device=self.device)
            ctx.state = state_arrays(model)
            return Message(dict(ctx.state), {"num_examples": len(ctx.train), "loss": loss})
        teachers = self.teachers(split_peers(msg.arrays))
        loss = self.distill(model, teachers, ctx.train, ctx.cfg, ctx.generator) if teachers else float("nan")
        ctx.state = state_arrays(model)
        return Message({}, {"loss": loss, "teachers": len(teachers)})

    def teachers(self, models: dict[int, dict[str, np.ndarray]]) -> list[nn.Module]:
        """One model instance per received neighbour model (instances are reused across calls)."""
        while len(self._teachers) < len(models):
            self._teachers.append(build_model(self.spec, self.seed).to(self.device).eval())
        return [load_arrays(t, models[j]).eval() for t, j in zip(self._teachers, sorted(models), strict=False)]

    def distill_loss(self, student: nn.Module, teachers: list[nn.Module], batch: Tensors,
                     layers: Sequence[int] | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """CE + kd_weight * KD(logits) + fm_weight * L2(feature maps at ``layers``) on one batch."""
        layers = self.layers if layers is None else tuple(layers)
        t_logits, t_feats = [], []
        with torch.no_grad():
            for t in teachers:
                with tap(t, layers) as feats:
                    t_logits.append(forward(t, batch))
                t_feats.append(dict(feats))
        with tap(student, layers) as s_feats:
            logits = forward(student, batch)
        ce = F.cross_entropy(logits, batch.y)
        kd = kd_loss(logits, t_logits, self.temperature)
        fm = feature_loss(s_feats, t_feats, layers)
        total = ce + float(self.cfg["fmkt.kd_weight"]) * kd + float(self.cfg["fmkt.fm_weight"]) * fm
        return total, {"ce": float(ce.detach()), "kd": float(kd.detach()), "fm": float(fm.detach())}

    def distill(self, student: nn.Module, teachers: list[nn.Module], data: Tensors, cfg: dict,
                generator: torch.Generator) -> float:
        """``fmkt.distill_epochs`` of mini-batch distillation on the peer's own data."""
        epochs = int(cfg["fmkt.distill_epochs"])
        if len(data) == 0 or epochs == 0:
            return float("nan")
        student.train()
        data = data.to(self.device)

        def batch_loss(rows: torch.Tensor) -> torch.Tensor:
            return self.distill_loss(student, teachers, data.subset(rows))[0]

        return minibatch_epochs(len(data), epochs, int(cfg["batch_size"]),
                                make_optimizer(student.parameters(), cfg), batch_loss, generator)

    def client_model(self, ctx: ClientContext, msg: Message) -> nn.Module:
        return self.own_model(ctx)


def split_peers(arrays: dict[str, np.ndarray]) -> dict[int, dict[str, np.ndarray]]:
    """``{"3/classifier.weight": a, ...}`` -> ``{3: {"classifier.weight": a, ...}}``."""
    out: dict[int, dict[str, np.ndarray]] = {}
    for key, value in arrays.items():
        peer, name = key.split("/", 1)
        out.setdefault(int(peer), {})[name] = value
    return out


METHOD = FMKT
