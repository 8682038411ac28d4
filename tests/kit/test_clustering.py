"""Summaries, weighted K-Means and Hungarian matching of AdaModal-Fed."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.cluster import KMeans

from adamodal.kit.clustering import (
    clip_and_noise,
    cosine_cost,
    hungarian_match,
    server_clusters,
    weighted_kmeans,
)


def _blobs(rng, k=5, per=40, dim=16, spread=0.3):
    centers = rng.normal(size=(k, dim)) * 4
    x = np.concatenate([c + spread * rng.normal(size=(per, dim)) for c in centers])
    return x, centers


def test_hungarian_recovers_a_known_permutation():
    rng = np.random.default_rng(0)
    img = rng.normal(size=(12, 32))
    perm = rng.permutation(12)
    txt = img[perm] + 0.05 * rng.normal(size=(12, 32))  # text row j is image row perm[j]
    rows, cols = hungarian_match(img, txt)
    assert rows.tolist() == list(range(12))
    # image row i must be paired with the text row that came from it
    assert np.array_equal(perm[cols], np.arange(12))


def test_hungarian_handles_rectangular_inputs():
    rng = np.random.default_rng(1)
    img = rng.normal(size=(5, 8))
    txt = img[[3, 0]] + 0.01 * rng.normal(size=(2, 8))
    rows, cols = hungarian_match(img, txt)
    assert len(rows) == len(cols) == 2
    pairs = dict(zip(rows.tolist(), cols.tolist(), strict=True))
    assert pairs[3] == 0 and pairs[0] == 1


def test_cosine_cost_is_zero_on_the_same_direction():
    a = np.array([[1.0, 0.0], [0.0, 2.0]])
    cost = cosine_cost(a, 3 * a)
    assert np.allclose(np.diag(cost), 0.0)
    assert np.allclose(cost[0, 1], 1.0)


def test_weighted_kmeans_centre_follows_the_heavy_point():
    x = np.array([[0.0, 0.0], [1.0, 0.0], [10.0, 10.0]])
    heavy = weighted_kmeans(x, 2, np.array([1000.0, 1.0, 1.0]), seed=0)
    plain = weighted_kmeans(x, 2, None, seed=0)
    c_heavy = heavy.centers[heavy.labels[0]]
    c_plain = plain.centers[plain.labels[0]]
    assert heavy.labels[0] == heavy.labels[1]
    assert np.linalg.norm(c_plain - [0.5, 0.0]) < 1e-6  # unweighted: the midpoint
    assert np.linalg.norm(c_heavy - [0.0, 0.0]) < 0.01  # weighted: pulled onto the heavy point
    assert heavy.counts[heavy.labels[0]] == pytest.approx(1001.0)


def test_weighted_kmeans_equals_repeating_points():
    """Weight w on a point must act exactly like w copies of it (what counts mean)."""
    rng = np.random.default_rng(2)
    x, _ = _blobs(rng, k=3, per=6, dim=4)
    w = rng.integers(1, 5, size=len(x)).astype(float)
    rep = np.repeat(x, w.astype(int), axis=0)
    a = weighted_kmeans(x, 3, w, seed=0, n_init=5)
    b = weighted_kmeans(rep, 3, None, seed=0, n_init=5)
    assert a.inertia == pytest.approx(b.inertia, rel=1e-6)


def test_weighted_kmeans_matches_scikit_learn_inertia():
    rng = np.random.default_rng(3)
    x, _ = _blobs(rng, k=6, per=30, dim=8, spread=1.0)
    w = rng.uniform(0.5, 3.0, size=len(x))
    ours = weighted_kmeans(x, 6, w, seed=0, n_init=3)
    ref = KMeans(6, n_init=3, random_state=0).fit(x, sample_weight=w)
    assert ours.inertia <= ref.inertia_ * 1.02


def test_weighted_kmeans_caps_k_by_distinct_points():
    x = np.array([[1.0, 1.0], [1.0, 1.0], [2.0, 2.0]])
    res = weighted_kmeans(x, 10, seed=0)
    assert len(res.centers) == 2


def test_server_clusters_weighted_and_ablation():
    rng = np.random.default_rng(5)
    c = rng.normal(size=(40, 8))
    n = rng.integers(1, 20, size=40).astype(float)
    cc, nn_ = server_clusters(c, n, 4, seed=0)
    assert cc.shape == (4, 8) and nn_.sum() == pytest.approx(n.sum())
    raw, raw_n = server_clusters(c, n, 4, seed=0, cluster=False)
    assert raw.shape == (40, 8) and np.allclose(raw_n, n)


def test_clip_and_noise():
    rng = np.random.default_rng(6)
    c = rng.normal(size=(10, 32)) * 10
    assert clip_and_noise(c, 1.0, 0.0, rng) is c  # off by default: unchanged
    noisy = clip_and_noise(c, 1.0, 1e-9, rng)
    assert np.all(np.linalg.norm(noisy, axis=1) <= 1.0 + 1e-6)  # clipped
    very = clip_and_noise(c, 1.0, 5.0, rng)
    assert np.linalg.norm(very - noisy) > 1.0  # noise scales with sigma * clip
