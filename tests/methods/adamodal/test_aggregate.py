"""Stage 4's global update from the clients' changes (``aggregate.global_update``)."""

from __future__ import annotations

import numpy as np
import pytest

from adamodal.methods.adamodal.aggregate import global_update


def _setup():
    rng = np.random.default_rng(0)
    ref = {"shared": rng.normal(size=(4, 3)).astype(np.float32), "img": rng.normal(size=5).astype(np.float32),
           "steps": np.array(7, dtype=np.int64)}
    changes = [{"shared": rng.normal(size=(4, 3)).astype(np.float32), "img": rng.normal(size=5).astype(np.float32)},
               {"shared": rng.normal(size=(4, 3)).astype(np.float32)}]  # the second lacks the image part
    return ref, changes, np.array([0.25, 0.75])


@pytest.mark.parametrize("everyone", [True, False])
def test_the_mean_is_the_reference_plus_the_weighted_changes(everyone):
    ref, changes, w = _setup()
    out = global_update(ref, ref, changes, w, everyone=everyone)
    weights = [(ref[k] + c[k], wi) for c, wi in zip(changes, w, strict=True) for k in ("shared",)]
    np.testing.assert_allclose(out["shared"], sum(wi * v for v, wi in weights) / w.sum(), rtol=1e-6, atol=1e-6)
    # the image part: the client that lacks it counts with the weights it was sent, or not at all
    want = (0.25 * (ref["img"] + changes[0]["img"]) + 0.75 * ref["img"]) if everyone else ref["img"] + changes[0]["img"]
    np.testing.assert_allclose(out["img"], want, rtol=1e-6, atol=1e-6)
    assert "steps" not in out  # nobody changed it
    assert all(v.dtype == np.float32 for v in out.values())


def test_a_robust_rule_combines_the_weights_themselves():
    ref, changes, w = _setup()
    changes.append({"shared": np.full((4, 3), 100.0, np.float32), "img": np.full(5, 100.0, np.float32)})
    w = np.array([0.2, 0.3, 0.5])
    out = global_update(ref, ref, changes, w, everyone=True, rule="median")
    stack = np.stack([ref["shared"] + c["shared"] for c in changes])
    np.testing.assert_allclose(out["shared"], np.median(stack, axis=0), rtol=1e-6)
    # the client without the image part contributes the reference: median of (a, ref, ref + 100)
    np.testing.assert_allclose(out["img"], np.median(np.stack([ref["img"] + changes[0]["img"], ref["img"],
                                                               ref["img"] + 100.0]), axis=0), rtol=1e-6)
    assert np.abs(out["shared"]).max() < 50  # the outlier does not drag it


def test_only_parts_of_the_global_model_are_updated():
    ref, changes, w = _setup()
    out = global_update(ref, {"img": ref["img"]}, changes, w, everyone=True)
    assert set(out) == {"img"}
