"""Classification metrics for multi-class and multi-label tasks.

macro-AUC is one-vs-rest, averaged over the classes for which it is defined (the class has
both positive and negative rows): small federated test splits often miss a class, and a
metric that turns NaN whenever that happens would be useless per client.

Every round evaluates every client, so the metrics are computed with vectorised numpy
(AUC from tie-aware average ranks, F1 from per-class counts) rather than through
scikit-learn's per-call input validation, which dominated evaluation time; the tests check
both against scikit-learn on random inputs.

Pooled metrics (a modality group's clients taken together) are computed from *sufficient
statistics* that each client sums over its own rows (:func:`metric_stats`): per class, the
counts of positive and negative entries in each of :data:`SCORE_BINS` fixed score bins, and
per class the true-positive, false-positive and false-negative counts, plus the accuracy's
numerator and denominator. Statistics of several clients add up (:func:`sum_stats`), so the
server pools without ever seeing a row's score or label. F1 and accuracy from them are exact;
macro-AUC is the AUC of the binned scores (:func:`metrics_from_stats`), where two rows in the
same bin count as a tie. The bins are on the score's logit ``t = log(p / (1 - p))``: uniform
(width :data:`BIN_WIDTH`, 1/64) on ``g(t) = sign(t) * K * log(1 + |t| / K)`` with ``K = 8``,
over the whole logit range of a float32 probability (``[-104, 17]``). Probabilities crowd near
0 and 1, where bins uniform on ``p`` would lump most rows together; near the decision region
the bins are 1/64 logit wide, and they widen slowly towards the ends, where a saturated
model (one whose weights were swamped by DP noise, say) spreads its scores over tens of logit
units: bins that stopped at a logit of -16 tied most of such a model's rows and were off by
0.09 AUC.
"""

from __future__ import annotations

import math

import numpy as np

METRICS = ("macro_auc", "macro_f1", "micro_f1", "accuracy")

#: the binned logit range (a float32 probability's: its smallest positive value is ~1e-45,
#: its largest below 1 is 1 - 6e-8), the knee K of the compression and the bin width on g(t)
LOGIT_LOW, LOGIT_HIGH, LOGIT_KNEE, BIN_WIDTH = -104.0, 17.0, 8.0, 1 / 64


def _compress(t: np.ndarray | float) -> np.ndarray:
    """``g(t)``: the identity near 0, logarithmic beyond ``LOGIT_KNEE``."""
    return np.sign(t) * LOGIT_KNEE * np.log1p(np.abs(t) / LOGIT_KNEE)


def bin_count() -> int:
    """How many score bins per class (1,935 with the defaults)."""
    return int(np.ceil((_compress(LOGIT_HIGH) - _compress(LOGIT_LOW)) / BIN_WIDTH))


SCORE_BINS = bin_count()
#: the arrays of :func:`metric_stats`: what a client reports about its rows, summed over them
STATS = ("pos", "neg", "tp", "fp", "fn", "correct", "total", "n")


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


