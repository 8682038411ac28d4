"""Stage 2: client summaries (never rows) and the server's clustering and pairing."""

from __future__ import annotations

import numpy as np
import torch

from adamodal.methods.adamodal.summarize import (
    Knowledge,
    client_summary,
    cluster_summaries,
    summarize_rows,
)
from tests.methods.adamodal.conftest import toy_knowledge


def test_knowledge_pairs_text_rows_by_pi():
    arrays = toy_knowledge()
    k = Knowledge.from_arrays(arrays, "cpu")
    assert k is not None and k.paired
    assert torch.allclose(k.keys["text"][0], torch.as_tensor(arrays["C_txt"][arrays["pi"][0]]))
    assert torch.equal(k.protos["text"], k.keys["text"])  # no Z sent: prototypes = centroids


def test_every_centroid_averages_at_least_min_count_rows():
    rng = np.random.default_rng(0)
    for n in (2, 3, 7, 8, 25, 200):
        x = rng.normal(size=(n, 6))
        y = rng.integers(0, 3, n)
        c, counts, hist = summarize_rows(x, y, 3, k_local=8, min_count=3, seed=1)
        if n < 3:
            assert len(c) == 0  # too few rows for one honest summary: nothing at all
            continue
        assert counts.sum() == n and counts.min() >= 3 and len(c) <= min(8, n // 3)
        assert hist.sum() == n and np.array_equal(hist.sum(1), counts)
        for row in x:  # no centroid is a row
            assert np.abs(c - row).max(1).min() > 1e-6


def test_a_client_below_min_count_times_k_sends_a_true_summary_or_nothing():
    """What actually leaves a client (``client_summary``, DP off): with fewer rows than
    ``min_count * k_local`` the client sends fewer centroids, each the mean of at least
    ``min_count`` of its rows (counts say how many), or nothing at all; never a row."""
    rng = np.random.default_rng(3)
    min_count, k_local = 3, 8
    for n in (1, 2, 3, 5, 11, 23):  # all below 3 * 8 = 24
        x = rng.normal(size=(n, 6)).astype(np.float32)
        reps = {"image": torch.as_tensor(x), "text": torch.as_tensor(x[:, ::-1].copy())}
        rows = {"image": torch.ones(n, dtype=torch.bool), "text": torch.arange(n) % 2 == 0}
        out = client_summary(reps, rows, rng.integers(0, 3, n), 3, k_local=k_local, min_count=min_count,
                             share_rows=False, clip=1.0, sigma=0.0, rng=np.random.default_rng(0))
        for m, s in (("image", "img"), ("text", "txt")):
            have = int(rows[m].sum())
            if have < min_count:
                assert f"c_{s}" not in out and f"n_{s}" not in out  # nothing rather than rows
                continue
            c, counts = out[f"c_{s}"], out[f"n_{s}"]
            assert len(c) <= have // min_count and counts.min() >= min_count and counts.sum() == have
            data = reps[m].numpy()[rows[m].numpy()]
            for row in data:
                assert np.abs(c - row).max(1).min() > 1e-6
            if len(c) == 1:  # one centroid: exactly the mean of all the client's rows
                np.testing.assert_allclose(c[0], data.mean(0), rtol=1e-5, atol=1e-6)


def _replies(perm, seed=0, clients=4, k=4, dim=8, noise=0.05, shuffle_labels=False):
    """Clients' summaries of k classes: text class j lies near image class j's direction and is
    listed in the text centres at position perm[j]."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(k, dim)) * 3
    out = []
    for _ in range(clients):
        img = base + noise * rng.normal(size=(k, dim))
        txt = np.empty_like(img)
        txt[perm] = base + noise * rng.normal(size=(k, dim))
        h_img = np.eye(k) * 5
        h_txt = np.zeros((k, k))
        h_txt[perm] = np.eye(k) * 5
        if shuffle_labels:
            h_txt = h_txt[rng.permutation(k)]
        out.append({"c_img": img.astype(np.float32), "n_img": np.full(k, 5, np.float32), "h_img": h_img,
                    "c_txt": txt.astype(np.float32), "n_txt": np.full(k, 5, np.float32), "h_txt": h_txt})
    return out, base


def test_hungarian_pairing_recovers_a_known_permutation():
    perm = np.array([2, 0, 3, 1])
    replies, base = _replies(perm)
    know, metrics = cluster_summaries(replies, 4, cluster=True, seeds=(1, 2))
    assert len(know["pi"]) == 4 and sorted(know["pi"].tolist()) == [0, 1, 2, 3]
    for j in range(4):  # each matched pair is one true class on both sides
        true_img = np.argmin(((base - know["C_img"][j]) ** 2).sum(1))
        true_txt = np.argmin(((base - know["C_txt"][know["pi"][j]]) ** 2).sum(1))
        assert true_img == true_txt
    assert metrics["class_agreement"] == 1.0
    shuffled, _ = _replies(perm, shuffle_labels=True, clients=1)
    assert cluster_summaries(shuffled, 4, cluster=True, seeds=(1, 2))[1]["class_agreement"] < 1.0


def test_cluster_switch_keeps_the_uploaded_centroids():
    replies, _ = _replies(np.arange(4), clients=3)
    know, _ = cluster_summaries(replies, 4, cluster=True, seeds=(1, 2))
    raw, _ = cluster_summaries(replies, 4, cluster=False, seeds=(1, 2))
    assert len(know["C_img"]) == 4 and len(raw["C_img"]) == 12  # every client's centroid, unclustered


def test_label_aware_pairing_recovers_classes_the_geometry_does_not():
    """Image and text spaces not yet aligned (text centres in an unrelated direction): the
    cosine alone pairs classes by chance, the label histograms pair them right."""
    k = 6
    perm = np.array([3, 0, 5, 1, 4, 2])
    replies, _ = _replies(perm, k=k)
    unaligned = np.random.default_rng(3).normal(size=(8, 8))
    for r in replies:
        r["c_txt"] = (r["c_txt"] @ unaligned).astype(np.float32)
    _, plain = cluster_summaries(replies, k, cluster=False, seeds=(1, 2))
    _, aware = cluster_summaries(replies, k, cluster=False, seeds=(1, 2), match_labels=1.0)
    assert aware["class_agreement"] == 1.0
    assert plain["class_agreement"] < 0.7


def test_knowledge_nearest_with_its_cached_norms_is_the_nearest_centre():
    k = Knowledge.from_arrays(toy_knowledge(k=6), "cpu")
    x = torch.randn(20, 16, generator=torch.Generator().manual_seed(2))
    for m in ("image", "text"):
        assert torch.equal(k.nearest(m, x), torch.cdist(x, k.keys[m]).argmin(1))


def test_class_prototypes_are_the_label_weighted_means_of_the_centres():
    """The server's class prototypes: each class's mean over the centres, weighted by how many
    of its rows each centre holds (from the histograms); a class no client holds is absent."""
    replies, base = _replies(np.arange(4), clients=2, k=4)
    for r in replies:  # class 3 held nowhere in images; centre 2 holds class 2 and class 1 rows
        r["h_img"] = np.array([[5, 0, 0, 0], [0, 5, 0, 0], [0, 1, 3, 0], [0, 0, 0, 0]], np.float64)
    know, _ = cluster_summaries(replies, 4, cluster=False, seeds=(1, 2), class_protos=True)
    assert "P_img" not in cluster_summaries(replies, 4, cluster=False, seeds=(1, 2))[0]
    c = np.concatenate([r["c_img"] for r in replies]).astype(np.float64)
    h = np.concatenate([r["h_img"] for r in replies])
    for cls in range(3):
        expect = (h[:, cls:cls + 1] * c).sum(0) / h[:, cls].sum()
        np.testing.assert_allclose(know["P_img"][cls], expect, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(know["Pn_img"], h.sum(0))
    k = Knowledge.from_arrays(know, "cpu")
    image = k.classes["image"]
    assert image.labels.tolist() == [0, 1, 2] and len(image.reps) == 3  # class 3: nobody holds it
    assert k.classes["text"].labels.tolist() == [0, 1, 2, 3]
    # what the gate mixes each prototype with: the Z of its nearest server centre
    # (no Z here: the prototypes are the centres; two clients' centres of a class tie within noise)
    dist = torch.cdist(image.reps, k.keys["image"])
    chosen = torch.cdist(image.z, k.protos["image"]).argmin(1)
    assert torch.allclose(dist.gather(1, chosen[:, None]).squeeze(1), dist.min(1).values, atol=1e-4)
