"""Stage 3: the cross-attention imputer, the cluster prototypes Z and the quality measure."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from adamodal.methods.adamodal.imputation import (
    CrossAttentionImputer,
    cluster_prototypes,
    imputation_quality,
)


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


def test_prototypes_are_the_centroids_without_cross_attention_and_move_with_it():
    keys = {"image": torch.randn(5, 16), "text": torch.randn(5, 16)}
    plain = cluster_prototypes(None, keys)
    assert torch.allclose(torch.as_tensor(plain["Z_img"]), keys["image"])
    assert torch.allclose(torch.as_tensor(plain["Z_txt"]), keys["text"])
    z = cluster_prototypes(CrossAttentionImputer(16), keys)
    # half the centroid, half the imputation from the paired centroid
    assert not torch.allclose(torch.as_tensor(z["Z_img"]), keys["image"])


def test_quality_separates_a_real_imputation_from_a_shuffled_one():
    img, txt, _, _ = _toy_pairs()
    paired = torch.ones(len(img), dtype=torch.bool)
    good = imputation_quality({"image": img, "text": txt}, {"image": img + 0.05, "text": txt + 0.05}, paired,
                              torch.Generator().manual_seed(0))
    assert good["impute_cos"] > 0.95 and good["impute_cos"] > good["impute_cos_shuffled"] + 0.5
    noise = imputation_quality({"image": img, "text": txt}, {"image": torch.randn_like(img), "text": torch.randn_like(txt)},
                               paired, torch.Generator().manual_seed(0))
    assert abs(noise["impute_cos"] - noise["impute_cos_shuffled"]) < 0.1
