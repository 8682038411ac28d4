"""central: pooled once, trained on the server; the only method that moves raw rows."""

from __future__ import annotations

from adamodal.runtime.simulator import Simulator
from tests.conftest import with_config


def test_pools_every_client_once_and_learns(small_experiment, tmp_path):
    sim = Simulator(with_config(small_experiment, method="central", participation=0.4), tmp_path, progress=False)
    summary = sim.run()
    assert sorted(sim.method.pool) == [0, 1, 2, 3, 4]  # everybody, despite participation
    rows = sum(len(c.train) for c in small_experiment.clients)
    assert sum(len(t) for t in sim.method.pool.values()) == rows
    assert summary["bytes_down"] == 0 and summary["bytes_up"] > rows * 4 * 1280  # image features moved
    assert summary["test"]["both"]["macro_auc"] > 0.8
    assert sim.method.moves_raw_data
