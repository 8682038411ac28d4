"""Partitioning identity groups among clients: disjoint, covering, seeded."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adamodal.data.partition import (
    aligned_halves,
    enforce_min_size,
    min_partition_size,
    partition_groups,
)
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
    parts = partition_groups(labels, clients, "dirichlet", alpha=alpha, seed=seed)
    assert len(parts) == clients
    allg = _check_disjoint(parts, n)
    assert np.array_equal(np.sort(allg), np.arange(n))
    assert min(len(p) for p in parts) >= min_partition_size(n, clients)


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


# ---- Dirichlet at small alpha: never fails, still skewed ------------------------------------

#: the emoji categories' sizes (1,852 groups, 9 classes) scaled to the clients' pool after the
#: 20% server test split: 1,482 groups, the shape the default scenarios partition
EMOJI_CLASSES = np.array([85, 157, 269, 128, 261, 363, 165, 206, 218])


def emoji_like_labels(n: int = 1482) -> np.ndarray:
    sizes = np.floor(EMOJI_CLASSES * n / EMOJI_CLASSES.sum()).astype(int)
    sizes[np.argmax(sizes)] += n - sizes.sum()
    return np.random.default_rng(5).permutation(np.repeat(np.arange(len(sizes)), sizes))


def _mean_entropy(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    """Mean over clients of the entropy (nats) of the client's label histogram."""
    ents = []
    for p in parts:
        h = np.bincount(labels[p], minlength=labels.max() + 1) / len(p)
        h = h[h > 0]
        ents.append(float(-(h * np.log(h)).sum()))
    return float(np.mean(ents))


@pytest.mark.parametrize("alpha", [0.05, 0.1])
def test_dirichlet_small_alpha_never_fails_and_stays_skewed(alpha: float) -> None:
    """flwr-datasets gives up on these (10 redraws); the minimum-size rule makes every seed work."""
    labels = emoji_like_labels()
    assert len(labels) == 1482 and len(np.unique(labels)) == 9
    minimum = min_partition_size(len(labels), 20)
    assert minimum == 10
    iid = _mean_entropy(labels, partition_groups(labels, 20, "iid", seed=0))
    entropies = []
    for seed in range(10):
        parts = partition_groups(labels, 20, "dirichlet", alpha=alpha, seed=seed)
        again = partition_groups(labels, 20, "dirichlet", alpha=alpha, seed=seed)
        assert [p.tolist() for p in parts] == [p.tolist() for p in again]
        allg = _check_disjoint(parts, len(labels))
        assert np.array_equal(np.sort(allg), np.arange(len(labels)))
        assert min(len(p) for p in parts) >= minimum, f"seed {seed}"
        entropies.append(_mean_entropy(labels, parts))
        assert entropies[-1] < 0.6 * iid, f"seed {seed}: the top-ups washed the skew out"
    assert np.mean(entropies) < 0.5 * iid
    # and the seed matters
    first = partition_groups(labels, 20, "dirichlet", alpha=alpha, seed=0)
    assert _canon(first) != _canon(partition_groups(labels, 20, "dirichlet", alpha=alpha, seed=1))


def test_dirichlet_unchanged_where_flwr_datasets_succeeds() -> None:
    """A draw that meets the minimum is flwr-datasets' own (earlier results did not move)."""
    import datasets
    from flwr_datasets.partitioner import DirichletPartitioner

    labels = np.random.default_rng(3).integers(0, 5, 300)
    part = DirichletPartitioner(num_partitions=4, partition_by="label", alpha=1.0, min_partition_size=10,
                                self_balancing=False, shuffle=True, seed=7)
    part.dataset = datasets.Dataset.from_dict({"label": labels.tolist(), "gid": list(range(300))})
    direct = [part.load_partition(i)["gid"] for i in range(4)]
    ours = partition_groups(labels, 4, "dirichlet", alpha=1.0, seed=7)
    assert [p.tolist() for p in ours] == direct


def test_enforce_min_size_tops_up_from_the_largest() -> None:
    labels = np.array([0] * 10 + [1] * 6 + [2] * 4)
    parts = [np.arange(0, 16), np.array([], np.int64), np.arange(16, 20)]  # 16, 0, 4 groups
    out = enforce_min_size(parts, labels, 5)
    assert [len(p) for p in out] == [10, 5, 5]
    _check_disjoint(out, len(labels))
    # the empty client got the donor's most common class (0); then the donor held 5 of class 0
    # and 6 of class 1, none of client 2's own class, so client 2 got a 1
    assert set(labels[out[1]].tolist()) == {0}
    assert sorted(labels[out[2]].tolist()) == [1, 2, 2, 2, 2]
    # nothing moves when every client already has the minimum
    same = enforce_min_size(out, labels, 5)
    assert [p.tolist() for p in same] == [p.tolist() for p in out]
    with pytest.raises(DataError, match="cannot each hold"):
        enforce_min_size(parts, labels, 7)


def test_enforce_min_size_follows_the_receivers_affinity() -> None:
    labels = np.array([0] * 8 + [1] * 8)
    parts = [np.arange(16), np.array([], np.int64)]
    affinity = np.array([[1.0, 1.0], [0.05, 1.0]])  # client 1 prefers class 1
    out = enforce_min_size(parts, labels, 4, affinity)
    assert labels[out[1]].tolist() == [1, 1, 1, 1]


