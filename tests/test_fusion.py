"""Model parts and losses of AdaModal-Fed on toy data (fast, fixed seeds)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adamodal.fusion import (
    AdaModalNet,
    CrossAttentionImputer,
    ForgetGate,
    Knowledge,
    build_adamodal_net,
    info_nce,
    kd_loss,
    soft_targets,
)
from adamodal.model import ModelSpec, build_model


@pytest.fixture(autouse=True)
def one_thread():
    """These toy problems are tiny: thread synchronisation would dominate their run time."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


SPEC = ModelSpec(task="multiclass", num_classes=4, modalities=("image", "text"), input_kind="features",
                 img_dim=12, txt_dim=10, img_shape=(12,), dim=16, dropout=0.0)


@torch.no_grad()
def _kl(student_logits, teacher_logits, t=1.0):
    p = torch.softmax(teacher_logits / t, -1)
    return float((p * (p.log() - F.log_softmax(student_logits / t, -1))).sum(-1).mean())


def test_kd_lowers_the_students_kl_to_the_teacher():
    torch.manual_seed(0)
    x = torch.randn(256, 8)
    teacher, student = nn.Linear(8, 5), nn.Linear(8, 5)
    with torch.no_grad():
        t_logits = teacher(x) * 3
    before = _kl(student(x), t_logits)
    opt = torch.optim.Adam(student.parameters(), lr=0.05)
    target = soft_targets([t_logits], 2.0, "multiclass")
    for _ in range(100):
        loss = kd_loss(student(x), target, 2.0, "multiclass")
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = _kl(student(x), t_logits)
    assert after < 0.3 * before


def test_kd_loss_is_zero_only_at_the_teacher():
    torch.manual_seed(1)
    logits = torch.randn(6, 4)
    for task in ("multiclass", "multilabel"):
        same = kd_loss(logits, soft_targets([logits], 3.0, task), 3.0, task)
        other = kd_loss(torch.randn(6, 4), soft_targets([logits], 3.0, task), 3.0, task)
        assert float(same) == pytest.approx(0.0, abs=1e-5)
        assert float(other) > 1e-3


def test_soft_targets_average_teacher_probabilities():
    a = torch.tensor([[10.0, 0.0]])
    b = torch.tensor([[0.0, 10.0]])
    avg = soft_targets([a, b], 1.0, "multiclass")
    assert torch.allclose(avg, torch.tensor([[0.5, 0.5]]), atol=1e-4)


