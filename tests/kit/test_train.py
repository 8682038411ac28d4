"""The training kit's batch transforms: modality dropout and its seeded streams."""

from __future__ import annotations

import torch

from adamodal.kit.tensors import Tensors
from adamodal.kit.train import compose, hide, modality_dropout, stream


def _batch(n_pairs: int = 20_000, n_img: int = 500, n_txt: int = 500) -> Tensors:
    n = n_pairs + n_img + n_txt
    g = torch.Generator().manual_seed(0)
    m_img = torch.zeros(n, dtype=torch.bool)
    m_txt = torch.zeros(n, dtype=torch.bool)
    m_img[:n_pairs + n_img] = True
    m_txt[:n_pairs] = True
    m_txt[n_pairs + n_img:] = True
    x_img = torch.rand(n, 6, generator=g) + 0.5 * m_img.float().unsqueeze(1)
    x_txt = torch.rand(n, 4, generator=g) + 0.5 * m_txt.float().unsqueeze(1)
    x_img[~m_img] = 0
    x_txt[~m_txt] = 0
    return Tensors(x_img, x_txt, m_img, m_txt, torch.zeros(n, dtype=torch.long))


def test_dropout_hides_one_modality_of_about_p_of_the_pairs():
    batch = _batch()
    pairs = batch.m_img & batch.m_txt
    out = modality_dropout(0.3, stream(5, 23))(batch)
    lost_img = batch.m_img & ~out.m_img
    lost_txt = batch.m_txt & ~out.m_txt
    hidden = lost_img | lost_txt
    assert abs(hidden[pairs].float().mean().item() - 0.3) < 0.015  # 20k pairs: sd ~0.003
    assert abs(lost_img[hidden].float().mean().item() - 0.5) < 0.03  # image or text, evenly
    assert not (lost_img & lost_txt).any()  # never both
    assert (out.m_img | out.m_txt).all()  # every row keeps a modality
    assert not hidden[~pairs].any()  # single-modality rows are left alone
    # a hidden modality is exactly like a missing one: zero-filled and masked
    assert (out.x_img[lost_img] == 0).all() and (out.x_txt[lost_txt] == 0).all()
    keep = ~hidden
    assert torch.equal(out.x_img[keep], batch.x_img[keep]) and torch.equal(out.x_txt[keep], batch.x_txt[keep])
    # the input batch is not modified in place
    assert torch.equal(batch.m_img | batch.m_txt, torch.ones(len(batch), dtype=torch.bool)) and batch.m_img[lost_img].all()


def test_dropout_is_reproducible_from_its_seed_and_p_bounds_hold():
    batch = _batch(2000, 0, 0)
    a = modality_dropout(0.5, stream(7, 23))(batch)
    b = modality_dropout(0.5, stream(7, 23))(batch)
    c = modality_dropout(0.5, stream(8, 23))(batch)
    assert torch.equal(a.m_img, b.m_img) and torch.equal(a.m_txt, b.m_txt)
    assert not torch.equal(a.m_img, c.m_img)
    none = modality_dropout(0.0, stream(7, 23))(batch)
    assert torch.equal(none.m_img, batch.m_img) and torch.equal(none.m_txt, batch.m_txt)
    every = modality_dropout(1.0, stream(7, 23))(batch)
    assert not (every.m_img & every.m_txt).any() and (every.m_img | every.m_txt).all()


def test_hide_and_compose():
    batch = _batch(4, 0, 0)
    rows = torch.tensor([True, False, False, False])
    out = hide(batch, rows, torch.zeros(4, dtype=torch.bool))
    assert out.m_img.tolist() == [False, True, True, True] and (out.x_img[0] == 0).all()
    both = compose(None, lambda b: hide(b, rows, torch.zeros(4, dtype=torch.bool)),
                   lambda b: hide(b, torch.zeros(4, dtype=torch.bool), ~rows))
    out = both(batch)
    assert out.m_img.tolist() == [False, True, True, True] and out.m_txt.tolist() == [True, False, False, False]
    assert compose(None, None) is None
