"""The simulator: determinism, byte accounting, checkpoint/resume, summary schema."""

from __future__ import annotations

import json

import pytest

from adamodal.errors import AdamodalError
from adamodal.runtime.simulator import CHECKPOINT, Simulator, check_out_dir
from tests.conftest import with_config

SCHEMA_TOP = {"method", "dataset", "rounds", "seed", "wall_s", "bytes_up", "bytes_down", "groups", "test", "history"}


def _strip_times(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in ("wall_s", "time_s")}


def test_summary_schema_and_learning(small_experiment, tmp_path):
    summary = Simulator(with_config(small_experiment, method="fedavg"), tmp_path, progress=False).run()
    assert SCHEMA_TOP <= set(summary)
    assert set(summary["groups"]) == {"multimodal", "image_only", "text_only"}
    for g, m in summary["groups"].items():
        assert {"macro_auc", "macro_f1", "micro_f1", "accuracy", "clients"} <= set(m), g
    assert set(summary["test"]) == {"both", "image", "text"}
    # 9 emoji categories: chance macro-AUC is 0.5; two rounds on frozen features get far above it
    for cond, m in summary["test"].items():
        assert m["macro_auc"] > 0.75, (cond, m)
    assert [h["round"] for h in summary["history"]] == [0, 1, 2]
    # the files a run promises
    for name in ("config.toml", "metrics.jsonl", "summary.json", CHECKPOINT):
        assert (tmp_path / name).exists(), name
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 3 * 5  # (round 0 + 2 rounds) x 5 clients
    assert {"round", "client", "group", "macro_auc", "bytes_up"} <= set(lines[0])


@pytest.mark.parametrize(("every", "rounds", "scored"), [(2, 3, [0, 2, 3]), (0, 3, [3]), (0, 0, [0])])
def test_eval_every_chooses_the_scored_rounds(small_experiment, tmp_path, every, rounds, scored):
    """``eval.every=N`` scores round 0, every N-th round and the last; 0 scores only the last,
    so a benchmark pays for one evaluation, as its anchors do."""
    exp = with_config(small_experiment, method="fedavg", rounds=rounds, **{"eval.every": every})
    summary = Simulator(exp, tmp_path, progress=False).run()
    assert [h["round"] for h in summary["history"]] == scored
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert sorted({row["round"] for row in lines}) == scored


def test_scoring_less_often_changes_no_result(small_experiment, tmp_path):
    """Evaluation draws nothing a run learns from: the demo scores every other round
    (``cli.DEMO_EVAL_EVERY``) and must end with the table that scoring every round gives."""
    from adamodal.cli import DEMO_EVAL_EVERY

    ends = []
    for every in (1, DEMO_EVAL_EVERY):
        exp = with_config(small_experiment, method="adamodal", rounds=3, **{"eval.every": every})
        summary = Simulator(exp, tmp_path / str(every), progress=False).run()
        ends.append({k: summary[k] for k in ("test", "groups", "groups_server_test", "bytes_up", "bytes_down")})
    assert DEMO_EVAL_EVERY > 1 and ends[0] == ends[1]


def test_same_seed_same_summary(small_experiment, tmp_path):
    a = Simulator(with_config(small_experiment, method="fedprox"), tmp_path / "a", progress=False).run()
    b = Simulator(with_config(small_experiment, method="fedprox"), tmp_path / "b", progress=False).run()
    assert _strip_times(a) == _strip_times(b)


def test_other_seed_other_result(small_experiment, tmp_path):
    a = Simulator(with_config(small_experiment, method="fedavg"), tmp_path / "a", progress=False).run()
    b = Simulator(with_config(small_experiment, method="fedavg", seed=1), tmp_path / "b", progress=False).run()
    assert a["history"][-1]["test"] != b["history"][-1]["test"]


def test_bytes_are_counted_from_messages(small_experiment, tmp_path):
    exp = with_config(small_experiment, method="fedavg")
    sim = Simulator(exp, tmp_path, progress=False)
    summary = sim.run()
    model_bytes = sum(p.numel() * p.element_size() for p in sim.method.model().state_dict().values())
    n_clients, rounds = 5, 2
    # every client downloads the whole model every round
    assert summary["bytes_down"] == n_clients * rounds * model_bytes
    # uploads: the model plus two scalars (num_examples, loss) serialised as JSON
    assert n_clients * rounds * model_bytes < summary["bytes_up"] < n_clients * rounds * (model_bytes + 100)


def test_local_sends_nothing(small_experiment, tmp_path):
    summary = Simulator(with_config(small_experiment, method="local"), tmp_path, progress=False).run()
    assert summary["bytes_up"] == 0 and summary["bytes_down"] == 0


def test_participation_samples_clients(small_experiment, tmp_path):
    sim = Simulator(with_config(small_experiment, method="fedavg", participation=0.4), tmp_path, progress=False)
    picks = [sim.sample(r) for r in range(1, 6)]
    assert all(len(p) == 2 for p in picks)
    assert len({tuple(p) for p in picks}) > 1  # different clients in different rounds


def test_resume_after_a_crash_gives_the_same_summary(small_experiment, tmp_path, monkeypatch):
    exp = with_config(small_experiment, method="fedavg", rounds=3)
    full = Simulator(exp, tmp_path / "full", progress=False).run()

    crashing = Simulator(exp, tmp_path / "crash", progress=False)
    original = crashing.run_round

    def run_round(rnd: int) -> None:
        if rnd == 3:
            raise KeyboardInterrupt  # the process is killed during round 3
        original(rnd)

    monkeypatch.setattr(crashing, "run_round", run_round)
    with pytest.raises(KeyboardInterrupt):
        crashing.run()
    assert not (tmp_path / "crash" / "summary.json").exists()
    resumed = Simulator(exp, tmp_path / "crash", progress=False).run(resume=True)
    assert _strip_times(resumed) == _strip_times(full)


def test_existing_run_is_not_overwritten(tmp_path):
    (tmp_path / "summary.json").write_text("{}")
    with pytest.raises(AdamodalError, match="--force"):
        check_out_dir(tmp_path, force=False)
    check_out_dir(tmp_path, force=True)
    assert (tmp_path / "summary.json").read_text() == "{}"


def test_server_model_is_scored_before_client_models_reuse_the_instance(small_experiment, tmp_path):
    """A method may return the same module from global_model() and client_model(); loading
    client weights must not change the server-test numbers."""
    import numpy as np

    from adamodal.kit.train import predict
    from adamodal.methods.base import load_arrays
    from adamodal.metrics import compute_metrics

    exp = with_config(small_experiment, method="fedavg", rounds=1)
    sim = Simulator(exp, tmp_path, progress=False)
    sim.method.init_server()
    sim.run_round(1)
    personal = {k: np.zeros_like(v) for k, v in sim.method.global_params.items()}  # a useless model
    sim.method.client_model = lambda ctx, msg: load_arrays(sim.method.model(), personal)
    entry = sim.evaluate(1)
    data = exp.test["both"]
    expected = compute_metrics(predict(load_arrays(sim.method.model(), sim.method.global_params), data, "multiclass"),
                               data.y.numpy(), "multiclass")
    assert entry["test"]["both"]["macro_auc"] == pytest.approx(expected["macro_auc"])
