"""The server's side of stage 4's global update, and the round's pooled diagnostics.

Kept apart from the phase routing in ``method`` because both are plain functions of what the
clients sent: the weights each client's parameters get in the average, and the clients'
diagnostic scalars pooled by the rows they cover.
"""

from __future__ import annotations

import numpy as np

from adamodal.kit.aggregation import aggregate_arrays
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


def global_update(reference: dict[str, np.ndarray], global_keys: dict[str, np.ndarray],
                  updates: list[dict[str, np.ndarray]], weights: np.ndarray, *, everyone: bool,
                  rule: str = "mean") -> dict[str, np.ndarray]:
    """The new value of every global part some client changed: ``updates`` are the clients'
    changes from ``reference`` (the model they started from) with ``weights``.

    ``everyone``: a client that did not send a part (it lacks the modality) counts with the
    weights it was sent, a change of zero (FedAvg's damping of a projection few clients
    train); otherwise a part is averaged over its senders only. Under the mean rule the
    result is ``reference + sum_i w_i * change_i / sum_i w_i``, so no client's weights are
    rebuilt; the robust rules (:func:`aggregate_arrays`) combine the weights themselves."""
    out: dict[str, np.ndarray] = {}
    for key, ref in reference.items():
        held = [(u[key], wi) for u, wi in zip(updates, weights, strict=True) if key in u]
        if not held or key not in global_keys:
            continue
        floating = np.issubdtype(ref.dtype, np.floating)
        if rule == "mean" and floating:
            total = float(np.sum(weights)) if everyone else float(sum(wi for _, wi in held))
            step = np.zeros(ref.shape, np.float32)
            for change, wi in held:
                step += np.float32(wi / total) * change
            out[key] = np.asarray(ref + step, np.float32)
            continue
        values = [(ref + d if floating else d, wi) for d, wi in held]
        if everyone:
            values += [(ref, wi) for u, wi in zip(updates, weights, strict=True) if key not in u]
        out[key] = aggregate_arrays([{key: a} for a, _ in values], [wi for _, wi in values], rule)[key]
    return out
