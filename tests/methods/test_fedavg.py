"""FedAvg: the aggregate is the sample-weighted mean across all clients."""

from __future__ import annotations

import numpy as np

from adamodal.kit.train import predict
from adamodal.methods.base import Message, load_arrays
from adamodal.methods.fedavg import FedAvg
from adamodal.metrics import compute_metrics
from tests.conftest import with_config


def _method(exp):
    exp = with_config(exp, method="fedavg")
    m = FedAvg(exp.cfg, exp.spec, exp.infos())
    m.init_server()
    return m


def test_aggregate_is_the_weighted_mean(small_experiment):
    m = _method(small_experiment)
    keys = list(m.global_params)
    rng = np.random.default_rng(0)
    replies, ns = {}, {0: 10, 1: 30, 3: 60}
    for cid, n in ns.items():
        arrays = {k: rng.normal(size=v.shape).astype(v.dtype) for k, v in m.global_params.items()}
        replies[cid] = Message(arrays, {"num_examples": n})
    m.aggregate("train", 1, replies)
    for k in keys:
        expected = sum(ns[c] * replies[c].arrays[k].astype(np.float64) for c in ns) / sum(ns.values())
        np.testing.assert_allclose(m.global_params[k], expected, rtol=1e-5, atol=1e-6)


def test_every_client_gets_the_same_global_model(small_experiment):
    m = _method(small_experiment)
    msgs = m.configure("train", 1, [0, 1, 4])
    for k, v in m.global_params.items():
        assert all(np.array_equal(msgs[c].arrays[k], v) for c in (0, 1, 4))


def test_client_step_trains_and_reports_its_size(small_experiment):
    from adamodal.methods.base import ClientContext

    m = _method(small_experiment)
    c = small_experiment.clients[0]
    ctx = ClientContext(c.cid, c.group, c.modalities, c.train, c.val, c.test, m.spec, m.cfg, 0, m.device)
    reply = m.client_step("train", 1, ctx, m.configure("train", 1, [0])[0])
    assert reply.scalars["num_examples"] == len(c.train)
    changed = [k for k in reply.arrays if not np.array_equal(reply.arrays[k], m.global_params[k])]
    assert "classifier.weight" in changed
    # and the step learned: client 0's own-test macro-AUC, global (untrained) model vs its
    # upload: 0.40 -> 0.96, 0.46 -> 0.94, 0.49 -> 0.94 (seeds 0-2)
    before, after = (_own_test_auc(m, c, arrays) for arrays in (m.global_params, reply.arrays))
    assert after > 0.85 and after > before + 0.3, (before, after)


def _own_test_auc(m, c, arrays) -> float:
    scores = predict(load_arrays(m.model(), arrays), c.test, "multiclass")
    return compute_metrics(scores, c.test.y.numpy(), "multiclass")["macro_auc"]


# ---- modality dropout (fedavg.modality_dropout) -----------------------------------------------

def _dropout_method(exp, p: float, **extra):
    exp = with_config(exp, method="fedavg", fedavg__modality_dropout=p, **extra)
    m = FedAvg(exp.cfg, exp.spec, exp.infos())
    m.init_server()
    return exp, m


def _ctx(m, c, seed: int = 0):
    from adamodal.methods.base import ClientContext

    return ClientContext(c.cid, c.group, c.modalities, c.train, c.val, c.test, m.spec, m.cfg, seed, m.device)


def test_modality_dropout_changes_what_a_multimodal_client_learns(small_experiment):
    """The stage is live: the same client, seed and start give another model with p > 0, and
    an image-only client (no pair to drop from) trains exactly as without it."""
    from adamodal.runtime.clients import client_step

    replies = {}
    for p in (0.0, 0.5):
        exp, m = _dropout_method(small_experiment, p)
        by_group = {c.group: c for c in exp.clients}
        replies[p] = {g: client_step(m, "train", 1, _ctx(m, c), m.configure("train", 1, [c.cid])[c.cid])
                      for g, c in by_group.items()}
    mm0, mm1 = replies[0.0]["multimodal"].arrays, replies[0.5]["multimodal"].arrays
    assert max(float(np.abs(mm0[k] - mm1[k]).max()) for k in mm0 if mm0[k].dtype.kind == "f") > 1e-3
    io0, io1 = replies[0.0]["image_only"].arrays, replies[0.5]["image_only"].arrays
    assert all(np.array_equal(io0[k], io1[k]) for k in io0)


def test_modality_dropout_never_touches_evaluation(small_experiment, monkeypatch):
    import adamodal.methods.fedavg as fedavg_module
    from adamodal.runtime.clients import evaluate_client

    calls = []
    real = fedavg_module.modality_dropout

    def counting(p, generator):
        drop = real(p, generator)

        def run(batch):
            calls.append(len(batch))
            return drop(batch)

        return run

    monkeypatch.setattr(fedavg_module, "modality_dropout", counting)
    exp, m = _dropout_method(small_experiment, 1.0)
    c = exp.clients[0]
    m.client_step("train", 1, _ctx(m, c), m.configure("train", 1, [c.cid])[c.cid])
    assert sum(calls) == len(c.train) * int(exp.cfg["local_epochs"])  # every training row, each epoch
    calls.clear()
    ev = evaluate_client(m, _ctx(m, c), m.eval_message(c.cid), exp.test_as_client[c.cid], exp.test)
    assert calls == [] and ev.test_metrics["both"]["n"] > 0


def test_modality_dropout_batched_matches_sequential(small_experiment):
    """``batch_clients``: each client draws its dropout from its own stream, as sequentially."""
    from adamodal.kit.train import predict

    exp, m = _dropout_method(small_experiment, 0.5, model__dropout=0.0)
    clients = [c for c in exp.clients if c.group == "multimodal"][:2]
    ctxs = [_ctx(m, c, seed=10 + i) for i, c in enumerate(clients)]
    msgs = [m.configure("train", 1, [c.cid])[c.cid] for c in clients]
    together = m.client_steps("train", 1, ctxs, msgs)
    assert together is not None
    data = exp.test["image"]
    for ctx, msg, reply in zip(ctxs, msgs, together, strict=True):
        alone = m.client_step("train", 1, ctx, msg)
        p_alone = predict(m.client_model(ctx, alone), data, exp.spec.task)
        p_together = predict(m.client_model(ctx, reply), data, exp.spec.task)
        np.testing.assert_allclose(p_together, p_alone, atol=1e-3)


def test_modality_dropout_must_be_a_probability(small_experiment):
    import pytest

    from adamodal.errors import ConfigError

    exp = with_config(small_experiment, method="fedavg")
    cfg = dict(exp.cfg, **{"fedavg.modality_dropout": 1.5})
    with pytest.raises(ConfigError, match="fedavg.modality_dropout"):
        FedAvg(cfg, exp.spec, exp.infos())
