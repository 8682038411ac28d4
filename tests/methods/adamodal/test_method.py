"""AdaModal-Fed driven as the simulator drives it: phases, what crosses the network, the
summaries' model, distillation, aggregation, and an end-to-end run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from adamodal.errors import ConfigError
from adamodal.kit.tensors import Tensors
from adamodal.methods.adamodal import AdaModalFed, contribution_weights, key_role
from adamodal.methods.adamodal.messages import is_summary
from adamodal.methods.base import ClientContext, Message
from tests.conftest import with_config


def _method(exp, **overrides):
    exp = with_config(exp, method="adamodal", **overrides)
    m = AdaModalFed(exp.cfg, exp.spec, exp.infos())
    m.init_server()
    return exp, m


def _ctx(exp, m, cid, states, seed=0):
    c = exp.clients[cid]
    return ClientContext(c.cid, c.group, c.modalities, c.train, c.val, c.test, m.spec, m.cfg, seed, m.device,
                         state=states.get(cid, {}))


def _round(exp, m, rnd, states, log=None):
    """One round driven like the simulator does, optionally logging every reply."""
    sampled = [c.cid for c in exp.clients]
    for p, phase in enumerate(m.phases(rnd)):
        cids = m.participants(phase, rnd, sampled)
        msgs = m.configure(phase, rnd, cids)
        replies = {}
        for cid in cids:
            ctx = _ctx(exp, m, cid, states, seed=1000 * rnd + 10 * cid + p)
            torch.manual_seed(ctx.seed)
            replies[cid] = m.client_step(phase, rnd, ctx, msgs[cid])
            states[cid] = ctx.state
            if log is not None:
                log.append((phase, cid, replies[cid]))
        m.aggregate(phase, rnd, replies)
    m.end_round(rnd)


@pytest.mark.parametrize(("key", "value"), [("impute", "nearest"), ("share", "rows"), ("contribution", "loss")])
def test_enum_options_are_validated(small_experiment, key, value):
    with pytest.raises(ConfigError, match=f"adamodal.{key}"):
        _method(small_experiment, **{f"adamodal__{key}": value})


def test_kd_threshold_must_be_a_quantile(small_experiment):
    with pytest.raises(ConfigError, match="kd_threshold"):
        _method(small_experiment, adamodal__kd_threshold=1.5)


def test_phases():
    m = object.__new__(AdaModalFed)
    m.opt = {"kd": True, "round1_train": False}
    assert m.phases(1) == ["warmup", "teach", "kd", "summarize"]
    assert m.phases(2) == ["train", "summarize"]
    m.opt = {"kd": False, "round1_train": False}
    assert m.phases(1) == ["warmup", "summarize"]
    m.opt = {"kd": True, "round1_train": True}
    assert m.phases(1) == ["warmup", "teach", "kd", "summarize", "train", "summarize"]


def _raw_rows(exp, cid):
    c = exp.clients[cid].train
    return [x.numpy() for x in (c.x_img, c.x_txt) if x is not None]


def _inspect(exp, log, share_embeddings):
    """Every reply: no per-sample dimension and no raw input row, unless embeddings are shared."""
    per_sample_seen = False
    for phase, cid, reply in log:
        n = len(exp.clients[cid].train)
        for key, a in reply.arrays.items():
            a = np.asarray(a)
            if n in a.shape:
                per_sample_seen = True
                assert share_embeddings and phase == "summarize", f"{phase} {key}{a.shape}: per-sample array"
            for raw in _raw_rows(exp, cid):
                if a.ndim == 2 and a.shape[1] == raw.shape[1]:
                    hits = (np.abs(a[:, None, :] - raw[None, :, :]).max(-1) < 1e-6).any()
                    assert not hits, f"{phase} {key}: a raw input row left client {cid}"
    return per_sample_seen


def test_server_never_receives_raw_inputs_or_per_sample_embeddings(small_experiment):
    exp, m = _method(small_experiment, local_epochs=1, adamodal__warmup_epochs=1, adamodal__kd_epochs=1)
    states, log = {}, []
    _round(exp, m, 1, states, log)
    _round(exp, m, 2, states, log)
    assert {p for p, _, _ in log} == {"warmup", "teach", "kd", "summarize", "train"}
    assert not _inspect(exp, log, share_embeddings=False)
    # after round 1 only global parts and summaries go up: projections stay home
    for phase, _, reply in log:
        if phase in ("train", "summarize"):
            assert all(key_role(k) == "global" or is_summary(k) for k in reply.arrays)
    # the positive control: share=embeddings does send per-sample rows (so the check can fail)
    exp2, m2 = _method(small_experiment, local_epochs=1, adamodal__warmup_epochs=1, adamodal__kd=False,
                       adamodal__share="embeddings")
    log2 = []
    _round(exp2, m2, 1, {}, log2)
    assert _inspect(exp2, log2, share_embeddings=True)


def test_summary_upload_is_small(small_experiment):
    exp, m = _method(small_experiment, local_epochs=1, adamodal__warmup_epochs=1, adamodal__kd=False)
    states, log = {}, []
    _round(exp, m, 1, states, log)
    for phase, _, reply in log:
        if phase == "summarize":
            # two modalities x k_local centroids with a count and a label histogram each
            assert reply.nbytes() < 2 * 8 * (exp.spec.dim + 1 + exp.spec.num_classes) * 4 + 200
    k = m.knowledge
    assert k["C_img"].shape[0] == len(k["pi"]) == k["Z_img"].shape[0]
    assert sorted(k["pi"].tolist()) == list(range(len(k["pi"])))


def _kl_to(model, teacher, data: Tensors, t: float) -> float:
    with torch.no_grad():
        model.eval()
        teacher.eval()
        s = model(data.x_img, data.x_txt, data.m_img, data.m_txt)
        p = torch.softmax(teacher(data.x_img, data.x_txt, data.m_img, data.m_txt) / t, -1)
        return float((p * (p.log() - torch.log_softmax(s / t, -1))).sum(-1).mean())


def test_kd_lowers_the_students_kl_to_its_teacher(small_experiment):
    """The image-only client distils from a multimodal teacher that sees only its images."""
    exp, m = _method(small_experiment, local_epochs=1, adamodal__warmup_epochs=1, adamodal__kd_epochs=3,
                     adamodal__kd_teachers=1, adamodal__kd_weight=5.0, adamodal__infonce_weight=0.0)
    student, teacher = 3, 0
    states = {}
    for cid in (student, teacher):
        ctx = _ctx(exp, m, cid, states)
        torch.manual_seed(cid)
        reply = m.client_step("warmup", 1, ctx, Message())
        states[cid] = ctx.state
        m.scores[cid] = reply.scalars["val_auc"]
    m.teachers = [teacher]
    ctx = _ctx(exp, m, teacher, states)
    m.aggregate("teach", 1, {teacher: m.client_step("teach", 1, ctx, Message())})  # decoded as the server keeps it
    msg = m.kd_message(student)
    assert msg.scalars["teachers"] == 1
    t_model = m.build()
    m.fresh(states[teacher])
    t_model.load_state_dict(m.model().state_dict())
    data = exp.clients[student].train
    before = _kl_to(m.fresh(states[student]), t_model, data, 2.0)
    ctx = _ctx(exp, m, student, states)
    m.client_step("kd", 1, ctx, msg)
    after = _kl_to(m.fresh(ctx.state), t_model, data, 2.0)
    assert after < 0.7 * before


def test_contribution_weights():
    n = np.array([10.0, 10.0, 40.0])
    assert np.allclose(contribution_weights(n, np.zeros(3), "size", 1.0), n / n.sum())
    w = contribution_weights(n, np.array([0.9, 0.5, 0.5]), "score", 0.1)
    assert w[0] > w[1] and w[2] == pytest.approx(4 * w[1])
    flat = contribution_weights(n, np.array([0.9, 0.5, 0.5]), "score", 1e6)
    assert np.allclose(flat, n / n.sum(), atol=1e-6)


def test_server_state_round_trip(small_experiment):
    ca = {"adamodal__impute": "cross_attention"}
    exp, m = _method(small_experiment, local_epochs=1, adamodal__warmup_epochs=1, adamodal__kd=False, **ca)
    _round(exp, m, 1, {})
    state = m.server_state()
    _, m2 = _method(small_experiment, **ca)
    m2.load_server_state(state)
    for a, b in ((m.global_params, m2.global_params), (m.knowledge, m2.knowledge)):
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    from adamodal.kit.train import predict

    data = exp.test["image"]  # image only: the text is imputed from the restored knowledge
    a = predict(m.global_model(), data, exp.spec.task)
    b = predict(m2.global_model(), data, exp.spec.task)
    assert np.allclose(a, b, atol=1e-6)


def test_three_rounds_end_to_end_on_emoji(tmp_path):
    from adamodal.config import resolve
    from adamodal.runtime.simulator import run_experiment

    cfg = resolve({}, {"method": "adamodal", "rounds": 3, "clients.multimodal": 4, "clients.image_only": 1,
                       "clients.text_only": 1, "seed": 0, "device": "cpu", "adamodal.impute": "cross_attention"})
    summary = run_experiment(cfg, tmp_path / "run", progress=False)
    for key in ("groups", "groups_server_test"):
        assert set(summary[key]) == {"multimodal", "image_only", "text_only"}
        for group, metrics in summary[key].items():
            assert metrics["macro_auc"] > 0.8, (key, group, metrics)
    assert summary["bytes_up"] > 0
    # every round's diagnostics: how often a matched centroid pair's classes agree and, from
    # round 2 (the first that trains on a global model), gate values and imputation quality
    # against a shuffled pairing
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    server = [x for x in lines if x["client"] == "server"]
    assert [x["round"] for x in server] == [1, 2, 3]
    assert 0 <= server[0]["method"]["class_agreement"] <= 1
    for x in server[1:]:
        d = x["method"]
        assert 0 < d["gate_mean"] < 1 and 0 <= d["class_agreement"] <= 1
        assert -1 <= d["impute_cos_shuffled"] <= 1 and -1 <= d["impute_cos"] <= 1
    # by round 3 the global imputer carries information: closer to the real pair than to a shuffled one
    assert server[-1]["method"]["impute_cos"] > server[-1]["method"]["impute_cos_shuffled"] + 0.05
    assert summary["history"][-1]["method"] == server[-1]["method"]


def test_each_projection_is_averaged_over_the_clients_that_hold_its_modality(small_experiment):
    """``modality_average=holders``: a modality's parts move by the holders' average alone."""
    exp, m = _method(small_experiment, adamodal__rank=32,  # the factorised form, to name its parts
                     adamodal__modality_average="holders")
    rng = np.random.default_rng(0)
    replies = {}
    for cid in (0, 3, 4):  # image+text, image-only, text-only
        keys = m.upload_keys(cid)
        arrays = {k: rng.normal(size=m.global_params[k].shape).astype(np.float32) for k in keys}
        replies[cid] = Message(arrays, {"num_examples": 10 * (cid + 1), "val_auc": 0.8, "val_loss": 1.0})
    assert not any(k.startswith("txt_") for k in replies[3].arrays)  # never sent what it lacks
    assert not any(k.startswith("img_") for k in replies[4].arrays)
    m.aggregate("train", 2, replies)
    ns = {0: 10.0, 3: 40.0, 4: 50.0}

    def mean(key, cids):
        return sum(ns[c] * replies[c].arrays[key].astype(np.float64) for c in cids) / sum(ns[c] for c in cids)

    np.testing.assert_allclose(m.global_params["img_proj.linear.up.weight"], mean("img_proj.linear.up.weight", (0, 3)),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m.global_params["txt_proj.gain"], mean("txt_proj.gain", (0, 4)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m.global_params["classifier.weight"], mean("classifier.weight", (0, 3, 4)),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("precision", "dtypes", "share"), [("float16", {"float16"}, 0.52),
                                                           ("int8", {"int8", "float32"}, 0.28)])
def test_compact_uploads_cut_the_bytes_and_keep_the_average(small_experiment, precision, dtypes, share):
    """``float16`` sends the weights in half precision; ``int8`` sends the change from the
    global model the client received, 8 bits per value plus a scale per row. Either way the
    server keeps float32 and its average moves by rounding only (round 2: the train phase's
    deltas are taken against the round-1 global model)."""
    replies, globals_ = {}, {}
    for p in ("float32", precision):
        exp, m = _method(small_experiment, local_epochs=1, adamodal__warmup_epochs=1, adamodal__kd=False,
                         adamodal__upload_precision=p)
        log: list = []
        states: dict = {}
        _round(exp, m, 1, states)
        _round(exp, m, 2, states, log)
        replies[p] = next(r for phase, cid, r in log if phase == "train" and cid == 0)
        globals_[p] = m.global_params
    small, full = replies[precision], replies["float32"]
    assert {a.dtype.name for a in small.arrays.values()} == dtypes
    assert small.nbytes() < share * full.nbytes()
    for k, v in globals_[precision].items():
        assert v.dtype == np.float32
        np.testing.assert_allclose(v, globals_["float32"][k], atol=2e-2, rtol=1e-2)


def test_all_client_averaging_counts_non_holders_with_the_weights_they_were_sent(small_experiment):
    """``modality_average=all``: a client without a modality contributes that modality's
    parameters as the server sent them, so the projection moves by the holders' share of the
    rows (FedAvg's damping); the shared parts average as before."""
    exp, m = _method(small_experiment)  # modality_average=all is the default
    assert m.opt["modality_average"] == "all"
    rng = np.random.default_rng(0)
    before = {k: v.copy() for k, v in m.global_params.items()}
    replies = {}
    for cid in (0, 3, 4):  # image+text, image-only, text-only
        arrays = {k: rng.normal(size=m.global_params[k].shape).astype(np.float32) for k in m.upload_keys(cid)}
        replies[cid] = Message(arrays, {"num_examples": 10 * (cid + 1), "val_auc": 0.8, "val_loss": 1.0})
    m.aggregate("train", 2, replies)
    ns = {0: 10.0, 3: 40.0, 4: 50.0}
    key = "txt_proj.linear.weight"
    want = (ns[0] * replies[0].arrays[key] + ns[3] * before[key] + ns[4] * replies[4].arrays[key]) / 100.0
    np.testing.assert_allclose(m.global_params[key], want, rtol=1e-5, atol=1e-6)
    key = "classifier.weight"
    want = sum(ns[c] * replies[c].arrays[key] for c in ns) / 100.0
    np.testing.assert_allclose(m.global_params[key], want, rtol=1e-5, atol=1e-6)


def test_evaluation_reuses_the_loaded_model_only_while_it_still_holds_the_message(small_experiment):
    """One evaluation's broadcast, clients without personal parts: the second client gets the
    model loaded for the first, but once anything changed it in place (training), or the
    message is another one, it is loaded again. A stale model would be scored silently."""
    exp, m = _method(small_experiment, local_epochs=1, adamodal__warmup_epochs=1, adamodal__kd=False)
    states: dict = {}
    _round(exp, m, 1, states)
    msg = m.eval_message(0)
    first = m.client_model(_ctx(exp, m, 0, states), msg)
    want = {k: v.detach().clone() for k, v in first.state_dict().items()}
    loads = []
    original = m.fresh
    m.fresh = lambda *a, **k: loads.append(1) or original(*a, **k)  # count the loads
    assert m.client_model(_ctx(exp, m, 1, states), m.eval_message(1)) is first
    assert not loads
    with torch.no_grad():  # what a client's training does to the shared instance
        next(first.parameters()).add_(1.0)
    again = m.client_model(_ctx(exp, m, 1, states), msg)
    assert loads == [1]
    assert all(torch.equal(again.state_dict()[k], v) for k, v in want.items())
    m.global_params = {k: v + 0.5 for k, v in m.global_params.items()}  # the next round's model
    newer = m.client_model(_ctx(exp, m, 1, states), m.eval_message(1))
    assert loads == [1, 1]
    assert not torch.equal(newer.state_dict()["classifier.weight"], want["classifier.weight"])
