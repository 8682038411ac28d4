"""Prototype imputation: exact class means from aggregate uploads, label fill in training,
posterior fill at prediction, and a live stage (``prototype.impute=false`` is FedAvg)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adamodal.config import resolve
from adamodal.errors import ConfigError
from adamodal.kit.tensors import Tensors
from adamodal.kit.train import predict
from adamodal.methods.base import ClientContext, ClientInfo, Message
from adamodal.methods.prototype import Prototype, PrototypeNet, class_statistics, label_fill
from adamodal.model import ModelSpec, build_model
from adamodal.runtime.validate import Limits, validate_replies
from tests.conftest import with_config
from tests.kit.test_privacy import per_sample_leaks

SPEC = ModelSpec(task="multiclass", num_classes=3, modalities=("image", "text"), input_kind="features",
                 img_dim=5, txt_dim=4, img_shape=(5,), dim=8)


def _tensors(n: int, y: list[int], img: bool, txt: bool, seed: int, drop_txt: int = 0) -> Tensors:
    g = torch.Generator().manual_seed(seed)
    m_img = torch.full((n,), img)
    m_txt = torch.full((n,), txt)
    m_txt[:drop_txt] = False  # sample-level missingness inside a paired client
    x_img = torch.randn(n, 5, generator=g) * m_img.unsqueeze(1)
    x_txt = torch.randn(n, 4, generator=g) * m_txt.unsqueeze(1)
    return Tensors(x_img, x_txt, m_img, m_txt, torch.tensor(y))


def _synthetic(**cfg):
    """Three clients: paired (some rows without text), image-only, text-only. Client 1 has
    only two rows of class 2 (below min_count=3: not released)."""
    datas = {
        0: _tensors(12, [0] * 4 + [1] * 4 + [2] * 4, True, True, 0, drop_txt=1),
        1: _tensors(8, [0] * 3 + [1] * 3 + [2] * 2, True, False, 1),
        2: _tensors(9, [0] * 3 + [1] * 3 + [2] * 3, False, True, 2),
    }
    groups = {0: ("multimodal", ("image", "text")), 1: ("image_only", ("image",)), 2: ("text_only", ("text",))}
    infos = [ClientInfo(c, groups[c][0], groups[c][1], len(d)) for c, d in datas.items()]
    conf = resolve({}, {"method": "prototype", "device": "cpu", **cfg})
    m = Prototype(conf, SPEC, infos)
    m.init_server()
    ctxs = {c: ClientContext(c, groups[c][0], groups[c][1], d, d, d, SPEC, conf, 0, m.device) for c, d in datas.items()}
    return m, ctxs, datas


def _exchange(m, ctxs):
    sent = m.configure("prototypes", 1, m.participants("prototypes", 1, [0]))
    replies = {c: m.client_step("prototypes", 1, ctxs[c], msg) for c, msg in sent.items()}
    valid, rejected = validate_replies(m, "prototypes", 1, sent, replies, Limits(1e4, 1024))
    assert rejected == {}
    m.aggregate("prototypes", 1, valid)
    return replies


def test_prototypes_are_the_true_class_means_of_the_released_rows():
    m, ctxs, datas = _synthetic()
    assert m.phases(1) == ["prototypes", "train"] and m.phases(2) == ["train"]
    assert m.participants("prototypes", 1, [0]) == [0, 1, 2]  # everybody, not only the sample
    _exchange(m, ctxs)
    got = m.prototype_arrays()
    for modality, key in (("image", "x_img"), ("text", "x_txt")):
        for cls in range(3):
            rows = []
            for d in datas.values():
                mask = (d.y == cls) & (d.m_img if modality == "image" else d.m_txt)
                if int(mask.sum()) >= 3:  # prototype.min_count
                    rows.append(getattr(d, key)[mask])
            expected = torch.cat(rows).double().mean(0).numpy()
            np.testing.assert_allclose(got[f"proto.{modality}"][cls], expected, rtol=1e-5, atol=1e-6)
        assert got[f"proto.{modality}.ok"].all()
    # client 1's two class-2 images were not released: the image prototype of class 2 is client 0's
    np.testing.assert_allclose(got["proto.image"][2], datas[0].x_img[8:].double().mean(0).numpy(), rtol=1e-5)


def test_the_upload_is_per_class_statistics_only():
    m, ctxs, datas = _synthetic()
    replies = _exchange(m, ctxs)
    assert set(replies[0].arrays) == {"image.mean", "image.count", "text.mean", "text.count"}
    assert set(replies[1].arrays) == {"image.mean", "image.count"}
    assert set(replies[2].arrays) == {"text.mean", "text.count"}
    for cid, reply in replies.items():
        assert all(a.shape[0] == 3 for a in reply.arrays.values())  # one row per class, never per sample
        assert per_sample_leaks(reply, datas[cid]) == []
    np.testing.assert_array_equal(replies[1].arrays["image.count"], [3, 3, 0])  # two rows: not released
    np.testing.assert_array_equal(replies[1].arrays["image.mean"][2], 0)
    # one row released alone would be the row itself: the detector sees it
    mean, count = class_statistics(datas[1], "image", 3, "multiclass", 1)
    assert count[2] == 2 and per_sample_leaks(Message({"m": mean[:1]}), datas[1]) == []
    single = _tensors(1, [0], True, False, 5)
    mean, _ = class_statistics(single, "image", 3, "multiclass", 1)
    assert per_sample_leaks(Message({"m": mean}), single)


def test_multilabel_statistics_count_positive_findings_and_skip_unknown_ones():
    x = torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 4.0], [7.0, 6.0]])
    y = torch.tensor([[1, 0], [1, float("nan")], [1, 1], [0, 1]], dtype=torch.float32)
    data = Tensors(x, None, torch.ones(4, dtype=torch.bool), torch.zeros(4, dtype=torch.bool), y)
    mean, count = class_statistics(data, "image", 2, "multilabel", 1)
    np.testing.assert_array_equal(count, [3, 2])
    np.testing.assert_allclose(mean, [[3.0, 2.0], [6.0, 5.0]])


def test_training_fills_a_missing_modality_with_its_class_prototype():
    protos = {"image": torch.arange(15.0).view(3, 5), "text": -torch.arange(12.0).view(3, 4)}
    ok = {"image": torch.tensor([True, True, False]), "text": torch.ones(3, dtype=torch.bool)}
    batch = Tensors(torch.zeros(4, 5), torch.ones(4, 4), torch.tensor([False, False, True, False]),
                    torch.tensor([True, True, False, True]), torch.tensor([1, 2, 0, 0]))
    out = label_fill(protos, ok, 3, "multiclass")(batch)
    assert out.m_img.tolist() == [True, False, True, True]  # class 2 has no image prototype
    assert out.m_txt.tolist() == [True, True, True, True]
    torch.testing.assert_close(out.x_img[0], protos["image"][1])
    torch.testing.assert_close(out.x_img[3], protos["image"][0])
    torch.testing.assert_close(out.x_txt[2], protos["text"][0])
    assert (out.x_img[1] == 0).all()
    # multi-label: the mean over the positive findings that have a prototype
    y = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, float("nan")]])
    ml = Tensors(torch.zeros(2, 5), torch.ones(2, 4), torch.zeros(2, dtype=torch.bool), torch.ones(2, dtype=torch.bool), y)
    out = label_fill(protos, ok, 3, "multilabel")(ml)
    torch.testing.assert_close(out.x_img[0], (protos["image"][0] + protos["image"][1]) / 2)
    assert out.m_img.tolist() == [True, False]  # no positive finding: left missing


def test_prediction_mixes_prototypes_by_the_present_modality_posterior():
    protos = {"image": torch.tensor([[1.0, 0.0], [0.0, 1.0]]), "text": torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 3.0]])}
    ok = {m: torch.ones(2, dtype=torch.bool) for m in protos}
    spec = ModelSpec("multiclass", 2, ("image", "text"), "features", 2, 3, (2,), dim=4)
    x_img = torch.tensor([[0.9, 0.1], [0.0, 0.0]])
    x_txt = torch.tensor([[0.0, 0.0, 0.0], [0.1, 0.0, 1.0]])
    batch = Tensors(x_img, x_txt, torch.tensor([True, False]), torch.tensor([False, True]), torch.zeros(2))
    sharp = PrototypeNet(build_model(spec, 0), protos, ok, temperature=1e-4).fill(batch)
    torch.testing.assert_close(sharp.x_txt[0], protos["text"][0])  # the nearest class's prototype
    torch.testing.assert_close(sharp.x_img[1], protos["image"][1])
    assert sharp.m_img.all() and sharp.m_txt.all()
    flat = PrototypeNet(build_model(spec, 0), protos, ok, temperature=1e4).fill(batch)
    torch.testing.assert_close(flat.x_txt[0], protos["text"].mean(0), atol=1e-3, rtol=0)  # ~uniform mix


def _trained(exp, impute: bool, **extra):
    exp = with_config(exp, method="prototype", prototype__impute=impute, rounds=1, local_epochs=1, **extra)
    from adamodal.runtime.simulator import Simulator

    sim = Simulator(exp, "/nonexistent", progress=False)
    sim.method.init_server()
    sim.run_round(1)
    return exp, sim


def test_imputation_is_live_in_training_and_prediction(small_experiment):
    exp, on = _trained(small_experiment, True)
    _, off = _trained(small_experiment, False)
    assert on.method.phases(1) == ["prototypes", "train"] and off.method.phases(1) == ["train"]
    assert "proto.image" not in off.method.eval_message(0).arrays  # impute=false sends plain FedAvg
    task = exp.spec.task
    # training: the image-only client learns from filled texts, so the global models differ
    diff = max(float(np.abs(on.method.global_params[k] - off.method.global_params[k]).max())
               for k in on.method.global_params if on.method.global_params[k].dtype.kind == "f")
    assert diff > 1e-3
    # prediction: the same trained weights with and without the fill
    with_fill = on.method.global_model()
    both = predict(with_fill, exp.test["both"], task)
    image = predict(with_fill, exp.test["image"], task)
    text = predict(with_fill, exp.test["text"], task)
    plain = on.method.model()  # the same instance, now without the wrapper
    np.testing.assert_allclose(predict(plain, exp.test["both"], task), both, atol=1e-6)  # pairs: untouched
    assert np.abs(predict(plain, exp.test["image"], task) - image).max() > 0.05
    assert np.abs(predict(plain, exp.test["text"], task) - text).max() > 0.01  # the gate trusts text more


def test_server_state_round_trips(small_experiment):
    exp, sim = _trained(small_experiment, True)
    state = sim.method.server_state()
    fresh = Prototype(exp.cfg, exp.spec, exp.infos())
    fresh.init_server()
    fresh.load_server_state(state)
    for k, v in sim.method.prototype_arrays().items():
        np.testing.assert_array_equal(fresh.prototype_arrays()[k], v)
    assert set(fresh.global_params) == set(sim.method.global_params)


@pytest.mark.parametrize(("overrides", "needle"), [
    ({"prototype.temperature": 0.0}, "prototype.temperature"),
    ({"prototype.min_count": 0}, "prototype.min_count"),
    ({"dp.noise": 1.0}, "dp.noise"),
])
def test_bad_settings_name_the_key(overrides, needle):
    conf = resolve({}, {"method": "prototype", "device": "cpu", **overrides})
    with pytest.raises(ConfigError, match=needle):
        Prototype(conf, SPEC, [ClientInfo(0, "multimodal", ("image", "text"), 10)])
    raw = ModelSpec("multiclass", 3, ("image", "text"), "raw", 5, 4, (5,))
    with pytest.raises(ConfigError, match="towers=frozen"):
        Prototype(resolve({}, {"method": "prototype"}), raw, [])


def test_batched_training_fills_like_sequential_training(small_experiment):
    """``batch_clients``: each client's fill runs inside the vmapped step as it would alone."""
    exp, sim = _trained(small_experiment, True, model__dropout=0.0)
    m = sim.method
    ctxs = [sim.clients.context(c.cid, 7 + c.cid) for c in exp.clients if c.group != "multimodal"]
    msgs = [m.configure("train", 2, [c.cid])[c.cid] for c in ctxs]
    together = m.client_steps("train", 2, ctxs, msgs)
    assert together is not None and m.client_steps("prototypes", 1, ctxs, msgs) is None
    for ctx, msg, reply in zip(ctxs, msgs, together, strict=True):
        alone = m.client_step("train", 2, ctx, msg)
        data = exp.test["image" if "image" in ctx.modalities else "text"]
        protos = m.prototype_arrays()
        p_together = predict(m.client_model(ctx, Message({**reply.arrays, **protos})), data, "multiclass")
        p_alone = predict(m.client_model(ctx, Message({**alone.arrays, **protos})), data, "multiclass")
        np.testing.assert_allclose(p_together, p_alone, atol=1e-3)
