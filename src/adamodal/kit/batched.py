"""Many clients' local training as one batched computation (``batch_clients``).

Client models here are small heads over cached features, so a Python loop over clients spends
most of its time in per-operation overhead, not arithmetic. This module stacks the clients'
parameters along a leading axis and runs every client's mini-batch step at once with
``torch.func.functional_call`` under ``torch.vmap``, so one operator call serves all clients.

It reproduces the sequential path (:func:`adamodal.kit.train.train_epochs`) step for step:
- each client draws its batch order from its own generator, exactly as sequentially;
- clients with fewer rows run out of batches earlier: their later steps are masked out
  (parameters and optimizer state untouched), and padded rows carry zero loss weight;
- a parameter that the sequential path leaves without a gradient in a step (a modality that no
  row of the client's batch has is not computed there, and no penalty term touches it) gets no
  optimizer step either, per client and per parameter, so Adam's bias correction counts the
  same steps;
- Adam, AdamW and SGD with momentum follow ``torch.optim``'s update formulas.
Dropout draws differ (one random stream for all clients instead of one per client), so results
match the sequential path within float tolerance only when ``model.dropout`` is 0; with dropout
both are equally valid samples of the same training procedure.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value

from adamodal.kit.tensors import Tensors
from adamodal.kit.train import BatchTransform

#: params[name] -> anchors[name] -> extra loss of one client (e.g. FedProx's proximal term)
ParamPenalty = Callable[[dict[str, torch.Tensor], dict[str, torch.Tensor]], torch.Tensor]


def supports(model: nn.Module) -> bool:
    """Batched training needs cached-feature inputs (raw towers use ops vmap cannot batch)."""
    spec = getattr(model, "spec", None)
    return spec is not None and spec.input_kind == "features"


def _plan(lengths: list[int], bs: int, epochs: int, generators: list[torch.Generator]) -> list[list[torch.Tensor | None]]:
    """Per client, its sequence of row-index batches (the sequential path's exact order)."""
    plans = []
    for n, g in zip(lengths, generators, strict=True):
        batches: list[torch.Tensor | None] = []
        for _ in range(epochs):
            order = torch.randperm(n, generator=g)
            batches.extend(order[s:s + bs] for s in range(0, n, bs))
        plans.append(batches)
    steps = max((len(p) for p in plans), default=0)
    return [p + [None] * (steps - len(p)) for p in plans]


def _gather(datas: list[Tensors], rows: list[torch.Tensor | None], bs: int, task: str,
            transforms: list[BatchTransform | None] | None = None) -> dict[str, torch.Tensor]:
    """One step's batches of all clients, padded to ``bs`` rows; padded rows weigh 0. A
    client's batch transform (modality dropout, imputation) runs on its real rows, as in
    the sequential loop; a client out of batches draws nothing.

    Padded rows claim one present modality (zeros) rather than none: a row with no modality
    at all has an undefined (NaN) gate gradient, which a zero loss weight would not cancel."""
    ref = datas[0]
    out: dict[str, list[torch.Tensor]] = {k: [] for k in ("x_img", "x_txt", "m_img", "m_txt", "y", "w")}
    for i, (data, r) in enumerate(zip(datas, rows, strict=True)):
        transform = transforms[i] if transforms is not None and r is not None else None
        r = torch.zeros(0, dtype=torch.long) if r is None else r
        pad = bs - len(r)
        b = data.subset(r)
        if transform is not None:
            b = transform(b)

        def padded(t: torch.Tensor, pad: int = pad) -> torch.Tensor:
            return torch.cat([t, t.new_zeros((pad, *t.shape[1:]))]) if pad else t

        if ref.x_img is not None:
            out["x_img"].append(padded(b.x_img))
        if ref.x_txt is not None:
            out["x_txt"].append(padded(b.x_txt))
        claim_img = ref.x_img is not None
        out["m_img"].append(torch.cat([b.m_img, torch.full((pad,), claim_img)]))
        out["m_txt"].append(torch.cat([b.m_txt, torch.full((pad,), not claim_img)]))
        out["y"].append(padded(b.y))
        out["w"].append(padded(torch.ones(len(r))))
    return {k: torch.stack(v) for k, v in out.items() if v}


def _used(names: list[str], batch: dict[str, torch.Tensor], model: nn.Module) -> torch.Tensor:
    """[clients, params] bool: which parameters the sequential forward would have touched."""
    real = batch["w"] > 0
    has_img = (batch["m_img"] & real).any(dim=1)
    has_txt = (batch["m_txt"] & real).any(dim=1)
    active = real.any(dim=1)
    cols = []
    for name in names:
        if name.startswith(("img_tower.", "img_proj.")):
            cols.append(has_img)
        elif name.startswith(("txt_tower.", "txt_proj.")):
            cols.append(has_txt)
        else:
            cols.append(active)
    return torch.stack(cols, dim=1)


class _Optimizer:
    """torch.optim's Adam / AdamW / SGD(momentum) on stacked parameters, with per-client,
    per-parameter masks (a masked entry is neither stepped nor counted).

    Updates run in place on the whole stack when every client steps (the common case), and on
    the gathered rows of the stepping clients otherwise."""

    def __init__(self, params: dict[str, torch.Tensor], cfg: dict) -> None:
        self.kind = str(cfg["optimizer"])
        self.lr, self.wd = float(cfg["lr"]), float(cfg["weight_decay"])
        self.momentum = float(cfg["momentum"])
        self.b1, self.b2, self.eps = 0.9, 0.999, 1e-8
        self.state = {n: {"m": torch.zeros_like(p), "v": torch.zeros_like(p) if self.kind != "sgd" else None,
                          "step": torch.zeros(p.shape[0])} for n, p in params.items()}

    def step(self, params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor], used: torch.Tensor) -> None:
        for j, (name, p) in enumerate(params.items()):
            mask = used[:, j]
            if bool(mask.all()):
                self._update(p, grads[name], self.state[name])
            elif bool(mask.any()):
                rows = mask.nonzero().squeeze(1)
                st = self.state[name]
                sub = {k: None if v is None else v[rows] for k, v in st.items()}
                p_sub = p[rows]
                self._update(p_sub, grads[name][rows], sub)
                p[rows] = p_sub
                for k, v in sub.items():
                    if v is not None:
                        st[k][rows] = v

    def _update(self, p: torch.Tensor, g: torch.Tensor, st: dict[str, torch.Tensor]) -> None:
        shape = (-1,) + (1,) * (p.dim() - 1)
        st["step"] += 1
        if self.kind == "sgd":
            if self.wd:
                g = g + self.wd * p
            if self.momentum:
                first = (st["step"] == 1).view(shape)
                st["m"].mul_(torch.where(first, 0.0, self.momentum)).add_(g)  # first step: buf = g
                g = st["m"]
            p.sub_(self.lr * g)
            return
        if self.kind == "adamw":
            p.mul_(1 - self.lr * self.wd)
        elif self.wd:
            g = g + self.wd * p
        st["m"].mul_(self.b1).add_(g, alpha=1 - self.b1)
        st["v"].mul_(self.b2).addcmul_(g, g, value=1 - self.b2)
        step_size = (self.lr / (1 - self.b1 ** st["step"])).view(shape)
        bc2_sqrt = (1 - self.b2 ** st["step"]).sqrt().view(shape)
        p.sub_(step_size * st["m"] / (st["v"].sqrt() / bc2_sqrt + self.eps))


