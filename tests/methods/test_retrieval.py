"""Retrieval imputation (CAR-MFL): the partner is the nearest public pair of agreeing label,
the public items belong to nobody, the stage is live, uploads are parameters only, the
encoder of a missing modality is down-weighted, and no public set is one clear error."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adamodal.config import resolve
from adamodal.errors import ConfigError
from adamodal.kit.tensors import Tensors
from adamodal.kit.train import predict
from adamodal.methods._fill import label_agreement, nearest
from adamodal.methods.base import ClientInfo
from adamodal.methods.retrieval import Public, Retrieval, RetrievalNet
from adamodal.model import ModelSpec, build_model
from adamodal.runtime.simulator import Simulator
from tests.conftest import with_config

SPEC = ModelSpec(task="multiclass", num_classes=4, modalities=("image", "text"), input_kind="features",
                 img_dim=6, txt_dim=5, img_shape=(6,), dim=8)


def _public(n: int = 60, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"public.x_img": rng.normal(size=(n, 6)).astype(np.float32),
            "public.x_txt": rng.normal(size=(n, 5)).astype(np.float32),
            "public.y": rng.integers(0, 4, n).astype(np.int64)}


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return a @ b.T


def test_training_partner_is_the_nearest_public_pair_of_the_same_class():
    pub = _public()
    rng = np.random.default_rng(1)
    n = 40
    x_img = torch.as_tensor(rng.normal(size=(n, 6)).astype(np.float32))
    x_txt = torch.as_tensor(rng.normal(size=(n, 5)).astype(np.float32))
    has_img = torch.as_tensor(rng.random(n) < 0.5)
    has_txt = ~has_img
    has_img[:5] = has_txt[:5] = True  # pairs: nothing to fill
    y = torch.as_tensor(rng.integers(0, 4, n))
    batch = Tensors(x_img * has_img.unsqueeze(1), x_txt * has_txt.unsqueeze(1), has_img, has_txt, y)
    out = Public(pub).label_fill("multiclass")(batch)
    assert out.m_img.all() and out.m_txt.all()
    sim_img = _cosine(x_img.numpy(), pub["public.x_img"])
    sim_txt = _cosine(x_txt.numpy(), pub["public.x_txt"])
    for i in range(n):
        if bool(has_img[i] and has_txt[i]):
            np.testing.assert_array_equal(out.x_img[i], x_img[i])
            np.testing.assert_array_equal(out.x_txt[i], x_txt[i])
            continue
        sims = sim_img[i] if has_img[i] else sim_txt[i]
        same = np.flatnonzero(pub["public.y"] == int(y[i]))
        j = same[np.argmax(sims[same])]
        assert pub["public.y"][j] == int(y[i])
        if has_img[i]:
            np.testing.assert_array_equal(out.x_txt[i], pub["public.x_txt"][j])
            np.testing.assert_array_equal(out.x_img[i], x_img[i])
        else:
            np.testing.assert_array_equal(out.x_img[i], pub["public.x_img"][j])
    # without label agreement the partner would often be another one: the agreement matters
    free = nearest(x_img[~has_txt], torch.as_tensor(pub["public.x_img"]))
    agreed = nearest(x_img[~has_txt], torch.as_tensor(pub["public.x_img"]),
                     label_agreement(y[~has_txt], torch.as_tensor(pub["public.y"]), "multiclass"))
    assert (free != agreed).float().mean() > 0.3


def test_multilabel_agreement_is_jaccard_and_an_unseen_class_falls_back_to_distance():
    a = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, float("nan")]])
    b = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(label_agreement(a, b, "multilabel"), torch.tensor([[1.0, 0.5, 0.0], [0.0, 0.0, 1.0]]))
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]])
    none_agree = torch.zeros(1, 3)  # no public pair of the row's class: every pair ties
    assert int(nearest(torch.tensor([[1.0, 0.1]]), bank, none_agree)) == 0


def test_prediction_uses_distance_only_and_k_averages():
    pub = _public()
    spec = SPEC
    x_txt = torch.as_tensor(np.random.default_rng(2).normal(size=(3, 5)).astype(np.float32))
    batch = Tensors(torch.zeros(3, 6), x_txt, torch.zeros(3, dtype=torch.bool), torch.ones(3, dtype=torch.bool), torch.zeros(3))
    sims = _cosine(x_txt.numpy(), pub["public.x_txt"])
    one = RetrievalNet(build_model(spec, 0), Public(pub), k=1).fill(batch)
    np.testing.assert_allclose(one.x_img.numpy(), pub["public.x_img"][sims.argmax(1)], rtol=1e-6)
    three = RetrievalNet(build_model(spec, 0), Public(pub), k=3).fill(batch)
    top3 = np.argsort(-sims, axis=1)[:, :3]
    np.testing.assert_allclose(three.x_img.numpy(), pub["public.x_img"][top3].mean(1), rtol=1e-5, atol=1e-6)
    assert one.m_img.all()


def test_public_items_belong_to_no_client_and_not_to_the_test_set(experiment_for):
    exp = experiment_for("retrieval")
    sc = exp.scenario
    public = set(sc.public.idx.tolist())
    assert len(public) > 0 and len(exp.public) == len(sc.public)
    for c in sc.clients:
        for split, view in c.splits.items():
            assert not public & set(view.idx.tolist()), f"client {c.cid} {split}"
    for cond, view in sc.test.items():
        assert not public & set(view.idx.tolist()), f"server test {cond}"
    # the runtime handed the method exactly that set
    sim = Simulator(exp, "/nonexistent", progress=False)
    np.testing.assert_array_equal(sim.method.public_arrays["public.x_txt"], exp.public.x_txt.numpy())


def _one_round(exp, impute: bool):
    sim = Simulator(with_config(exp, method="retrieval", split__public=0.1, retrieval__impute=impute,
                                rounds=1, local_epochs=1), "/nonexistent", progress=False)
    sim.method.init_server()
    sim.run_round(1)
    return sim


def test_retrieval_is_live_in_training_and_prediction(experiment_for):
    exp = experiment_for("retrieval")
    on, off = _one_round(exp, True), _one_round(exp, False)
    assert "public.x_img" not in off.method.eval_message(0).arrays
    g_on, g_off = on.method.global_params, off.method.global_params
    assert max(float(np.abs(g_on[k] - g_off[k]).max()) for k in g_on if g_on[k].dtype.kind == "f") > 1e-3
    task = exp.spec.task
    filled = on.method.global_model()
    image, text, both = (predict(filled, exp.test[c], task) for c in ("image", "text", "both"))
    plain = on.method.model()
    np.testing.assert_allclose(predict(plain, exp.test["both"], task), both, atol=1e-6)
    assert np.abs(predict(plain, exp.test["image"], task) - image).max() > 0.05
    assert np.abs(predict(plain, exp.test["text"], task) - text).max() > 0.01


def test_only_parameters_leave_a_client(experiment_for):
    exp = with_config(experiment_for("retrieval"), method="retrieval", split__public=0.1)
    m = Retrieval(exp.cfg, exp.spec, exp.infos())
    m.set_public(exp.public)
    m.init_server()
    msg = m.configure("train", 1, [0])[0]
    assert {k for k in msg.arrays if k.startswith("public.")} == {"public.x_img", "public.x_txt", "public.y"}
    schema = m.reply_schema("train", 1, 0, msg)
    assert set(schema) == set(m.global_params)  # the trained model, nothing else


def test_encoders_of_a_missing_modality_are_down_weighted():
    conf = resolve({}, {"method": "retrieval", "split.public": 0.1, "retrieval.alpha": 0.25, "device": "cpu"})
    infos = [ClientInfo(0, "multimodal", ("image", "text"), 10), ClientInfo(1, "image_only", ("image",), 30),
             ClientInfo(2, "text_only", ("text",), 20)]
    m = Retrieval(conf, SPEC, infos)
    updates = [{"img_proj.linear.weight": np.full(2, float(c)), "txt_proj.linear.weight": np.full(2, float(c)),
                "classifier.weight": np.full(2, float(c))} for c in range(3)]
    out = m.combine([0, 1, 2], updates, [10.0, 30.0, 20.0])
    np.testing.assert_allclose(out["classifier.weight"], (0 * 10 + 1 * 30 + 2 * 20) / 60)
    # image encoder: the text-only client counts 0.25 * 20
    np.testing.assert_allclose(out["img_proj.linear.weight"], (1 * 30 + 2 * 5) / (10 + 30 + 5))
    # text encoder: the image-only client counts 0.25 * 30
    np.testing.assert_allclose(out["txt_proj.linear.weight"], (1 * 7.5 + 2 * 20) / (10 + 7.5 + 20))


def test_no_public_set_is_one_clear_error():
    conf = resolve({}, {"method": "retrieval", "device": "cpu"})
    with pytest.raises(ConfigError, match=r"split\.public > 0"):
        Retrieval(conf, SPEC, [])
    for key, value in (("retrieval.alpha", 1.5), ("retrieval.k", 0)):
        bad = resolve({}, {"method": "retrieval", "split.public": 0.1, key: value})
        with pytest.raises(ConfigError, match=key):
            Retrieval(bad, SPEC, [])
    m = Retrieval(resolve({}, {"method": "retrieval", "split.public": 0.1}), SPEC, [])
    with pytest.raises(ConfigError, match="no public set"):
        m.init_server()


def test_a_run_without_public_set_stops_before_training(small_experiment, tmp_path):
    exp = with_config(small_experiment, method="retrieval")
    with pytest.raises(ConfigError, match=r"split\.public"):
        Simulator(exp, tmp_path, progress=False)
