"""AdaModalFed: the four stages driven as phases of the method contract.

Round 1: ``warmup`` -> ``teach`` -> ``kd`` (stage 1) -> ``summarize`` (``round1_train`` adds
``train`` -> ``summarize``); every later round: ``train`` (stages 3 and 4 with the server's
knowledge, then the global update) -> ``summarize`` (stage 2 with the new global projections
sent down; the server clusters, pairs and computes Z). So the knowledge a round's model is
evaluated with describes that model's own space, never the previous round's. This class only
routes; the stages' work lives in their modules.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from adamodal.kit.privacy import dp_report
from adamodal.methods.adamodal import distill, messages, upload
from adamodal.methods.adamodal.aggregate import (
    contribution_weights,
    global_update,
    pooled_diagnostics,
)
from adamodal.methods.adamodal.diagnostics import client_diagnostics, val_scores
from adamodal.methods.adamodal.imputation import cluster_prototypes
from adamodal.methods.adamodal.local import LocalTerms, train_local
from adamodal.methods.adamodal.net import (
    AdaModalNet,
    LoadedFrom,
    build_adamodal_net,
    key_modality,
    key_role,
)
from adamodal.methods.adamodal.options import DEFAULTS, read_options
from adamodal.methods.adamodal.summarize import Knowledge, client_summary, cluster_summaries
from adamodal.methods.base import (
    ClientContext,
    ClientInfo,
    Message,
    Method,
    load_arrays,
    state_arrays,
)
from adamodal.model import ModelSpec


class AdaModalFed(Method):
    name = "adamodal"
    description = ("AdaModal-Fed: distillation, shared space, clustered summaries, gated propagation; "
                   "cross-attention imputation with adamodal.impute=cross_attention")
    config_defaults = DEFAULTS
    relative_cost = 1.6

    def __init__(self, cfg: dict[str, Any], spec: ModelSpec, clients: list[ClientInfo]) -> None:
        super().__init__(cfg, spec, clients)
        self.opt = read_options(cfg)
        o = self.opt
        self.terms = LocalTerms(float(o["infonce_weight"]), float(o["infonce_temperature"]),
                                float(o["impute_weight"]), float(o["beta"]), float(o["modality_dropout"]),
                                float(o["replay"]))
        self._initial: dict[str, np.ndarray] | None = None
        self._server_model: AdaModalNet | None = None
        self._loaded: LoadedFrom | None = None
        self._spares: list[AdaModalNet] = []

    # ---- models -------------------------------------------------------------------------
    def build(self) -> AdaModalNet:
        o = self.opt
        return build_adamodal_net(
            self.spec, self.seed, heads=int(o["heads"]), tau=float(o["tau"]), impute=str(o["impute"]),
            cross_attention=bool(o["cross_attention"]), gate=bool(o["gate"]), rank=int(o["rank"]),
            personal_rank=int(o["personal_rank"]), adapter_rank=int(o["adapter_rank"]),
        ).to(self.device)

    def model(self) -> AdaModalNet:
        if self._model is None:
            self._model = self.build()
        return self._model  # type: ignore[return-value]

    def spare(self, i: int) -> AdaModalNet:
        """The i-th extra model instance of this process (a relayed teacher), built once:
        :meth:`fresh` resets it before every use."""
        while len(self._spares) <= i:
            self._spares.append(self.build())
        return self._spares[i]

    def initial_params(self) -> dict[str, np.ndarray]:
        if self._initial is None:
            self._initial = state_arrays(self.build())
        return self._initial

    def fresh(self, *layers: dict[str, np.ndarray], knowledge: dict[str, np.ndarray] | None = None,
              model: AdaModalNet | None = None) -> AdaModalNet:
        """The shared model instance reset to the initial weights, then ``layers`` loaded in
        order (later ones win), so nothing of a previous client can leak into this one."""
        model = model if model is not None else self.model()
        given = set().union(*(a.keys() for a in layers)) if layers else set()
        load_arrays(model, {k: v for k, v in self.initial_params().items()
                            if k not in given and key_role(k) != "frozen"})
        for arrays in layers:
            load_arrays(model, arrays)
        return model.set_knowledge(knowledge)

    def upload_keys(self, cid_or_mods: int | tuple[str, ...], roles: tuple[str, ...] = ("global",)) -> set[str]:
        """The parameters a client with these modalities trains and sends (of these roles)."""
        mods = self.clients[cid_or_mods].modalities if isinstance(cid_or_mods, int) else cid_or_mods
        return {k for k in self.initial_params() if key_role(k) in roles and key_modality(k) in (None, *mods)
                and (self.uses_imputer() or not k.startswith("imputer."))}

    def uses_imputer(self) -> bool:
        """Stage 3's cross-attention imputer is trained, sent and read only when it imputes."""
        return self.opt["impute"] == "cross_attention" and bool(self.opt["cross_attention"])

    # ---- server side --------------------------------------------------------------------
    def init_server(self) -> None:
        self.global_params = {k: v for k, v in self.initial_params().items() if key_role(k) == "global"}
        self.knowledge: dict[str, np.ndarray] = {}
        self.teachers: list[int] = []
        self.scores: dict[int, float] = {}
        self.packages: dict[int, dict[str, np.ndarray]] = {}
        self.round_updates: dict[int, tuple[dict[str, np.ndarray], float, float]] = {}
        self.reference: dict[str, np.ndarray] = {}  # what the round's clients started from
        self.diagnostics: dict[str, float] = {}

    def phases(self, rnd: int) -> list[str]:
        if rnd == 1:
            extra = ["train", "summarize"] if self.opt["round1_train"] else []
            return ["warmup"] + (["teach", "kd"] if self.opt["kd"] else []) + ["summarize"] + extra
        return ["train", "summarize"]

    def participants(self, phase: str, rnd: int, sampled: list[int]) -> list[int]:
        if phase == "teach":
            return [c for c in sampled if c in self.teachers]
        if phase == "kd":
            return [c for c in sampled if c in self.scores and c not in self.teachers]
        return sampled

    def configure(self, phase: str, rnd: int, cids: list[int]) -> dict[int, Message]:
        if phase == "kd":
            return {cid: self.kd_message(cid) for cid in cids}
        if phase == "summarize":  # the current global projections: summaries live in their space
            return {cid: messages.pack(self.projections(cid)) for cid in cids}
        if phase == "train":
            msg = self.broadcast()
            return {cid: msg for cid in cids}
        return {cid: Message() for cid in cids}  # warmup starts from the seed; teach needs nothing

    def projections(self, cid: int) -> dict[str, np.ndarray]:
        mods = self.clients[cid].modalities
        return {k: v for k, v in self.global_params.items() if key_modality(k) in mods}

    def broadcast(self) -> Message:
        return messages.pack(self.global_params, self.knowledge)

    def kd_message(self, cid: int) -> Message:
        mods = {c: self.clients[c].modalities for c in self.teachers}
        chosen = distill.teachers_for(self.clients[cid].modalities, [t for t in self.teachers if t in self.packages],
                                      mods, self.scores, int(self.opt["kd_teachers"]))
        return messages.pack_teachers([(self.packages[t], mods[t]) for t in chosen])

    def aggregate(self, phase: str, rnd: int, replies: dict[int, Message]) -> None:
        if phase == "warmup":
            self.round_updates, self.diagnostics = {}, {}
            self.scores = distill.comparable_scores({c: r.scalars for c, r in replies.items()})
            if self.opt["kd"]:
                self.teachers = distill.select_teachers(self.scores, float(self.opt["kd_threshold"]))
            self.collect(replies, self.initial_params())
            if not self.opt["kd"]:
                self.average()
        elif phase == "teach":
            self.packages = {c: upload.decode(r.arrays, self.initial_params()) for c, r in replies.items()}
            self.collect(replies, self.initial_params())
        elif phase == "kd":
            self.collect(replies, self.initial_params())
            self.average()
            self.packages = {}  # teachers' projections are not kept beyond their relay
        elif phase == "summarize":
            self.knowledge = self.cluster(replies, rnd)
        elif phase == "train":
            self.round_updates = {}
            self.scores.update(distill.comparable_scores({c: r.scalars for c, r in replies.items()}))
            self.diagnostics = pooled_diagnostics(replies)
            self.collect(replies, self.global_params)
            self.average()

    def collect(self, replies: dict[int, Message], reference: dict[str, np.ndarray]) -> None:
        """Keep each reply's global parts as changes from ``reference`` (the weights the
        clients started from), with its size and score, for :meth:`average`."""
        self.reference = reference
        for cid, r in replies.items():
            change = {k: v for k, v in upload.deltas(r.arrays, reference).items() if key_role(k) == "global"}
            if change:
                self.round_updates[cid] = (change, float(r.scalars["num_examples"]), self.scores.get(cid, 0.0))

    def average(self) -> None:
        """Stage 4's global update: each global part averaged over the clients that sent it
        (with ``modality_average=holders``, a modality's projection only over the clients
        holding that modality; with ``all``, over every client of the round), weighted by
        ``n_i`` or ``n_i * softmax(score_i / tau_c)``. Under the mean rule that is the
        reference plus the weighted sum of the changes, in which a client that lacks the
        modality counts with a change of zero (it keeps the weights it was sent: FedAvg's
        damping of a projection that few clients train)."""
        if not self.round_updates:
            return
        cids = sorted(self.round_updates)
        n = np.array([self.round_updates[c][1] for c in cids])
        s = np.array([self.round_updates[c][2] for c in cids])
        w = contribution_weights(n, s, str(self.opt["contribution"]), float(self.opt["tau_c"]))
        updates = [self.round_updates[c][0] for c in cids]
        self.global_params.update(global_update(self.reference, self.global_params, updates, w,
                                                everyone=self.opt["modality_average"] == "all",
                                                rule=str(self.cfg.get("aggregation", "mean"))))
        self.round_updates = {}

    def cluster(self, replies: dict[int, Message], rnd: int) -> dict[str, np.ndarray]:
        """Stage 2 on the server, then stage 3's cluster-level representations Z."""
        seeds = tuple(int(np.random.SeedSequence([self.seed, rnd, 17, i]).generate_state(1)[0]) for i in range(2))
        know, metrics = cluster_summaries([r.arrays for r in replies.values()], int(self.opt["k"]),
                                          cluster=bool(self.opt["cluster"]), seeds=seeds,  # type: ignore[arg-type]
                                          match_labels=float(self.opt["match_labels"]),
                                          class_protos=float(self.opt["replay"]) > 0)
        self.diagnostics.update(metrics)
        if "pi" in know:
            k = Knowledge.from_arrays({x: know[x] for x in ("C_img", "C_txt", "pi")}, self.device)
            assert k is not None
            imputer = self.fresh(self.global_params).imputer if self.uses_imputer() else None
            know.update(cluster_prototypes(imputer, k.keys))
        return know

    def round_metrics(self, rnd: int) -> dict[str, float]:
        return dict(self.diagnostics)

    def shares_per_sample(self) -> bool:
        return self.opt["share"] == "embeddings"

    def privacy_report(self, rounds: int) -> dict[str, Any] | None:
        """Epsilon of the noised summaries: per round a client releases at most ``k_local``
        centroids per modality, each clipped to ``dp_clip`` and noised with std
        ``dp_sigma * dp_clip``; one client's data moves each by ``2 * dp_clip`` under replace-one
        adjacency (the default; add/remove: ``dp_clip``), so the summary's ``clip`` is ``dp_clip *
        sqrt(k_local * modalities)``. What goes up without noise is listed in ``unnoised``."""
        sigma = float(self.opt["dp_sigma"])
        if sigma <= 0:
            return None
        if self.opt["share"] != "centroids":
            return {"mechanism": "gaussian on shared per-sample embeddings", "epsilon": None,
                    "note": "share=embeddings uploads every row; no client-level bound is reported"}
        k_total = int(self.opt["k_local"]) * len(self.spec.modalities)
        return dp_report(
            "gaussian on clipped summary centroids (client side)", sigma / float(np.sqrt(k_total)),
            float(self.opt["dp_clip"]) * float(np.sqrt(k_total)), rounds, float(self.cfg.get("dp.delta", 1e-5)),
            1.0, adjacency=str(self.cfg.get("dp.adjacency", "replace")), centroid_clip=float(self.opt["dp_clip"]),
            centroids=k_total, unnoised=[
                "centroid counts", "centroid label histograms", "model updates (warm-up, train)",
                "num_examples and validation scalars", "evaluation reports (test metrics, statistics)"])

    def eval_message(self, cid: int) -> Message:
        return self.broadcast()

    def global_model(self) -> nn.Module | None:
        """The global parts with the broadcast knowledge (personal updates at zero)."""
        if self._server_model is None:  # a second instance: evaluation loads clients into model()
            self._server_model = self.build()
        return self.fresh(self.global_params, knowledge=self.knowledge or None, model=self._server_model)

    def server_state(self) -> dict[str, np.ndarray]:
        out = dict(messages.pack(self.global_params, self.knowledge).arrays)
        if self.scores:
            cids = sorted(self.scores)
            out["scores.cid"] = np.array(cids, dtype=np.int64)
            out["scores.value"] = np.array([self.scores[c] for c in cids], dtype=np.float64)
        return out

    def load_server_state(self, state: dict[str, np.ndarray]) -> None:
        self.global_params, self.knowledge = messages.unpack(Message(state))
        if "scores.cid" in state:
            self.scores = dict(zip(state["scores.cid"].tolist(), state["scores.value"].tolist(), strict=True))

    # ---- client side --------------------------------------------------------------------
    def upload(self, arrays: dict[str, np.ndarray], ctx: ClientContext,
               reference: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Parameters as they go up (:mod:`.upload`): ``float16`` halves their bytes, ``int8``
        sends the change from ``reference`` (the weights the server sent; by default the
        seed's, which every machine rebuilds) in a quarter of them."""
        ref = reference if reference is not None else self.initial_params()
        return upload.encode(arrays, ref, str(self.opt["upload_precision"]), np.random.default_rng([ctx.seed, 11]))

    def client_step(self, phase: str, rnd: int, ctx: ClientContext, msg: Message) -> Message:
        if phase == "warmup":
            return self.client_warmup(ctx)
        if phase == "teach":
            keys = self.upload_keys(ctx.modalities, ("global", "personal"))
            return Message(self.upload(_select(ctx.state, keys), ctx), {"num_examples": len(ctx.train)})
        if phase == "kd":
            return self.client_kd(ctx, msg)
        if phase == "summarize":
            return self.client_summary(ctx, msg)
        if phase == "train":
            return self.client_train(ctx, msg)
        raise ValueError(f"adamodal: unknown phase {phase!r}")

    def client_warmup(self, ctx: ClientContext) -> Message:
        model = self.fresh()
        train_local(model, ctx.train, ctx.cfg, self.terms, task=ctx.spec.task, epochs=int(self.opt["warmup_epochs"]),
                    generator=ctx.generator, device=self.device)
        ctx.state = _trained(model)  # the whole model until the first global average
        arrays = {} if self.opt["kd"] else self.upload(_select(ctx.state, self.upload_keys(ctx.modalities)), ctx)
        return Message(arrays, {"num_examples": len(ctx.train), **val_scores(model, ctx, self.device)})

    def client_kd(self, ctx: ClientContext, msg: Message) -> Message:
        teachers = []
        for i, (arrays, sees_img, sees_txt) in enumerate(messages.unpack_teachers(msg)):
            teachers.append((self.fresh(arrays, model=self.spare(i)).eval(), sees_img, sees_txt))
        model = self.fresh(ctx.state)
        if teachers:
            temp, weight, task = float(self.opt["kd_temperature"]), float(self.opt["kd_weight"]), ctx.spec.task

            def distil(student: AdaModalNet, batch, fwd) -> torch.Tensor:
                with torch.no_grad():  # each teacher sees only the modalities it was trained on
                    t_logits = [t(batch.x_img, batch.x_txt, batch.m_img & hi, batch.m_txt & ht) for t, hi, ht in teachers]
                return weight * distill.kd_loss(fwd.logits, distill.soft_targets(t_logits, temp, task), temp, task)

            train_local(model, ctx.train, ctx.cfg, self.terms, task=task, epochs=int(self.opt["kd_epochs"]),
                        generator=ctx.generator, device=self.device, extra=distil)
            ctx.state = _trained(model)
        return Message(self.upload(_select(ctx.state, self.upload_keys(ctx.modalities)), ctx),
                       {"num_examples": len(ctx.train), **val_scores(model, ctx, self.device)})

    @torch.no_grad()
    def client_summary(self, ctx: ClientContext, msg: Message) -> Message:
        """Stage 2 on the client: the training split in the current global shared space."""
        glob, _ = messages.unpack(msg)
        model = self.fresh(_personal(ctx.state), glob).eval()
        data = ctx.train.to(self.device)
        reps = model.encode(data.x_img, data.x_txt, data.m_img, data.m_txt)
        rows = {"image": data.m_img, "text": data.m_txt}
        o = self.opt
        arrays = client_summary(reps, rows, ctx.train.y.numpy(), self.spec.num_classes, k_local=int(o["k_local"]),
                                min_count=int(o["min_count"]), share_rows=o["share"] == "embeddings",
                                clip=float(o["dp_clip"]), sigma=float(o["dp_sigma"]),
                                rng=np.random.default_rng([ctx.seed, 5]))
        return Message(arrays, {"num_examples": len(ctx.train)})

    def client_train(self, ctx: ClientContext, msg: Message) -> Message:
        glob, know = messages.unpack(msg)
        model = self.fresh(_personal(ctx.state), glob, knowledge=know)
        diagnostics = client_diagnostics(model, ctx, self.device)
        loss = train_local(model, ctx.train, ctx.cfg, self.terms, task=ctx.spec.task,
                           epochs=int(ctx.cfg["local_epochs"]), generator=ctx.generator, device=self.device)
        if self.opt["contribution"] == "score":  # the weights need the trained model's score
            diagnostics.update(val_scores(model, ctx, self.device))
        params = _trained(model)
        ctx.state = _personal(params)
        return Message(self.upload(_select(params, self.upload_keys(ctx.modalities)), ctx, glob),
                       {"num_examples": len(ctx.train), "loss": loss, **diagnostics})

    def client_model(self, ctx: ClientContext, msg: Message) -> nn.Module:
        """The received global model with this client's personal parts. Clients without
        personal parts that receive the very same message (in process, one evaluation's
        broadcast) get the shared model as it was loaded for the previous one, provided
        nothing has touched it since."""
        personal = _personal(ctx.state)
        model = self.model()
        if not personal and self._loaded is not None and self._loaded.matches(msg, model):
            return model
        glob, know = messages.unpack(msg)
        model = self.fresh(personal, glob, knowledge=know)
        self._loaded = None if personal else LoadedFrom.of(msg, model)
        return model


# ---- helpers ------------------------------------------------------------------------------

def _select(arrays: dict[str, np.ndarray], keys: set[str]) -> dict[str, np.ndarray]:
    return {k: v for k, v in arrays.items() if k in keys}


def _personal(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A client's own parts: after round 1 its state holds nothing else, and during round 1
    (warm-up / distillation state) its global parts are superseded by the server's."""
    return {k: v for k, v in arrays.items() if key_role(k) == "personal"}


def _trained(model: nn.Module) -> dict[str, np.ndarray]:
    """Everything but the frozen base (which every machine rebuilds from the seed)."""
    return {k: v for k, v in state_arrays(model).items() if key_role(k) != "frozen"}
