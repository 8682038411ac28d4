"""local: clients keep their own model between rounds and exchange nothing."""

from __future__ import annotations

import numpy as np

from adamodal.engine.simulator import Simulator
from tests.conftest import with_config


def test_state_persists_and_differs_between_clients(small_experiment, tmp_path):
    sim = Simulator(with_config(small_experiment, method="local", rounds=1), tmp_path, progress=False)
    sim.run()
    states = sim.clients.state()
    assert set(states) == {0, 1, 2, 3, 4}
    w = "classifier.weight"
    assert not np.array_equal(states[0][w], states[1][w])
    assert sim.method.global_model() is None
