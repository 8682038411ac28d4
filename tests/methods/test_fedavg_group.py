"""fedavg_group: each modality group is its own federation."""

from __future__ import annotations

import numpy as np

from adamodal.methods.base import Message
from adamodal.methods.fedavg_group import FedAvgGroup
from tests.conftest import with_config


def test_groups_never_mix(small_experiment):
    exp = with_config(small_experiment, method="fedavg_group")
    m = FedAvgGroup(exp.cfg, exp.spec, exp.infos())
    m.init_server()
    groups = {c.cid: c.group for c in exp.infos()}  # 0-2 multimodal, 3 image_only, 4 text_only
    replies = {}
    for cid in groups:
        arrays = {k: np.full_like(v, float(cid)) for k, v in m.params_for(cid).items()}
        replies[cid] = Message(arrays, {"num_examples": 1})
    m.aggregate("train", 1, replies)
    w = "classifier.weight"
    np.testing.assert_allclose(m.params_for(0)[w], 1.0)  # mean of clients 0, 1, 2
    np.testing.assert_allclose(m.params_for(3)[w], 3.0)  # image-only alone
    np.testing.assert_allclose(m.params_for(4)[w], 4.0)  # text-only alone
    assert m.global_model() is None
