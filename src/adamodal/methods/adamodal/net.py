"""AdaModal-Fed's client network: the gated late-fusion model plus the stages' modules.

``run`` goes through the stages in the order a prediction needs them: encode the present
modalities into the shared d-space (``P_img`` / ``P_txt``); mix each with its cluster's global
prototype through the forget gate (stage 4); impute each missing modality from the present one
with the cross-attention imputer over the server's centroids (stage 3); fuse and classify.
Everything the losses need comes back in a :class:`Forward`, never through attributes.

Communication: the large square-ish matrices (projections, adapter) are a frozen seed matrix
plus a trainable low-rank update (:class:`FactorizedLinear`); the seed matrix is rebuilt
identically on every machine, so only the update, the biases and the small modules travel
(:func:`key_role` says which parameter is frozen, personal or global).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from adamodal.methods.adamodal.gating import ForgetGate
from adamodal.methods.adamodal.imputation import IMPUTE_MODES, CrossAttentionImputer
from adamodal.methods.adamodal.summarize import Knowledge
from adamodal.methods.base import Message
from adamodal.model import ModelSpec, MultimodalNet, Projection


def key_role(key: str) -> str:
    """``"frozen"`` (a seed matrix under a low-rank update: rebuilt from the seed everywhere,
    never trained, never sent), ``"personal"`` (never leaves the client after round 1) or
    ``"global"`` (averaged by the server)."""
    if key.endswith(".base.weight"):
        return "frozen"
    if ".p_down." in key or ".p_up." in key:
        return "personal"
    return "global"


def key_modality(key: str) -> str | None:
    """The modality a parameter belongs to (``img_*`` / ``txt_*`` modules), None if shared:
    a client without that modality never trains it, so it neither uploads nor averages it."""
    if key.startswith("img_"):
        return "image"
    if key.startswith("txt_"):
        return "text"
    return None


class FactorizedLinear(nn.Module):
    """``y = W0 x + b + s * U V x``: a frozen seed matrix plus a trainable low-rank update.

    ``W0`` is the seed's initial weight (identical on every machine, so never trained and
    never sent); the bias ``b`` and the rank-``rank`` factors ``U`` (zero-initialised, so the
    layer starts as the seed's) and ``V`` are what a client trains and uploads. ``s`` lets the
    low-rank path move as fast under Adam as a full matrix would.
    """

    def __init__(self, base: nn.Linear, rank: int, scale: float = 16.0) -> None:
        super().__init__()
        self.base = base
        self.base.weight.requires_grad_(False)
        self.scale = float(scale)
        self.down = nn.Linear(base.in_features, rank, bias=False)
        self.up = nn.Linear(rank, base.out_features, bias=False)
        nn.init.zeros_(self.up.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * self.up(self.down(x))


class FactorizedProjection(nn.Module):
    """``P(x) = LayerNorm(W0 (g * x) + b + s * U V (g * x) [+ U_p V_p (g * x)])``.

    ``g`` is a per-input-feature gain. All of it is global and averaged over the clients that
    hold this modality, except the optional personal update ``U_p V_p``, which never leaves
    the client and is deliberately not scaled up: measured on emoji, a personal update as fast
    as the global one fits each client's few classes and ruins its model on everyone else's.
    """

    def __init__(self, base: Projection, rank: int, personal_rank: int = 0, scale: float = 16.0) -> None:
        super().__init__()
        in_dim, dim = base.linear.in_features, base.linear.out_features
        self.linear = FactorizedLinear(base.linear, rank, scale)
        self.norm = base.norm
        self.gain = nn.Parameter(torch.ones(in_dim))
        self.p_down = self.p_up = None
        if personal_rank > 0:
            self.p_down = nn.Linear(in_dim, personal_rank, bias=False)
            self.p_up = nn.Linear(personal_rank, dim, bias=False)
            nn.init.zeros_(self.p_up.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.gain
        h = self.linear(x)
        if self.p_down is not None:
            h = h + self.p_up(self.p_down(x))
        return self.norm(h)


def factorize_adapter(adapter: nn.Module, rank: int, scale: float = 16.0) -> None:
    """Swap the adapter's square matrices for frozen-seed + low-rank updates, in place."""
    for name, child in list(adapter.named_children()):
        if isinstance(child, nn.Linear) and child.in_features == child.out_features:
            setattr(adapter, name, FactorizedLinear(child, rank, scale))
        else:
            factorize_adapter(child, rank, scale)


@dataclass
class Forward:
    """One pass of :meth:`AdaModalNet.run`: the logits and what the stages computed.

    ``reps``: each encoded modality's representation (every row of the batch); ``protos``: each
    row's cluster prototype z_k per modality; ``gates``: the forget gate's values; ``imputed``:
    each modality imputed from the other (every row); ``rows``: which rows really have each
    modality (before any hiding).
    """

    logits: torch.Tensor
    reps: dict[str, torch.Tensor]
    rows: dict[str, torch.Tensor]
    protos: dict[str, torch.Tensor] = field(default_factory=dict)
    gates: dict[str, torch.Tensor] = field(default_factory=dict)
    imputed: dict[str, torch.Tensor] = field(default_factory=dict)
    #: under ``replay``: per modality with class prototypes, (their logits, their classes)
    replay: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)


