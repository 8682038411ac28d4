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

Neighbouring data sets differ by one whole client (add/remove; a client that is absent
contributes the zero update), so the L2 sensitivity of one clipped update is ``clip``. The
epsilon comes from Opacus' RDP accountant (Mironov 2017; Mironov, Talwar, Zhang 2019) at
``dp.delta``: ``rounds`` compositions of the sampled Gaussian mechanism with noise multiplier
``dp.noise``. In ``client`` mode the server sees who took part, so there is no amplification
by sampling (sample rate 1); in ``server`` mode the sample rate is ``participation`` (clients
are drawn as a fixed-size sample, which the accountant treats as Poisson sampling at that rate,
the usual approximation).
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


def dp_report(mechanism: str, noise_multiplier: float, clip: float, steps: int, delta: float,
              sample_rate: float = 1.0, **extra: Any) -> dict[str, Any]:
    """The ``privacy`` entry of ``summary.json``."""
    eps = gaussian_epsilon(noise_multiplier, steps, delta, sample_rate)
    return {
        "mechanism": mechanism, "accountant": "rdp (opacus)", "unit": "client",
        "epsilon": round(eps, 4) if math.isfinite(eps) else None, "delta": delta,
        "noise_multiplier": noise_multiplier, "clip": clip, "steps": steps, "sample_rate": sample_rate,
        **extra,
    }
