"""Server-side payload validation: malicious replies are rejected with a reason and never
reach aggregate(); honest replies of every shape a method uses pass."""

from __future__ import annotations

import numpy as np
import pytest

from adamodal.methods import get_method_class
from adamodal.methods.base import ArraySpec, Message
from adamodal.runtime.simulator import Simulator
from adamodal.runtime.validate import Limits, update_norm, validate_replies
from tests.conftest import with_config

LIMITS = Limits(max_update_norm=1e4, max_payload_mb=1024)


@pytest.fixture(scope="module")
def fedavg(small_experiment):
    exp = with_config(small_experiment, method="fedavg")
    m = get_method_class("fedavg")(exp.cfg, exp.spec, exp.infos())
    m.init_server()
    return m


def _honest(m, cid: int, rng) -> Message:
    arrays = {k: (v + 0.01 * rng.standard_normal(v.shape)).astype(v.dtype) if v.dtype.kind == "f" else v.copy()
              for k, v in m.global_params.items()}
    return Message(arrays, {"num_examples": m.clients[cid].num_train, "loss": 0.5})


def _attacks(m, rng) -> dict[str, Message]:
    """One malicious reply per attack, each otherwise honest."""
    key = next(k for k, v in m.global_params.items() if v.ndim == 2)
    out = {}

    def variant(name, fn):
        msg = _honest(m, 0, rng)
        fn(msg)
        out[name] = msg

    variant("nan", lambda r: r.arrays[key].__setitem__((0, 0), np.nan))
    variant("inf", lambda r: r.arrays[key].__setitem__((0, 0), np.inf))
    variant("shape", lambda r: r.arrays.__setitem__(key, np.ascontiguousarray(r.arrays[key].T[:-1])))
    variant("dtype", lambda r: r.arrays.__setitem__(key, r.arrays[key].astype(np.float64)))
    variant("missing", lambda r: r.arrays.pop(key))
    variant("extra", lambda r: r.arrays.__setitem__("backdoor", np.zeros(3, np.float32)))
    variant("object", lambda r: r.arrays.__setitem__(key, np.array(["x"] * 3, dtype=object)))
    variant("norm", lambda r: r.arrays.__setitem__(key, (r.arrays[key] * 1e6).astype(np.float32)))
    variant("count", lambda r: r.scalars.__setitem__("num_examples", 10**9))
    variant("inf_scalar", lambda r: r.scalars.__setitem__("loss", float("inf")))
    variant("nan_count", lambda r: r.scalars.__setitem__("num_examples", float("nan")))
    variant("oversized", lambda r: r.arrays.__setitem__(key, np.zeros((4000, 4000), np.float32)))
    out["not_a_message"] = {"weights": 1}  # type: ignore[assignment]
    return out


EXPECTED = {
    "nan": "non-finite", "inf": "non-finite", "shape": "shape", "dtype": "dtype", "missing": "missing",
    "extra": "unexpected", "object": "dtype object", "norm": "update norm", "count": "num_examples",
    "inf_scalar": "infinite scalar", "nan_count": "num_examples", "oversized": "too large", "not_a_message": "expected a Message",
}


def test_every_attack_is_rejected_with_its_reason(fedavg):
    rng = np.random.default_rng(0)
    sent = fedavg.configure("train", 1, [0])[0]
    limits = Limits(max_update_norm=1e4, max_payload_mb=30)  # the oversized reply is 64 MB
    for name, reply in _attacks(fedavg, rng).items():
        valid, rejected = validate_replies(fedavg, "train", 1, {0: sent}, {0: reply}, limits)
        assert valid == {} and EXPECTED[name] in rejected[0], (name, rejected)


def test_honest_replies_pass_and_norm_is_of_the_update(fedavg):
    rng = np.random.default_rng(1)
    sent = fedavg.configure("train", 1, [0, 1, 2])
    replies = {c: _honest(fedavg, c, rng) for c in sent}
    replies[2].scalars["val_auc"] = float("nan")  # an undefined metric is honest, not an attack
    valid, rejected = validate_replies(fedavg, "train", 1, sent, replies, LIMITS)
    assert rejected == {} and set(valid) == {0, 1, 2}
    _, rejected = validate_replies(fedavg, "train", 1, {0: sent[0]}, {0: replies[0], 7: replies[1]}, LIMITS)
    assert rejected == {7: "reply from a client that was not asked"}
    # what is bounded is the change the client made (0.01 per coordinate), not the model
    n_float = sum(v.size for v in fedavg.global_params.values() if v.dtype.kind == "f")
    assert update_norm(replies[0], sent[0]) == pytest.approx(0.01 * np.sqrt(n_float), rel=0.02)
    assert update_norm(replies[0], Message()) > 3 * update_norm(replies[0], sent[0])


