"""compute_metrics against scikit-learn on random inputs with ties, and edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score, f1_score, hamming_loss, roc_auc_score

from adamodal.metrics import METRICS, clean, compute_metrics, macro_auc

CASES = settings(max_examples=60, deadline=None)


def _tied_scores(rng: np.random.Generator, n: int, c: int, levels: int) -> np.ndarray:
    """Scores on a coarse grid so that ties are frequent (within and across classes)."""
    return (rng.integers(0, levels, (n, c)) / (levels - 1)).astype(np.float32)


def _sk_macro_auc(targets: np.ndarray, scores: np.ndarray) -> float:
    aucs = [
        roc_auc_score(targets[:, j], scores[:, j])
        for j in range(targets.shape[1])
        if 0 < targets[:, j].sum() < len(targets)
    ]
    return float(np.mean(aucs)) if aucs else float("nan")


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


@CASES
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 60),
    c=st.integers(2, 7),
    levels=st.integers(2, 6),
)
def test_multiclass_matches_sklearn(seed: int, n: int, c: int, levels: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    scores = _tied_scores(rng, n, c, levels)
    m = compute_metrics(scores, y, "multiclass")
    pred = scores.argmax(axis=1)
    onehot = np.eye(c, dtype=int)[y]
    assert m["n"] == n
    assert _same(m["macro_auc"], _sk_macro_auc(onehot, scores))
    assert _same(m["macro_f1"], f1_score(y, pred, average="macro", zero_division=0))
    assert _same(m["micro_f1"], f1_score(y, pred, average="micro", zero_division=0))
    assert _same(m["accuracy"], accuracy_score(y, pred))


@CASES
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 60),
    c=st.integers(2, 7),  # one column is "binary", not multi-label, to scikit-learn
    levels=st.integers(2, 6),
    density=st.floats(0.05, 0.95),
)
def test_multilabel_matches_sklearn(seed: int, n: int, c: int, levels: int, density: float) -> None:
    rng = np.random.default_rng(seed)
    y = (rng.random((n, c)) < density).astype(np.float32)
    scores = _tied_scores(rng, n, c, levels)
    m = compute_metrics(scores, y, "multilabel")
    pred = (scores >= 0.5).astype(int)
    yi = y.astype(int)
    assert m["n"] == n
    assert _same(m["macro_auc"], _sk_macro_auc(yi, scores))
    assert _same(m["macro_f1"], f1_score(yi, pred, average="macro", zero_division=0))
    assert _same(m["micro_f1"], f1_score(yi, pred, average="micro", zero_division=0))
    assert _same(m["accuracy"], 1 - hamming_loss(yi, pred))  # per-label accuracy


def test_macro_f1_uses_sklearn_label_set() -> None:
    # class 3 is neither true nor predicted: it must not count as a zero in the macro mean
    y = np.array([0, 0, 1, 2, 2])
    scores = np.eye(4)[[0, 1, 1, 2, 0]]
    m = compute_metrics(scores, y, "multiclass")
    assert math.isclose(m["macro_f1"], f1_score(y, scores.argmax(1), average="macro"))
    assert math.isclose(m["macro_f1"], (1 / 2 + 2 / 3 + 2 / 3) / 3)


@pytest.mark.parametrize("task", ["multiclass", "multilabel"])
def test_perfect_and_reversed(task: str) -> None:
    rng = np.random.default_rng(0)
    if task == "multiclass":
        y = np.arange(40) % 4
        target = np.eye(4)[y]
    else:
        target = (rng.random((40, 4)) < 0.5).astype(np.float32)
        target[0], target[1] = 1, 0  # every column has both values
        y = target
    perfect = 0.1 + 0.8 * target + 0.05 * rng.random(target.shape)
    m = compute_metrics(perfect, y, task)
    assert m["macro_auc"] == 1.0 and m["accuracy"] == 1.0
    assert m["macro_f1"] == 1.0 and m["micro_f1"] == 1.0
    rev = compute_metrics(1 - perfect, y, task)
    assert rev["macro_auc"] == 0.0
    assert rev["accuracy"] < 0.5


def test_class_absent_from_truth_is_skipped() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 50)  # class 3 never occurs
    scores = rng.random((50, 4))
    m = compute_metrics(scores, y, "multiclass")
    assert not math.isnan(m["macro_auc"])
    expected = np.mean([roc_auc_score(y == j, scores[:, j]) for j in range(3)])
    assert math.isclose(m["macro_auc"], expected)
    # multilabel: an all-zero and an all-one column are both undefined, both skipped
    t = (rng.random((30, 3)) < 0.5).astype(int)
    t[:, 0], t[:, 2] = 0, 1
    s = rng.random((30, 3))
    auc = compute_metrics(s, t, "multilabel")["macro_auc"]
    assert math.isclose(auc, roc_auc_score(t[:, 1], s[:, 1]))


def test_single_class_truth_has_no_auc() -> None:
    m = compute_metrics(np.array([[0.9, 0.1], [0.8, 0.2]]), np.array([0, 0]), "multiclass")
    assert math.isnan(m["macro_auc"]) and m["accuracy"] == 1.0
    assert math.isnan(macro_auc(np.zeros((3, 2)), np.random.default_rng(0).random((3, 2))))


@pytest.mark.parametrize("task", ["multiclass", "multilabel"])
def test_empty_input(task: str) -> None:
    y = np.zeros((0,), np.int64) if task == "multiclass" else np.zeros((0, 3), np.float32)
    m = compute_metrics(np.zeros((0, 3), np.float32), y, task)
    assert m["n"] == 0
    assert set(m) == {*METRICS, "n"}
    assert all(math.isnan(m[k]) for k in METRICS)


def test_clean_recursive() -> None:
    value = {
        "a": [np.float32("nan"), 1.5, {"b": float("inf"), "c": np.float64(-np.inf)}],
        "d": (np.int64(3), np.float64(0.25), "x", None, True),
        "e": float("nan"),
    }
    out = clean(value)
    assert out == {
        "a": [None, 1.5, {"b": None, "c": None}], "d": [3, 0.25, "x", None, True], "e": None,
    }
    assert type(out["d"][0]) is int and type(out["d"][1]) is float
    assert out["d"][4] is True
    m = clean(compute_metrics(np.zeros((0, 2)), np.zeros(0, np.int64), "multiclass"))
    assert m == {"macro_auc": None, "macro_f1": None, "micro_f1": None, "accuracy": None, "n": 0}


@CASES
@given(seed=st.integers(0, 10_000), n=st.integers(2, 50), c=st.integers(2, 6))
def test_multilabel_unknown_entries_are_left_out(seed: int, n: int, c: int) -> None:
    """NaN targets (uncertain findings, ``ignore`` policy) count in no metric: the result equals
    scikit-learn's on the known entries only, column by column for AUC."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n, c)) < 0.4).astype(np.float32)
    unknown = rng.random((n, c)) < 0.3
    y[unknown] = np.nan
    scores = _tied_scores(rng, n, c, 5)
    m = compute_metrics(scores, y, "multilabel")
    known = ~unknown
    aucs = [roc_auc_score(y[known[:, j], j], scores[known[:, j], j]) for j in range(c)
            if 0 < np.nansum(y[known[:, j], j]) < known[:, j].sum()]
    assert _same(m["macro_auc"], float(np.mean(aucs)) if aucs else float("nan"))
    pred = scores >= 0.5
    yt = np.nan_to_num(y).astype(bool)
    acc = (pred == yt)[known].mean() if known.any() else float("nan")
    assert _same(m["accuracy"], acc)
    tp = (yt & pred & known).sum()
    fp = (~yt & pred & known).sum()
    fn = (yt & ~pred & known).sum()
    assert _same(m["micro_f1"], 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)


