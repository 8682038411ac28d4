"""local: clients keep their own model between rounds and exchange nothing."""

from __future__ import annotations

import json

import numpy as np

from adamodal.runtime.simulator import Simulator
from tests.conftest import with_config


def test_state_persists_and_differs_between_clients_and_each_learns(small_experiment, tmp_path):
    sim = Simulator(with_config(small_experiment, method="local", rounds=1), tmp_path, progress=False)
    sim.run()
    # each client's own-test macro-AUC, untrained (round 0) and after one round of local
    # training: untrained 0.33-0.53, trained 0.85-0.99, the smallest gain per client 0.45,
    # 0.44, 0.41 (seeds 0-2)
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    before = {r["client"]: r["macro_auc"] for r in records if r["round"] == 0}
    after = {r["client"]: r["macro_auc"] for r in records if r["round"] == 1}
    assert set(after) == set(before) == {0, 1, 2, 3, 4}
    for cid in after:
        assert after[cid] > 0.8 and after[cid] > before[cid] + 0.3, (cid, before[cid], after[cid])
    states = sim.clients.state()
    assert set(states) == {0, 1, 2, 3, 4}
    w = "classifier.weight"
    assert not np.array_equal(states[0][w], states[1][w])
    assert sim.method.global_model() is None
