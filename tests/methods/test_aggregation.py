"""Robust aggregation (aggregation=median|trimmed:beta): one poisoned client wrecks the mean,
not the median or the trimmed mean."""

from __future__ import annotations

import numpy as np
import pytest

from adamodal.config import resolve
from adamodal.errors import ConfigError
from adamodal.methods.base import aggregate_arrays, parse_aggregation
from adamodal.runtime.simulator import Simulator
from tests.conftest import SMALL, with_config


def test_rules_by_hand():
    ups = [{"w": np.array([1.0, 10.0], np.float32), "n": np.array(3)} for _ in range(4)]
    ups[1] = {"w": np.array([2.0, 11.0], np.float32), "n": np.array(5)}
    ups.append({"w": np.array([1e6, -1e6], np.float32), "n": np.array(1000)})  # the attacker
    w = [1, 1, 1, 1, 1]
    mean = aggregate_arrays(ups, w, "mean")["w"]
    median = aggregate_arrays(ups, w, "median")["w"]
    trimmed = aggregate_arrays(ups, w, "trimmed:0.2")["w"]  # drops 1 of 5 at each end
    assert abs(mean[0]) > 1e5
    np.testing.assert_allclose(median, [1.0, 10.0])
    np.testing.assert_allclose(trimmed, [(1 + 1 + 2) / 3, 10.0], rtol=1e-6)  # -1e6 and 11 trimmed
    assert aggregate_arrays(ups, w, "median")["n"].dtype == ups[0]["n"].dtype
    # trimmed:0 is the plain (unweighted) mean
    np.testing.assert_allclose(aggregate_arrays(ups[:4], w[:4], "trimmed:0")["w"], [1.25, 10.25])


def test_rule_parsing_and_config():
    assert parse_aggregation("trimmed:0.1") == ("trimmed", 0.1)
    for bad in ("max", "trimmed:0.5", "trimmed:x", "trimmed:-0.1"):
        with pytest.raises(ValueError):
            parse_aggregation(bad)
        with pytest.raises(ConfigError, match="aggregation"):
            resolve({}, {**SMALL, "aggregation": bad})
    assert resolve({}, {**SMALL, "aggregation": "median"})["aggregation"] == "median"


@pytest.mark.slow
def test_one_poisoned_client_wrecks_mean_but_not_median(small_experiment, tmp_path):
    """Client 1 sends its trained weights times -20 (finite, right shapes; the norm bound is
    off so that only the aggregation rule stands between it and the model)."""
    aucs = {}
    for rule in ("mean", "median", "trimmed:0.2"):
        exp = with_config(small_experiment, method="fedavg", rounds=2, aggregation=rule, max_update_norm=0.0)
        sim = Simulator(exp, tmp_path / rule.replace(":", "_"), progress=False)
        original = sim.method.client_step

        def client_step(phase, rnd, ctx, msg, original=original):
            reply = original(phase, rnd, ctx, msg)
            if ctx.cid == 1:
                reply.arrays = {k: v * -20 if v.dtype.kind == "f" else v for k, v in reply.arrays.items()}
            return reply

        sim.method.client_step = client_step
        summary = sim.run()
        assert summary["dropped"] == []  # nothing was rejected: the rule alone decides
        aucs[rule] = summary["test"]["both"]["macro_auc"]
    assert aucs["mean"] < 0.75 and aucs["median"] - aucs["mean"] > 0.2, aucs  # measured 0.66 vs 0.97
    assert aucs["median"] > 0.9 and aucs["trimmed:0.2"] > 0.9, aucs
