"""FedCola: the gate, the merged upload, collaborative aggregation and its compensation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from adamodal.config import resolve
from adamodal.errors import ConfigError
from adamodal.methods.base import ClientContext, Message
from adamodal.methods.fedcola import (
    AUX,
    Complementary,
    FedCola,
    Sender,
    apply_update,
    coefficients,
)

TINY = {
    "dataset": "mix", "method": "fedcola", "towers": "small", "seed": 0, "device": "cpu",
    "clients.multimodal": 1, "clients.image_only": 1, "clients.text_only": 1,
    "partition": "iid", "rounds": 2, "local_epochs": 2, "participation": 1.0,
    "mix.max_train": 240, "mix.max_test": 60, "mix.size": 16, "mix.text": "reuters8", "lr": 0.003,
    "fedcola.width": 32, "fedcola.depth": 2, "fedcola.heads": 2, "fedcola.mlp_ratio": 2.0,
    "fedcola.max_tokens": 16, "fedcola.vocab": 1024, "fedcola.proj_dim": 16,
    "model.dropout": 0.0, "eval.max_rows": 200,
}


@pytest.fixture(scope="module")
def mix_experiment():
    """The real mix data, tiny: one image-only (Fashion-MNIST), one text-only (Reuters-8)
    and one multimodal (emoji) client."""
    from adamodal.runtime.simulator import prepare

    return prepare(resolve({}, TINY), progress=False)


def _method(exp, **overrides):
    cfg = resolve({}, {**TINY, **overrides})
    m = FedCola(cfg, exp.spec, exp.infos())
    m.init_server()
    return m


def _cid(exp, group):
    return next(c.cid for c in exp.clients if c.group == group)


def _ctx(exp, m, cid):
    c = exp.clients[cid]
    return ClientContext(c.cid, c.group, c.modalities, c.train, c.val, c.test, m.spec, m.cfg, 7, m.device)


def test_gate_starts_at_zero_changes_nothing_then_moves(mix_experiment):
    m = _method(mix_experiment)
    cid = _cid(mix_experiment, "image_only")
    msg = m.configure("train", 1, [cid])[cid]
    aux_keys = [k for k in msg.arrays if k.startswith(AUX)]
    # every attention and MLP linear of both image blocks gets its text twin
    assert len(aux_keys) == 2 * 4
    assert all(".image." in k for k in aux_keys)
    net = m.model()
    from adamodal.methods.base import load_arrays

    load_arrays(net, {k: v for k, v in msg.arrays.items() if not k.startswith(AUX)})
    aux = {k[len(AUX):]: torch.as_tensor(msg.arrays[k]) for k in aux_keys}
    module = Complementary(net, aux)
    assert all(v == 0.0 for v in module.gate_values().values())
    ctx = _ctx(mix_experiment, m, cid)
    batch = ctx.train.subset(torch.arange(8))
    net.eval()
    with torch.no_grad():
        plain = net(batch.x_img, batch.x_txt, batch.m_img, batch.m_txt)
        mixed = module(batch.x_img, batch.x_txt, batch.m_img, batch.m_txt)
    torch.testing.assert_close(plain, mixed)  # g = 0: the client's own model, exactly
    m.local_train(module, net, ctx, None)
    gates = np.array(list(module.gate_values().values()))
    assert np.all(np.abs(gates) > 1e-5), gates


def test_upload_is_w_plus_g_times_aux(mix_experiment):
    m = _method(mix_experiment)
    cid = _cid(mix_experiment, "text_only")
    msg = m.configure("train", 1, [cid])[cid]
    reply = m.client_step("train", 1, _ctx(mix_experiment, m, cid), msg)
    assert set(reply.arrays) == set(m.owned("text_only"))  # no gates, no aux in the upload
    own_w = {k: v.detach().numpy() for k, v in m.model().state_dict().items()}  # the trained W
    name = "blocks.text.1.mlp.fc1.weight"
    g = reply.scalars[f"gate/{name}"]
    assert g != 0.0
    aux = msg.arrays[AUX + name]
    assert reply.arrays[name].shape == own_w[name].shape
    np.testing.assert_allclose(reply.arrays[name], own_w[name] + g * aux, rtol=1e-5, atol=1e-6)
    assert not np.allclose(reply.arrays[name], own_w[name])
    # layers that are not block linears are uploaded as trained
    np.testing.assert_array_equal(reply.arrays["heads.text.weight"], own_w["heads.text.weight"])


def test_multimodal_clients_get_no_aux_and_baselines_none(mix_experiment):
    m = _method(mix_experiment)
    mm = _cid(mix_experiment, "multimodal")
    assert not any(k.startswith(AUX) for k in m.configure("train", 1, [mm])[mm].arrays)
    b = _method(mix_experiment, **{"fedcola.variant": "fedavg"})
    img = _cid(mix_experiment, "image_only")
    assert not any(k.startswith(AUX) for k in b.configure("train", 1, [img])[img].arrays)


def _random_replies(m, ns, seed=0):
    rng = np.random.default_rng(seed)
    replies = {}
    for cid, n in ns.items():
        group = m.clients[cid].group
        params = m.params[m.key_of(group)]
        arrays = {k: rng.normal(size=params[k].shape).astype(np.float32) for k in m.owned(group)}
        replies[cid] = Message(arrays, {"num_examples": n})
    return replies


def test_attention_crosses_modalities_mlp_does_not(mix_experiment):
    exp = mix_experiment
    img, mm, txt = (_cid(exp, g) for g in ("image_only", "multimodal", "text_only"))
    ns = {img: 10, mm: 30, txt: 20}
    attn, mlp = "blocks.image.0.attn.qkv.weight", "blocks.image.0.mlp.fc1.weight"

    m = _method(exp)
    old_mlp = m.params["image_only"][mlp].astype(np.float64)
    replies = _random_replies(m, ns)
    m.aggregate("train", 1, replies)
    w = {c: replies[c].arrays for c in (img, mm)}
    mean_attn = (10 * w[img][attn].astype(np.float64) + 30 * w[mm][attn]) / 40
    for group in ("image_only", "multimodal"):  # one attention for every data set with images
        np.testing.assert_allclose(m.params[group][attn], mean_attn, rtol=1e-5, atol=1e-6)
    # the image-only data set's MLP moves toward its own client only (compensated step 10/40)
    np.testing.assert_allclose(m.params["image_only"][mlp], old_mlp + 10 / 40 * (w[img][mlp] - old_mlp), rtol=1e-5, atol=1e-6)

    # a different multimodal MLP upload leaves the image-only MLP exactly as it was
    m2 = _method(exp)
    replies2 = _random_replies(m2, ns, seed=1)
    replies2[img] = replies[img]
    m2.aggregate("train", 1, replies2)
    np.testing.assert_array_equal(m2.params["image_only"][mlp], m.params["image_only"][mlp])
    assert not np.allclose(m2.params["multimodal"][mlp], m.params["multimodal"][mlp])

    # FedAvg on the same model: one model, the MLP averaged across the two data sets
    b = _method(exp, **{"fedcola.variant": "fedavg"})
    rb = _random_replies(b, ns)
    b.aggregate("train", 1, rb)
    expected = (10 * rb[img].arrays[mlp].astype(np.float64) + 30 * rb[mm].arrays[mlp]) / 40
    np.testing.assert_allclose(b.params["global"][mlp], expected, rtol=1e-5, atol=1e-6)


def test_compensation_denominator_toy_case():
    def s(group, mods, n, names):
        return Sender(group, frozenset(mods), float(n), frozenset(names))

    mlp_i, attn_i = "blocks.image.0.mlp.fc1.weight", "blocks.image.0.attn.qkv.weight"
    mlp_t, both = "blocks.text.1.mlp.fc2.weight", "heads.both.weight"
    senders = {
        0: s("image_only", ["image"], 10, [mlp_i, attn_i]),
        1: s("multimodal", ["image", "text"], 30, [mlp_i, attn_i, mlp_t, both]),
        2: s("text_only", ["text"], 20, [mlp_t]),
        3: s("image_only", ["image"], 40, [mlp_i, attn_i]),
    }
    # image MLP of the image-only data set: its clients' samples over every image holder's
    assert coefficients(mlp_i, "image_only", senders) == pytest.approx({0: 10 / 80, 3: 40 / 80})
    assert coefficients(mlp_i, "image_only", senders, compensation=False) == pytest.approx({0: 10 / 50, 3: 40 / 50})
    assert coefficients(mlp_i, "multimodal", senders) == pytest.approx({1: 30 / 80})
    # attention: a weighted mean over everyone who holds it, whichever data set
    assert coefficients(attn_i, "image_only", senders) == pytest.approx({0: 10 / 80, 1: 30 / 80, 3: 40 / 80})
    assert coefficients(attn_i, "image_only", senders, collaborative=False) == pytest.approx({0: 10 / 80, 3: 40 / 80})
    # text MLP of the text-only data set: text holders are clients 1 and 2
    assert coefficients(mlp_t, "text_only", senders) == pytest.approx({2: 20 / 50})
    # the paired head has both modalities: every sender overlaps
    assert coefficients(both, "multimodal", senders) == pytest.approx({1: 30 / 100})
    # the baselines' single model: plain FedAvg over holders
    assert coefficients(mlp_i, "global", senders) == pytest.approx({0: 10 / 80, 1: 30 / 80, 3: 40 / 80})
    assert coefficients(mlp_t, "image_only", senders) == {}
    old = np.array([1.0, 2.0], np.float32)
    new = apply_update(old, {0: np.array([3.0, 2.0]), 3: np.array([1.0, 6.0])}, {0: 0.125, 3: 0.5})
    np.testing.assert_allclose(new, [1.0 + 0.125 * 2, 2.0 + 0.5 * 4])


def test_needs_small_towers(mix_experiment):
    spec = dataclasses.replace(mix_experiment.spec, input_kind="features")
    with pytest.raises(ConfigError, match="towers=small"):
        FedCola(resolve({}, TINY), spec, mix_experiment.infos())
    with pytest.raises(ConfigError, match="fedcola.heads"):
        FedCola(resolve({}, {**TINY, "fedcola.heads": 0}), mix_experiment.spec, mix_experiment.infos())
    with pytest.raises(ConfigError, match="fedcola.variant"):
        FedCola(resolve({}, {**TINY, "fedcola.variant": "nope"}), mix_experiment.spec, mix_experiment.infos())


@pytest.mark.slow
def test_two_round_run_learns_above_chance(mix_experiment, tmp_path):
    from adamodal.runtime.simulator import Simulator

    summary = Simulator(mix_experiment, tmp_path, progress=False).run()
    groups = summary["groups_server_test"]
    # chance: 1/10 on Fashion-MNIST (balanced), 1/8 on Reuters-8
    assert groups["image_only"]["accuracy"] > 0.25
    assert groups["text_only"]["accuracy"] > 0.2
    assert (tmp_path / "checkpoint.pt").exists()


def test_fedprox_variant_stays_closer_to_the_global_model(mix_experiment):
    cid = _cid(mix_experiment, "image_only")
    drift = {}
    for variant in ("fedavg", "fedprox"):
        m = _method(mix_experiment, **{"fedcola.variant": variant, "fedcola.mu": 10.0, "local_epochs": 1})
        msg = m.configure("train", 1, [cid])[cid]
        reply = m.client_step("train", 1, _ctx(mix_experiment, m, cid), msg)
        drift[variant] = sum(float(((reply.arrays[k] - msg.arrays[k]) ** 2).sum()) for k in reply.arrays)
    assert drift["fedprox"] < 0.8 * drift["fedavg"], drift
