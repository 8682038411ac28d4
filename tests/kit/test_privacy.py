"""What leaves a client: every payload of every method (all of ``method_names()``, so a method
added later is held to the same rule) is recorded on a tiny run and inspected.

"Per-sample" is defined concretely: an array with an axis as long as the client's number of
training rows, or an array holding a row equal (to 1e-5 relative) to one of the client's raw
input rows (image or text features) or its labels. Such payloads are allowed only where the
method's documented mode says so (:meth:`Method.shares_per_sample`: ``central`` moves raw
data; AdaModal-Fed with ``share=embeddings``); the detector is shown to fire in both.
Evaluation replies are audited as they go on the wire (Flower records): no array may have an
axis as long as the client's test rows or its view of the server's test set, and none may hold
their labels; only metrics and summed statistics leave. The audit is shown to catch the old
per-row report (scores and labels).
Also: differential privacy's epsilon from the RDP accountant (with its adjacency), and DP runs
in summary.json.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from adamodal.flower.records import eval_to_records
from adamodal.kit.privacy import add_noise, clip_update, dp_report, gaussian_epsilon
from adamodal.methods import method_names
from adamodal.methods.base import Message
from adamodal.metrics import SCORE_BINS
from adamodal.runtime.clients import ClientEval, ClientFailure
from adamodal.runtime.simulator import Simulator
from tests.conftest import with_config


def per_sample_leaks(msg: Message, train) -> list[str]:
    """Names of the arrays of ``msg`` that are per-sample for a client with ``train`` data."""
    n = len(train)
    raw = {}
    if train.x_img is not None:
        raw["image"] = train.x_img.numpy().reshape(n, -1)
    if train.x_txt is not None:
        raw["text"] = train.x_txt.numpy().reshape(n, -1)
    leaks = []
    for key, a in msg.arrays.items():
        a = np.asarray(a)
        if n in a.shape:
            leaks.append(f"{key}: axis of length n_train={n}")
            continue
        if a.dtype.kind != "f" or a.ndim == 0:
            continue
        for mod, rows in raw.items():
            f = rows.shape[1]
            if a.shape[-1] != f:
                continue
            cand = a.reshape(-1, f).astype(np.float64)
            r = rows.astype(np.float64)
            d2 = (cand**2).sum(1)[:, None] + (r**2).sum(1)[None, :] - 2 * cand @ r.T
            if (d2 <= 1e-10 * np.maximum((r**2).sum(1)[None, :], 1e-12)).any():
                leaks.append(f"{key}: contains a raw {mod} row")
    return leaks


def eval_leaks(rd: RecordDict, rows: dict[str, object]) -> list[str]:
    """What in an evaluation reply, as Flower records, is per-row for a client whose test split
    and server-test view are ``rows`` (name -> Tensors): an array with an axis as long as
    either, or an array holding their labels."""
    leaks = []
    for record in rd.array_records.values():
        for key, arr in record.items():
            a = arr.numpy()
            for name, data in rows.items():
                y = data.y.numpy()
                if len(y) in a.shape:
                    leaks.append(f"{key}: axis of length {name} rows={len(y)}")
                elif a.size >= y.size > 1 and y.dtype.kind in "iu" and _holds(a.ravel(), y.ravel()):
                    leaks.append(f"{key}: holds the {name} labels")
    return leaks


def _holds(flat: np.ndarray, seq: np.ndarray) -> bool:
    """Whether ``seq`` occurs as a contiguous run in ``flat``."""
    windows = np.lib.stride_tricks.sliding_window_view(flat, len(seq))
    return bool((windows == seq).all(axis=1).any())


def check_rows_are_distinguishable(rows: dict[str, object], num_classes: int) -> None:
    """The audit tells rows by their count: a split as long as the class count or the bin count
    would make it ambiguous, so that is ruled out first (the fixture's sizes are far apart)."""
    for name, data in rows.items():
        assert len(data) not in (num_classes, SCORE_BINS), f"{name}: {len(data)} rows, pick another fixture"


def record_run(exp, tmp_path):
    """Run ``exp`` and return every (round, phase, cid, reply) that left a client, plus the sim;
    ``sim.evals`` holds every evaluation reply as (round, cid, ClientEval)."""
    sim = Simulator(exp, tmp_path, progress=False)
    sent = []
    sim.asked = set()  # every client the method sent a message to
    sim.evals = []
    step, evaluate = sim.clients.step, sim.clients.evaluate

    def recording(phase, rnd, p_idx, messages):
        sim.asked.update(messages)
        replies = step(phase, rnd, p_idx, messages)
        sent.extend((rnd, phase, cid, r) for cid, r in replies.items() if not isinstance(r, ClientFailure))
        return replies

    def recording_eval(rnd, messages, server_tests):
        evals = evaluate(rnd, messages, server_tests)
        sim.evals.extend((rnd, cid, ev) for cid, ev in evals.items())
        return evals

    sim.clients.step = recording
    sim.clients.evaluate = recording_eval
    summary = sim.run()
    return sent, sim, summary


CASES = [(m, {}) for m in method_names()] + [("adamodal", {"adamodal.share": "embeddings"})]


@pytest.mark.slow
@pytest.mark.parametrize(("method", "extra"), CASES, ids=[m + ("-embeddings" if e else "") for m, e in CASES])
def test_no_raw_input_or_per_sample_tensor_leaves_a_client(experiment_for, tmp_path, method, extra):
    exp = experiment_for(method, rounds=1, local_epochs=1, **{k.replace(".", "__"): v for k, v in extra.items()})
    sent, sim, summary = record_run(exp, tmp_path)
    assert summary["dropped"] == []  # server-side validation accepts every honest reply
    data = {c.cid: c.train for c in exp.clients}
    leaks = {(rnd, phase, cid): per_sample_leaks(msg, data[cid]) for rnd, phase, cid, msg in sent}
    leaks = {k: v for k, v in leaks.items() if v}
    print(f"privacy: {method}{' ' + str(extra) if extra else ''}: {len(sent)} payloads inspected, "
          f"{sum(len(m.arrays) for *_, m in sent)} arrays, {len(leaks)} per-sample")
    if sim.method.shares_per_sample():
        # the documented exception: the detector must see it (so it is not blind)
        assert leaks, f"{method} {extra} declares per-sample sharing but nothing per-sample was seen"
    else:
        assert not leaks, f"{method} sent per-sample data: {leaks}"
    # every client that took part was inspected, in every phase of the round (a method may
    # leave some out by design: local asks nobody, fedclip no text-only client)
    assert {cid for _, _, cid, _ in sent} == sim.asked
    if method not in ("local", "fedclip"):
        assert sim.asked == set(data)
    # evaluation: every client, every evaluated round, sends no row of any split, whatever the
    # method shares in training
    clients = {c.cid: {"test": c.test, "server-view": exp.test_as_client[c.cid]} for c in exp.clients}
    for rows in clients.values():
        check_rows_are_distinguishable(rows, exp.spec.num_classes)
    assert {(rnd, cid) for rnd, cid, _ in sim.evals} == {(r, c) for r in (0, 1) for c in clients}
    eval_leaks_seen = {(rnd, cid): eval_leaks(eval_to_records(ev), clients[cid]) for rnd, cid, ev in sim.evals}
    assert not any(eval_leaks_seen.values()), f"{method}: per-row evaluation payload: {eval_leaks_seen}"
    print(f"privacy: {method} evaluation: {len(sim.evals)} replies inspected, "
          f"{sum(len(ev.stats) + len(ev.server_stats) for *_, ev in sim.evals)} arrays, 0 per-row")


def test_detector_catches_a_disguised_row(small_experiment):
    train = small_experiment.clients[0].train
    row = train.x_txt[3].numpy()
    padded = np.vstack([np.zeros((2, row.size), np.float32), row[None]])
    assert per_sample_leaks(Message({"c_txt": padded}), train) == ["c_txt: contains a raw text row"]
    assert per_sample_leaks(Message({"y": np.zeros(len(train))}), train)
    assert per_sample_leaks(Message({"c_txt": padded + 0.01}), train) == []


def test_evaluation_replies_carry_no_row(small_experiment, tmp_path):
    """Every client's evaluation reply passes the audit, and the audit catches per-row content:
    the report evaluation used to send (each row's scores and labels), and labels tucked into
    a statistic-shaped array."""
    exp = with_config(small_experiment, method="fedavg")
    sim = Simulator(exp, tmp_path, progress=False)
    sim.method.init_server()
    evals = sim.clients.evaluate(0, {c.cid: sim.method.eval_message(c.cid) for c in exp.clients}, server_tests=True)
    for c in exp.clients:
        rows = {"test": c.test, "server-view": exp.test_as_client[c.cid]}
        check_rows_are_distinguishable(rows, exp.spec.num_classes)
        rd = eval_to_records(evals[c.cid])
        assert eval_leaks(rd, rows) == []
        assert all(not isinstance(v, (list, bytes)) for v in rd.config_records["scalars"].values())  # scalars only
    c = exp.clients[0]
    rows = {"test": c.test, "server-view": exp.test_as_client[c.cid]}
    y = c.test.y.numpy()
    old = RecordDict({"arrays": ArrayRecord({
        "scores": Array(np.full((len(y), exp.spec.num_classes), 0.1, np.float32)), "y": Array(y)}),
        "scalars": ConfigRecord({})})
    assert eval_leaks(old, rows) == [f"scores: axis of length test rows={len(y)}", f"y: axis of length test rows={len(y)}"]
    hidden = np.zeros((exp.spec.num_classes, SCORE_BINS), np.int64)
    hidden.ravel()[100:100 + len(y)] = y  # the labels in a histogram-shaped array
    ev = evals[c.cid]
    disguised = ClientEval(ev.metrics, {**ev.stats, "pos": hidden}, ev.server_stats)
    assert eval_leaks(eval_to_records(disguised), rows) == ["stats.pos: holds the test labels"]


# ---- differential privacy -------------------------------------------------------------------

def test_epsilon_from_the_rdp_accountant_behaves():
    eps = gaussian_epsilon(1.0, 20, 1e-5)
    assert 10 < eps < 60  # 20 full-participation Gaussian steps at z=1
    assert gaussian_epsilon(2.0, 20, 1e-5) < eps / 2  # more noise, much less epsilon
    assert gaussian_epsilon(1.0, 40, 1e-5) > eps  # composition
    assert gaussian_epsilon(1.0, 20, 1e-5, sample_rate=0.1) < eps / 3  # amplification by sampling
    assert gaussian_epsilon(0.0, 5, 1e-5) == math.inf and gaussian_epsilon(1.0, 0, 1e-5) == 0.0
    # a single Gaussian step with z = sqrt(2 ln(1.25/delta)) / eps is (eps, delta)-DP (Dwork-Roth);
    # the RDP bound is tighter than that classical one
    z = math.sqrt(2 * math.log(1.25 / 1e-5)) / 1.0
    assert gaussian_epsilon(z, 1, 1e-5) <= 1.0


def test_clip_and_noise_of_an_update():
    rng = np.random.default_rng(0)
    up = {"a": np.full((10, 10), 3.0, np.float32), "n": np.array(7)}
    clipped, norm = clip_update(up, 1.0)
    assert norm == pytest.approx(30.0)
    assert np.linalg.norm(clipped["a"]) == pytest.approx(1.0, rel=1e-5) and clipped["n"] == 7
    small, _ = clip_update({"a": np.full(4, 0.1, np.float32)}, 1.0)
    np.testing.assert_allclose(small["a"], 0.1)  # within the bound: untouched
    noisy = add_noise({"a": np.zeros(100_000, np.float32)}, 0.5, rng)
    assert np.std(noisy["a"]) == pytest.approx(0.5, rel=0.02)


@pytest.mark.parametrize("mode", ["client", "server"])
def test_dp_fedavg_reports_epsilon_and_clips_uploads(small_experiment, tmp_path, mode):
    exp = with_config(small_experiment, method="fedavg", rounds=1, **{"dp__noise": 1.0, "dp__clip": 0.5, "dp__mode": mode})
    sent, sim, summary = record_run(exp, tmp_path)
    p = summary["privacy"]
    # replace-one adjacency (the default): sensitivity 2 x clip, so the accountant sees z / 2
    assert p["adjacency"] == "replace" and p["sensitivity"] == 1.0
    assert p["epsilon"] == pytest.approx(gaussian_epsilon(0.5, 1, 1e-5), rel=1e-3)
    assert p["noise_multiplier"] == 1.0 and p["clip"] == 0.5 and p["steps"] == 1
    assert any("loss" in u for u in p["unnoised"]) and any("evaluation" in u for u in p["unnoised"])
    assert any("clipped update" in u for u in p["unnoised"]) == (mode == "server")
    initial = sim.method.initial_params()
    for _, _, _, msg in sent:
        delta = np.sqrt(sum(float(np.sum((msg.arrays[k].astype(np.float64) - v) ** 2))
                            for k, v in initial.items() if v.dtype.kind == "f"))
        n_float = sum(v.size for v in initial.values() if v.dtype.kind == "f")
        if mode == "server":
            assert delta <= 0.5 + 1e-3  # clipped, not noised, on the client
        else:
            assert delta == pytest.approx(0.5 * math.sqrt(n_float), rel=0.05)  # noise dominates


def test_adjacency_sets_the_sensitivity():
    """Replace-one: a clipped update can move by twice the clip, so epsilon is that of half the
    noise multiplier, without amplification by sampling; add/remove: the clip, with it."""
    rep = dp_report("m", 1.0, 1.0, 20, 1e-5, 0.5)
    assert rep["adjacency"] == "replace" and rep["sensitivity"] == 2.0 and rep["sample_rate"] == 1.0
    assert rep["epsilon"] == pytest.approx(gaussian_epsilon(0.5, 20, 1e-5), rel=1e-3)
    ar = dp_report("m", 1.0, 1.0, 20, 1e-5, 0.5, adjacency="add_remove", unnoised=["counts"])
    assert ar["sensitivity"] == 1.0 and ar["unnoised"] == ["counts"]
    assert ar["epsilon"] == pytest.approx(gaussian_epsilon(1.0, 20, 1e-5, 0.5), rel=1e-3)
    assert rep["epsilon"] > 2 * ar["epsilon"]  # the stronger neighbourhood costs more than double here
    with pytest.raises(ValueError, match="adjacency"):
        dp_report("m", 1.0, 1.0, 20, 1e-5, adjacency="swap")


def test_add_remove_adjacency_from_the_config(small_experiment, tmp_path):
    exp = with_config(small_experiment, method="fedavg", rounds=1, local_epochs=1,
                      **{"dp__noise": 1.0, "dp__adjacency": "add_remove"})
    p = Simulator(exp, tmp_path, progress=False).run()["privacy"]
    assert p["adjacency"] == "add_remove" and p["epsilon"] == pytest.approx(gaussian_epsilon(1.0, 1, 1e-5), rel=1e-3)


def test_no_dp_no_privacy_entry(small_experiment, tmp_path):
    exp = with_config(small_experiment, method="local", rounds=1, local_epochs=1)
    assert Simulator(exp, tmp_path, progress=False).run()["privacy"] is None


def test_adamodal_summaries_report_epsilon(small_experiment):
    from adamodal.methods import get_method_class

    exp = with_config(small_experiment, method="adamodal", **{"adamodal__dp_sigma": 4.0})
    m = get_method_class("adamodal")(exp.cfg, exp.spec, exp.infos())
    rep = m.privacy_report(10)
    k_total = 8 * 2  # k_local centroids per modality, two modalities
    # replace-one: each centroid can move by 2 x dp_clip, hence half the effective multiplier
    assert rep["adjacency"] == "replace" and rep["sensitivity"] == 2 * rep["clip"]
    assert rep["clip"] == pytest.approx(rep["centroid_clip"] * math.sqrt(k_total))
    assert rep["epsilon"] == pytest.approx(gaussian_epsilon(4.0 / math.sqrt(k_total) / 2, 10, 1e-5), rel=1e-3)
    assert {"centroid counts", "centroid label histograms"} <= set(rep["unnoised"])
