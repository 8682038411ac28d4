"""FedAvg: the aggregate is the sample-weighted mean across all clients."""

from __future__ import annotations

import numpy as np

from adamodal.engine.train import predict
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
