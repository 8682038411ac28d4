"""The server loop of a run, and the in-process simulator built on it.

The clients run in this process one after another with one model in memory
(:class:`~adamodal.runtime.clients.InProcessClients`), or in parallel worker processes
(``workers``, :mod:`adamodal.runtime.workers`) with the same results. The loop drives any
:class:`~adamodal.methods.base.Method` through the same phase protocol the Flower runtime
uses, counts the bytes of every message, evaluates every client (pooled per
modality group) and the server's test set, and checkpoints after every round so a killed run
resumes (``--resume``) to the same result.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from adamodal.cache import cache_dir
from adamodal.config import Config
from adamodal.data import get_source
from adamodal.data.base import Bundle
from adamodal.data.scenario import GROUPS, Scenario, build_scenario
from adamodal.devices import resolve_device
from adamodal.errors import AdamodalError, DataError
from adamodal.kit.tensors import Tensors, materialize
from adamodal.kit.train import predict
from adamodal.methods import get_method_class
from adamodal.methods.base import ClientInfo, Message, Method
from adamodal.metrics import (
    METRICS,
    clean,
    compute_metrics,
    metrics_from_stats,
    stats_problem,
    sum_stats,
)
from adamodal.model import ModelSpec
from adamodal.runtime.clients import (
    ClientData,
    ClientEval,
    ClientFailure,
    Clients,
    derive_seed,
)
from adamodal.runtime.validate import Limits, validate_replies
from adamodal.runtime.workers import local_clients
from adamodal.towers.features import Inputs, build_inputs

CHECKPOINT = "checkpoint.pt"


@dataclass
class Experiment:
    """A data set made ready for a run: features, scenario, model spec and per-client tensors."""

    cfg: Config
    bundle: Bundle | None  # None on the server of a site-local run without a test set
    inputs: Inputs | None
    scenario: Scenario
    spec: ModelSpec
    clients: list[ClientData]
    test: dict[str, Tensors]
    #: the server's test set as each client sees it (its modalities, its image domain),
    #: shared by clients with the same (group, domain): a larger, steadier per-group measure
    #: than the clients' own small test splits
    test_as_client: dict[int, Tensors] = field(default_factory=dict)
    #: the server's public paired set (``split.public > 0``), held out from every client
    public: Tensors | None = None
    #: the clients as they declared themselves, when the server does not hold their data
    #: (a site-local deployment, :mod:`adamodal.runtime.sites`; ``clients`` is then empty)
    declared: list[ClientInfo] | None = None

    def infos(self) -> list[ClientInfo]:
        if self.declared is not None:
            return list(self.declared)
        return [ClientInfo(c.cid, c.group, c.modalities, len(c.train)) for c in self.clients]


def model_spec(cfg: dict[str, Any], bundle: Bundle, inputs: Inputs) -> ModelSpec:
    return ModelSpec(
        task=bundle.task, num_classes=bundle.num_classes, modalities=bundle.modalities,
        input_kind=inputs.kind, img_dim=inputs.img_dim, txt_dim=inputs.txt_dim, img_shape=inputs.img_shape,
        dim=int(cfg["model.dim"]), dropout=float(cfg["model.dropout"]),
        image_tower=str(cfg["model"]), text_tower=str(cfg["text_model"]),
    )


def prepare(cfg: Config, progress: bool = True) -> Experiment:
    """Load (fetching if needed) the data set, its features and the scenario."""
    source = get_source(cfg["dataset"], cfg.section(cfg["dataset"]))
    bundle = source.load(cache_dir())
    device = resolve_device(str(cfg["device"]))
    scenario = build_scenario(bundle, cfg)  # before features: a bad scenario fails in a second
    inputs = build_inputs(bundle, str(cfg["towers"]), cache_dir(), device=str(device), progress=progress)
    if int(cfg["threads"]) > 0:
        # the client models are small: per-op overhead dominates and extra threads mostly
        # spin (measured 6x slower with 2 threads on a busy 2-core machine)
        torch.set_num_threads(int(cfg["threads"]))
    clients = []
    for spec in scenario.clients:
        t = {s: materialize(inputs, bundle.labels, spec.splits[s]) for s in ("train", "val", "test")}
        if len(t["train"]) == 0:
            raise DataError(f"client {spec.cid} ({spec.group}) has no training samples; lower split.val/split.test "
                            "or use fewer clients")
        clients.append(ClientData(spec.cid, spec.group, spec.modalities, t["train"], t["val"], t["test"]))
    test = {cond: materialize(inputs, bundle.labels, view) for cond, view in scenario.test.items()}
    shared: dict[tuple[str, int], Tensors] = {}
    as_client: dict[int, Tensors] = {}
    for spec in scenario.clients:
        key = (spec.group, spec.domain if "image" in spec.modalities else -1)
        if key not in shared:
            view = scenario.test_view_for(spec, int(cfg["eval.max_rows"]), int(cfg["seed"]))
            shared[key] = materialize(inputs, bundle.labels, view)
        as_client[spec.cid] = shared[key]
    public = None if scenario.public is None else materialize(inputs, bundle.labels, scenario.public)
    return Experiment(cfg, bundle, inputs, scenario, model_spec(cfg, bundle, inputs), clients, test, as_client, public)


@dataclass
class RunState:
    """Everything a checkpoint holds besides the method's own state."""

    round: int = 0
    records: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl lines
    history: list[dict[str, Any]] = field(default_factory=list)
    bytes_up: dict[int, int] = field(default_factory=dict)
    bytes_down: dict[int, int] = field(default_factory=dict)
    #: clients that gave no usable reply: {round, phase, client, reason}
    dropped: list[dict[str, Any]] = field(default_factory=list)
    time_s: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0


