"""No stage of AdaModal-Fed is a no-op, and no stage computes with stale weights.

Each switch is tested on what the unimodal clients depend on: the global model's predictions
on one-modality rows of the server's test set, after two rounds on the small scenario. A stage
that changed nothing there would be dead weight (or dead code)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adamodal.kit.train import predict
from adamodal.methods.adamodal.messages import pack
from adamodal.methods.adamodal.summarize import summarize_rows
from tests.methods.adamodal.test_method import _ctx, _method, _round

FAST = {"local_epochs": 1, "adamodal__warmup_epochs": 1, "adamodal__kd_epochs": 1}


def _two_rounds(exp, **overrides):
    exp, m = _method(exp, **FAST, **overrides)
    states: dict = {}
    for rnd in (1, 2):
        _round(exp, m, rnd, states)
    return exp, m, states


def _one_modality_predictions(exp, m) -> np.ndarray:
    model = m.global_model()
    return np.concatenate([predict(model, exp.test[c], exp.spec.task) for c in ("image", "text")])


@pytest.fixture(scope="module")
def reference(small_experiment):
    exp, m, _ = _two_rounds(small_experiment)
    return _one_modality_predictions(exp, m)


@pytest.mark.parametrize("switch", [
    {"adamodal__kd": False},
    {"adamodal__gate": False},
    {"adamodal__impute": "cross_attention"},  # off by default (chosen on validation): switched on
    {"adamodal__impute": "mean"},
    {"adamodal__beta": 0.0},
    {"adamodal__infonce_weight": 0.0},
    {"adamodal__modality_dropout": 0.0},
    {"adamodal__modality_average": "holders"},
    {"adamodal__replay": 0.0},
], ids=lambda s: "-".join(f"{k.split('__')[1]}={v}" for k, v in s.items()))
def test_switching_a_stage_changes_one_modality_predictions(small_experiment, reference, switch):
    exp, m, _ = _two_rounds(small_experiment, **switch)
    diff = np.abs(_one_modality_predictions(exp, m) - reference).max()
    assert diff > 1e-3, f"{switch}: predictions moved by {diff:.2e} only"


@pytest.mark.parametrize("switch", [{"adamodal__cross_attention": False}, {"adamodal__impute_weight": 0.0}],
                         ids=["cross_attention=False", "impute_weight=0"])
def test_the_imputers_parts_are_live_when_it_imputes(small_experiment, switch):
    """Under impute=cross_attention, the learned attention (against the matched centroid of
    the nearest cluster) and the imputation loss each change the predictions."""
    ca = {"adamodal__impute": "cross_attention"}
    a, b = (_one_modality_predictions(exp, m) for exp, m, _ in
            (_two_rounds(small_experiment, **ca), _two_rounds(small_experiment, **ca, **switch)))
    assert np.abs(a - b).max() > 1e-3


def test_the_imputer_is_not_sent_when_it_does_not_impute(small_experiment):
    exp, m, _ = _two_rounds(small_experiment)
    assert not any(k.startswith("imputer.") for k in m.upload_keys(0))
    _, m2, _ = _two_rounds(small_experiment, adamodal__impute="cross_attention")
    assert any(k.startswith("imputer.") for k in m2.upload_keys(0))


def test_server_clustering_changes_one_modality_predictions(small_experiment):
    """With K below the number of uploaded centroids the server's K-Means merges them (at the
    default K=32 these five small clients upload no more than 32 a modality, so clustering
    them is the identity): switching it off must then change the predictions."""
    a, b = (_one_modality_predictions(exp, m) for exp, m, _ in
            (_two_rounds(small_experiment, adamodal__k=6, adamodal__cluster=c) for c in (True, False)))
    assert np.abs(a - b).max() > 1e-3


def test_impute_zero_still_trains_with_modality_dropout(small_experiment):
    """The zero-filling ablation keeps modality dropout: only the imputation changes."""
    runs = [_two_rounds(small_experiment, adamodal__impute="zero", adamodal__modality_dropout=p) for p in (0.0, 0.3)]
    a, b = (_one_modality_predictions(exp, m) for exp, m, _ in runs)
    assert np.abs(a - b).max() > 1e-3


def test_round_two_summaries_live_in_the_current_global_space(small_experiment):
    """The centroids a client uploads in round 2 are K-Means of its rows encoded by the global
    model the server holds after round 1, not by the seed's starting weights."""
    exp, m, states = _two_rounds(small_experiment, adamodal__kd=False)
    cid = 0  # image+text
    msgs = m.configure("summarize", 3, [cid])
    ctx = _ctx(exp, m, cid, states, seed=123)
    reply = m.client_step("summarize", 3, ctx, msgs[cid])

    def expected(params):
        model = m.fresh(params).eval()
        d = exp.clients[cid].train
        with torch.no_grad():
            reps = model.encode(d.x_img, d.x_txt, d.m_img, d.m_txt)
        rng = np.random.default_rng([123, 5])
        out = {}
        for mod, s in (("image", "img"), ("text", "txt")):
            rows = (d.m_img if mod == "image" else d.m_txt).numpy()
            out[s] = summarize_rows(reps[mod].numpy()[rows], d.y.numpy()[rows], exp.spec.num_classes,
                                    int(m.opt["k_local"]), int(m.opt["min_count"]), int(rng.integers(2**31 - 1)))[0]
        return out

    now = expected(m.global_params)
    stale = expected({})
    for s in ("img", "txt"):
        np.testing.assert_allclose(reply.arrays[f"c_{s}"], now[s], atol=1e-5)
        got = reply.arrays[f"c_{s}"]  # the check could fail: the seed's encoding differs
        assert got.shape != stale[s].shape or np.abs(got - stale[s]).max() > 1e-2
    # the summarize message carries only the client's own modalities' parts of the global model
    only_image = next(c.cid for c in exp.clients if c.group == "image_only")
    sent = m.configure("summarize", 3, [only_image])[only_image]
    assert sent.arrays and all(k.startswith("g.img_") for k in sent.arrays)
    assert sent.arrays.keys() == pack(m.projections(only_image)).arrays.keys()


def test_without_cross_attention_z_is_the_paired_centroids(small_experiment):
    _, m, _ = _two_rounds(small_experiment, adamodal__cross_attention=False)
    k = m.knowledge
    np.testing.assert_array_equal(k["Z_img"], k["C_img"])
    np.testing.assert_array_equal(k["Z_txt"], k["C_txt"][k["pi"]])
    _, m2, _ = _two_rounds(small_experiment, adamodal__impute="cross_attention")
    assert np.abs(m2.knowledge["Z_img"] - m2.knowledge["C_img"]).max() > 1e-3