def test_infonce_raises_paired_over_unpaired_cosine():
    torch.manual_seed(0)
    z = torch.randn(200, 6)  # a latent shared by both modalities
    xa = z @ torch.randn(6, 20) + 0.1 * torch.randn(200, 20)
    xb = z @ torch.randn(6, 14) + 0.1 * torch.randn(200, 14)
    pa, pb = nn.Linear(20, 8), nn.Linear(14, 8)

    def gap():
        with torch.no_grad():
            s = F.normalize(pa(xa), dim=-1) @ F.normalize(pb(xb), dim=-1).T
        paired = s.diag().mean()
        unpaired = (s.sum() - s.diag().sum()) / (len(s) * (len(s) - 1))
        return float(paired - unpaired)

    before = gap()
    opt = torch.optim.Adam([*pa.parameters(), *pb.parameters()], lr=0.01)
    for step in range(150):
        rows = torch.arange(step * 32 % 200, step * 32 % 200 + 32) % 200
        loss = info_nce(pa(xa[rows]), pb(xb[rows]), 0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = gap()
    assert after > 0.5
    assert after > before + 0.4


def test_infonce_needs_two_pairs():
    x = torch.randn(1, 4, requires_grad=True)
    assert float(info_nce(x, x, 0.1).detach()) == 0.0


def _toy_pairs(seed=0, k=6, per=30, dim=16):
    """Paired clusters: image cluster j goes with text cluster j (a different place)."""
    g = torch.Generator().manual_seed(seed)
    ci, ct = torch.randn(k, dim, generator=g) * 2, torch.randn(k, dim, generator=g) * 2
    lab = torch.arange(k).repeat_interleave(per)
    img = ci[lab] + 0.4 * torch.randn(len(lab), dim, generator=g)
    txt = ct[lab] + 0.4 * torch.randn(len(lab), dim, generator=g)
    return img, txt, ci, ct


def test_imputer_trained_on_pairs_beats_mean_imputation():
    torch.manual_seed(0)
    img, txt, _, _ = _toy_pairs()
    # the server's view: per-cluster centroids of each modality, row j paired with row j
    keys = torch.stack([img[j * 30:(j + 1) * 30].mean(0) for j in range(6)])
    values = torch.stack([txt[j * 30:(j + 1) * 30].mean(0) for j in range(6)])
    ca = CrossAttentionImputer(16, heads=2, key_dim=8, rank=8)
    opt = torch.optim.Adam(ca.parameters(), lr=0.01)
    train, test = torch.arange(0, 180, 2), torch.arange(1, 180, 2)
    for _ in range(200):
        loss = F.mse_loss(ca(img[train], keys, values), txt[train])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        mse_ca = F.mse_loss(ca(img[test], keys, values), txt[test])
    mse_mean = F.mse_loss(txt[train].mean(0).expand(len(test), -1), txt[test])
    assert float(mse_ca) < 0.5 * float(mse_mean)


def test_imputer_attention_is_a_distribution():
    ca = CrossAttentionImputer(16, heads=4)
    w = ca.attention(torch.randn(5, 16), torch.randn(7, 16))
    assert w.shape == (5, 4, 7)
    assert torch.allclose(w.sum(-1), torch.ones(5, 4), atol=1e-5)
    assert torch.all(w >= 0)


def test_forget_gate_output_lies_between_r_and_z():
    torch.manual_seed(0)
    gate = ForgetGate(16, tau=0.5)
    for layer in gate.linear:  # a gate far from its initial value
        nn.init.normal_(layer.weight, std=0.3)
    r, z = torch.randn(64, 16), torch.randn(64, 16)
    out = gate(r, z)
    lo, hi = torch.minimum(r, z), torch.maximum(r, z)
    assert torch.all(out >= lo - 1e-6) and torch.all(out <= hi + 1e-6)
    g = gate.gate(r, z)
    assert torch.all((g >= 0) & (g <= 1)) and g.std() > 0.1
    # the temperature sharpens the gate: at small tau, g is nearer to 0 or 1
    sharp = ForgetGate(16, tau=0.05)
    sharp.load_state_dict(gate.state_dict())
    assert (sharp.gate(r, z) - 0.5).abs().mean() > (g - 0.5).abs().mean()


def _knowledge(model: AdaModalNet, k=5):
    rng = np.random.default_rng(0)
    c_img = rng.normal(size=(k, 16)).astype(np.float32)
    c_txt = rng.normal(size=(k, 16)).astype(np.float32)
    pi = rng.permutation(k)
    return {"C_img": c_img, "C_txt": c_txt, "pi": pi, "mean_img": c_img.mean(0), "mean_txt": c_txt.mean(0)}


def _batch(n=8, img=True, txt=True):
    torch.manual_seed(3)
    return (torch.randn(n, 12), torch.randn(n, 10), torch.full((n,), img), torch.full((n,), txt))


def test_adamodalnet_starts_as_the_seeds_multimodalnet():
    """Frozen seed matrices + zero low-rank updates: the same function as MultimodalNet."""
    base, ada = build_model(SPEC, 7).eval(), build_adamodal_net(SPEC, 7).eval()
    for k, v in base.state_dict().items():
        if k in ada.state_dict():
            assert torch.equal(v, ada.state_dict()[k])
    batch = _batch()
    assert torch.allclose(base(*batch), ada(*batch), atol=1e-5)


def test_key_roles_split_frozen_global_and_personal():
    from adamodal.fusion import key_modality, key_role

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


def test_knowledge_pairs_text_rows_by_pi():
    model = build_adamodal_net(SPEC, 0)
    arrays = _knowledge(model)
    k = Knowledge.from_arrays(arrays, "cpu")
    assert k is not None and k.paired
    assert torch.allclose(k.keys["text"][0], torch.as_tensor(arrays["C_txt"][arrays["pi"][0]]))
    assert torch.equal(k.protos["text"], k.keys["text"])  # no Z sent: prototypes = centroids


def test_missing_modality_is_imputed_not_zero():
    model = build_adamodal_net(SPEC, 0, gate=False).eval()
    x_img, x_txt, m_img, m_txt = _batch(txt=False)
    zero_filled = model(x_img, torch.zeros_like(x_txt), m_img, m_txt)
    model.set_knowledge(_knowledge(model))
    imputed = model(x_img, torch.zeros_like(x_txt), m_img, m_txt)
    assert not torch.allclose(zero_filled, imputed)
    # the imputation depends only on the image, never on what sits in the text slot
    again = model(x_img, torch.randn_like(x_txt), m_img, m_txt)
    assert torch.allclose(imputed, again, atol=1e-6)
    # impute=zero keeps the baseline behaviour (masked zero slot)
    base = build_adamodal_net(SPEC, 0, impute="zero", gate=False).eval()
    base.set_knowledge(_knowledge(base))
    assert torch.allclose(base(x_img, torch.zeros_like(x_txt), m_img, m_txt), zero_filled, atol=1e-6)


def test_impute_modes_give_what_they_say():
    model = build_adamodal_net(SPEC, 0, impute="mean", gate=False)
    arrays = _knowledge(model)
    model.set_knowledge(arrays)
    r = torch.randn(3, 16)
    assert torch.allclose(model.impute("text", "image", r), torch.as_tensor(arrays["mean_txt"]).expand(3, -1))
    hard = build_adamodal_net(SPEC, 0, cross_attention=False, gate=False).set_knowledge(arrays)
    k = hard.knowledge
    out = hard.impute("text", "image", k.keys["image"][[2, 0]] + 1e-3)
    assert torch.allclose(out, k.keys["text"][[2, 0]])  # the matched centroid of the nearest cluster


def test_modality_dropout_only_in_training():
    model = build_adamodal_net(SPEC, 0, modality_dropout=0.99)
    model.set_knowledge(_knowledge(model))
    batch = _batch()
    model.eval()
    a = model(*batch)
    b = model(*batch)
    assert torch.allclose(a, b)
    model.train()
    torch.manual_seed(0)
    c = model(*batch)
    assert set(model.last["imputed"]) == {"image", "text"}
    assert not torch.allclose(a, c)


def test_unimodal_views_are_what_a_unimodal_client_predicts():
    """In training, each paired row is also scored as an image-only and as a text-only client
    would score it; the view must be exactly the model's prediction with the other modality
    missing (imputed), or the view loss would train the head on inputs nobody predicts from."""
    model = build_adamodal_net(SPEC, 0, unimodal_views=True)
    model.set_knowledge(_knowledge(model))
    x_img, x_txt, m_img, m_txt = _batch()
    model.train()
    model(x_img, x_txt, m_img, m_txt)
    views = model.last["views"]
    assert set(views) == {"image", "text", "paired"} and bool(views["paired"].all())
    model.eval()
    with torch.no_grad():
        image_only = model(x_img, torch.zeros_like(x_txt), m_img, torch.zeros_like(m_txt))
        text_only = model(torch.zeros_like(x_img), x_txt, torch.zeros_like(m_img), m_txt)
    assert torch.allclose(views["image"], image_only, atol=1e-5)
    assert torch.allclose(views["text"], text_only, atol=1e-5)
    # off by default, and never at prediction time
    plain = build_adamodal_net(SPEC, 0).set_knowledge(_knowledge(model))
    plain.train()
    plain(x_img, x_txt, m_img, m_txt)
    assert plain.last["views"] == {}


def test_unimodal_views_teach_the_head_to_predict_from_one_modality():
    """Trained on paired rows only, the head predicts image-only rows (image + imputed text)
    better when the paired rows are also scored as image-only views."""
    torch.manual_seed(0)
    n, classes = 96, 4
    y = torch.arange(n) % classes
    img_means, txt_means = torch.randn(classes, 12), torch.randn(classes, 10) * 3
    x_img = img_means[y] + 0.8 * torch.randn(n, 12)
    x_txt = txt_means[y] + 0.1 * torch.randn(n, 10)  # the text is the easy modality
    on = torch.ones(n, dtype=torch.bool)
    losses = {}
    for views in (False, True):
        model = build_adamodal_net(SPEC, 0, unimodal_views=views, gate=False)
        with torch.no_grad():  # centroids: class means of each modality in the shared space, paired
            reps = model.encode(x_img, x_txt)
            c_img = torch.stack([reps["image"][y == c].mean(0) for c in range(classes)]).numpy()
            c_txt = torch.stack([reps["text"][y == c].mean(0) for c in range(classes)]).numpy()
        model.set_knowledge({"C_img": c_img, "C_txt": c_txt, "pi": np.arange(classes)})
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        torch.manual_seed(1)
        for _ in range(40):
            model.train()
            loss = F.cross_entropy(model(x_img, x_txt, on, on), y)
            if views:
                loss = loss + F.cross_entropy(model.last["views"]["image"], y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            losses[views] = float(F.cross_entropy(model(x_img, torch.zeros_like(x_txt), on, ~on), y))
    assert losses[True] < 0.7 * losses[False], losses


def test_experts_only_touch_rows_with_one_modality():
    plain = build_adamodal_net(SPEC, 0).eval()
    expert = build_adamodal_net(SPEC, 0, experts=True).eval()
    x_img, x_txt, _, _ = _batch(6)
    m_img = torch.tensor([1, 1, 0, 1, 1, 0]).bool()
    m_txt = torch.tensor([1, 0, 1, 1, 0, 1]).bool()
    a, b = plain(x_img, x_txt, m_img, m_txt), expert(x_img, x_txt, m_img, m_txt)
    both = m_img & m_txt
    assert torch.allclose(a[both], b[both], atol=1e-6)  # same seed weights, head untouched
    assert not torch.allclose(a[~both], b[~both])
    assert torch.allclose(torch.softmax(b, -1).sum(-1), torch.ones(6), atol=1e-5)  # still log-probabilities
    # an image-only row's prediction is the mean of the head's and the image expert's
    feats = expert.expert_logits()
    row = 1
    mean = 0.5 * (torch.softmax(a[row], -1) + torch.softmax(feats["image"][row], -1))
    assert torch.allclose(torch.softmax(b[row], -1), mean, atol=1e-5)


def test_expert_layernorm_lets_a_few_adam_steps_fit_small_scale_features():
    """Sentence embeddings have entries around 0.05: an expert normalises them so that the few
    federated epochs it gets are enough, where a plain linear layer is still near uniform."""
    from adamodal.fusion import ModalityExpert

    torch.manual_seed(0)
    n, classes, dim = 128, 4, 64
    y = torch.arange(n) % classes
    x = F.normalize(torch.randn(classes, dim)[y] + 0.5 * torch.randn(n, dim), dim=-1)  # unit rows
    losses = {}
    for name, model in (("expert", ModalityExpert(dim, classes)), ("linear", nn.Linear(dim, classes))):
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        for _ in range(30):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        losses[name] = float(F.cross_entropy(model(x), y).detach())
    assert losses["expert"] < 0.5 * losses["linear"], losses