class Simulator:
    """The server loop: sampling, phases, byte accounting, evaluation, checkpoints, summary.

    Where the clients run is a :class:`~adamodal.runtime.clients.Clients`; by default in this
    process or in worker processes, as ``workers`` says (:func:`~adamodal.runtime.workers.local_clients`);
    the Flower runtime passes one that talks to SuperNodes.
    """

    def __init__(self, exp: Experiment, out_dir: Path, *, progress: bool = True, clients: Clients | None = None) -> None:
        self.exp = exp
        self.cfg = exp.cfg
        self.out = Path(out_dir)
        self.progress = progress and sys.stderr.isatty()
        self.method: Method = get_method_class(self.cfg["method"])(self.cfg, exp.spec, exp.infos())
        if exp.public is not None:
            self.method.set_public(exp.public)  # the server's; clients get what the method sends
        self.device = resolve_device(str(self.cfg["device"]))
        self.own_clients = clients is None  # ours to close when the run ends
        self.clients = clients or local_clients(
            self.method, exp.clients, exp.test_as_client, exp.test, exp.spec, self.cfg, self.device,
            progress=self.progress,
        )
        self.state = RunState()

    # ---- one round -------------------------------------------------------------------
    def sample(self, rnd: int) -> list[int]:
        n = len(self.exp.infos())
        k = max(1, int(round(float(self.cfg["participation"]) * n)))
        rng = np.random.default_rng([int(self.cfg["seed"]), rnd, 3])
        return sorted(int(c) for c in rng.choice(n, size=k, replace=False))

    def run_round(self, rnd: int) -> None:
        st, method = self.state, self.method
        sampled = self.sample(rnd)
        for p_idx, phase in enumerate(method.phases(rnd)):
            t0 = time.perf_counter()
            cids = method.participants(phase, rnd, sampled)
            messages = method.configure(phase, rnd, cids)
            for cid in cids:
                st.bytes_down[cid] = st.bytes_down.get(cid, 0) + self.clients.nbytes(messages[cid])
            received = self.clients.step(phase, rnd, p_idx, {cid: messages[cid] for cid in cids})
            replies = self.judge(phase, rnd, messages, received)
            self.require_quorum(phase, rnd, len(cids), len(replies))
            method.aggregate(phase, rnd, replies)
            st.time_s[phase] = st.time_s.get(phase, 0.0) + time.perf_counter() - t0
        t0 = time.perf_counter()
        torch.manual_seed(derive_seed(self.cfg["seed"], rnd, 10**6))
        method.end_round(rnd)
        st.time_s["server"] = st.time_s.get("server", 0.0) + time.perf_counter() - t0

    def judge(self, phase: str, rnd: int, sent: dict[int, Message],
              received: dict[int, Message | ClientFailure]) -> dict[int, Message]:
        """The replies fit to aggregate: failures and invalid payloads are logged in
        ``dropped`` and left out. Bytes are counted for every payload that arrived."""
        st = self.state
        arrived = {}
        for cid, reply in sorted(received.items()):
            if isinstance(reply, ClientFailure):
                st.dropped.append({"round": rnd, "phase": phase, "client": cid, "reason": reply.reason})
                continue
            if isinstance(reply, Message):
                try:
                    st.bytes_up[cid] = st.bytes_up.get(cid, 0) + self.clients.nbytes(reply)
                except (TypeError, ValueError, AttributeError):
                    pass  # unmeasurable garbage: validation below rejects it
            arrived[cid] = reply
        valid, rejected = validate_replies(self.method, phase, rnd, sent, arrived, Limits.from_config(self.cfg))
        for cid, reason in sorted(rejected.items()):
            st.dropped.append({"round": rnd, "phase": phase, "client": cid, "reason": reason})
        return valid

    def require_quorum(self, phase: str, rnd: int, asked: int, valid: int) -> None:
        """Stop the run when too few clients replied usably (``min_clients``; a phase that asks
        fewer clients than that needs all of them). The checkpoint of the previous round stays."""
        need = min(int(self.cfg["min_clients"]), asked)
        if valid < need:
            reasons = [d for d in self.state.dropped if d["round"] == rnd and d["phase"] == phase]
            detail = "; ".join(f"client {d['client']}: {d['reason']}" for d in reasons[:5])
            raise AdamodalError(
                f"round {rnd} ({phase}): only {valid} of {asked} clients gave a usable reply, "
                f"min_clients={self.cfg['min_clients']} ({detail}); the run stopped after round "
                f"{self.state.round}, fix the clients and continue with --resume {self.out}"
            )

    # ---- evaluation ------------------------------------------------------------------
    def evaluate(self, rnd: int) -> dict[str, Any]:
        """Per client on its own test split, pooled per group; the server's test set three ways.

        Per-client metrics are what the clients computed on their rows; the per-group tables
        come from the sum of the group's clients' statistics (binned macro-AUC, exact F1 and
        accuracy: :mod:`adamodal.metrics`), under every runtime. The server's own test set,
        which the server holds, is scored exactly.

        Methods without a server model are scored on the server's test set with every client's
        model, averaged; that costs clients x test rows, so it is done at the last round only.
        """
        final = rnd == int(self.cfg["rounds"])
        t0 = time.perf_counter()
        task = self.exp.spec.task
        method = self.method
        # the server model is scored before any client loads its model here: methods may reuse
        # one model instance, so a client's weights must not change what the server model
        # predicts; clients in worker processes start first and evaluate meanwhile
        global_model = method.global_model()
        infos = {c.cid: c for c in self.exp.infos()}
        clients_done = self.clients.begin_evaluate(
            rnd, {cid: method.eval_message(cid) for cid in infos}, server_tests=global_model is None and final)
        server_scores = {}
        if global_model is not None:
            server_scores = {cond: predict(global_model, data, task) for cond, data in self.exp.test.items()}
        evals: dict[int, ClientEval] = clients_done()
        # pooled per group from the clients' summed statistics: no row leaves a client
        pooled: dict[str, list[dict[str, np.ndarray]]] = {}
        pooled_server: dict[str, list[dict[str, np.ndarray]]] = {}
        for cid, ev in sorted(evals.items()):
            group = infos[cid].group
            problem = stats_problem(ev.stats, self.exp.spec.num_classes) or stats_problem(
                ev.server_stats, self.exp.spec.num_classes)
            if problem:  # a malformed report is left out of the tables, with the reason
                self.state.dropped.append({"round": rnd, "phase": "evaluate", "client": cid,
                                           "reason": f"invalid evaluation report: {problem}"})
                del evals[cid]
                continue
            self.state.records.append(clean({
                "round": rnd, "client": cid, "group": group,
                **{k: ev.metrics[k] for k in (*METRICS, "n") if k in ev.metrics},  # nothing else
                "bytes_up": self.state.bytes_up.get(cid, 0), "bytes_down": self.state.bytes_down.get(cid, 0),
            }))
            pooled.setdefault(group, []).append(ev.stats)
            pooled_server.setdefault(group, []).append(ev.server_stats)
        groups, groups_server = {}, {}
        for g in GROUPS:
            if g in pooled:
                for src, dst in ((pooled, groups), (pooled_server, groups_server)):
                    summed = sum_stats(src[g])
                    if src is pooled_server and int(summed["n"]) == 0:
                        continue  # no rows: sites that hold none of the server's test set
                    m = metrics_from_stats(summed, task)
                    dst[g] = {k: m[k] for k in METRICS} | {"clients": len(src[g]), "n": m["n"]}
        test = {}
        for cond, data in self.exp.test.items():
            if global_model is not None:
                m = compute_metrics(server_scores[cond], data.y.numpy(), task)
            elif final:
                rows = [ev.test_metrics[cond] for ev in evals.values() if ev.test_metrics]
                if not rows:
                    continue  # the clients hold no copy of the server's test set (site-local data)
                m = {k: float(np.nanmean([r[k] for r in rows])) for k in METRICS}
            else:
                continue
            test[cond] = {"macro_auc": m["macro_auc"], "accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}
        self.state.time_s["eval"] = self.state.time_s.get("eval", 0.0) + time.perf_counter() - t0
        return clean({"round": rnd, "groups": groups, "groups_server_test": groups_server, "test": test})

    # ---- persistence -----------------------------------------------------------------
    def checkpoint(self) -> None:
        st = self.state
        payload = {
            "round": st.round, "server": _as_tensors(self.method.server_state()),
            "state": dict(st.__dict__), "clients": _as_tensors(self.clients.state()), "config": dict(self.cfg),
        }
        tmp = self.out / (CHECKPOINT + ".tmp")
        torch.save(payload, tmp)
        os.replace(tmp, self.out / CHECKPOINT)
        write_jsonl(self.out / "metrics.jsonl", st.records)

    def restore(self) -> None:
        path = self.out / CHECKPOINT
        if not path.exists():
            raise AdamodalError(f"{path}: no checkpoint to resume from")
        try:
            # weights_only: a checkpoint is tensors, numbers and strings; a tampered file cannot
            # run code on load
            payload = torch.load(path, weights_only=True)
            self.method.init_server()
            self.method.load_server_state(_as_arrays(payload["server"]))
            self.state = RunState(**payload["state"])
            self.clients.load_state(_as_arrays(payload["clients"]))
        except Exception as exc:  # noqa: BLE001 - any damage means the file cannot be resumed from
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
            raise AdamodalError(f"{path}: unreadable checkpoint ({reason}); start the run again with --force") from exc

    # ---- the whole run ---------------------------------------------------------------
    def run(self, resume: bool = False) -> dict[str, Any]:
        try:
            return self._run(resume)
        finally:
            if self.own_clients:
                self.clients.close()  # worker processes end with the run (state comes back first)

    def _run(self, resume: bool) -> dict[str, Any]:
        self.out.mkdir(parents=True, exist_ok=True)
        if resume:
            self.restore()
        else:
            self.cfg.save(self.out / "config.toml")
            self.method.init_server()
        rounds = int(self.cfg["rounds"])
        every = int(self.cfg["eval.every"])
        start = time.perf_counter() - self.state.wall_s
        if self.state.round == 0 and not self.state.history:
            if every or rounds == 0:  # eval.every=0: only after the last round, as a benchmark scores
                self.state.history.append(self.evaluate(0))
            self.checkpoint()  # a run that stops in round 1 is resumable too
        bar = tqdm(range(self.state.round + 1, rounds + 1), desc=f"{self.cfg['method']}", disable=not self.progress,
                   unit="round", initial=self.state.round, total=rounds)
        for rnd in bar:
            self.run_round(rnd)
            method_metrics = clean(self.method.round_metrics(rnd))
            if method_metrics:
                self.state.records.append({"round": rnd, "client": "server", "method": method_metrics})
            if (every and rnd % every == 0) or rnd == rounds:
                entry = self.evaluate(rnd)
                if method_metrics:
                    entry["method"] = method_metrics
                self.state.history.append(entry)
                auc = entry["groups"].get("multimodal", next(iter(entry["groups"].values()), {})).get("macro_auc")
                if auc is not None:
                    bar.set_postfix(auc=f"{auc:.3f}")
            self.state.round = rnd
            self.state.wall_s = time.perf_counter() - start
            self.checkpoint()
        summary = self.summary()
        (self.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        return summary

    def summary(self) -> dict[str, Any]:
        st = self.state
        last = st.history[-1]
        rounds = max(int(self.cfg["rounds"]), 1)
        return clean({
            "method": self.cfg["method"], "dataset": self.cfg["dataset"], "rounds": int(self.cfg["rounds"]),
            "seed": int(self.cfg["seed"]), "wall_s": round(st.wall_s, 3),
            "bytes_up": int(sum(st.bytes_up.values())), "bytes_down": int(sum(st.bytes_down.values())),
            "bytes_up_per_round": int(sum(st.bytes_up.values()) / rounds),
            "bytes_down_per_round": int(sum(st.bytes_down.values()) / rounds),
            "groups": last["groups"], "groups_server_test": last["groups_server_test"], "test": last["test"],
            "history": st.history,
            "clients": self.exp.scenario.counts(),
            "domains": self.exp.scenario.domains,
            "time_s": {k: round(v, 3) for k, v in st.time_s.items()},
            "dropped": st.dropped,
            "privacy": self.method.privacy_report(st.round),
        })


def _as_tensors(tree: Any) -> Any:
    """numpy arrays -> tensors sharing memory: torch.save writes tensor storages as raw bytes,
    while it pickles numpy arrays (several times slower for per-client model states)."""
    if isinstance(tree, dict):
        return {k: _as_tensors(v) for k, v in tree.items()}
    if isinstance(tree, np.ndarray):
        # not np.ascontiguousarray: it turns a 0-d array (a scalar parameter) into shape (1,)
        return torch.from_numpy(tree if tree.flags.c_contiguous else tree.copy(order="C"))
    return tree


def _as_arrays(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _as_arrays(v) for k, v in tree.items()}
    if isinstance(tree, torch.Tensor):
        return tree.numpy()
    return tree


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    os.replace(tmp, path)


def check_out_dir(out: Path, force: bool) -> None:
    """Never overwrite a finished or checkpointed run unless asked to."""
    if out.exists() and not force and ((out / "summary.json").exists() or (out / CHECKPOINT).exists()):
        raise AdamodalError(f"{out} already holds a run; pass --force to overwrite it or --resume {out} to continue it")


def run_experiment(cfg: Config, out_dir: Path, *, progress: bool = True, resume: bool = False,
                   force: bool = False) -> dict[str, Any]:
    if not resume:
        check_out_dir(Path(out_dir), force)
    exp = prepare(cfg, progress=progress)
    return Simulator(exp, out_dir, progress=progress).run(resume=resume)
