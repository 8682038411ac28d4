"""Differential privacy: the Gaussian mechanism on what clients upload, and its epsilon.

Two mechanisms use it:

* client-level DP of parameter uploads (FedAvg, FedProx, FedAvg-group; ``dp.*`` keys): each
  client clips its model update ``w_local - w_global`` to L2 norm ``dp.clip``. With
  ``dp.mode=client`` the client adds N(0, (dp.noise * dp.clip)^2) to every coordinate before
  the update leaves it, so every upload is private even towards the server. With
  ``dp.mode=server`` (DP-FedAvg, McMahan et al. 2018: a trusted aggregator) the server averages
  the clipped updates with equal weights and adds N(0, (dp.noise * dp.clip / m)^2) to the mean
  of the m updates; what is private is every model the server releases.
* AdaModal-Fed's summaries (``adamodal.dp_sigma``, ``adamodal.dp_clip``): every centroid is
  clipped and noised on the client.

Neighbouring data sets differ by one whole client (client-level DP), in one of two senses,
named in every report as ``adjacency``:

* ``replace`` (replace-one, the default): the client is there either way, with any data in
  place of its own. This is the sense that fits what the server sees: every upload arrives
  under its client's identity, in a fixed consortium, so "was this client taking part" is no
  secret worth a guarantee; what its data was is. Two clipped updates of norm at most ``clip``
  can differ by ``2 * clip``, so the L2 sensitivity is ``2 * clip`` and the accountant runs
  with the noise multiplier halved (``noise_multiplier / 2``). The accountant's amplification
  by sampling (Opacus) is an add/remove analysis, so none is claimed here (sample rate 1).
* ``add_remove``: the client is absent from one data set and contributes the zero update, so
  the sensitivity is ``clip``; amplification by sampling at ``participation`` applies in
  ``dp.mode=server``. It answers a weaker question (membership in a consortium the server
  knows), and gives about half the epsilon.

The epsilon comes from Opacus' RDP accountant (Mironov 2017; Mironov, Talwar, Zhang 2019) at
``dp.delta``: ``rounds`` compositions of the (sampled) Gaussian mechanism. In ``client`` mode the
server sees who took part, so there is no amplification by sampling in either sense; in
``server`` mode under ``add_remove`` the sample rate is ``participation`` (clients are drawn as
a fixed-size sample, which the accountant treats as Poisson sampling at that rate, the usual
approximation). Every report lists under ``unnoised`` what else leaves a client without noise
(counts, losses, evaluation statistics, ...): the epsilon says nothing about those.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def clip_update(update: dict[str, np.ndarray], clip: float) -> tuple[dict[str, np.ndarray], float]:
    """Scale ``update`` (float arrays) so its global L2 norm is at most ``clip``; returns the
    clipped update and its norm before clipping."""
    keys = [k for k, v in update.items() if np.asarray(v).dtype.kind == "f"]
    norm = math.sqrt(sum(float(np.sum(np.square(update[k], dtype=np.float64))) for k in keys))
    scale = min(1.0, clip / norm) if norm > 0 else 1.0
    out = dict(update)
    for k in keys:
        out[k] = (update[k].astype(np.float64) * scale).astype(update[k].dtype)
    return out, norm


def add_noise(update: dict[str, np.ndarray], std: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Add N(0, std^2) to every coordinate of the float arrays of ``update`` (a copy)."""
    out = dict(update)
    if std <= 0:
        return out
    for k, v in update.items():
        if np.asarray(v).dtype.kind == "f":
            out[k] = (v.astype(np.float64) + rng.normal(0.0, std, size=v.shape)).astype(v.dtype)
    return out


def gaussian_epsilon(noise_multiplier: float, steps: int, delta: float, sample_rate: float = 1.0) -> float:
    """Epsilon of ``steps`` compositions of the (sampled) Gaussian mechanism at ``delta``,
    from Opacus' RDP accountant. ``inf`` without noise, 0 for zero steps."""
    if steps <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

    orders = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [128, 256, 512]
    rdp = compute_rdp(q=float(sample_rate), noise_multiplier=float(noise_multiplier), steps=int(steps), orders=orders)
    eps, _ = get_privacy_spent(orders=orders, rdp=rdp, delta=float(delta))
    return float(eps)


ADJACENCIES = ("replace", "add_remove")


def accounting(noise_multiplier: float, sample_rate: float, adjacency: str) -> tuple[float, float]:
    """(noise multiplier, sample rate) the add/remove accountant is run with for a Gaussian
    mechanism of ``noise_multiplier`` (noise std over the clip) under ``adjacency``."""
    if adjacency == "replace":
        return noise_multiplier / 2.0, 1.0  # sensitivity 2 * clip; no amplification claimed
    if adjacency == "add_remove":
        return noise_multiplier, sample_rate
    raise ValueError(f"unknown adjacency {adjacency!r}; expected one of {', '.join(ADJACENCIES)}")


def dp_report(mechanism: str, noise_multiplier: float, clip: float, steps: int, delta: float,
              sample_rate: float = 1.0, *, adjacency: str = "replace", unnoised: list[str] | None = None,
              **extra: Any) -> dict[str, Any]:
    """The ``privacy`` entry of ``summary.json``: epsilon under ``adjacency``, with the
    sensitivity and the accountant's inputs it follows from, and what goes up un-noised."""
    z, q = accounting(noise_multiplier, sample_rate, adjacency)
    eps = gaussian_epsilon(z, steps, delta, q)
    return {
        "mechanism": mechanism, "accountant": "rdp (opacus)", "unit": "client", "adjacency": adjacency,
        "epsilon": round(eps, 4) if math.isfinite(eps) else None, "delta": delta,
        "noise_multiplier": noise_multiplier, "clip": clip,
        "sensitivity": clip * (2.0 if adjacency == "replace" else 1.0),
        "accountant_noise_multiplier": z, "steps": steps, "sample_rate": q,
        "unnoised": list(unnoised or []),
        **extra,
    }