def test_unknown_entries_change_nothing_when_absent() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random((30, 4)) < 0.5).astype(np.float32)
    scores = rng.random((30, 4))
    plain = compute_metrics(scores, y, "multilabel")
    y2 = np.vstack([y, np.full((5, 4), np.nan, np.float32)])  # five rows entirely unknown
    masked = compute_metrics(np.vstack([scores, rng.random((5, 4))]), y2, "multilabel")
    assert all(math.isclose(plain[k], masked[k]) for k in METRICS)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**16), n=st.integers(0, 50), c=st.integers(1, 5), levels=st.sampled_from([2, 5, 0]),
       nan=st.booleans())
def test_average_ranks_equal_scipys(seed: int, n: int, c: int, levels: int, nan: bool) -> None:
    """The numpy ranks are SciPy's ``rankdata`` average ranks exactly, ties and NaN columns included."""
    from scipy.stats import rankdata

    from adamodal.metrics import average_ranks

    rng = np.random.default_rng(seed)
    a = rng.random((n, c)) if levels == 0 else rng.integers(0, levels, (n, c)) / levels
    if nan and n:
        a[rng.integers(0, n), rng.integers(0, c)] = np.nan
    for x in (a, a.astype(np.float32)):
        assert np.array_equal(average_ranks(x), rankdata(x, axis=0), equal_nan=True)
