"""Classification metrics for multi-class and multi-label tasks.

macro-AUC is one-vs-rest, averaged over the classes for which it is defined (the class has
both positive and negative rows): small federated test splits often miss a class, and a
metric that turns NaN whenever that happens would be useless per client.

Every round evaluates every client, so the metrics are computed with vectorised numpy
(AUC from tie-aware average ranks, F1 from per-class counts) rather than through
scikit-learn's per-call input validation, which dominated evaluation time; the tests check
both against scikit-learn on random inputs.
"""

from __future__ import annotations

import math

import numpy as np

METRICS = ("macro_auc", "macro_f1", "micro_f1", "accuracy")


def _one_hot(y: np.ndarray, num_classes: int) -> np.ndarray:
    out = np.zeros((len(y), num_classes), dtype=np.int64)
    out[np.arange(len(y)), y] = 1
    return out


def macro_auc(targets: np.ndarray, scores: np.ndarray, known: np.ndarray | None = None) -> float:
    """Mean one-vs-rest ROC-AUC over the columns where both classes occur (NaN if none).

    ``known`` (``[n, C]`` bool) marks the entries whose truth is known; the others (uncertain
    findings under the ``ignore`` policy) take no part in their column's AUC.
    """
    targets = np.asarray(targets, dtype=bool)
    if known is not None and not known.all():
        return _masked_macro_auc(targets, np.asarray(scores), known)
    n_pos = targets.sum(axis=0).astype(np.float64)
    n_neg = len(targets) - n_pos
    defined = (n_pos > 0) & (n_neg > 0)
    if not defined.any():
        return float("nan")
    ranks = average_ranks(np.asarray(scores))
    rank_sum = (ranks * targets).sum(axis=0)
    auc = (rank_sum[defined] - n_pos[defined] * (n_pos[defined] + 1) / 2) / (n_pos[defined] * n_neg[defined])
    return float(auc.mean())


def average_ranks(scores: np.ndarray) -> np.ndarray:
    """1-based ranks of each column, tied values sharing their average rank: the ranks
    ``scipy.stats.rankdata(scores, axis=0)`` gives, in numpy alone (importing ``scipy.stats``
    costs one to two seconds of every run's start-up). A column holding NaN is all NaN, as there."""
    a = scores.reshape(len(scores), -1) if scores.ndim != 2 else scores
    n = len(a)
    order = np.argsort(a, axis=0, kind="stable")
    s = np.take_along_axis(a, order, axis=0)
    pos = np.broadcast_to(np.arange(n, dtype=np.int64)[:, None], s.shape)
    first = np.ones(s.shape, bool)  # where a run of equal values starts ...
    first[1:] = s[1:] != s[:-1]
    last = np.ones(s.shape, bool)  # ... and where it ends
    last[:-1] = first[1:]
    start = np.maximum.accumulate(np.where(first, pos, 0), axis=0)
    end = np.minimum.accumulate(np.where(last, pos, n - 1)[::-1], axis=0)[::-1]
    ranks = np.empty(s.shape, np.float64)
    np.put_along_axis(ranks, order, (start + end) / 2.0 + 1.0, axis=0)
    if np.issubdtype(a.dtype, np.floating):
        ranks[:, np.isnan(a).any(axis=0)] = np.nan
    return ranks.reshape(scores.shape)


def _masked_macro_auc(targets: np.ndarray, scores: np.ndarray, known: np.ndarray) -> float:
    """Column by column over the known entries only (the rare path: some truth is unknown)."""
    aucs = []
    for j in range(targets.shape[1]):
        rows = known[:, j]
        auc = macro_auc(targets[rows, j : j + 1], scores[rows, j : j + 1])
        if not math.isnan(auc):
            aucs.append(auc)
    return float(np.mean(aucs)) if aucs else float("nan")


def _f1(
    targets: np.ndarray, pred: np.ndarray, columns: np.ndarray, known: np.ndarray | None = None
) -> tuple[float, float]:
    """(macro-F1 over ``columns``, micro-F1) from 0/1 matrices; 0 where a class has no support.
    Entries outside ``known`` count as neither right nor wrong."""
    if known is not None:
        targets, pred = targets & known, pred & known
    tp = (targets & pred).sum(axis=0).astype(np.float64)
    fp = (~targets & pred).sum(axis=0).astype(np.float64)
    fn = (targets & ~pred).sum(axis=0).astype(np.float64)
    denom = 2 * tp + fp + fn
    per_class = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    macro = float(per_class[columns].mean()) if len(columns) else 0.0
    d = 2 * tp.sum() + fp.sum() + fn.sum()
    micro = float(2 * tp.sum() / d) if d > 0 else 0.0
    return macro, micro


def compute_metrics(scores: np.ndarray, y: np.ndarray, task: str) -> dict[str, float]:
    """``scores`` are probabilities ``[n, C]``; ``y`` is ``[n]`` class ids or ``[n, C]`` 0/1,
    where NaN marks an unknown multi-label entry that every metric leaves out."""
    if len(y) == 0:
        return {m: float("nan") for m in METRICS} | {"n": 0}
    num_classes = scores.shape[1]
    known = None
    if task == "multilabel":
        y = np.asarray(y, dtype=np.float32)
        unknown = np.isnan(y)  # uncertain findings under the ``ignore`` policy
        known = ~unknown if unknown.any() else None
        targets = np.nan_to_num(y, nan=0.0).astype(bool)
        pred = scores >= 0.5
        hits = pred == targets
        # per-label accuracy over the known entries
        accuracy = float(hits[known].mean()) if known is not None and known.any() else (
            float(hits.mean()) if known is None else float("nan"))
        macro_f1, micro_f1 = _f1(targets, pred, np.arange(num_classes), known)
    else:
        y = np.asarray(y).astype(np.int64)
        targets = _one_hot(y, num_classes).astype(bool)
        pred = scores.argmax(axis=1)
        accuracy = float((pred == y).mean())
        present = np.union1d(np.unique(y), np.unique(pred))  # scikit-learn's label set for macro-F1
        macro_f1, micro_f1 = _f1(targets, _one_hot(pred, num_classes).astype(bool), present)
    return {
        "macro_auc": macro_auc(targets, scores, known),
        "macro_f1": float(macro_f1),
        "micro_f1": float(micro_f1),
        "accuracy": accuracy,
        "n": int(len(y)),
    }


def clean(value):
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python, recursively."""
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return None if math.isnan(v) or math.isinf(v) else v
    if isinstance(value, np.integer):
        return int(value)
    return value
