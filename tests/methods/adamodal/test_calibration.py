"""Stage 5: class statistics (never below min_count rows), their pooling, the virtual rows
and the head's retraining, which touches the head only."""

from __future__ import annotations

import numpy as np
import torch

from adamodal.methods.adamodal.calibration import (
    HEAD,
    calibrate_head,
    class_stats,
    pooled_gaussians,
    virtual_rows,
)
from adamodal.methods.adamodal.net import build_adamodal_net
from adamodal.methods.adamodal.summarize import class_centroids
from tests.methods.adamodal.conftest import SPEC, toy_knowledge


def _stats(rng, means, n_per, scale=0.5):
    x = np.concatenate([m + scale * rng.normal(size=(n, len(m))) for m, n in zip(means, n_per, strict=True)])
    y = np.concatenate([np.full(n, c) for c, n in enumerate(n_per)])
    return x, y


def test_class_stats_drop_classes_below_min_count():
    rng = np.random.default_rng(0)
    x, y = _stats(rng, np.eye(3, 4) * 5, [10, 2, 4])
    st = class_stats(x, y, 3, min_count=3)
    assert st["count"].tolist() == [10.0, 0.0, 4.0]
    assert np.allclose(st["sum"][1], 0) and np.allclose(st["sq"][1], 0)
    np.testing.assert_allclose(st["sum"][0], x[y == 0].sum(0), rtol=1e-5)


def test_pooling_gives_the_mean_and_variance_of_all_rows():
    rng = np.random.default_rng(1)
    means = rng.normal(size=(2, 6)) * 3
    parts = [_stats(rng, means, [20, 5]), _stats(rng, means, [7, 30])]
    replies = []
    for x, y in parts:
        st = class_stats(x, y, 2, 3)
        replies.append({"cs_img": st["sum"], "cq_img": st["sq"], "cn_img": st["count"]})
    (mean, var, n), = pooled_gaussians(replies).values()
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    for c in (0, 1):
        np.testing.assert_allclose(mean[c], x[y == c].mean(0), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(var[c], x[y == c].var(0), rtol=1e-3, atol=1e-3)
    assert n.tolist() == [27.0, 35.0]


def test_virtual_rows_are_class_balanced_per_modality_combination():
    g = {"image": (np.zeros((3, 4)), np.ones((3, 4)), np.array([5.0, 0.0, 9.0])),
         "text": (np.ones((3, 4)), np.ones((3, 4)), np.array([4.0, 6.0, 0.0]))}
    reps, has_img, has_txt, y = virtual_rows(g, 10, np.random.default_rng(0))
    only_img, only_txt, both = has_img & ~has_txt, has_txt & ~has_img, has_img & has_txt
    assert sorted(np.unique(y[only_img]).tolist()) == [0, 2]
    assert sorted(np.unique(y[only_txt]).tolist()) == [0, 1]
    assert np.unique(y[both]).tolist() == [0]  # only class 0 has both modalities
    assert only_img.sum() == 20 and only_txt.sum() == 20 and both.sum() == 10


def test_calibration_fits_the_virtual_classes_and_touches_only_the_head():
    torch.manual_seed(0)
    model = build_adamodal_net(SPEC, 0).set_knowledge(toy_knowledge(k=4))
    rng = np.random.default_rng(0)
    g = {m: (rng.normal(size=(4, 16)) * 2, np.full((4, 16), 0.1), np.full(4, 10.0)) for m in ("image", "text")}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = {"lr": 0.01, "weight_decay": 0.0, "optimizer": "adam", "momentum": 0.9, "batch_size": 8}
    first = calibrate_head(model, g, cfg, per_class=16, epochs=1, seed=0)
    later = calibrate_head(model, g, cfg, per_class=16, epochs=3, seed=1)
    assert later < 0.5 * first
    for k, v in model.state_dict().items():
        moved = not torch.equal(v, before[k])
        if k.startswith(HEAD) and k.endswith(("up.weight", "classifier.weight")):
            assert moved, k
        if not k.startswith(HEAD):
            assert not moved, k  # projections, imputer and gate stay as they were
    assert all(p.requires_grad for k, p in model.named_parameters() if not k.endswith("base.weight"))


def test_class_centroids_pair_each_class_with_itself():
    g = {"image": (np.arange(12.0).reshape(3, 4), np.ones((3, 4)), np.array([5.0, 0.0, 9.0])),
         "text": (-np.arange(12.0).reshape(3, 4), np.ones((3, 4)), np.array([4.0, 6.0, 2.0]))}
    k = class_centroids(g)
    np.testing.assert_array_equal(k["C_img"], g["image"][0][[0, 2]])
    np.testing.assert_array_equal(k["C_txt"], g["text"][0][[0, 2]])
    assert k["pi"].tolist() == [0, 1]
    np.testing.assert_allclose(k["mean_img"], (5 * g["image"][0][0] + 9 * g["image"][0][2]) / 14, rtol=1e-6)
    assert class_centroids({"image": g["image"]}) == {}
