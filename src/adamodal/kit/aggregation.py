"""Aggregation rules: how the server combines client arrays.

They sit in the training kit, below the methods, because both a method's ``aggregate`` and the
configuration check (which only validates a rule's spelling) need them, and neither may import
the other.
"""

from __future__ import annotations

import numpy as np

#: robust aggregation rules accepted by :func:`aggregate_arrays` (``trimmed:<beta>`` too)
AGGREGATIONS: tuple[str, ...] = ("mean", "median", "trimmed:<beta>")


def weighted_average(updates: list[dict[str, np.ndarray]], weights: list[float]) -> dict[str, np.ndarray]:
    """sum_i w_i * u_i / sum_i w_i, key by key, in float64 for exactness; keeps input dtypes."""
    if not updates:
        raise ValueError("nothing to average")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("weights must sum to a positive number")
    out = {}
    for key, first in updates[0].items():
        acc = np.zeros(first.shape, dtype=np.float64)
        for u, w in zip(updates, weights, strict=True):
            acc += (w / total) * u[key].astype(np.float64)
        out[key] = acc.astype(first.dtype) if np.issubdtype(first.dtype, np.floating) else np.rint(acc).astype(first.dtype)
    return out


def parse_aggregation(rule: str) -> tuple[str, float]:
    """``mean`` | ``median`` | ``trimmed:<beta>`` (0 <= beta < 0.5) -> (kind, beta)."""
    rule = str(rule).strip()
    if rule in ("mean", "median"):
        return rule, 0.0
    if rule.startswith("trimmed:"):
        try:
            beta = float(rule.split(":", 1)[1])
        except ValueError:
            beta = -1.0
        if 0.0 <= beta < 0.5:
            return "trimmed", beta
    raise ValueError(f"aggregation must be mean, median or trimmed:<beta> with 0 <= beta < 0.5, got {rule!r}")


def aggregate_arrays(updates: list[dict[str, np.ndarray]], weights: list[float],
                     rule: str = "mean") -> dict[str, np.ndarray]:
    """Combine client arrays key by key under an aggregation rule.

    ``mean`` is :func:`weighted_average` (FedAvg). ``median`` (coordinate-wise median) and
    ``trimmed:beta`` (coordinate-wise mean after dropping the ``beta`` fraction of largest and
    of smallest values, :func:`scipy.stats.trim_mean`) are the robust rules of Yin et al.
    (2018): one client can move them only as far as the honest clients' spread allows, so a
    single poisoned update cannot drag the model away. They ignore the weights: a weight is a
    claim by the client, and a robust rule must not let one client claim to be everybody.
    """
    kind, beta = parse_aggregation(rule)
    if kind == "mean":
        return weighted_average(updates, weights)
    if not updates:
        raise ValueError("nothing to aggregate")
    from scipy.stats import trim_mean

    out = {}
    for key, first in updates[0].items():
        stack = np.stack([np.asarray(u[key], dtype=np.float64) for u in updates])
        acc = np.median(stack, axis=0) if kind == "median" else trim_mean(stack, beta, axis=0)
        out[key] = acc.astype(first.dtype) if np.issubdtype(first.dtype, np.floating) else np.rint(acc).astype(first.dtype)
    return out
