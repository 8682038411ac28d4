"""FM-kt: topologies, the relay (neighbours' models, never an average), no global model, and a
feature-map term that touches only the chosen layers."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from adamodal.config import resolve
from adamodal.errors import ConfigError
from adamodal.methods.base import ClientContext, Message, state_arrays
from adamodal.methods.fmkt import FMKT, feature_loss, neighbours, parse_layers, split_peers, tap
from adamodal.runtime.simulator import Simulator, prepare

FMNIST = {
    "dataset": "fmnist", "towers": "small", "model": "cnn", "method": "fmkt",
    "clients.multimodal": 0, "clients.image_only": 5, "clients.text_only": 0,
    "partition": "classes", "partition.classes": 4, "data.max_items": 600,
    "rounds": 2, "local_epochs": 1, "optimizer": "sgd", "lr": 0.05, "seed": 0, "device": "cpu",
}


@pytest.fixture(scope="module")
def fmnist_experiment():
    return prepare(resolve({}, FMNIST), progress=False)


def _method(exp, **overrides):
    cfg = resolve({}, {**FMNIST, **{k.replace("__", "."): v for k, v in overrides.items()}})
    return FMKT(cfg, exp.spec, exp.infos()), dataclasses.replace(exp, cfg=cfg)


def _ctx(m, exp, cid, state=None):
    c = exp.clients[cid]
    return ClientContext(c.cid, c.group, c.modalities, c.train, c.val, c.test, m.spec, m.cfg, 0, m.device,
                         state=state or {})


# ---- topology ----------------------------------------------------------------------------

def test_ring_neighbours_are_the_nearest_on_both_sides():
    assert neighbours("ring", range(5), 2, 0, 1) == {0: [1, 4], 1: [2, 0], 2: [3, 1], 3: [4, 2], 4: [0, 3]}
    assert neighbours("ring", range(5), 1, 0, 1) == {0: [1], 1: [2], 2: [3], 3: [4], 4: [0]}
    assert neighbours("ring", range(5), 3, 0, 1)[0] == [1, 4, 2]
    assert neighbours("ring", [3, 7, 9], 9, 0, 1) == {3: [7, 9], 7: [9, 3], 9: [3, 7]}  # k capped at n-1
    assert neighbours("ring", range(6), 2, 0, 1) == neighbours("ring", range(6), 2, 5, 9)  # fixed


def test_random_neighbours_are_distinct_others_and_deterministic():
    a = neighbours("random", range(8), 3, 0, 1)
    assert a == neighbours("random", range(8), 3, 0, 1)
    for peer, nbrs in a.items():
        assert len(nbrs) == 3 == len(set(nbrs)) and peer not in nbrs and set(nbrs) <= set(range(8))
    later = [neighbours("random", range(8), 3, 0, r) for r in range(2, 6)]
    assert any(b != a for b in later)  # redrawn every round
    assert neighbours("random", range(8), 3, 1, 1) != a  # and by the seed


# ---- the relay ---------------------------------------------------------------------------

def test_relay_sends_exactly_the_neighbours_uploaded_models(fmnist_experiment):
    m, _ = _method(fmnist_experiment)
    rng = np.random.default_rng(0)
    template = m.initial_params()
    uploads = {cid: {k: rng.normal(size=v.shape).astype(v.dtype) for k, v in template.items()} for cid in range(5)}
    m.aggregate("train", 1, {cid: Message(a, {"num_examples": 10}) for cid, a in uploads.items()})
    msgs = m.configure("distill", 1, list(range(5)))
    nbrs = neighbours("ring", range(5), 2, 0, 1)
    for cid, msg in msgs.items():
        got = split_peers(msg.arrays)
        assert sorted(got) == sorted(nbrs[cid])
        for j, arrays in got.items():
            assert set(arrays) == set(uploads[j])
            assert all(np.array_equal(arrays[k], uploads[j][k]) for k in arrays)
    # the server stores the uploads as they came: no averaging anywhere
    state = split_peers(m.server_state())
    assert all(all(np.array_equal(state[c][k], uploads[c][k]) for k in uploads[c]) for c in uploads)


def test_fmkt_never_builds_a_global_model_and_peers_learn(fmnist_experiment, tmp_path):
    # adam and 3 local epochs: with the module's sgd/1-epoch config (2-3 batches per peer per
    # epoch) each peer predicts one or two classes for everything (server-test accuracy 0.10,
    # chance)
    m, exp = _method(fmnist_experiment, optimizer="adam", lr=0.003, local_epochs=3)
    sim = Simulator(exp, tmp_path, progress=False)
    summary = sim.run()
    assert sim.method.global_model() is None
    # each peer scored on its own test split (its 4 classes): untrained ~0.5 (measured 0.50,
    # 0.55, 0.51, 0.46 on seeds 0-3), after 2 rounds mean 0.86, 0.85, 0.81, 0.89, worst peer
    # 0.80, 0.75, 0.78, 0.78
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    before = [r["macro_auc"] for r in records if r["round"] == 0]
    after = [r["macro_auc"] for r in records if r["round"] == 2]
    assert len(after) == 5 and min(after) > 0.65, after
    assert np.mean(after) > max(0.75, np.mean(before) + 0.2), (before, after)
    # the server test, scored with every peer's own model and averaged: 10 classes (chance
    # 0.1), of which each peer saw 4 (so ~0.4 at best); measured 0.19, 0.20, 0.17, 0.17 on
    # seeds 0-3. Distillation does not beat the same peers with kd_weight=fm_weight=0 (an
    # extra plain cross-entropy epoch): on seeds 0-3 it was lower on every seed (0.19 vs 0.20,
    # 0.20 vs 0.21, 0.17 vs 0.21, 0.17 vs 0.20; own-test AUC 0.86 vs 0.93 on seed 0), so no
    # gain from distillation is asserted here
    assert summary["test"]["image"]["accuracy"] > 0.1 + 0.05, summary["test"]
    states = sim.clients.state()
    # every peer keeps its own model: no two are equal (an average would make them so)
    w = [states[c]["classifier.weight"] for c in sorted(states)]
    assert len(w) == 5 and all(not np.allclose(w[i], w[j]) for i in range(5) for j in range(i + 1, 5))
    # what the relay holds is each peer's own upload, keyed by peer
    assert set(split_peers(sim.method.server_state())) == set(range(5))


def test_distill_phase_uploads_nothing_and_uses_every_neighbour(fmnist_experiment):
    m, exp = _method(fmnist_experiment)
    for cid in range(5):
        m.aggregate("train", 1, {cid: m.client_step("train", 1, _ctx(m, exp, cid), Message())})
    ctx = _ctx(m, exp, 0, dict(m.latest[0]))
    reply = m.client_step("distill", 1, ctx, m.configure("distill", 1, [0])[0])
    assert reply.arrays == {} and reply.scalars["teachers"] == 2
    assert not np.array_equal(ctx.state["classifier.weight"], m.latest[0]["classifier.weight"])


# ---- the feature-map term ----------------------------------------------------------------

# parameters of the LeNet stage that produces each feature layer
STAGE = {1: "img_tower.features.0.", 2: "img_tower.features.3.", 3: "img_tower.head.1.", 4: "img_tower.head.3."}


@pytest.mark.parametrize("layer", [1, 2, 3, 4])
def test_feature_loss_reaches_only_up_to_the_chosen_layer(fmnist_experiment, layer):
    m, exp = _method(fmnist_experiment)
    torch.manual_seed(0)
    student, teacher = m.model(), m.teachers({1: m.initial_params()})[0]
    with torch.no_grad():  # make the teacher differ at every stage
        for p in teacher.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    batch = exp.clients[0].train.subset(torch.arange(16))
    with torch.no_grad(), tap(teacher, [layer]) as t_feats:
        teacher(batch.x_img, batch.x_txt, batch.m_img, batch.m_txt)
    student.zero_grad()
    with tap(student, [layer]) as s_feats:
        student(batch.x_img, batch.x_txt, batch.m_img, batch.m_txt)
    feature_loss(s_feats, [dict(t_feats)], [layer]).backward()
    for name, p in student.named_parameters():
        stage = next((s for s, prefix in STAGE.items() if name.startswith(prefix)), 5)  # 5: classifier
        grad = 0.0 if p.grad is None else float(p.grad.abs().sum())
        if stage > layer:
            assert grad == 0.0, f"{name} got a gradient from layer {layer}"
        elif name.endswith("weight"):
            assert grad > 0.0, f"{name} got no gradient from layer {layer}"


def test_changing_layers_changes_the_loss(fmnist_experiment):
    m, exp = _method(fmnist_experiment)
    student = m.model()
    teachers = m.teachers({1: {k: v + 0.05 for k, v in m.initial_params().items()}})
    batch = exp.clients[0].train.subset(torch.arange(16))
    parts = {ls: m.distill_loss(student, teachers, batch, ls)[1] for ls in [(), (1,), (4,), (1, 2, 3, 4)]}
    assert parts[()]["fm"] == 0.0
    assert parts[(1,)]["fm"] > 0 and parts[(4,)]["fm"] > 0 and parts[(1,)]["fm"] != parts[(4,)]["fm"]
    assert parts[(1, 2, 3, 4)]["fm"] > max(parts[(1,)]["fm"], parts[(4,)]["fm"])
    assert len({p["ce"] for p in parts.values()}) == 1 and len({p["kd"] for p in parts.values()}) == 1


def test_layer_choices_and_errors(fmnist_experiment):
    assert parse_layers("all", 4) == (1, 2, 3, 4) and parse_layers("none", 4) == ()
    assert parse_layers("3, 1", 4) == (1, 3)
    with pytest.raises(ConfigError, match="fmkt.layers"):
        parse_layers("5", 4)
    with pytest.raises(ConfigError, match="fmkt.layers"):
        parse_layers("conv1", 4)
    with pytest.raises(ConfigError, match="fmkt.layers"):
        _method(fmnist_experiment, fmkt__layers="7")
    with pytest.raises(ConfigError, match="fmkt.topology"):
        _method(fmnist_experiment, fmkt__topology="star")


def test_needs_a_trainable_image_tower(small_experiment):
    from tests.conftest import with_config

    exp = with_config(small_experiment, method="fmkt")
    with pytest.raises(ConfigError, match="towers=small"):
        FMKT(exp.cfg, exp.spec, exp.infos())


def test_uploads_are_the_whole_peer_model(fmnist_experiment):
    m, exp = _method(fmnist_experiment)
    reply = m.client_step("train", 1, _ctx(m, exp, 0), Message())
    assert set(reply.arrays) == set(state_arrays(m.model()))
