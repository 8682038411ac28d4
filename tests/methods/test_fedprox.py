"""FedProx: the proximal term pulls local weights toward the global ones."""

from __future__ import annotations

import numpy as np

from adamodal.methods.base import ClientContext
from adamodal.methods.fedprox import FedProx
from tests.conftest import with_config


def _drift(exp, mu: float) -> float:
    exp = with_config(exp, method="fedprox", **{"fedprox__mu": mu, "local_epochs": 5, "lr": 0.01})
    m = FedProx(exp.cfg, exp.spec, exp.infos())
    m.init_server()
    c = exp.clients[0]
    ctx = ClientContext(c.cid, c.group, c.modalities, c.train, c.val, c.test, m.spec, m.cfg, 0, m.device)
    reply = m.client_step("train", 1, ctx, m.configure("train", 1, [0])[0])
    return float(sum(np.sum((reply.arrays[k] - m.global_params[k]) ** 2) for k in m.global_params))


def test_larger_mu_means_less_drift(small_experiment):
    assert _drift(small_experiment, 10.0) < 0.5 * _drift(small_experiment, 0.0)


def test_mu_zero_is_fedavg(small_experiment):
    exp = with_config(small_experiment, method="fedprox", fedprox__mu=0.0)
    m = FedProx(exp.cfg, exp.spec, exp.infos())
    m.init_server()
    assert m.extra_loss(m.configure("train", 1, [0])[0]) is None
