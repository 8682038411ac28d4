"""Partitioning identity groups among clients: disjoint, covering, seeded."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from adamodal.data.partition import partition_groups
from adamodal.errors import DataError

# every call builds a small datasets.Dataset (~0.1 s), so keep the example counts modest
PROPERTY = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def labelled_groups(draw, min_groups: int = 1, max_groups: int = 80, max_labels: int = 6):
    n = draw(st.integers(min_groups, max_groups))
    num_labels = draw(st.integers(1, max_labels))
    labels = draw(st.lists(st.integers(0, num_labels - 1), min_size=n, max_size=n))
    return np.array(labels, dtype=np.int64)


def _check_disjoint(parts: list[np.ndarray], n: int) -> np.ndarray:
    """Every part holds valid, distinct group indices and no group is in two parts."""
    for p in parts:
        assert p.dtype == np.int64
        assert len(np.unique(p)) == len(p)
        assert ((p >= 0) & (p < n)).all()
    allg = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    assert len(np.unique(allg)) == len(allg), "a group landed in two clients"
    return allg


def _canon(parts: list[np.ndarray]) -> list[list[int]]:
    return [sorted(int(x) for x in p) for p in parts]


@PROPERTY
@given(labels=labelled_groups(), clients=st.integers(1, 10), seed=st.integers(0, 2**16))
def test_iid_disjoint_covering_balanced(labels: np.ndarray, clients: int, seed: int) -> None:
    n = len(labels)
    if clients > n:
        with pytest.raises(DataError, match="clients"):
            partition_groups(labels, clients, "iid", seed=seed)
        return
    parts = partition_groups(labels, clients, "iid", seed=seed)
    assert len(parts) == clients
    allg = _check_disjoint(parts, n)
    assert np.array_equal(np.sort(allg), np.arange(n))
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


@PROPERTY
@given(
    labels=labelled_groups(min_groups=10, max_groups=120),
    clients=st.integers(1, 6),
    alpha=st.sampled_from([0.3, 0.5, 1.0, 5.0, 100.0]),
    seed=st.integers(0, 2**16),
)
def test_dirichlet_disjoint_covering(
    labels: np.ndarray, clients: int, alpha: float, seed: int
) -> None:
    n = len(labels)
    try:
        parts = partition_groups(labels, clients, "dirichlet", alpha=alpha, seed=seed)
    except DataError as exc:  # flwr-datasets' resampling gave up: a clean, user-facing error
        assert "partition=dirichlet failed" in str(exc)
        reject()
    assert len(parts) == clients
    allg = _check_disjoint(parts, n)
    assert np.array_equal(np.sort(allg), np.arange(n))
    assert all(len(p) >= 1 for p in parts)


def _expected_classes(labels: np.ndarray, clients: int, k: int) -> list[set[int]]:
    """flwr-datasets' deterministic assignment: client i gets the (i + j) % L-th label."""
    uniq = sorted(set(labels.tolist()))
    return [{uniq[(i + j) % len(uniq)] for j in range(k)} for i in range(clients)]


@PROPERTY
@given(
    labels=labelled_groups(min_groups=2, max_groups=80),
    clients=st.integers(1, 8),
    k=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_classes_at_most_k_per_client(labels: np.ndarray, clients: int, k: int, seed: int) -> None:
    n = len(labels)
    num_labels = len(np.unique(labels))
    if clients > n:
        with pytest.raises(DataError):
            partition_groups(labels, clients, "classes", classes_per_client=k, seed=seed)
        return
    if k > num_labels:
        with pytest.raises(DataError, match="partition.classes"):
            partition_groups(labels, clients, "classes", classes_per_client=k, seed=seed)
        return
    assigned = _expected_classes(labels, clients, k)
    uses = {c: sum(c in a for a in assigned) for c in np.unique(labels).tolist()}
    impossible = any(uses[c] > int((labels == c).sum()) for c in uses)
    if impossible:  # a class must be split among more clients than it has groups
        with pytest.raises(DataError, match="partition=classes failed"):
            partition_groups(labels, clients, "classes", classes_per_client=k, seed=seed)
        return
    parts = partition_groups(labels, clients, "classes", classes_per_client=k, seed=seed)
    assert len(parts) == clients
    allg = _check_disjoint(parts, n)
    for p, want in zip(parts, assigned, strict=True):
        held = set(labels[p].tolist())
        assert len(p) >= 1
        assert len(held) <= k
        assert held <= want
    # exactly the groups of the classes some client was assigned are handed out
    used = set().union(*assigned)
    expected = np.flatnonzero(np.isin(labels, sorted(used)))
    assert np.array_equal(np.sort(allg), expected)


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "classes"])
def test_deterministic_for_a_seed_and_varies_with_it(scheme: str) -> None:
    labels = np.random.default_rng(3).integers(0, 5, 90)
    kw = {"alpha": 1.0, "classes_per_client": 2}
    a = partition_groups(labels, 6, scheme, seed=11, **kw)
    b = partition_groups(labels, 6, scheme, seed=11, **kw)
    c = partition_groups(labels, 6, scheme, seed=12, **kw)
    assert _canon(a) == _canon(b)
    assert [p.tolist() for p in a] == [p.tolist() for p in b]  # same order too
    assert _canon(a) != _canon(c)


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "classes"])
def test_more_clients_than_groups(scheme: str) -> None:
    with pytest.raises(DataError, match="5 clients but only 4"):
        partition_groups(np.array([0, 1, 0, 1]), 5, scheme)


def test_unknown_scheme() -> None:
    with pytest.raises(DataError, match="unknown partition scheme"):
        partition_groups(np.array([0, 1, 0, 1]), 2, "shards")


def test_dirichlet_small_alpha_skews_labels() -> None:
    """alpha controls label skew: tiny alpha concentrates each client on few classes."""
    labels = np.repeat(np.arange(4), 50)

    def mean_max_share(alpha: float) -> float:
        shares = []
        for seed in range(3):
            for p in partition_groups(labels, 4, "dirichlet", alpha=alpha, seed=seed):
                shares.append(np.bincount(labels[p], minlength=4).max() / len(p))
        return float(np.mean(shares))

    assert mean_max_share(0.1) > mean_max_share(100.0) + 0.2
