"""Batched client training (``batch_clients``) gives the sequential path's numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adamodal.kit import batched
from adamodal.kit.train import predict, train_epochs
from adamodal.methods.base import load_arrays, state_arrays
from adamodal.model import build_model
from adamodal.runtime.simulator import Simulator
from tests.conftest import with_config


def _final(summary):
    return {g: round(v["macro_auc"], 4) for g, v in summary["groups_server_test"].items()}


@pytest.mark.parametrize(("method", "optimizer"), [("fedavg", "adam"), ("fedprox", "sgd"), ("fedavg_group", "adamw")])
def test_batched_run_matches_sequential_run(small_experiment, tmp_path, method, optimizer):
    common = dict(method=method, optimizer=optimizer, model__dropout=0.0, rounds=1, weight_decay=0.01,
                  participation=0.8, lr=0.01 if optimizer == "sgd" else 0.001)
    seq = Simulator(with_config(small_experiment, **common), tmp_path / "seq", progress=False)
    a = seq.run()
    bat = Simulator(with_config(small_experiment, batch_clients=3, **common), tmp_path / "bat", progress=False)
    b = bat.run()
    # compare what the models predict: a few parameters have an exactly-zero true gradient
    # (e.g. a bias both gate scores share, which the softmax cancels) whose float noise the
    # optimizer amplifies differently in each path without changing any prediction
    data = small_experiment.test["both"]
    for cid in range(len(small_experiment.clients)):
        p_seq = predict(seq.method.client_model(seq.clients.context(cid, 0), seq.method.eval_message(cid)), data, "multiclass")
        p_bat = predict(bat.method.client_model(bat.clients.context(cid, 0), bat.method.eval_message(cid)), data, "multiclass")
        np.testing.assert_allclose(p_bat, p_seq, atol=1e-3)
    assert _final(a) == pytest.approx(_final(b), abs=2e-3)
    assert a["bytes_down"] == b["bytes_down"]
    assert abs(a["bytes_up"] - b["bytes_up"]) < 100  # the same arrays; a loss scalar may print a digit longer


def test_uneven_clients_and_missing_modalities_step_like_sequential(small_experiment):
    """An image-only client (no text rows: its text projection gets no step) next to a
    multimodal client with twice the rows (more steps): each ends where it would alone."""
    exp = with_config(small_experiment, model__dropout=0.0)
    cfg = dict(exp.cfg)
    by_group = {c.group: c for c in exp.clients}
    datas = [by_group["multimodal"].train, by_group["image_only"].train.subset(torch.arange(10))]
    model = build_model(exp.spec, 0)
    start = {k: torch.as_tensor(v) for k, v in state_arrays(model).items()}
    gens = lambda: [torch.Generator().manual_seed(s) for s in (1, 2)]  # noqa: E731
    states, losses = batched.train_clients(model, [start, start], datas, cfg, task=exp.spec.task, generators=gens())
    for data, state, loss, g in zip(datas, states, losses, gens(), strict=True):
        ref = load_arrays(build_model(exp.spec, 0), {k: v.numpy() for k, v in start.items()})
        ref_loss = train_epochs(ref, data, cfg, task=exp.spec.task, generator=g)
        trained = load_arrays(build_model(exp.spec, 0), {k: v.numpy() for k, v in state.items()})
        np.testing.assert_allclose(predict(trained, data, exp.spec.task), predict(ref, data, exp.spec.task), atol=1e-3)
        assert loss == pytest.approx(ref_loss, rel=1e-4)
    # the image-only client's text projection never moved
    torch.testing.assert_close(states[1]["txt_proj.linear.weight"], start["txt_proj.linear.weight"])


def test_methods_without_a_batched_path_fall_back(small_experiment, tmp_path):
    exp = with_config(small_experiment, method="local", rounds=1, batch_clients=4)
    summary = Simulator(exp, tmp_path, progress=False).run()
    # own-test macro-AUC after one round of local training: untrained 0.46, 0.43, 0.45,
    # trained 0.95, 0.93, 0.94 (seeds 0-2)
    assert summary["groups"]["multimodal"]["macro_auc"] > 0.85
