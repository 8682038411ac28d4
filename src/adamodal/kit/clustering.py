"""Clustering helpers of AdaModal-Fed: client summaries, weighted K-Means, Hungarian matching.

Clients summarise their representations as K-Means centroids with counts (AdaModal-Fed's
``summarize`` stage, which also keeps every centroid above a minimum row count); the server clusters
those centroids with the counts as sample weights (so a centroid that stands for 80 samples
pulls 80 times harder than one that stands for one), then pairs image clusters with text
clusters by the Hungarian algorithm on ``1 - cosine``.

K-Means is weighted k-means++ seeding followed by Lloyd iterations, in numpy. On the tiny
inputs of this setting (tens of rows per client) :class:`sklearn.cluster.KMeans` spends
~25 ms per call in input validation and thread-pool set-up, which at 20 clients x 2
modalities x 20 rounds would be a large share of a run; the tests check that this
implementation reaches scikit-learn's inertia and that a weight acts as repeated points.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import cache

import numpy as np
from threadpoolctl import ThreadpoolController


@dataclass
class KMeansResult:
    centers: np.ndarray  # [k, d]
    labels: np.ndarray  # [n]
    counts: np.ndarray  # [k] total weight per cluster
    inertia: float


@cache
def _blas() -> ThreadpoolController:
    return ThreadpoolController()


def single_threaded_blas() -> AbstractContextManager:
    """BLAS limited to one thread: these matrices are tiny (tens of rows), and a multi-threaded
    BLAS on a busy machine spends 10-50x longer synchronising threads than computing."""
    return _blas().limit(limits=1, user_api="blas")


def _kmeans_pp(x: np.ndarray, sq: np.ndarray, w: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Weighted k-means++ seeding: each next centre is drawn with probability proportional to
    weight x squared distance to the nearest centre chosen so far (stops early when every
    point already coincides with a centre)."""
    n = len(x)
    centers = np.empty((k, x.shape[1]))
    centers[0] = x[rng.choice(n, p=w / w.sum())]
    d2 = np.maximum(sq - 2 * x @ centers[0] + (centers[0] ** 2).sum(), 0.0)
    for j in range(1, k):
        p = w * d2
        total = p.sum()
        if total <= 1e-12:  # every point already is a centre: fewer distinct points than k
            return centers[:j]
        centers[j] = x[int(rng.choice(n, p=p / total))]
        d2 = np.minimum(d2, np.maximum(sq - 2 * x @ centers[j] + (centers[j] ** 2).sum(), 0.0))
    return centers


def weighted_kmeans(
    x: np.ndarray, k: int, weights: np.ndarray | None = None, *, seed: int = 0, n_init: int = 2,
    max_iter: int = 50, tol: float = 1e-6,
) -> KMeansResult:
    """Weighted K-Means (minimises sum_i w_i ||x_i - c_{l(i)}||^2); best of ``n_init`` runs
    of weighted k-means++ seeding followed by Lloyd iterations.

    ``k`` is capped by the number of distinct rows, so callers need not special-case tiny
    inputs. An empty cluster is re-seeded at the point currently worst explained.
    """
    with single_threaded_blas():
        return _weighted_kmeans(x, k, weights, seed, n_init, max_iter, tol)


def _weighted_kmeans(x: np.ndarray, k: int, weights: np.ndarray | None, seed: int, n_init: int,
                     max_iter: int, tol: float) -> KMeansResult:
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    if n == 0:
        raise ValueError("weighted_kmeans: no points")
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (n,) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError("weighted_kmeans: weights must be n non-negative numbers with a positive sum")
    k = int(max(1, min(k, int((w > 0).sum()))))
    rng = np.random.default_rng(seed)
    sq = (x**2).sum(1)
    rows = np.arange(n)
    best: KMeansResult | None = None
    for _ in range(max(1, n_init)):
        centers = _kmeans_pp(x, sq, w, k, rng)
        k = len(centers)
        for _it in range(max_iter):
            d2 = sq[:, None] - 2 * x @ centers.T + (centers**2).sum(1)[None, :]
            labels = d2.argmin(1)
            onehot = np.zeros((n, k))
            onehot[rows, labels] = w
            mass = onehot.sum(0)
            new = centers.copy()
            filled = mass > 0
            new[filled] = (onehot.T @ x)[filled] / mass[filled, None]
            for j in np.flatnonzero(~filled):  # re-seed an empty cluster at the worst point
                new[j] = x[int((w * d2[rows, labels]).argmax())]
            shift = float(((new - centers) ** 2).sum())
            centers = new
            if shift <= tol:
                break
        d2 = np.maximum(sq[:, None] - 2 * x @ centers.T + (centers**2).sum(1)[None, :], 0.0)
        labels = d2.argmin(1)
        inertia = float((w * d2[rows, labels]).sum())
        if best is None or inertia < best.inertia:
            counts = np.bincount(labels, weights=w, minlength=k)
            best = KMeansResult(centers, labels, counts, inertia)
    assert best is not None
    return best


def clip_and_noise(centroids: np.ndarray, clip: float, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian mechanism on a summary: each centroid clipped to L2 norm ``clip`` and
    perturbed with N(0, (sigma * clip)^2). ``sigma == 0`` returns the input unchanged
    (clipping without noise protects nothing, and would only distort the summary)."""
    if sigma <= 0:
        return centroids
    norms = np.linalg.norm(centroids, axis=1, keepdims=True)
    clipped = centroids * np.minimum(1.0, clip / np.maximum(norms, 1e-12))
    return clipped + rng.normal(0.0, sigma * clip, size=centroids.shape)


def cosine_cost(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """1 - cosine similarity between every row of ``a`` and every row of ``b``."""
    an = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    bn = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return 1.0 - an @ bn.T


def hungarian_match(c_img: np.ndarray, c_txt: np.ndarray,
                    extra_cost: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Optimal one-to-one pairing of image and text centroids (min total ``1 - cosine``, plus
    ``extra_cost[i, j]`` when given, e.g. how much the pair's label histograms disagree).

    Returns (image rows, text rows) of the ``min(len(c_img), len(c_txt))`` pairs, ordered by
    image row: pair ``j`` is image centroid ``rows_img[j]`` with text centroid ``rows_txt[j]``.
    """
    from scipy.optimize import linear_sum_assignment  # server side only; slow to import

    cost = cosine_cost(c_img, c_txt)
    if extra_cost is not None:
        cost = cost + extra_cost
    rows, cols = linear_sum_assignment(cost)
    order = np.argsort(rows)
    return rows[order].astype(np.int64), cols[order].astype(np.int64)


def server_clusters(
    centroids: np.ndarray, counts: np.ndarray, k: int, *, seed: int, cluster: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """The server's centres of one modality from all uploaded summaries.

    ``cluster=True``: count-weighted K-Means with ``min(k, uploads)`` centres. ``cluster=False``
    (ablation): the uploaded centroids themselves, as they are.
    """
    if len(centroids) == 0:
        return centroids, counts
    if not cluster:
        return centroids.astype(np.float32), counts.astype(np.float32)
    km = weighted_kmeans(centroids, k, counts, seed=seed, n_init=3)
    keep = km.counts > 0
    return km.centers[keep].astype(np.float32), km.counts[keep].astype(np.float32)
