"""Evaluation in process: identical models score a shared data set once, with the same
numbers as scoring it per client."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from adamodal.methods import get_method_class, method_names
from adamodal.runtime.clients import PredictionMemo, evaluate_client, model_fingerprint
from adamodal.runtime.simulator import Simulator


@dataclasses.dataclass
class Knowledge:
    keys: dict[str, torch.Tensor]
    size: int


class Flagged(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.impute = "zero"
        self.scale = torch.ones(2)  # an unregistered tensor


def test_the_fingerprint_sees_parameters_flags_and_unregistered_tensors():
    torch.manual_seed(0)
    a = Flagged()
    b = Flagged()
    b.load_state_dict(a.state_dict())
    assert model_fingerprint(a) == model_fingerprint(b)
    b.impute = "mean"
    assert model_fingerprint(a) != model_fingerprint(b)
    b.impute = "zero"
    b.scale = torch.full((2,), 2.0)
    assert model_fingerprint(a) != model_fingerprint(b)
    b.scale = torch.ones(2)
    with torch.no_grad():
        b.lin.weight[0, 0] += 1e-6
    assert model_fingerprint(a) != model_fingerprint(b)
    # plain data (a dataclass of tensors in a dict) counts by content, built twice or not
    b.load_state_dict(a.state_dict())
    a.know, b.know = Knowledge({"k": torch.ones(2)}, 1), Knowledge({"k": torch.ones(2)}, 1)
    assert model_fingerprint(a) == model_fingerprint(b)
    b.know = Knowledge({"k": torch.tensor([1.0, 2.0])}, 1)
    assert model_fingerprint(a) != model_fingerprint(b)
    b.know = Knowledge({"k": torch.ones(2)}, 2)
    assert model_fingerprint(a) != model_fingerprint(b)
    b.know = a.know
    # an attribute of another kind counts by identity: never judged equal by accident
    a.helper, b.helper = object(), object()
    b.load_state_dict(a.state_dict())
    assert model_fingerprint(a) != model_fingerprint(b)


@pytest.mark.parametrize("method", method_names())
def test_memoised_evaluation_equals_scoring_every_client(experiment_for, tmp_path, method):
    exp = experiment_for(method, rounds=1, local_epochs=1)
    sim = Simulator(exp, tmp_path / "run", progress=False)
    features = "features" in get_method_class(method).input_kinds
    if features:
        sim.run()  # clients with trained, and for personal methods different, models
    else:
        sim.method.init_server()  # whole towers train slowly; the initial models are enough here
    tests = exp.test if features else None  # scoring raw inputs three more times is slow
    memo = PredictionMemo()
    for c in exp.clients:
        msg = sim.method.eval_message(c.cid)
        ctx = sim.clients.context(c.cid, 0)
        view = exp.test_as_client[c.cid]
        with_memo = evaluate_client(sim.method, ctx, msg, view, tests, memo)
        without = evaluate_client(sim.method, ctx, msg, view, tests)
        assert with_memo.metrics == without.metrics
        for k in without.stats:
            np.testing.assert_array_equal(with_memo.stats[k], without.stats[k])
            np.testing.assert_array_equal(with_memo.server_stats[k], without.server_stats[k])
        assert with_memo.test_metrics == without.test_metrics
    if method in ("fedavg", "fedprox", "central", "adamodal"):
        # one global model on every client (AdaModal-Fed's knowledge rebuilt per client, equal): each shared view and server-test set is scored once
        assert memo.hits > 0