def test_derived_schema_follows_the_sent_arrays_and_the_majority():
    """Methods without reply_schema: names sent must come back alike; other names must agree
    with the other clients (the first axis, e.g. a number of centroids, is free)."""

    class Free(get_method_class("local")):
        def reply_schema(self, phase, rnd, cid, sent):
            return None

    from adamodal.methods.base import ClientInfo

    m = Free.__new__(Free)
    m.clients = {c: ClientInfo(c, "multimodal", ("image", "text"), 100) for c in range(4)}
    sent = {c: Message({"w": np.zeros((2, 3), np.float32)}) for c in range(4)}
    ok = {c: Message({"w": np.ones((2, 3), np.float32), "c_img": np.ones((5 + c, 8), np.float32)}) for c in range(3)}
    assert validate_replies(m, "p", 1, sent, ok, LIMITS)[1] == {}
    bad_trailing = dict(ok) | {3: Message({"w": np.ones((2, 3), np.float32), "c_img": np.ones((5, 9), np.float32)})}
    assert "other clients" in validate_replies(m, "p", 1, sent, bad_trailing, LIMITS)[1][3]
    bad_sent = dict(ok) | {3: Message({"w": np.ones((3, 2), np.float32)})}
    assert "the server sent" in validate_replies(m, "p", 1, sent, bad_sent, LIMITS)[1][3]


def test_local_expects_nothing_back(small_experiment):
    exp = with_config(small_experiment, method="local")
    m = get_method_class("local")(exp.cfg, exp.spec, exp.infos())
    m.reply_schema = lambda *a: {}  # what an exact schema of "nothing" looks like
    _, rejected = validate_replies(m, "train", 1, {0: Message()}, {0: Message({"x": np.ones(2)})}, LIMITS)
    assert "unexpected x" in rejected[0]
    assert ArraySpec.of(np.zeros((2, 3), np.float32)) == ArraySpec((2, 3), "float32")


@pytest.mark.parametrize("attack", ["nan", "shape", "norm", "oversized"])
def test_a_malicious_client_is_dropped_and_never_aggregated(small_experiment, tmp_path, attack):
    """In a real run: client 1 attacks every round; the global model stays finite and good,
    and equals the model aggregated from the four honest clients alone."""
    exp = with_config(small_experiment, method="fedavg", rounds=1, max_payload_mb=30)
    sim = Simulator(exp, tmp_path / attack, progress=False)
    original = sim.method.client_step
    rng = np.random.default_rng(0)

    def client_step(phase, rnd, ctx, msg):
        reply = original(phase, rnd, ctx, msg)
        if ctx.cid == 1:
            return _attacks(sim.method, rng)[attack]
        return reply

    sim.method.client_step = client_step
    aggregated = []
    aggregate = sim.method.aggregate
    sim.method.aggregate = lambda phase, rnd, replies: (aggregated.append(sorted(replies)), aggregate(phase, rnd, replies))
    summary = sim.run()
    assert aggregated == [[0, 2, 3, 4]]
    assert [d["client"] for d in summary["dropped"]] == [1]
    assert EXPECTED[attack] in summary["dropped"][0]["reason"]
    assert all(np.isfinite(v).all() for v in sim.method.global_params.values())
    assert summary["test"]["both"]["macro_auc"] > 0.7


def test_clients_check_what_the_server_sends(small_experiment, tmp_path):
    """Both sides check: a corrupted broadcast fails the client's step with the reason."""
    exp = with_config(small_experiment, method="fedavg", rounds=1)
    sim = Simulator(exp, tmp_path, progress=False)
    configure = sim.method.configure

    def corrupt(phase, rnd, cids):
        msgs = configure(phase, rnd, cids)
        bad = {k: v.copy() for k, v in msgs[cids[0]].arrays.items()}
        next(v for v in bad.values() if v.dtype.kind == "f").flat[0] = np.nan
        return {c: (Message(bad) if c == cids[0] else m) for c, m in msgs.items()}

    sim.method.configure = corrupt
    summary = sim.run()
    assert [d["client"] for d in summary["dropped"]] == [0]
    assert "invalid message from the server: non-finite values" in summary["dropped"][0]["reason"]
