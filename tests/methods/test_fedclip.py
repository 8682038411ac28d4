"""FedCLIP: the AttAI adapter, adapter-only uploads, prompt-based prediction, and that it learns."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adamodal.errors import ConfigError
from adamodal.methods.base import ClientContext, Message
from adamodal.methods.fedclip import AttAI, FedCLIP, contrastive_loss
from adamodal.runtime.simulator import Simulator
from tests.conftest import with_config


def _method(exp, **overrides):
    exp = with_config(exp, method="fedclip", **overrides)
    m = FedCLIP(exp.cfg, exp.spec, exp.infos())
    m.init_server()
    return m, exp


def _ctx(m, exp, cid):
    c = exp.clients[cid]
    return ClientContext(c.cid, c.group, c.modalities, c.train, c.val, c.test, m.spec, m.cfg, 0, m.device)


def test_attai_output_sums_to_one_along_the_feature_axis():
    torch.manual_seed(0)
    att = AttAI(16)
    x = torch.randn(5, 7, 16) * 3
    a = att(x)
    assert a.shape == x.shape
    assert (a >= 0).all()
    torch.testing.assert_close(a.sum(dim=-1), torch.ones(5, 7))
    assert not torch.allclose(a[0, 0], a[1, 0])  # weights depend on the input


def test_only_adapter_bytes_are_uploaded(small_experiment):
    m, exp = _method(small_experiment)
    model = m.model()
    adapter = {k for k, _ in model.named_parameters()}
    assert adapter == {k for k in model.state_dict()}  # the prompt buffer is not state
    assert all(k.startswith(("bridge.", "attai.")) for k in adapter)
    reply = m.client_step("train", 1, _ctx(m, exp, 0), m.configure("train", 1, [0])[0])
    assert set(reply.arrays) == adapter
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    assert sum(a.nbytes for a in reply.arrays.values()) == param_bytes
    assert reply.nbytes() - param_bytes < 100  # only the two scalars besides
    # no class-prompt or feature table travels: no array has the prompt matrix's shape
    assert all(a.shape != tuple(m.prompts.shape) for a in reply.arrays.values())
    changed = [k for k in reply.arrays if not np.array_equal(reply.arrays[k], m.global_params[k])]
    assert "bridge.weight" in changed and "attai.net.0.weight" in changed


def test_clients_without_images_do_not_train(small_experiment):
    m, exp = _method(small_experiment)
    text_only = [c.cid for c in exp.clients if c.group == "text_only"]
    assert text_only and not set(text_only) & set(m.participants("train", 1, [c.cid for c in exp.clients]))


def test_aggregate_is_the_weighted_mean_of_the_adapter(small_experiment):
    m, _ = _method(small_experiment)
    rng = np.random.default_rng(0)
    ns = {0: 10, 2: 30}
    replies = {c: Message({k: rng.normal(size=v.shape).astype(v.dtype) for k, v in m.global_params.items()},
                          {"num_examples": n}) for c, n in ns.items()}
    m.aggregate("train", 1, replies)
    for k, v in m.global_params.items():
        expected = (10 * replies[0].arrays[k].astype(np.float64) + 30 * replies[2].arrays[k]) / 40
        np.testing.assert_allclose(v, expected, rtol=1e-5, atol=1e-6)


def test_prediction_is_the_nearest_class_prompt(small_experiment):
    m, _ = _method(small_experiment)
    model = m.model().eval()
    c = m.prompts.shape[0]
    # text rows whose embedding IS a class prompt are classified as that class
    x_txt = m.prompts.clone()
    logits = model(torch.zeros(c, m.spec.img_dim), x_txt, torch.zeros(c, dtype=torch.bool), torch.ones(c, dtype=torch.bool))
    assert (logits.argmax(1) == torch.arange(c)).all()


def test_contrastive_loss_prefers_images_at_their_own_prompts():
    torch.manual_seed(0)
    prompts = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    y = torch.tensor([0, 1, 1, 3])
    aligned = contrastive_loss(prompts[y] * 2.0, y, prompts, 10.0)
    wrong = contrastive_loss(prompts[(y + 1) % 4], y, prompts, 10.0)
    assert aligned < wrong - 1.0


def test_needs_frozen_features(small_experiment):
    exp = with_config(small_experiment, method="fedclip")
    spec = exp.spec.__class__(**{**exp.spec.__dict__, "input_kind": "raw"})
    with pytest.raises(ConfigError, match="towers=frozen"):
        FedCLIP(exp.cfg, spec, exp.infos())


def test_fedclip_learns(small_experiment, tmp_path):
    exp = with_config(small_experiment, method="fedclip", rounds=3)
    summary = Simulator(exp, tmp_path, progress=False).run()
    first, last = summary["history"][0]["test"]["image"], summary["test"]["image"]
    n_classes = exp.spec.num_classes
    assert last["macro_auc"] > 0.75, last
    assert last["macro_auc"] > first["macro_auc"] + 0.1
    assert last["accuracy"] > 2.0 / n_classes
    # only adapters went up: bytes up per round = participants x adapter bytes (+ scalars)
    adapter = sum(v.nbytes for v in FedCLIP(exp.cfg, exp.spec, exp.infos()).initial_params().values())
    senders = sum("image" in c.modalities for c in exp.clients)
    assert adapter * senders <= summary["bytes_up_per_round"] < (adapter + 100) * senders


def test_bridge_rank_factors_the_bridge_and_shrinks_the_upload(small_experiment):
    full, _ = _method(small_experiment)
    low, _ = _method(small_experiment, fedclip__bridge_rank=16)
    img, dim = full.spec.img_dim, full.prompts.shape[1]
    attai = 2 * (dim * dim + dim)
    assert sum(v.size for v in full.global_params.values()) == img * dim + dim + attai
    assert sum(v.size for v in low.global_params.values()) == img * 16 + 16 * dim + dim + attai
    with pytest.raises(ConfigError, match="fedclip.bridge_rank"):
        _method(small_experiment, fedclip__bridge_rank=-1)