def train_clients(
    model: nn.Module,
    start: list[dict[str, torch.Tensor]],
    datas: list[Tensors],
    cfg: dict,
    *,
    task: str,
    generators: list[torch.Generator],
    penalty: ParamPenalty | None = None,
    transforms: list[BatchTransform | None] | None = None,
) -> tuple[list[dict[str, torch.Tensor]], list[float]]:
    """Train one model per client, all at once; returns each client's trained state and mean loss.

    ``start[i]`` is client i's initial state (parameters and buffers, as from ``state_dict``);
    ``penalty(params, anchors)`` adds a per-client loss on its parameters, anchored at its start;
    ``transforms[i]`` rewrites client i's batches as ``train_epochs(batch_transform=...)`` does.
    """
    epochs, bs = int(cfg["local_epochs"]), int(cfg["batch_size"])
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    stacked = {n: torch.stack([s[n].detach().float() for s in start]) for n in start[0]}
    params = {n: stacked[n].clone() for n in trainable}
    anchors = {n: stacked[n] for n in trainable}
    fixed = {n: t for n, t in stacked.items() if n not in params}
    plans = _plan([len(d) for d in datas], bs, epochs, generators)
    opt = _Optimizer(params, cfg)
    totals = torch.zeros(len(datas))
    counts = torch.zeros(len(datas))

    def loss_fn(p, fx, anchor, x_img, x_txt, m_img, m_txt, y, w):
        logits = functional_call(model, (p, fx), (x_img, x_txt, m_img, m_txt), {"skip_absent": False})
        if task == "multilabel":
            per_row = F.binary_cross_entropy_with_logits(logits, y.float(), reduction="none").mean(dim=1)
        else:
            per_row = F.cross_entropy(logits, y, reduction="none")
        loss = (per_row * w).sum() / w.sum().clamp(min=1)
        if penalty is not None:
            loss = loss + penalty(p, anchor)
        return loss

    model.train()
    for s in range(len(plans[0]) if plans else 0):
        batch = _gather(datas, [plan[s] for plan in plans], bs, task, transforms)
        x_img = batch.get("x_img")
        x_txt = batch.get("x_txt")
        in_dims = (0, 0, 0, None if x_img is None else 0, None if x_txt is None else 0, 0, 0, 0, 0)
        fn = torch.vmap(grad_and_value(loss_fn), in_dims=in_dims, randomness="different")
        grads, losses = fn(params, fixed, anchors, x_img, x_txt, batch["m_img"], batch["m_txt"], batch["y"], batch["w"])
        # a penalty on the parameters gives every parameter a gradient, as sequentially
        used = _used(trainable, batch, model) if penalty is None else (batch["w"] > 0).any(dim=1, keepdim=True).expand(-1, len(trainable))
        with torch.no_grad():
            opt.step(params, grads, used)
        active = batch["w"].sum(dim=1) > 0
        totals += torch.where(active, losses.detach(), torch.zeros_like(losses))
        counts += active.float()
    out = []
    for i in range(len(datas)):
        state = {n: (params[n][i] if n in params else fixed[n][i]).detach().clone() for n in start[0]}
        out.append(state)
    mean_loss = [float(t / c) if c > 0 else math.nan for t, c in zip(totals, counts, strict=True)]
    return out, mean_loss