# ---- label skew aligned with the modality groups -------------------------------------------

KINDS = ["multimodal"] * 8 + ["image_only"] * 6 + ["text_only"] * 6


def _histogram(labels: np.ndarray, parts: list[np.ndarray], clients: range) -> np.ndarray:
    h = np.bincount(np.concatenate([labels[parts[i]] for i in clients]), minlength=labels.max() + 1)
    return h / h.sum()


def _tv(a: np.ndarray, b: np.ndarray) -> float:
    return float(0.5 * np.abs(a - b).sum())


@pytest.mark.parametrize("seed", range(5))
def test_aligned_pulls_image_and_text_clients_apart(seed: int) -> None:
    labels = emoji_like_labels()
    img, txt = range(8, 14), range(14, 20)
    parts = partition_groups(labels, 20, "aligned", alpha=0.5, seed=seed, kinds=KINDS)
    allg = _check_disjoint(parts, len(labels))
    assert np.array_equal(np.sort(allg), np.arange(len(labels)))
    assert min(len(p) for p in parts) >= min_partition_size(len(labels), 20)
    again = partition_groups(labels, 20, "aligned", alpha=0.5, seed=seed, kinds=KINDS)
    assert [p.tolist() for p in parts] == [p.tolist() for p in again]

    h_img, h_txt = _histogram(labels, parts, img), _histogram(labels, parts, txt)
    aligned_tv = _tv(h_img, h_txt)
    assert aligned_tv > 0.7
    img_half, txt_half = aligned_halves(labels, seed)
    assert h_img[img_half].sum() > 0.8 and h_txt[txt_half].sum() > 0.8
    # image+text clients hold both halves
    h_mm = _histogram(labels, parts, range(8))
    assert 0.3 < h_mm[img_half].sum() < 0.8
    # plain Dirichlet at the same alpha leaves the two unimodal groups far closer
    plain = partition_groups(labels, 20, "dirichlet", alpha=0.5, seed=seed)
    assert _tv(_histogram(labels, plain, img), _histogram(labels, plain, txt)) < aligned_tv - 0.3


def test_aligned_leak_one_is_no_alignment_and_kinds_are_required() -> None:
    labels = emoji_like_labels()
    tvs = []
    for seed in range(3):
        parts = partition_groups(labels, 20, "aligned", alpha=0.5, seed=seed, kinds=KINDS, leak=1.0)
        tvs.append(_tv(_histogram(labels, parts, range(8, 14)), _histogram(labels, parts, range(14, 20))))
    assert np.mean(tvs) < 0.45
    with pytest.raises(DataError, match="partition=aligned needs"):
        partition_groups(labels, 20, "aligned", seed=0)


def test_aligned_halves_cover_the_classes_and_follow_the_seed() -> None:
    labels = emoji_like_labels()
    a, b = aligned_halves(labels, 0)
    assert len(a) == 5 and len(b) == 4 and sorted(np.concatenate([a, b]).tolist()) == list(range(9))
    assert any(not np.array_equal(aligned_halves(labels, s)[0], a) for s in range(1, 5))


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "classes"])
def test_cached_split_is_the_fresh_one_and_survives_damage(tmp_path, scheme: str) -> None:
    """A split read back from the cache equals the computed one (same rows, same order); a
    damaged cache file is recomputed, and a changed argument the scheme reads is a new key."""
    from adamodal.data.partition import partition_cache_path

    labels = np.random.default_rng(5).integers(0, 6, 400)
    kw = {"alpha": 0.3, "classes_per_client": 2, "seed": 4}
    fresh = partition_groups(labels, 7, scheme, **kw)
    first = partition_groups(labels, 7, scheme, cache=tmp_path, **kw)
    path = partition_cache_path(tmp_path, labels, 7, scheme, alpha=0.3, classes_per_client=2, seed=4)
    assert path.is_file()
    again = partition_groups(labels, 7, scheme, cache=tmp_path, **kw)
    for got in (first, again):
        assert [p.tolist() for p in got] == [p.tolist() for p in fresh]
        assert all(p.dtype == np.int64 for p in got)
    # a cached file that is truncated, or consistent-looking but wrong, is not trusted
    for damage in (b"not a zip", None):
        if damage is None:
            np.savez(path, groups=np.zeros(400, np.int64), offsets=np.array([0, 400] + [400] * 6, np.int64))
        else:
            path.write_bytes(damage)
        healed = partition_groups(labels, 7, scheme, cache=tmp_path, **kw)
        assert [p.tolist() for p in healed] == [p.tolist() for p in fresh]
    other = "seed" if scheme == "iid" else ("alpha" if scheme == "dirichlet" else "classes_per_client")
    changed = {**kw, other: {"seed": 5, "alpha": 0.9, "classes_per_client": 3}[other]}
    moved = partition_cache_path(tmp_path, labels, 7, scheme, alpha=changed["alpha"],
                                 classes_per_client=changed["classes_per_client"], seed=changed["seed"])
    assert moved != path
    if scheme == "iid":  # an argument the scheme does not read keeps the key
        assert partition_cache_path(tmp_path, labels, 7, scheme, alpha=0.9, classes_per_client=2, seed=4) == path