class AdaModalNet(MultimodalNet):
    """MultimodalNet + cross-attention imputer + forget gate + the server's knowledge."""

    def __init__(self, spec: ModelSpec, *, heads: int = 4, tau: float = 1.0, impute: str = "cross_attention",
                 cross_attention: bool = True, gate: bool = True, rank: int = 32, personal_rank: int = 0,
                 adapter_rank: int = 32) -> None:
        super().__init__(spec)
        dim = self.rep_dim
        # built (so the seed's draws stay the same for every module after it) but kept only
        # where it imputes: otherwise it would be loaded, hashed and sent for nothing
        imputer = CrossAttentionImputer(dim, heads=heads)
        self.imputer = imputer if impute == "cross_attention" and cross_attention else None
        self.gate = ForgetGate(dim, tau)
        for name in ("img_proj", "txt_proj"):
            proj = getattr(self, name, None)
            if isinstance(proj, Projection) and rank > 0:  # rank 0: the full projection, all of it global
                setattr(self, name, FactorizedProjection(proj, rank, personal_rank))
        if adapter_rank > 0:
            factorize_adapter(self.adapter, adapter_rank)
        if impute not in IMPUTE_MODES:
            raise ValueError(f"impute must be one of {IMPUTE_MODES}, got {impute!r}")
        self.impute_mode = impute
        self.use_gate = gate
        self.knowledge: Knowledge | None = None

    def set_knowledge(self, arrays: dict[str, np.ndarray] | None) -> AdaModalNet:
        device = next(self.parameters()).device
        self.knowledge = Knowledge.from_arrays(arrays, device) if arrays else None
        return self

    def prototype(self, modality: str, r: torch.Tensor) -> torch.Tensor | None:
        """Each row's global prototype z_k: Z of its nearest server centroid (no gradient)."""
        k = self.knowledge
        if k is None or modality not in k.keys:
            return None
        return k.protos[modality][k.nearest(modality, r)]

    def impute(self, target: str, source: str, r_src: torch.Tensor) -> torch.Tensor | None:
        """Modality ``target`` of every row, imputed from its representation of ``source``;
        None where the mode or the knowledge gives nothing (the slot is then masked out)."""
        k = self.knowledge
        if self.impute_mode == "zero" or k is None or target not in k.keys:
            return None
        if self.impute_mode == "mean":
            mean = k.means.get(target)
            return None if mean is None else mean.expand(len(r_src), -1)
        if not k.paired or source not in k.keys:
            return None
        if self.imputer is None:  # cross_attention=false: the matched centroid of the nearest cluster
            return k.keys[target][k.nearest(source, r_src)]
        return self.imputer(r_src, k.keys[source], k.keys[target])

    def gated(self, reps: dict[str, torch.Tensor], protos: dict[str, torch.Tensor],
              ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(each modality with a prototype mixed with it by the forget gate, the gate values).
        One gate pass for all modalities (rows stacked): on a training batch its small layers
        cost per call, not per row."""
        mods = list(protos)
        mixed, g = self.gate(torch.cat([reps[m] for m in mods]), torch.cat([protos[m] for m in mods]))
        sizes = [len(protos[m]) for m in mods]
        return dict(zip(mods, mixed.split(sizes), strict=True)), dict(zip(mods, g.split(sizes), strict=True))

    def run(self, x_img: torch.Tensor | None, x_txt: torch.Tensor | None, m_img: torch.Tensor,
            m_txt: torch.Tensor, hide: dict[str, torch.Tensor] | None = None,
            impute_all: bool = False, replay: bool = False) -> Forward:
        """Encode, gate, impute, fuse. ``hide`` masks rows of a modality the row really has
        (modality dropout in training): the hidden slot is imputed like a missing one.
        ``impute_all`` imputes every row (the imputation loss needs the paired rows too).
        ``replay`` appends the server's class prototypes as one-modality rows to the fusion's
        input; their logits come back in ``Forward.replay``, the batch's in ``logits``."""
        reps = self.encode(x_img, x_txt, m_img, m_txt)
        none = torch.zeros_like(m_img)
        rows = {"image": m_img if "image" in reps else none, "text": m_txt if "text" in reps else none}
        out = Forward(torch.empty(0), reps, rows)
        final: dict[str, torch.Tensor] = dict(reps)
        for m, r in reps.items():
            z = self.prototype(m, r)
            if z is not None:
                out.protos[m] = z
        if self.use_gate and out.protos:
            mixed, out.gates = self.gated(reps, out.protos)
            final.update(mixed)
        masks = {m: rows[m] & ~hide[m] if hide and m in hide else rows[m] for m in rows}
        if self.fusion is not None:
            for target, source in (("text", "image"), ("image", "text")):
                fill = masks[source] & ~masks[target]
                if source not in reps or not (impute_all or bool(fill.any())):
                    continue
                imp = self.impute(target, source, reps[source])
                if imp is None:
                    continue
                out.imputed[target] = imp
                final[target] = torch.where(fill.unsqueeze(-1), imp, final[target]) if target in final else imp
                masks[target] = masks[target] | fill
        classes = self.knowledge.classes if replay and self.knowledge is not None else {}
        if not classes:
            out.logits = self.classifier(self.fuse(final, masks["image"], masks["text"]))
            return out
        final, masks, sizes = self._with_prototype_rows(final, masks, classes)
        logits = self.classifier(self.fuse(final, masks["image"], masks["text"]))
        out.logits, *parts = logits.split([len(m_img), *sizes])
        out.replay = [(part, c.labels) for part, c in zip(parts, classes.values(), strict=True)]
        return out

    def _with_prototype_rows(self, final: dict[str, torch.Tensor], masks: dict[str, torch.Tensor],
                             classes: dict) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], list[int]]:
        """The batch's fusion inputs with the class prototypes appended as one-modality rows
        (gated like any row): the replay term rides on the batch's own pass through the fusion
        and classifier, whose small layers cost per call, not per row."""
        extra = {m: c.reps for m, c in classes.items()}
        if self.use_gate:
            extra, _ = self.gated(extra, {m: c.z for m, c in classes.items()})
        sizes = [len(c.reps) for c in classes.values()]
        batch = len(masks["image"])
        ref = next(iter(extra.values()))
        grown, grown_masks = {}, {}
        for m in ("image", "text"):
            if m not in final and m not in extra:
                continue
            parts = [final.get(m, ref.new_zeros(batch, ref.shape[1]))]
            parts += [extra[e] if e == m else ref.new_zeros(n, ref.shape[1]) for e, n in zip(classes, sizes, strict=True)]
            grown[m] = torch.cat(parts)
            flags = [masks[m]]  # all False where the batch has no such modality
            flags += [torch.full((n,), e == m, dtype=torch.bool, device=ref.device) for e, n in zip(classes, sizes, strict=True)]
            grown_masks[m] = torch.cat(flags)
        for m in ("image", "text"):
            grown_masks.setdefault(m, torch.zeros(batch + sum(sizes), dtype=torch.bool, device=ref.device))
        return grown, grown_masks, sizes

    def forward(self, x_img: torch.Tensor | None, x_txt: torch.Tensor | None, m_img: torch.Tensor,
                m_txt: torch.Tensor) -> torch.Tensor:
        return self.run(x_img, x_txt, m_img, m_txt).logits


@dataclass
class LoadedFrom:
    """What the shared model was last loaded with by :meth:`AdaModalFed.client_model`: the
    message's arrays (by identity, kept alive here), and the model's knowledge and tensor
    versions right after loading. Any in-place change (training, another load) bumps a
    version, so a match means the model still holds exactly that message."""

    arrays: list[np.ndarray]
    knowledge: object
    versions: tuple[int, ...]

    @staticmethod
    def of(msg: Message, model: AdaModalNet) -> LoadedFrom:
        return LoadedFrom(list(msg.arrays.values()), model.knowledge, _versions(model))

    def matches(self, msg: Message, model: AdaModalNet) -> bool:
        arrays = list(msg.arrays.values())
        return (len(arrays) == len(self.arrays) and all(a is b for a, b in zip(arrays, self.arrays, strict=True))
                and model.knowledge is self.knowledge and _versions(model) == self.versions)


def _versions(model: nn.Module) -> tuple[int, ...]:
    return tuple(t._version for t in (*model.parameters(), *model.buffers()))


def build_adamodal_net(spec: ModelSpec, seed: int, **options) -> AdaModalNet:
    """Same spec + seed + options -> bit-identical initial weights everywhere."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AdaModalNet(spec, **options)
