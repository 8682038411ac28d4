"""MultimodalNet: shapes, masking, gated fusion, seeded construction, the slim LeNet path."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from adamodal.model import GatedFusion, ModelSpec, MultimodalNet, build_model

IMG_DIM, TXT_DIM, B = 12, 7, 10


def feature_spec(**kw) -> ModelSpec:
    base = dict(
        task="multiclass", num_classes=5, modalities=("image", "text"), input_kind="features",
        img_dim=IMG_DIM, txt_dim=TXT_DIM, img_shape=None, dim=16, dropout=0.1,
    )
    base.update(kw)
    return ModelSpec(**base)


def batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x_img = torch.randn(B, IMG_DIM, generator=g)
    x_txt = torch.randn(B, TXT_DIM, generator=g)
    # rows 0-3 both, 4-6 image only, 7-9 text only
    m_img = torch.tensor([True] * 7 + [False] * 3)
    m_txt = torch.tensor([True] * 4 + [False] * 3 + [True] * 3)
    return x_img, x_txt, m_img, m_txt


@pytest.fixture
def model() -> MultimodalNet:
    return build_model(feature_spec(), seed=0).eval()


def test_output_shape_and_modules(model: MultimodalNet) -> None:
    out = model(*batch())
    assert out.shape == (B, 5) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert isinstance(model.img_tower, nn.Identity) and isinstance(model.txt_tower, nn.Identity)
    assert isinstance(model.fusion, GatedFusion)
    names = {n.split(".")[0] for n, _ in model.named_parameters()}
    assert names == {"img_proj", "txt_proj", "adapter", "fusion", "classifier"}


def test_masked_modality_does_not_influence_output(model: MultimodalNet) -> None:
    x_img, x_txt, m_img, m_txt = batch()
    ref = model(x_img, x_txt, m_img, m_txt)
    with torch.no_grad():
        noisy_txt = x_txt.clone()
        noisy_txt[~m_txt] = 1000 * torch.randn(int((~m_txt).sum()), TXT_DIM)
        noisy_img = x_img.clone()
        noisy_img[~m_img] = -1000.0
        out = model(noisy_img, noisy_txt, m_img, m_txt)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    # ... while a modality that is present does matter
    changed = x_txt.clone()
    changed[0] += 5.0
    assert not torch.allclose(model(x_img, changed, m_img, m_txt)[0], ref[0])


def test_modality_absent_from_whole_batch(model: MultimodalNet) -> None:
    x_img, x_txt, _, _ = batch()
    m_img, m_txt = torch.ones(B, dtype=torch.bool), torch.zeros(B, dtype=torch.bool)
    with_txt = model(x_img, x_txt, m_img, m_txt)
    torch.testing.assert_close(model(x_img, None, m_img, m_txt), with_txt, rtol=0, atol=1e-6)
    only_txt = model(None, x_txt, m_txt.clone(), m_img.clone())
    assert only_txt.shape == (B, 5) and torch.isfinite(only_txt).all()


def test_single_modality_gets_fusion_weight_one(model: MultimodalNet) -> None:
    x_img, x_txt, m_img, m_txt = batch()
    with torch.no_grad():
        reps = model.encode(x_img, x_txt, m_img, m_txt)
        a_img, a_txt = model.adapter(reps["image"]), model.adapter(reps["text"])
        w = model.fusion.weights([a_img, a_txt], [m_img, m_txt])
        fused = model.fuse(reps, m_img, m_txt)
    assert w.shape == (B, 2)
    img_only, txt_only, both = m_img & ~m_txt, m_txt & ~m_img, m_img & m_txt
    assert torch.equal(w[img_only], torch.tensor([[1.0, 0.0]]).expand(int(img_only.sum()), 2))
    assert torch.equal(w[txt_only], torch.tensor([[0.0, 1.0]]).expand(int(txt_only.sum()), 2))
    torch.testing.assert_close(w[both].sum(dim=1), torch.ones(int(both.sum())))
    assert ((w[both] > 0) & (w[both] < 1)).all()
    # the fused vector of a one-modality sample is that modality's adapter output
    torch.testing.assert_close(fused[img_only], a_img[img_only])
    torch.testing.assert_close(fused[txt_only], a_txt[txt_only])
    torch.testing.assert_close(fused[both], w[both, :1] * a_img[both] + w[both, 1:] * a_txt[both])


def test_one_modality_inference_skips_the_gate_with_the_same_output(model: MultimodalNet) -> None:
    """Without gradients a batch of one modality skips the fusion gate (its weight is exactly 1
    on the rows that have it, 0 elsewhere): the output is the gated path's, bit for bit."""
    x_img, x_txt, _, _ = batch()
    m_txt = torch.tensor([True] * 8 + [False] * 2)  # two rows with no modality at all
    m_img = torch.zeros(B, dtype=torch.bool)
    with torch.no_grad():
        skipped = model(None, x_txt, m_img, m_txt)
    with torch.enable_grad():  # training mode's path: the gate is computed
        gated = model(None, x_txt, m_img, m_txt).detach()
    assert torch.equal(skipped, gated)


