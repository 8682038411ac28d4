"""The server's side of stage 4's global update, and the round's pooled diagnostics.

Kept apart from the phase routing in ``method`` because both are plain functions of what the
clients sent: the weights each client's parameters get in the average, and the clients'
diagnostic scalars pooled by the rows they cover.
"""

from __future__ import annotations

import numpy as np

from adamodal.methods.base import Message

#: client scalars the server averages into the round's metrics, weighted by the rows they cover;
#: ``val_auc`` (the clients' validation macro-AUC) is what defaults are chosen on, never the test views
DIAGNOSTICS = {"gate_mean": "gate_rows", "impute_cos": "impute_rows", "impute_cos_shuffled": "impute_rows",
               "val_auc": "val_rows"}


def pooled_diagnostics(replies: dict[int, Message]) -> dict[str, float]:
    """The clients' diagnostic scalars averaged, each weighted by the rows it covers."""
    out = {}
    for key, weight_key in DIAGNOSTICS.items():
        pairs = [(float(r.scalars[key]), float(r.scalars.get(weight_key, 1.0)))
                 for r in replies.values() if key in r.scalars and np.isfinite(float(r.scalars[key]))]
        if pairs and sum(w for _, w in pairs) > 0:
            out[key] = sum(v * w for v, w in pairs) / sum(w for _, w in pairs)
    return out


def contribution_weights(n: np.ndarray, scores: np.ndarray, mode: str, tau_c: float) -> np.ndarray:
    """``w_i ∝ n_i * softmax(score_i / tau_c)`` (``mode="score"``) or ``w_i ∝ n_i``."""
    n = np.asarray(n, dtype=np.float64)
    if mode == "size":
        return n / n.sum()
    s = np.asarray(scores, dtype=np.float64) / tau_c
    soft = np.exp(s - s.max())
    w = n * soft / soft.sum()
    return w / w.sum()
