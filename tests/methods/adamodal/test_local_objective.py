"""The client's local objective: every default term reaches the parameters it trains, and
modality dropout hides one modality of paired rows only."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from adamodal.methods.adamodal.local import (
    LocalTerms,
    dropout_masks,
    info_nce,
    local_terms,
    replay_loss,
)
from adamodal.methods.adamodal.net import build_adamodal_net
from tests.methods.adamodal.conftest import SPEC, toy_batch, toy_knowledge


def _grads(terms: LocalTerms) -> dict[str, float]:
    """Gradient norm per module of the local terms alone (no task loss)."""
    model = build_adamodal_net(SPEC, 0).set_knowledge(toy_knowledge())
    model.train()
    x_img, x_txt, m_img, m_txt = toy_batch(16)
    fwd = model.run(x_img, x_txt, m_img, m_txt, impute_all=True)
    local_terms(fwd, terms).backward()
    out: dict[str, float] = {}
    for name, p in model.named_parameters():
        if p.grad is not None:
            module = name.split(".")[0]
            out[module] = out.get(module, 0.0) + float(p.grad.norm())
    return out


def test_each_default_term_reaches_its_parameters():
    off = LocalTerms(infonce_weight=0.0, impute_weight=0.0, beta=0.0)
    assert sum(_grads(off).values()) == 0.0
    nce = _grads(LocalTerms(infonce_weight=0.5, impute_weight=0.0, beta=0.0))
    assert nce["img_proj"] > 0 and nce["txt_proj"] > 0 and nce.get("imputer", 0.0) == 0.0
    imp = _grads(LocalTerms(infonce_weight=0.0, impute_weight=1.0, beta=0.0))
    assert imp["imputer"] > 0  # the imputer learns from the real other modality
    beta = _grads(LocalTerms(infonce_weight=0.0, impute_weight=0.0, beta=0.1))
    assert beta["img_proj"] > 0 and beta["txt_proj"] > 0  # representations pulled toward Z
    assert beta.get("imputer", 0.0) == 0.0


def test_dropout_hides_one_modality_of_paired_rows_at_rate_p():
    n = 4000
    m_img = torch.ones(n, dtype=torch.bool)
    m_txt = torch.arange(n) % 4 != 0  # a quarter of the rows have no text
    hide = dropout_masks(m_img, m_txt, 0.3, torch.Generator().manual_seed(0))
    assert not bool((hide["image"] & hide["text"]).any())
    assert not bool(((hide["image"] | hide["text"]) & ~(m_img & m_txt)).any())  # only paired rows
    rate = float((hide["image"] | hide["text"])[m_img & m_txt].float().mean())
    assert abs(rate - 0.3) < 0.03
    assert abs(float(hide["image"].sum()) - float(hide["text"].sum())) < 0.15 * float(hide["image"].sum())
    assert dropout_masks(m_img, m_txt, 0.0, None) is None


def test_infonce_raises_paired_over_unpaired_cosine():
    torch.manual_seed(0)
    z = torch.randn(200, 6)  # a latent shared by both modalities
    xa = z @ torch.randn(6, 20) + 0.1 * torch.randn(200, 20)
    xb = z @ torch.randn(6, 14) + 0.1 * torch.randn(200, 14)
    pa, pb = nn.Linear(20, 8), nn.Linear(14, 8)

    def gap():
        with torch.no_grad():
            s = F.normalize(pa(xa), dim=-1) @ F.normalize(pb(xb), dim=-1).T
        return float(s.diag().mean() - (s.sum() - s.diag().sum()) / (len(s) * (len(s) - 1)))

    before = gap()
    opt = torch.optim.Adam([*pa.parameters(), *pb.parameters()], lr=0.01)
    for step in range(150):
        rows = torch.arange(step * 32 % 200, step * 32 % 200 + 32) % 200
        loss = info_nce(pa(xa[rows]), pb(xb[rows]), 0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = gap()
    assert after > 0.5 and after > before + 0.4


def test_infonce_needs_two_pairs():
    x = torch.randn(1, 4, requires_grad=True)
    assert float(info_nce(x, x, 0.1).detach()) == 0.0


def test_infonce_is_the_mean_of_both_directions():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(7, 5, generator=g), torch.randn(7, 5, generator=g)
    logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / 0.2
    target = torch.arange(7)
    expect = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    assert torch.allclose(info_nce(a, b, 0.2), expect, atol=1e-6)
    assert not torch.allclose(info_nce(a, b, 0.2), F.cross_entropy(logits, target), atol=1e-4)


def test_local_terms_on_an_all_paired_batch_equal_the_gathered_rows():
    """The all-paired shortcut (no gather) gives the loss of the rows it would have gathered."""
    model = build_adamodal_net(SPEC, 0).set_knowledge(toy_knowledge()).eval()
    x_img, x_txt, m_img, m_txt = toy_batch(10)
    terms = LocalTerms(infonce_weight=1.0, impute_weight=0.0, beta=0.0)
    fwd = model.run(x_img, x_txt, m_img, m_txt)
    all_paired = local_terms(fwd, terms)
    some = m_txt.clone()
    some[[0, 3]] = False  # two rows without text: InfoNCE over the other eight pairs
    part = model.run(x_img, x_txt, m_img, some)
    keep = m_img & some
    expect = info_nce(fwd.reps["image"][keep], fwd.reps["text"][keep], terms.infonce_temperature)
    assert torch.allclose(local_terms(part, terms), expect, atol=1e-6)
    assert not torch.allclose(all_paired, expect, atol=1e-4)
    assert torch.allclose(all_paired, info_nce(fwd.reps["image"], fwd.reps["text"], terms.infonce_temperature))


def _with_prototypes(model, protos: np.ndarray):
    return model.set_knowledge({**toy_knowledge(), "P_img": protos, "Pn_img": np.ones(len(protos), np.float32)})


def test_replay_rows_ride_on_the_batch_without_changing_it():
    """The prototypes appended to the batch's pass: the batch's logits are what they are
    without them, and each prototype's logits are those of a one-modality row on its own."""
    protos = np.random.default_rng(1).normal(size=(4, 16)).astype(np.float32)
    model = _with_prototypes(build_adamodal_net(SPEC, 0), protos).eval()
    x_img, x_txt, m_img, m_txt = toy_batch(6, txt=False)
    fwd = model.run(x_img, x_txt, m_img, m_txt, replay=True)
    assert torch.allclose(fwd.logits, model.run(x_img, x_txt, m_img, m_txt).logits, atol=1e-6)
    (logits, labels), = fwd.replay
    c = model.knowledge.classes["image"]
    alone, _ = model.gated({"image": c.reps}, {"image": c.z})
    on = torch.ones(4, dtype=torch.bool)
    assert torch.allclose(logits, model.classifier(model.fuse(alone, on, ~on)), atol=1e-5)
    assert labels.tolist() == [0, 1, 2, 3]
    assert model.run(x_img, x_txt, m_img, m_txt).replay == []  # only when asked