def test_row_with_no_modality_is_zero_not_nan() -> None:
    fusion = GatedFusion(8)
    reps = [torch.randn(3, 8), torch.randn(3, 8)]
    none = torch.zeros(3, dtype=torch.bool)
    out = fusion(reps, [none, none])
    assert torch.equal(out, torch.zeros(3, 8))


def test_build_model_seeded() -> None:
    spec = feature_spec()
    a, b, c = build_model(spec, 7), build_model(spec, 7), build_model(spec, 8)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys() == sc.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert not torch.equal(sa["classifier.weight"], sc["classifier.weight"])


def test_build_model_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_model(feature_spec(), 5)
    assert torch.equal(torch.rand(3), expected)


def test_raw_unimodal_cnn_is_lenet() -> None:
    spec = ModelSpec(
        task="multiclass", num_classes=10, modalities=("image",), input_kind="raw",
        img_dim=28 * 28, txt_dim=None, img_shape=(1, 28, 28), image_tower="cnn",
    )
    model = build_model(spec, 0)
    # conv 1->6 (5x5), conv 6->16 (5x5), 28 -> 24 -> 12 -> 8 -> 4 spatially, fc 256->120->84->10
    conv1 = 1 * 6 * 5 * 5 + 6
    conv2 = 6 * 16 * 5 * 5 + 16
    fc1 = 16 * 4 * 4 * 120 + 120
    fc2 = 120 * 84 + 84
    fc3 = 84 * 10 + 10
    expected = conv1 + conv2 + fc1 + fc2 + fc3
    assert expected == 44_426
    assert sum(p.numel() for p in model.parameters()) == expected
    assert model.fusion is None
    assert isinstance(model.img_proj, nn.Identity) and isinstance(model.adapter, nn.Identity)
    assert not hasattr(model, "txt_proj")
    shapes = [tuple(p.shape) for p in model.parameters()]
    assert shapes == [
        (6, 1, 5, 5), (6,), (16, 6, 5, 5), (16,),
        (120, 256), (120,), (84, 120), (84,), (10, 84), (10,),
    ]
    x = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    m = torch.ones(4, dtype=torch.bool)
    assert model(x, None, m, torch.zeros(4, dtype=torch.bool)).shape == (4, 10)


def test_features_unimodal_keeps_projection_and_adapter() -> None:
    spec = feature_spec(modalities=("text",), img_dim=None)
    model = build_model(spec, 0).eval()
    assert model.fusion is None and not hasattr(model, "img_proj")
    x = torch.randn(3, TXT_DIM)
    m = torch.ones(3, dtype=torch.bool)
    assert model(None, x, torch.zeros(3, dtype=torch.bool), m).shape == (3, 5)


def test_multilabel_spec() -> None:
    spec = feature_spec(task="multilabel", num_classes=6)
    model = build_model(spec, 1)
    x_img, x_txt, m_img, m_txt = batch(1)
    logits = model(x_img, x_txt, m_img, m_txt)
    assert logits.shape == (B, 6)
    target = (torch.rand(B, 6, generator=torch.Generator().manual_seed(0)) < 0.3).float()
    loss = nn.functional.binary_cross_entropy_with_logits(logits, target)
    loss.backward()
    assert torch.isfinite(loss)
    assert model.classifier.weight.grad is not None
    assert model.classifier.weight.grad.abs().sum() > 0
