"""Parameter helpers shared by the methods: FedAvg's weighted mean, state <-> arrays."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adamodal.methods.base import load_arrays, state_arrays, weighted_average
from adamodal.model import ModelSpec, build_model


def test_weighted_average_by_hand() -> None:
    a = {"w": np.array([[1.0, 2.0], [3.0, 4.0]], np.float32), "b": np.array([0.5], np.float64)}
    b = {"w": np.array([[3.0, 0.0], [-1.0, 8.0]], np.float32), "b": np.array([1.5], np.float64)}
    c = {"w": np.array([[0.0, 4.0], [2.0, 2.0]], np.float32), "b": np.array([-2.5], np.float64)}
    out = weighted_average([a, b, c], [10, 30, 60])  # client sample counts
    # (10*x_a + 30*x_b + 60*x_c) / 100
    np.testing.assert_allclose(out["w"], [[1.0, 2.6], [1.2, 4.0]], rtol=1e-6)
    np.testing.assert_allclose(out["b"], [(5 + 45 - 150) / 100])
    assert set(out) == {"w", "b"}
    assert out["w"].shape == (2, 2)


def test_weighted_average_matches_fedavg_formula_on_random_updates() -> None:
    rng = np.random.default_rng(0)
    updates = [
        {"x": rng.normal(size=(3, 4)).astype(np.float32), "y": rng.normal(size=5)} for _ in range(4)
    ]
    weights = [3.0, 1.0, 0.5, 7.5]
    out = weighted_average(updates, weights)
    for key in ("x", "y"):
        expected = sum(w * u[key].astype(np.float64) for u, w in zip(updates, weights, strict=True))
        expected = expected / sum(weights)
        np.testing.assert_allclose(out[key], expected, rtol=1e-6, atol=1e-7)
    # equal weights -> plain mean; a single update comes back unchanged
    np.testing.assert_allclose(
        weighted_average(updates, [2, 2, 2, 2])["x"], np.mean([u["x"] for u in updates], axis=0),
        rtol=1e-6,
    )
    np.testing.assert_array_equal(weighted_average(updates[:1], [5])["x"], updates[0]["x"])


def test_weighted_average_is_scale_invariant_and_dominated_by_heavy_weight() -> None:
    rng = np.random.default_rng(1)
    updates = [{"p": rng.normal(size=6)} for _ in range(3)]
    a = weighted_average(updates, [1, 2, 3])["p"]
    b = weighted_average(updates, [100, 200, 300])["p"]
    np.testing.assert_allclose(a, b)
    np.testing.assert_allclose(weighted_average(updates, [0, 1, 0])["p"], updates[1]["p"])


def test_weighted_average_keeps_dtypes() -> None:
    u1 = {
        "f16": np.array([1.0, 2.0], np.float16),
        "f32": np.array([1.0, 2.0], np.float32),
        "f64": np.array([1.0, 2.0], np.float64),
        "count": np.array(10, np.int64),
        "small": np.array([1, 3], np.int32),
    }
    u2 = {
        "f16": np.array([3.0, 4.0], np.float16),
        "f32": np.array([3.0, 4.0], np.float32),
        "f64": np.array([3.0, 4.0], np.float64),
        "count": np.array(20, np.int64),
        "small": np.array([2, 6], np.int32),
    }
    out = weighted_average([u1, u2], [1, 1])
    for key in u1:
        assert out[key].dtype == u1[key].dtype, key
        assert out[key].shape == u1[key].shape, key
    np.testing.assert_array_equal(out["f32"], [2.0, 3.0])
    assert int(out["count"]) == 15  # integer buffers are rounded, not truncated
    np.testing.assert_array_equal(out["small"], [2, 4])  # 1.5 and 4.5 round to even


def test_weighted_average_rejects_bad_input() -> None:
    u = {"w": np.ones(3, np.float32)}
    with pytest.raises(ValueError, match="nothing"):
        weighted_average([], [])
    with pytest.raises(ValueError, match="positive"):
        weighted_average([u, u], [0, 0])
    with pytest.raises(ValueError, match="positive"):
        weighted_average([u], [-1])
    with pytest.raises(ValueError):  # one weight per update
        weighted_average([u, u], [1.0])


def _spec() -> ModelSpec:
    return ModelSpec(
        task="multiclass", num_classes=3, modalities=("image", "text"), input_kind="features",
        img_dim=6, txt_dim=4, img_shape=None, dim=8,
    )


def test_state_arrays_are_copies_of_every_entry() -> None:
    model = build_model(_spec(), 0)
    arrays = state_arrays(model)
    assert list(arrays) == list(model.state_dict())
    for k, v in model.state_dict().items():
        assert isinstance(arrays[k], np.ndarray)
        np.testing.assert_array_equal(arrays[k], v.numpy())
    arrays["classifier.bias"][:] = 99.0  # a copy: the model is untouched
    assert not torch.any(model.classifier.bias == 99.0)


def test_state_arrays_prefixes() -> None:
    model = build_model(_spec(), 0)
    part = state_arrays(model, ("adapter", "classifier"))
    assert part and all(k.startswith(("adapter.", "classifier.")) for k in part)
    assert "classifier.weight" in part and "fusion.modality_bias" not in part


def test_load_arrays_round_trip() -> None:
    src, dst = build_model(_spec(), 1), build_model(_spec(), 2)
    assert not torch.equal(src.classifier.weight, dst.classifier.weight)
    assert load_arrays(dst, state_arrays(src)) is dst
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k
    x_img, x_txt = torch.randn(4, 6), torch.randn(4, 4)
    m = torch.ones(4, dtype=torch.bool)
    src.eval()
    dst.eval()
    torch.testing.assert_close(dst(x_img, x_txt, m, m), src(x_img, x_txt, m, m), rtol=0, atol=0)


def test_load_arrays_subset_and_errors() -> None:
    a, b = build_model(_spec(), 1), build_model(_spec(), 2)
    before = state_arrays(b)
    load_arrays(b, state_arrays(a, ("classifier",)))
    after = state_arrays(b)
    for k in after:
        if k.startswith("classifier"):
            np.testing.assert_array_equal(after[k], state_arrays(a)[k])
        else:
            np.testing.assert_array_equal(after[k], before[k])
    assert load_arrays(b, {}) is b
    with pytest.raises(KeyError, match="not in the model"):
        load_arrays(b, {"nope.weight": np.zeros(2, np.float32)})


def test_fedavg_of_two_models() -> None:
    """The FedAvg aggregate of two models' arrays loads back into a model."""
    a, b = build_model(_spec(), 1), build_model(_spec(), 2)
    avg = weighted_average([state_arrays(a), state_arrays(b)], [1.0, 3.0])
    model = load_arrays(build_model(_spec(), 3), avg)
    for k, v in model.state_dict().items():
        expected = 0.25 * a.state_dict()[k] + 0.75 * b.state_dict()[k]
        torch.testing.assert_close(v, expected.to(v.dtype))
