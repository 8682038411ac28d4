"""Pooled metrics from summed per-client statistics (no row leaves a client): F1 and accuracy
exactly as from the rows, macro-AUC from binned scores within 0.002 of the exact AUC, for
multi-class and multi-label tasks, on the simulator's own tables too."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adamodal.kit.train import predict
from adamodal.metrics import (
    METRICS,
    SCORE_BINS,
    compute_metrics,
    metric_stats,
    metrics_from_stats,
    stats_problem,
    sum_stats,
)
from adamodal.runtime.simulator import Simulator
from tests.conftest import with_config

TOLERANCE = 0.002  # the documented bound on |binned - exact| macro-AUC


def _pooled(parts: list[tuple[np.ndarray, np.ndarray]], task: str, c: int) -> dict[str, float]:
    return metrics_from_stats(sum_stats([metric_stats(s, y, task, c) for s, y in parts]), task)


def _exact(parts: list[tuple[np.ndarray, np.ndarray]], task: str) -> dict[str, float]:
    return compute_metrics(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), task)


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return (e / e.sum(1, keepdims=True)).astype(np.float32)


def _multiclass(rng, n: int, c: int, margin: float):
    """A model's softmax outputs: the true class's logit raised by ``margin`` (x0.5-1.5)."""
    y = rng.integers(0, c, n)
    z = rng.normal(size=(n, c)) * rng.uniform(0.5, 3)
    z[np.arange(n), y] += margin * rng.uniform(0.5, 1.5, n)
    return _softmax(z), y


def _saturated(rng, n: int, c: int, scale: float, margin: float):
    """A model with huge weights (noise-swamped, say): logits of spread ``scale``, float32
    probabilities spread over tens of logit units, many of them tiny or exactly 0 or 1."""
    y = rng.integers(0, c, n)
    z = rng.normal(size=(n, c)) * scale
    z[np.arange(n), y] += margin * scale
    return _softmax(z), y


def _multilabel(rng, n: int, c: int, margin: float, unknown: float = 0.0):
    """Sigmoid outputs for findings of prevalence 2-40%, ``unknown`` of the entries NaN."""
    y = (rng.random((n, c)) < rng.uniform(0.02, 0.4, c)).astype(np.float32)
    z = rng.normal(size=(n, c)) * 2 - 2 + margin * (2 * y - 1)
    y[rng.random((n, c)) < unknown] = np.nan
    return (1 / (1 + np.exp(-z))).astype(np.float32), y


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), task=st.sampled_from(["multiclass", "multilabel"]),
       clients=st.integers(1, 5), c=st.integers(2, 6), levels=st.integers(2, 6))
def test_statistics_pool_to_the_metrics_of_the_rows(seed, task, clients, c, levels):
    """Scores on a coarse grid (many ties, every level in its own bin): pooled statistics give
    every metric of the concatenated rows exactly, AUC included; some clients have no rows."""
    rng = np.random.default_rng(seed)
    parts = []
    for _ in range(clients):
        n = int(rng.integers(0, 30))
        scores = (rng.integers(0, levels, (n, c)) / (levels - 1)).astype(np.float32)
        if task == "multiclass":
            y = rng.integers(0, c, n)
        else:
            y = (rng.random((n, c)) < 0.4).astype(np.float32)
            y[rng.random((n, c)) < 0.2] = np.nan  # unknown findings count nowhere
        parts.append((scores, y))
    pooled, exact = _pooled(parts, task, c), _exact(parts, task)
    assert pooled["n"] == exact["n"]
    for k in METRICS:
        assert _same(pooled[k], exact[k]), (k, pooled[k], exact[k])


@pytest.mark.parametrize("task", ["multiclass", "multilabel"])
def test_binned_macro_auc_is_within_tolerance_on_realistic_scores(task):
    """Models from near-chance to saturated (float32 probabilities of 1 and ~1e-30), 10 and 20
    classes, 300 to 4000 rows, pooled over clients with different models; F1 and accuracy exact."""
    worst = 0.0
    for seed in range(4):
        rng = np.random.default_rng(seed)
        for margin in (0.3, 1, 2, 4, 8, 16, 30):
            for n, c in ((300, 10), (4000, 20)):
                if task == "multiclass":
                    parts = [_multiclass(rng, n // 4, c, margin * s) for s in (0.5, 1, 1, 2)]
                else:
                    parts = [_multilabel(rng, n // 4, c, margin * s, unknown=0.1 * seed) for s in (0.5, 1, 1, 2)]
                pooled, exact = _pooled(parts, task, c), _exact(parts, task)
                worst = max(worst, abs(pooled["macro_auc"] - exact["macro_auc"]))
                for k in ("macro_f1", "micro_f1", "accuracy"):
                    assert _same(pooled[k], exact[k]), (k, margin, n)
    print(f"{task}: max |binned - exact| macro-AUC = {worst:.5f}")
    assert worst < TOLERANCE


def test_binned_macro_auc_is_within_tolerance_on_saturated_scores():
    """Scores of models whose logits spread over 5 to 200 units (as after DP noise): most
    probabilities far below 1e-7, which bins ending at a logit of -16 would all tie."""
    worst = 0.0
    for seed in range(3):
        rng = np.random.default_rng(seed)
        for scale in (5, 20, 50, 200):
            for margin in (0.0, 0.5, 2.0):
                parts = [_saturated(rng, 200, 9, scale, margin) for _ in range(2)]
                worst = max(worst, abs(_pooled(parts, "multiclass", 9)["macro_auc"]
                                       - _exact(parts, "multiclass")["macro_auc"]))
    print(f"saturated: max |binned - exact| macro-AUC = {worst:.5f}")
    assert worst < TOLERANCE


@pytest.mark.parametrize("width", [2.0, None])
def test_coarse_or_short_bins_would_not_be_within_tolerance(monkeypatch, width):
    """The binning matters (the tests can tell): bins 2 logit units wide miss on realistic
    scores, bins that end at a logit of -16 miss on saturated ones."""
    import adamodal.metrics as metrics

    rng = np.random.default_rng(0)
    if width is not None:
        monkeypatch.setattr(metrics, "BIN_WIDTH", width)
        parts = [_multiclass(rng, 2000, 10, 1.0)]
    else:
        monkeypatch.setattr(metrics, "LOGIT_LOW", -16.0)
        parts = [_saturated(rng, 400, 9, 50, 0.5)]
    assert abs(_pooled(parts, "multiclass", 10 if width else 9)["macro_auc"]
               - _exact(parts, "multiclass")["macro_auc"]) > TOLERANCE


def test_statistics_have_no_per_row_axis():
    rng = np.random.default_rng(1)
    shapes = {}
    for n in (0, 7, 500):
        scores, y = _multiclass(rng, n, 4, 2.0)
        stats = metric_stats(scores if n else np.zeros((0, 0), np.float32), y, "multiclass", 4)
        shapes[n] = {k: v.shape for k, v in stats.items()}
        assert int(stats["n"]) == n and int(stats["pos"].sum() + stats["neg"].sum()) == 4 * n
    assert shapes[0] == shapes[7] == shapes[500]
    assert shapes[7]["pos"] == (4, SCORE_BINS) and shapes[7]["tp"] == (4,) and shapes[7]["n"] == ()
    empty = metrics_from_stats(sum_stats([metric_stats(np.zeros((0, 0)), np.zeros(0), "multiclass", 4)]), "multiclass")
    assert empty["n"] == 0 and all(math.isnan(empty[k]) for k in METRICS)


@pytest.mark.parametrize("dp", [False, True], ids=["plain", "dp-noise"])
def test_the_simulators_group_tables_are_the_binned_metrics_of_the_rows(small_experiment, tmp_path, dp):
    """A real run: each group's pooled table is within tolerance of the metrics of its clients'
    concatenated rows (exact for F1 and accuracy), and per-client records are exact; also for
    a model swamped by DP noise (saturated scores)."""
    exp = with_config(small_experiment, method="fedavg", rounds=1, local_epochs=1, dp__noise=1.0 if dp else 0.0)
    sim = Simulator(exp, tmp_path, progress=False)
    summary = sim.run()
    task = exp.spec.task
    rows: dict[str, list] = {}
    server_rows: dict[str, list] = {}
    for c in exp.clients:
        model = sim.method.client_model(sim.clients.context(c.cid, 0), sim.method.eval_message(c.cid))
        own = (predict(model, c.test, task), c.test.y.numpy())
        record = next(r for r in sim.state.records if r.get("client") == c.cid and r["round"] == 1)
        assert _same(record["accuracy"], compute_metrics(*own, task)["accuracy"])
        rows.setdefault(c.group, []).append(own)
        view = exp.test_as_client[c.cid]
        server_rows.setdefault(c.group, []).append((predict(model, view, task), view.y.numpy()))
    gaps = []
    for table, source in ((summary["groups"], rows), (summary["groups_server_test"], server_rows)):
        for g, parts in source.items():
            exact = _exact(parts, task)
            assert table[g]["n"] == exact["n"] and table[g]["clients"] == len(parts)
            gaps.append(abs(table[g]["macro_auc"] - exact["macro_auc"]))
            assert gaps[-1] < TOLERANCE
            assert table[g]["accuracy"] == pytest.approx(exact["accuracy"], abs=1e-12)
            assert table[g]["macro_f1"] == pytest.approx(exact["macro_f1"], abs=1e-12)
    print(f"run: max |binned - exact| group macro-AUC = {max(gaps):.5f} over {len(gaps)} tables")


def test_a_malformed_report_is_named_and_left_out(small_experiment, tmp_path):
    """Statistics are checked before they are summed: a report with a wrong shape, a negative
    or fractional count or a missing array is dropped with the reason; the tables go on."""
    rng = np.random.default_rng(2)
    good = metric_stats(*_multiclass(rng, 30, 4, 2.0), "multiclass", 4)
    assert stats_problem(good, 4) is None
    assert "shape" in stats_problem(good, 5)
    assert "non-negative" in stats_problem({**good, "tp": good["tp"] - 100}, 4)
    assert "non-negative" in stats_problem({**good, "pos": good["pos"] + 0.5}, 4)
    assert stats_problem({k: v for k, v in good.items() if k != "n"}, 4) == "no 'n'"

    exp = with_config(small_experiment, method="fedavg", rounds=1, local_epochs=1)
    sim = Simulator(exp, tmp_path, progress=False)
    evaluate = sim.clients.evaluate

    def tampered(rnd, messages, server_tests):
        evals = evaluate(rnd, messages, server_tests)
        evals[1].server_stats["pos"] = evals[1].server_stats["pos"][:, :10]
        return evals

    sim.clients.evaluate = tampered
    summary = sim.run()
    assert [(d["round"], d["client"], d["phase"]) for d in summary["dropped"]] == [(0, 1, "evaluate"), (1, 1, "evaluate")]
    assert "'pos' has shape" in summary["dropped"][0]["reason"]
    group = exp.clients[1].group
    expected = sum(1 for c in exp.clients if c.group == group) - 1
    assert summary["groups"].get(group, {}).get("clients", 0) == expected
