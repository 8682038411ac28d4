"""Model parts and losses of AdaModal-Fed (DESIGN section 4).

Everything here lives in the one shared d-space of the projections ``P_img`` / ``P_txt``: the
InfoNCE loss puts both modalities there, the clients summarise it as centroids, the server
clusters and pairs those centroids, and the cross-attention imputer reads them back:

* :class:`CrossAttentionImputer` imputes a missing modality from the present one by attending
  from the sample's representation (query) over the server's centroids of the present
  modality (keys) and reading the paired centroids of the missing modality (values);
* :class:`ForgetGate` mixes a sample's local representation with its cluster's global
  prototype, ``r' = g * r + (1 - g) * z``;
* :class:`AdaModalNet` is :class:`~adamodal.model.MultimodalNet` with the two modules above and
  the server's broadcast knowledge, so that ``forward(x_img, x_txt, m_img, m_txt)`` predicts
  with an imputed representation wherever a modality is missing, never a zero vector.

Communication: the large square-ish matrices (projections, adapter) are a frozen seed matrix
plus a trainable low-rank update (:class:`FactorizedLinear`); the seed matrix is rebuilt
identically on every machine, so only the update, the biases and the small modules travel
(:func:`key_role` says which parameter is frozen, personal or global).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from adamodal.model import ModelSpec, MultimodalNet, Projection

IMPUTE_MODES = ("zero", "mean", "cross_attention")


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


# ---- modules ------------------------------------------------------------------------------

class CrossAttentionImputer(nn.Module):
    """Multi-head cross-attention ``CA(query, keys, values)`` with learned ``W_Q``, ``W_K``,
    ``W_V`` and a learned temperature.

    Each head scores the keys by the cosine of its projected query and keys (cosine keeps the
    scale independent of the representation norm), divided by the temperature; its output is
    the attention-weighted mix of the value centroids. The heads' mixes are averaged and a
    low-rank value map corrects the result (``out = m + W_V m``, ``W_V`` initialised to zero),
    so an untrained imputer is a soft nearest-centroid retrieval rather than noise. ``W_K``
    starts equal to ``W_Q`` for the same reason: query and keys live in the same space.
    """

    def __init__(self, dim: int, heads: int = 4, key_dim: int = 16, rank: int = 32,
                 temperature: float = 0.1) -> None:
        super().__init__()
        self.heads, self.key_dim = heads, key_dim
        self.w_q = nn.Linear(dim, heads * key_dim, bias=False)
        self.w_k = nn.Linear(dim, heads * key_dim, bias=False)
        with torch.no_grad():
            self.w_k.weight.copy_(self.w_q.weight)
        self.w_v_down = nn.Linear(dim, rank, bias=False)
        self.w_v_up = nn.Linear(rank, dim)
        nn.init.zeros_(self.w_v_up.weight)
        nn.init.zeros_(self.w_v_up.bias)
        self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature)))

    def attention(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """Attention weights ``[B, heads, K]`` (each row sums to one)."""
        q = F.normalize(self.w_q(query).view(len(query), self.heads, self.key_dim), dim=-1)
        k = F.normalize(self.w_k(keys).view(len(keys), self.heads, self.key_dim), dim=-1)
        logits = torch.einsum("bhd,khd->bhk", q, k) / self.log_temperature.exp().clamp_min(1e-3)
        return torch.softmax(logits, dim=-1)

    def forward(self, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        mix = torch.einsum("bhk,kd->bd", self.attention(query, keys), values) / self.heads
        return mix + self.w_v_up(self.w_v_down(mix))


class ForgetGate(nn.Module):
    """``r' = g * r + (1 - g) * z`` with ``g = sigmoid((W_g [r; z] + b) / tau)``.

    ``W_g`` maps ``[r; z]`` to one gate per dimension through a rank-``rank`` factorisation
    (``2d x rank + rank x d`` weights instead of ``2d x d``: the gate is a global part, so its
    size is upload). ``b`` starts at +1 so a fresh gate trusts the sample's own
    representation (g ~ 0.73 at tau=1) and learns where the cluster prototype is the better
    guide. ``tau`` is a fixed temperature: larger is softer (g nearer 1/2), smaller is closer
    to a hard switch.
    """

    def __init__(self, dim: int, tau: float = 1.0, rank: int = 16) -> None:
        super().__init__()
        self.tau = float(tau)
        self.linear = nn.Sequential(nn.Linear(2 * dim, rank, bias=False), nn.Linear(rank, dim))
        nn.init.constant_(self.linear[1].bias, 1.0)

    def gate(self, r: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.linear(torch.cat([r, z], dim=-1)) / self.tau)

    def forward(self, r: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        g = self.gate(r, z)
        return g * r + (1 - g) * z


class FactorizedLinear(nn.Module):
    """``y = W0 x + b + s * U V x``: a frozen seed matrix plus a trainable low-rank update.

    ``W0`` is the seed's initial weight (identical on every machine, so never trained and
    never sent); the bias ``b`` and the rank-``rank`` factors ``U`` (zero-initialised, so the
    layer starts as the seed's) and ``V`` are what a client trains and uploads:
    ``(in + out) * rank + out`` numbers instead of ``in * out``. ``s`` lets the low-rank path
    move as fast under Adam as a full matrix would (a product of two small factors otherwise
    changes far more slowly than one matrix trained directly).
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

    The projection's matrix is a :class:`FactorizedLinear`; ``g`` is a per-input-feature gain
    (a diagonal, so every input direction can be re-weighted for ``in`` numbers). All of it is
    global and averaged over the clients that hold this modality, except the optional
    personal rank-``personal_rank`` update ``U_p V_p``, which never leaves the client. The
    personal path is deliberately not scaled up: measured on emoji, a personal update as fast
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
            h = h + self.p_up(self.p_down(x))  # unscaled: personalisation stays gentle
        return self.norm(h)


class ModalityExpert(nn.Module):
    """A linear classifier straight on one modality's tower output, after a LayerNorm without
    parameters: the features are put on one scale so that a few federated epochs of Adam can
    fit it (raw sentence embeddings have entries around 0.05, and an unnormalised linear
    layer on them is still near uniform after 20 rounds)."""

    def __init__(self, in_dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(in_dim, elementwise_affine=False)
        self.linear = nn.Linear(in_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(x))


def factorize_adapter(adapter: nn.Module, rank: int, scale: float = 16.0) -> None:
    """Swap the adapter's square matrices for frozen-seed + low-rank updates, in place."""
    for name, child in list(adapter.named_children()):
        if isinstance(child, nn.Linear) and child.in_features == child.out_features:
            setattr(adapter, name, FactorizedLinear(child, rank, scale))
        else:
            factorize_adapter(child, rank, scale)


# ---- losses -------------------------------------------------------------------------------

def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE between paired rows of ``a`` and ``b`` (row i of each is one sample):
    pulls a sample's two modalities together and pushes other samples apart. Zero for fewer
    than two pairs (no negatives)."""
    if len(a) < 2:
        return a.sum() * 0.0
    logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / temperature
    target = torch.arange(len(a), device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def soft_targets(teacher_logits: list[torch.Tensor], temperature: float, task: str) -> torch.Tensor:
    """The average of the teachers' softened predictions (probabilities, not logits, so a
    confident teacher cannot outvote the others by scale alone)."""
    if task == "multilabel":
        probs = [torch.sigmoid(t / temperature) for t in teacher_logits]
    else:
        probs = [torch.softmax(t / temperature, dim=-1) for t in teacher_logits]
    return torch.stack(probs).mean(0)


def kd_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float, task: str) -> torch.Tensor:
    """``T^2 * KL(teacher || student)`` at temperature T: softmax KL for multi-class, the mean
    per-label binary KL for multi-label. ``T^2`` keeps gradients comparable across T."""
    t = temperature
    eps = 1e-7
    if task == "multilabel":
        p = teacher_probs.clamp(eps, 1 - eps)
        log_q = F.logsigmoid(student_logits / t)
        log_1q = F.logsigmoid(-student_logits / t)
        kl = p * (p.log() - log_q) + (1 - p) * ((1 - p).log() - log_1q)
        return kl.mean() * t * t
    log_q = F.log_softmax(student_logits / t, dim=-1)
    p = teacher_probs.clamp_min(eps)
    return (p * (p.log() - log_q)).sum(-1).mean() * t * t


# ---- the model ----------------------------------------------------------------------------

@dataclass
class Knowledge:
    """What the server broadcasts about the shared space, as tensors on the model's device.

    ``keys[m]`` are the server's centroids of modality m, row-aligned across modalities by the
    Hungarian pairing (row j of image and row j of text are a matched pair); ``protos[m]`` the
    cluster-level global representations Z (one row per centroid); ``means[m]`` the
    count-weighted mean of modality m (for ``impute=mean``).
    """

    keys: dict[str, torch.Tensor]
    protos: dict[str, torch.Tensor]
    means: dict[str, torch.Tensor]
    paired: bool

    @staticmethod
    def from_arrays(arrays: dict[str, np.ndarray], device: torch.device | str) -> Knowledge | None:
        """From the message arrays ``C_img``, ``C_txt``, ``pi``, ``Z_img``, ``Z_txt``,
        ``mean_img``, ``mean_txt`` (any subset); None if there is nothing to use."""
        t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32, device=device)  # noqa: E731
        keys, protos, means = {}, {}, {}
        for m, suffix in (("image", "img"), ("text", "txt")):
            if f"C_{suffix}" in arrays and len(arrays[f"C_{suffix}"]):
                keys[m] = t(arrays[f"C_{suffix}"])
                if f"mean_{suffix}" in arrays:
                    means[m] = t(arrays[f"mean_{suffix}"])
        if not keys:
            return None
        paired = "pi" in arrays and len(keys) == 2
        if paired:
            pi = torch.as_tensor(np.asarray(arrays["pi"]), dtype=torch.long, device=device)
            keys["text"] = keys["text"][pi]  # row j of text now pairs with row j of image
        for m, suffix in (("image", "img"), ("text", "txt")):
            if m in keys:  # Z rows follow the pair order; without Z the centroids are the prototypes
                protos[m] = t(arrays[f"Z_{suffix}"]) if f"Z_{suffix}" in arrays else keys[m]
        return Knowledge(keys, protos, means, paired)


def nearest(x: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """Index of each row's nearest centre (squared Euclidean)."""
    return torch.cdist(x.detach(), centers).argmin(dim=1)


class AdaModalNet(MultimodalNet):
    """MultimodalNet + cross-attention imputer + forget gate + the server's knowledge.

    ``forward`` (what evaluation calls) encodes the present modalities, mixes each with its
    cluster prototype through the forget gate, imputes each missing modality from the present
    one, and fuses. In training mode it can also hide one modality of a fully paired row
    (``modality_dropout``) so that the shared fusion and classifier learn to work from imputed
    inputs, which is what image-only and text-only clients predict from; the intermediate
    tensors of the last training forward are kept in ``self.last`` for the losses.
    """

    def __init__(self, spec: ModelSpec, *, heads: int = 4, tau: float = 1.0, impute: str = "cross_attention",
                 cross_attention: bool = True, gate: bool = True, modality_dropout: float = 0.0,
                 rank: int = 32, personal_rank: int = 0, adapter_rank: int = 32,
                 unimodal_views: bool = False, experts: bool = False) -> None:
        super().__init__(spec)
        dim = self.rep_dim
        self.imputer = CrossAttentionImputer(dim, heads=heads)
        self.gate = ForgetGate(dim, tau)
        for name in ("img_proj", "txt_proj"):
            proj = getattr(self, name, None)
            if isinstance(proj, Projection):
                setattr(self, name, FactorizedProjection(proj, rank, personal_rank))
        if adapter_rank > 0:
            factorize_adapter(self.adapter, adapter_rank)
        if impute not in IMPUTE_MODES:
            raise ValueError(f"impute must be one of {IMPUTE_MODES}, got {impute!r}")
        self.impute_mode = impute
        self.use_cross_attention = cross_attention
        self.use_gate = gate
        self.modality_dropout = float(modality_dropout)
        self.unimodal_views = bool(unimodal_views)
        self.knowledge: Knowledge | None = None
        self.last: dict[str, dict[str, torch.Tensor]] = {}
        # modality experts last, so that every other initial weight is what it is without them
        self.use_experts = bool(experts) and self.fusion is not None
        if self.use_experts:
            if hasattr(self, "img_proj"):
                self.img_expert = ModalityExpert(self._feature_dim("image"), spec.num_classes)
            if hasattr(self, "txt_proj"):
                self.txt_expert = ModalityExpert(self._feature_dim("text"), spec.num_classes)

    def set_knowledge(self, arrays: dict[str, np.ndarray] | None) -> AdaModalNet:
        device = next(self.parameters()).device
        self.knowledge = Knowledge.from_arrays(arrays, device) if arrays else None
        return self

    # ---- pieces -------------------------------------------------------------------------
    def prototype(self, modality: str, r: torch.Tensor) -> torch.Tensor | None:
        """Each row's global prototype z_k: Z of its nearest server centroid (no gradient)."""
        k = self.knowledge
        if k is None or modality not in k.keys:
            return None
        return k.protos[modality][nearest(r, k.keys[modality])]

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
        if not self.use_cross_attention:  # ablation: the matched centroid of the nearest cluster
            return k.keys[target][nearest(r_src, k.keys[source])]
        return self.imputer(r_src, k.keys[source], k.keys[target])

    # ---- modality experts ---------------------------------------------------------------
    def _feature_dim(self, modality: str) -> int:
        tower = self.img_tower if modality == "image" else self.txt_tower
        fallback = self.spec.img_dim if modality == "image" else self.spec.txt_dim
        return int(getattr(tower, "out_dim", fallback))

    def encode(self, x_img: torch.Tensor | None, x_txt: torch.Tensor | None,
               m_img: torch.Tensor | None = None, m_txt: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """As :meth:`MultimodalNet.encode`; with experts on, the tower outputs of the call are
        kept in ``self.features`` for them (the towers run once)."""
        if not self.use_experts:
            return super().encode(x_img, x_txt, m_img, m_txt)
        self.features: dict[str, torch.Tensor] = {}
        reps: dict[str, torch.Tensor] = {}
        if x_img is not None and hasattr(self, "img_proj") and (m_img is None or bool(m_img.any())):
            self.features["image"] = self.img_tower(x_img)
            reps["image"] = self.img_proj(self.features["image"])
        if x_txt is not None and hasattr(self, "txt_proj") and (m_txt is None or bool(m_txt.any())):
            self.features["text"] = self.txt_tower(x_txt)
            reps["text"] = self.txt_proj(self.features["text"])
        return reps

    def expert_logits(self) -> dict[str, torch.Tensor]:
        """Each modality expert's logits for every row of the last :meth:`encode` call."""
        if not self.use_experts:
            return {}
        experts = {"image": getattr(self, "img_expert", None), "text": getattr(self, "txt_expert", None)}
        return {m: experts[m](f) for m, f in self.features.items() if experts[m] is not None}

    def with_experts(self, logits: torch.Tensor, experts: dict[str, torch.Tensor],
                     m_img: torch.Tensor, m_txt: torch.Tensor) -> torch.Tensor:
        """Rows with one modality only: the mean of the head's and that modality's expert's
        probabilities, as logits. Rows with both modalities keep the head's prediction."""
        out = logits
        for m, own, other in (("image", m_img, m_txt), ("text", m_txt, m_img)):
            if m not in experts:
                continue
            rows = own & ~other
            if not bool(rows.any()):
                continue
            if self.spec.task == "multilabel":
                p = 0.5 * (torch.sigmoid(logits) + torch.sigmoid(experts[m])).clamp(1e-6, 1 - 1e-6)
                mixed = p.log() - (1 - p).log()
            else:
                mixed = (0.5 * (torch.softmax(logits, -1) + torch.softmax(experts[m], -1))).clamp_min(1e-12).log()
            out = torch.where(rows.unsqueeze(-1), mixed, out)
        return out

    # ---- forward ------------------------------------------------------------------------
    def forward(self, x_img: torch.Tensor | None, x_txt: torch.Tensor | None,
                m_img: torch.Tensor, m_txt: torch.Tensor) -> torch.Tensor:
        reps = self.encode(x_img, x_txt, m_img, m_txt)
        experts = self.expert_logits()
        masks = {"image": m_img if "image" in reps else torch.zeros_like(m_img),
                 "text": m_txt if "text" in reps else torch.zeros_like(m_txt)}
        final: dict[str, torch.Tensor] = {}
        protos: dict[str, torch.Tensor] = {}
        for m, r in reps.items():
            z = self.prototype(m, r) if (self.use_gate or self.training) else None
            if z is not None:
                protos[m] = z
            final[m] = self.gate(r, z) if (self.use_gate and z is not None) else r
        imputed: dict[str, torch.Tensor] = {}
        views: dict[str, torch.Tensor] = {}
        if self.fusion is not None:
            for target, source in (("text", "image"), ("image", "text")):
                # at prediction time only where a row really lacks ``target``; in training
                # always (the imputation loss and modality dropout need it)
                if source in reps and (self.training or bool((masks[source] & ~masks[target]).any())):
                    imp = self.impute(target, source, reps[source])
                    if imp is not None:
                        imputed[target] = imp
            both = masks["image"] & masks["text"]
            if self.training and self.unimodal_views and len(imputed) == 2 and bool(both.any()):
                views = {**self.unimodal_logits(final, imputed, both), "paired": both}
            if self.training and self.modality_dropout > 0 and len(imputed) == 2:
                drop = both & (torch.rand(len(both), device=both.device) < self.modality_dropout)
                views["dropped"] = drop
                which = torch.rand(len(both), device=both.device) < 0.5
                masks = {"image": masks["image"] & ~(drop & which), "text": masks["text"] & ~(drop & ~which)}
            for target, source in (("text", "image"), ("image", "text")):
                if target in imputed:
                    fill = ~masks[target] & masks[source]
                    if target in final:
                        final[target] = torch.where(fill.unsqueeze(-1), imputed[target], final[target])
                    else:
                        final[target] = imputed[target]
                    masks[target] = masks[target] | fill
        if self.training:
            # views: the unimodal logits of the paired rows ("image", "text"), which rows those
            # are ("paired") and which of them modality dropout hid ("dropped")
            # experts: each modality expert's logits for every row (trained on their own)
            self.last = {"reps": reps, "protos": protos, "imputed": imputed, "views": views, "experts": experts}
            return self.classifier(self.fuse_final(final, masks))
        return self.with_experts(self.classifier(self.fuse_final(final, masks)), experts, m_img, m_txt)

    def unimodal_logits(self, final: dict[str, torch.Tensor], imputed: dict[str, torch.Tensor],
                        both: torch.Tensor) -> dict[str, torch.Tensor]:
        """The predictions an image-only and a text-only client would make for the paired rows
        ``both``: each row's one modality plus the imputation of the other, through the same
        adapter, fusion and classifier. Trained on multimodal clients, they teach the shared
        head the inputs the unimodal clients predict from (one modality and an imputation),
        which the fused paired rows alone never show it."""
        on = torch.ones(int(both.sum()), dtype=torch.bool, device=both.device)
        out = {}
        for keep, fill in (("image", "text"), ("text", "image")):
            reps = {keep: final[keep][both], fill: imputed[fill][both]}
            out[keep] = self.classifier(self.fuse_final(reps, {"image": on, "text": on}))
        return out

    def fuse_final(self, final: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> torch.Tensor:
        """Adapter on each (real or imputed) modality, then the masked gated fusion."""
        if self.fusion is None:
            (only,) = final.values()
            return self.adapter(only)
        ref = next(iter(final.values()))
        zeros = torch.zeros(len(ref), self.rep_dim, device=ref.device, dtype=ref.dtype)
        a_img = self.adapter(final["image"]) if "image" in final else zeros
        a_txt = self.adapter(final["text"]) if "text" in final else zeros
        mi = masks["image"] if "image" in final else torch.zeros_like(masks["image"])
        mt = masks["text"] if "text" in final else torch.zeros_like(masks["text"])
        return self.fusion([a_img, a_txt], [mi, mt])


def build_adamodal_net(spec: ModelSpec, seed: int, **options) -> AdaModalNet:
    """Same spec + seed + options -> bit-identical initial weights everywhere."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AdaModalNet(spec, **options)
