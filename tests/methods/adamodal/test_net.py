"""AdaModalNet: the stages' order in one forward pass, on toy sizes."""

from __future__ import annotations

import torch

from adamodal.methods.adamodal.net import build_adamodal_net, key_modality, key_role
from adamodal.methods.adamodal.summarize import Knowledge
from adamodal.model import ModelSpec, build_model
from tests.methods.adamodal.conftest import SPEC, toy_batch, toy_knowledge


def test_adamodalnet_starts_as_the_seeds_multimodalnet():
    """Frozen seed matrices + zero low-rank updates: the same function as MultimodalNet."""
    base, ada = build_model(SPEC, 7).eval(), build_adamodal_net(SPEC, 7).eval()
    for k, v in base.state_dict().items():
        if k in ada.state_dict():
            assert torch.equal(v, ada.state_dict()[k])
    batch = toy_batch()
    assert torch.allclose(base(*batch), ada(*batch), atol=1e-5)


def test_key_roles_split_frozen_global_and_personal():
    model = build_adamodal_net(SPEC, 0, personal_rank=2)
    roles = {k: key_role(k) for k in model.state_dict()}
    assert roles["img_proj.linear.base.weight"] == "frozen"
    assert roles["img_proj.p_up.weight"] == "personal"
    assert roles["img_proj.linear.up.weight"] == "global" and roles["imputer.w_q.weight"] == "global"
    frozen = {k for k, r in roles.items() if r == "frozen"}
    assert frozen == {k for k, p in model.named_parameters() if not p.requires_grad}
    assert key_modality("txt_proj.gain") == "text" and key_modality("adapter.net.0.up.weight") is None
    # at the emoji sizes the low-rank updates make the shared part far smaller than the model
    real = ModelSpec(task="multiclass", num_classes=9, modalities=("image", "text"), input_kind="features",
                     img_dim=1280, txt_dim=384, img_shape=(1280,), dim=256)
    state = build_adamodal_net(real, 0).state_dict()
    shared = sum(v.numel() for k, v in state.items() if key_role(k) == "global")
    assert shared < 0.5 * sum(v.numel() for v in build_model(real, 0).state_dict().values())


def test_missing_modality_is_imputed_not_zero():
    model = build_adamodal_net(SPEC, 0, gate=False).eval()
    x_img, x_txt, m_img, m_txt = toy_batch(txt=False)
    zero_filled = model(x_img, torch.zeros_like(x_txt), m_img, m_txt)
    model.set_knowledge(toy_knowledge())
    imputed = model(x_img, torch.zeros_like(x_txt), m_img, m_txt)
    assert not torch.allclose(zero_filled, imputed)
    # the imputation depends only on the image, never on what sits in the text slot
    again = model(x_img, torch.randn_like(x_txt), m_img, m_txt)
    assert torch.allclose(imputed, again, atol=1e-6)
    # impute=zero keeps the baseline behaviour (masked zero slot)
    base = build_adamodal_net(SPEC, 0, impute="zero", gate=False).eval()
    base.set_knowledge(toy_knowledge())
    assert torch.allclose(base(x_img, torch.zeros_like(x_txt), m_img, m_txt), zero_filled, atol=1e-6)


def test_impute_modes_give_what_they_say():
    arrays = toy_knowledge()
    model = build_adamodal_net(SPEC, 0, impute="mean", gate=False).set_knowledge(arrays)
    r = torch.randn(3, 16)
    assert torch.allclose(model.impute("text", "image", r), torch.as_tensor(arrays["mean_txt"]).expand(3, -1))
    hard = build_adamodal_net(SPEC, 0, cross_attention=False, gate=False).set_knowledge(arrays)
    k = hard.knowledge
    out = hard.impute("text", "image", k.keys["image"][[2, 0]] + 1e-3)
    assert torch.allclose(out, k.keys["text"][[2, 0]])  # the matched centroid of the nearest cluster


def test_gate_mixes_each_row_with_its_nearest_clusters_prototype():
    arrays = toy_knowledge()
    model = build_adamodal_net(SPEC, 0).set_knowledge(arrays).eval()
    x_img, x_txt, m_img, m_txt = toy_batch()
    fwd = model.run(x_img, x_txt, m_img, m_txt)
    assert set(fwd.gates) == {"image", "text"}
    k = Knowledge.from_arrays(arrays, "cpu")
    r = fwd.reps["image"]
    expect = k.protos["image"][torch.cdist(r, k.keys["image"]).argmin(1)]
    assert torch.allclose(fwd.protos["image"], expect)
    off = build_adamodal_net(SPEC, 0, gate=False).set_knowledge(arrays).eval()
    assert off.run(x_img, x_txt, m_img, m_txt).gates == {}
    assert not torch.allclose(off(x_img, x_txt, m_img, m_txt), fwd.logits)  # the gate changes predictions


def test_hidden_rows_are_imputed_like_missing_ones():
    """Modality dropout hides a modality a row really has: the row must then be predicted
    exactly as if it lacked it, and under impute=zero it is masked (still hidden)."""
    for impute in ("cross_attention", "zero"):
        model = build_adamodal_net(SPEC, 0, impute=impute).set_knowledge(toy_knowledge()).eval()
        x_img, x_txt, m_img, m_txt = toy_batch()
        hide = {"image": torch.zeros_like(m_img), "text": torch.ones_like(m_txt)}
        hidden = model.run(x_img, x_txt, m_img, m_txt, hide=hide).logits
        image_only = model(x_img, x_txt, m_img, torch.zeros_like(m_txt))
        assert torch.allclose(hidden, image_only, atol=1e-5), impute
        assert not torch.allclose(hidden, model(x_img, x_txt, m_img, m_txt)), impute


def test_the_imputer_is_kept_only_where_it_imputes():
    """Under impute=zero (the default) or mean, and with cross_attention off, no imputer is
    kept, so none is loaded, hashed or sent; every other weight is the same draw of the seed."""
    full = build_adamodal_net(SPEC, 4, impute="cross_attention").state_dict()
    assert any(k.startswith("imputer.") for k in full)
    for options in ({"impute": "zero"}, {"impute": "mean"}, {"impute": "cross_attention", "cross_attention": False}):
        model = build_adamodal_net(SPEC, 4, **options)
        assert model.imputer is None
        state = model.state_dict()
        assert not any(k.startswith("imputer.") for k in state)
        assert state.keys() == {k for k in full if not k.startswith("imputer.")}
        assert all(torch.equal(v, full[k]) for k, v in state.items())


def test_one_gate_pass_for_both_modalities_is_a_pass_per_modality():
    model = build_adamodal_net(SPEC, 0).set_knowledge(toy_knowledge()).eval()
    x_img, x_txt, m_img, m_txt = toy_batch()
    fwd = model.run(x_img, x_txt, m_img, m_txt)
    for m in ("image", "text"):
        mixed, gate = model.gate(fwd.reps[m], fwd.protos[m])
        assert torch.allclose(fwd.gates[m], gate, atol=1e-6)
        one_mixed, one_gate = model.gated({m: fwd.reps[m]}, {m: fwd.protos[m]})
        assert torch.allclose(one_mixed[m], mixed, atol=1e-6) and torch.allclose(one_gate[m], gate, atol=1e-6)
    # the mixed representation is what the fusion reads: a different prototype moves the logits
    far = {m: z + 5.0 for m, z in fwd.protos.items()}
    assert not torch.allclose(model.gated(fwd.reps, far)[0]["image"], model.gated(fwd.reps, fwd.protos)[0]["image"])