def score_bins(scores: np.ndarray) -> np.ndarray:
    """The bin of every score (same shape, int64), from its logit (module docstring)."""
    p = np.asarray(scores, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.log(p) - np.log1p(-p)
    t = np.clip(np.nan_to_num(t, nan=0.0), LOGIT_LOW, LOGIT_HIGH)
    idx = np.floor((_compress(t) - _compress(LOGIT_LOW)) / BIN_WIDTH).astype(np.int64)
    return np.clip(idx, 0, bin_count() - 1)


def _class_histograms(bins: np.ndarray, targets: np.ndarray, known: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Per class, how many positive and negative (known) entries fall in each bin: [C, B] each."""
    num_classes, nb = bins.shape[1], bin_count()
    flat = bins + np.arange(num_classes)[None, :] * nb  # one bin range per class
    keep = np.ones_like(targets) if known is None else known
    pos = np.bincount(flat[targets & keep], minlength=num_classes * nb).reshape(num_classes, nb)
    neg = np.bincount(flat[~targets & keep], minlength=num_classes * nb).reshape(num_classes, nb)
    return pos.astype(np.int32), neg.astype(np.int32)  # int32: half the bytes, ample per client


def metric_stats(scores: np.ndarray, y: np.ndarray, task: str, num_classes: int) -> dict[str, np.ndarray]:
    """What pooled metrics need of these rows, as counts that add up over clients: no array
    has a per-row axis (``pos``/``neg`` are [C, SCORE_BINS] int32, ``tp``/``fp``/``fn`` are
    [C], the rest 0-d; sums are int64). Same conventions as :func:`compute_metrics` (NaN labels are unknown entries)."""
    n = len(y)
    empty = np.zeros((num_classes, bin_count()), np.int32)
    out = {"pos": empty, "neg": empty.copy(), "tp": np.zeros(num_classes, np.int64),
           "fp": np.zeros(num_classes, np.int64), "fn": np.zeros(num_classes, np.int64),
           "correct": np.array(0, np.int64), "total": np.array(0, np.int64), "n": np.array(n, np.int64)}
    if n == 0:
        return out
    scores = np.asarray(scores)
    known = None
    if task == "multilabel":
        y = np.asarray(y, dtype=np.float32)
        unknown = np.isnan(y)
        known = ~unknown if unknown.any() else None
        targets = np.nan_to_num(y, nan=0.0).astype(bool)
        pred = scores >= 0.5
        hits = pred == targets
        out["correct"] = np.array(int(hits.sum() if known is None else hits[known].sum()), np.int64)
        out["total"] = np.array(int(hits.size if known is None else known.sum()), np.int64)
    else:
        y = np.asarray(y).astype(np.int64)
        targets = _one_hot(y, num_classes).astype(bool)
        arg = scores.argmax(axis=1)
        pred = _one_hot(arg, num_classes).astype(bool)
        out["correct"] = np.array(int((arg == y).sum()), np.int64)
        out["total"] = np.array(n, np.int64)
    t, p = (targets, pred) if known is None else (targets & known, pred & known)
    out["tp"] = (t & p).sum(axis=0).astype(np.int64)
    out["fp"] = (~t & p).sum(axis=0).astype(np.int64)
    out["fn"] = (t & ~p).sum(axis=0).astype(np.int64)
    out["pos"], out["neg"] = _class_histograms(score_bins(scores), targets, known)
    return out


def stats_problem(stats: dict[str, np.ndarray], num_classes: int) -> str | None:
    """Why ``stats`` cannot be a :func:`metric_stats` result for ``num_classes`` classes (a
    missing array, a shape, a negative or non-integer count), or None: a client's report is
    checked before it is summed with the others."""
    shapes = {"pos": (num_classes, bin_count()), "neg": (num_classes, bin_count()),
              "tp": (num_classes,), "fp": (num_classes,), "fn": (num_classes,)}
    for k in STATS:
        if k not in stats:
            return f"no {k!r}"
        a = np.asarray(stats[k])
        if a.shape != shapes.get(k, ()):
            return f"{k!r} has shape {a.shape}, expected {shapes.get(k, ())}"
        if a.dtype.kind not in "iu" or (a.size and a.min() < 0):
            return f"{k!r} is not a non-negative integer count"
    return None


def sum_stats(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The statistics of the union of the parts' rows (element-wise sums)."""
    if not parts:
        raise ValueError("sum_stats needs at least one part")
    return {k: np.sum([np.asarray(p[k], dtype=np.int64) for p in parts], axis=0) for k in STATS}


def binned_macro_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Mean one-vs-rest AUC over the classes with both positives and negatives (NaN if none),
    from per-class bin counts: a pair in the same bin counts one half, like a tie."""
    pos, neg = np.asarray(pos, np.float64), np.asarray(neg, np.float64)
    n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
    defined = (n_pos > 0) & (n_neg > 0)
    if not defined.any():
        return float("nan")
    below = np.cumsum(neg, axis=1) - neg  # negatives in lower bins
    wins = (pos * (below + 0.5 * neg)).sum(axis=1)
    return float((wins[defined] / (n_pos[defined] * n_neg[defined])).mean())


def metrics_from_stats(stats: dict[str, np.ndarray], task: str) -> dict[str, float]:
    """:func:`compute_metrics` from (summed) :func:`metric_stats`: F1 and accuracy exactly,
    macro-AUC from the binned scores."""
    n = int(stats["n"])
    if n == 0:
        return {m: float("nan") for m in METRICS} | {"n": 0}
    tp, fp, fn = (np.asarray(stats[k], np.float64) for k in ("tp", "fp", "fn"))
    denom = 2 * tp + fp + fn
    per_class = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    # multi-class: scikit-learn's label set, the classes in the truth or the predictions
    columns = np.arange(len(tp)) if task == "multilabel" else np.flatnonzero((tp + fn > 0) | (tp + fp > 0))
    d = 2 * tp.sum() + fp.sum() + fn.sum()
    total = int(stats["total"])
    return {
        "macro_auc": binned_macro_auc(stats["pos"], stats["neg"]),
        "macro_f1": float(per_class[columns].mean()) if len(columns) else 0.0,
        "micro_f1": float(2 * tp.sum() / d) if d > 0 else 0.0,
        "accuracy": float(int(stats["correct"]) / total) if total > 0 else float("nan"),
        "n": n,
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
