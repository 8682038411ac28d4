"""int8 delta uploads: exact in expectation, bounded error, and decoded against the reference."""

from __future__ import annotations

import numpy as np

from adamodal.methods.adamodal import upload


def test_int8_deltas_round_trip_within_one_step_and_without_bias():
    rng = np.random.default_rng(0)
    ref = {"w": rng.normal(size=(64, 32)).astype(np.float32), "b": rng.normal(size=32).astype(np.float32),
           "t": np.array(0.5, np.float32), "n": np.array(7, np.int64)}
    trained = {"w": ref["w"] + 0.01 * rng.normal(size=(64, 32)).astype(np.float32),
               "b": ref["b"] + 0.01 * rng.normal(size=32).astype(np.float32), "t": np.array(0.4, np.float32),
               "n": ref["n"]}
    sent = upload.encode(trained, ref, "int8", np.random.default_rng(1))
    assert sent["q:w"].dtype == np.int8 and sent["s:w"].shape == (64,) and sent["n"] is trained["n"]
    back = upload.decode(sent, ref)
    assert isinstance(back["t"], np.ndarray) and back["t"].shape == () and abs(float(back["t"]) - 0.4) < 1e-6
    step = np.abs(trained["w"] - ref["w"]).max(axis=1, keepdims=True) / 127
    assert (np.abs(back["w"] - trained["w"]) <= step + 1e-7).all()
    # stochastic rounding: averaging many independent encodings converges on the true delta
    mean = np.mean([upload.decode(upload.encode(trained, ref, "int8", np.random.default_rng(s)), ref)["w"]
                    for s in range(200)], axis=0)
    assert np.abs(mean - trained["w"]).max() < 0.2 * step.max()


def test_decoding_needs_the_clients_reference():
    """A delta decoded against another model is another model: the server must use the
    weights it sent."""
    rng = np.random.default_rng(0)
    ref = {"w": rng.normal(size=(8, 4)).astype(np.float32)}
    trained = {"w": ref["w"] + 0.1}
    sent = upload.encode(trained, ref, "int8", rng)
    wrong = upload.decode(sent, {"w": np.zeros((8, 4), np.float32)})
    assert np.abs(wrong["w"] - trained["w"]).max() > 0.5
    assert np.abs(upload.decode(sent, ref)["w"] - trained["w"]).max() < 0.01


def test_deltas_are_the_changes_the_decoded_weights_imply_at_every_precision():
    """What the server averages: ``decode(sent) - reference`` for float parameters, at any
    precision, and integer buffers as they were sent."""
    rng = np.random.default_rng(0)
    ref = {"w": rng.normal(size=(16, 8)).astype(np.float32), "n": np.array(3, np.int64)}
    trained = {"w": ref["w"] + 0.05 * rng.normal(size=(16, 8)).astype(np.float32), "n": np.array(4, np.int64)}
    for precision in ("float32", "float16", "int8"):
        sent = upload.encode(trained, ref, precision, np.random.default_rng(1))
        change = upload.deltas(sent, ref)
        assert set(change) == {"w", "n"} and change["w"].dtype == np.float32
        np.testing.assert_allclose(change["w"], upload.decode(sent, ref)["w"] - ref["w"], atol=1e-6)
        assert int(change["n"]) == 4