def test_replay_reaches_the_shared_head_not_the_projections():
    protos = np.random.default_rng(1).normal(size=(4, 16)).astype(np.float32)
    model = _with_prototypes(build_adamodal_net(SPEC, 0), protos).train()
    replay_loss(model.run(*toy_batch(6), replay=True)).backward()
    touched = {name.split(".")[0] for name, p in model.named_parameters() if p.grad is not None and float(p.grad.norm()) > 0}
    assert {"classifier", "adapter", "gate"} <= touched  # the fusion weighs one modality: exactly 1
    assert not touched & {"img_proj", "txt_proj"}
    plain = build_adamodal_net(SPEC, 0).set_knowledge(toy_knowledge())
    assert replay_loss(plain.run(*toy_batch(6), replay=True)) is None  # no class prototypes


def test_replay_teaches_classes_a_client_never_holds():
    """A client holding classes 0 and 1 only, with the server's prototypes of all four: with
    replay its model classifies held-out rows of classes 2 and 3 well above chance, without it
    never."""
    g = torch.Generator().manual_seed(5)
    means = torch.randn(4, 12, generator=g) * 2
    y = torch.arange(4).repeat_interleave(60)
    x = means[y] + 0.3 * torch.randn(240, 12, generator=g)
    x_txt = torch.zeros(240, 10)
    on, off = torch.ones(240, dtype=torch.bool), torch.zeros(240, dtype=torch.bool)
    unseen = y >= 2

    def trained(replay: float) -> float:
        model = build_adamodal_net(SPEC, 0, gate=False)
        with torch.no_grad():  # the server's prototypes: class means of the encoded rows
            reps = model.encode(x, None, on, off)["image"]
        _with_prototypes(model, torch.stack([reps[y == c].mean(0) for c in range(4)]).numpy())
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        seen = ~unseen
        for _ in range(60):
            fwd = model.run(x[seen], x_txt[seen], on[seen], off[seen], replay=replay > 0)
            loss = F.cross_entropy(fwd.logits, y[seen])
            if replay > 0:
                loss = loss + replay * replay_loss(fwd)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            pred = model.eval()(x[unseen], x_txt[unseen], on[unseen], off[unseen]).argmax(1)
        return float((pred == y[unseen]).float().mean())

    assert trained(0.0) == 0.0
    assert trained(0.5) >= 0.4  # chance among the four classes: 0.25
