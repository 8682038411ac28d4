"""The pooled ceiling (adamodal.ceiling) on the small real emoji fixture."""

from __future__ import annotations

import dataclasses

import numpy as np

from adamodal.ceiling import FITTERS, ceilings, features, group_ceiling, pooled_train
from adamodal.metrics import compute_metrics


def test_ceilings(small_experiment) -> None:
    exp = small_experiment
    # the image-only group is left out here only for time (a raw 1,280-d logistic regression)
    out = ceilings(exp, seed=0, groups=("multimodal", "text_only"))
    assert set(out) == {"multimodal", "text_only"}
    for group, c in out.items():
        assert set(c["models"]) == set(FITTERS), group
        assert c["macro_auc"] == max(c["models"].values()) and c["model"] in FITTERS
    # MiniLM embeddings of emoji names separate the 9 categories well: chance is 0.5
    assert out["text_only"]["macro_auc"] > 0.8
    # both modalities side by side do at least about as well as text alone
    assert out["multimodal"]["macro_auc"] > out["text_only"]["macro_auc"] - 0.03
    # seeded: the same numbers again
    assert group_ceiling(exp, "text_only", 0) == out["text_only"]["models"]


def test_ceiling_is_scored_like_groups_server_test(small_experiment) -> None:
    """Each member's view of the server test set, predictions pooled over the group."""
    exp = small_experiment
    members = [c for c in exp.clients if c.group == "text_only"]
    x, y = features(pooled_train(exp), ("text",))
    predict = FITTERS["logistic regression"](x, y, exp.spec.num_classes, 0)
    scores, labels = [], []
    for c in members:
        view = exp.test_as_client[c.cid]
        assert view.m_txt.all() and not view.m_img.any()
        scores.append(predict(view.x_txt.numpy()))
        labels.append(view.y.numpy())
    want = compute_metrics(np.concatenate(scores), np.concatenate(labels), "multiclass")["macro_auc"]
    assert group_ceiling(exp, "text_only", 0)["logistic regression"] == want

    # a group without clients (carmfl has no text-only ones) has no ceiling
    no_text = dataclasses.replace(exp, clients=[c for c in exp.clients if c.group != "text_only"])
    assert ceilings(no_text, 0, groups=("text_only",)) == {}


def test_image_and_text_features_side_by_side(small_experiment) -> None:
    train = small_experiment.clients[0].train
    x, y = features(train, ("image", "text"))
    assert x.shape == (len(train), train.x_img.shape[1] + train.x_txt.shape[1] + 2)
    assert (x[:, -2:] == 1).all()  # an image+text client's rows have both
    x_t, _ = features(small_experiment.clients[-1].train, ("image", "text"))  # the text-only client
    assert (x_t[:, -2] == 0).all() and (x_t[:, : train.x_img.shape[1]] == 0).all()
