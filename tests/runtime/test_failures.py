"""Clients that crash, hang or fail: dropped with a reason, the round goes on, min_clients
stops the run with a resumable checkpoint, and a resumed run ends exactly like a clean one."""

from __future__ import annotations

import json

import numpy as np
import pytest

from adamodal.errors import AdamodalError
from adamodal.methods import method_names
from adamodal.runtime.clients import ClientFailure, InProcessClients
from adamodal.runtime.simulator import CHECKPOINT, Simulator
from tests.conftest import with_config


def _strip_times(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in ("wall_s", "time_s")}


def _crash(sim: Simulator, bad: set[int], rounds: set[int] | None = None, exc: type[Exception] = RuntimeError):
    """Make the clients in ``bad`` raise inside their step (in the given rounds)."""
    original = sim.method.client_step

    def client_step(phase, rnd, ctx, msg):
        if ctx.cid in bad and (rounds is None or rnd in rounds):
            ctx.state["poison"] = np.ones(3)  # a half-done step: must not be persisted
            raise exc(f"disk on fire at client {ctx.cid}")
        return original(phase, rnd, ctx, msg)

    sim.method.client_step = client_step


def test_a_client_that_raises_is_dropped_and_the_round_goes_on(small_experiment, tmp_path):
    exp = with_config(small_experiment, method="local", rounds=2)
    sim = Simulator(exp, tmp_path, progress=False)
    _crash(sim, {1})
    summary = sim.run()
    dropped = summary["dropped"]
    assert [(d["round"], d["client"]) for d in dropped] == [(1, 1), (2, 1)]
    assert all("RuntimeError" in d["reason"] and "disk on fire" in d["reason"] for d in dropped)
    # the other four clients trained (local keeps a state per client); client 1's state was never
    # touched by its failed steps
    states = sim.clients.state()
    assert sorted(states) == [0, 2, 3, 4]
    assert all("poison" not in s for s in states.values())
    assert json.loads((tmp_path / "summary.json").read_text())["dropped"] == dropped


def test_fedavg_survives_dead_clients_and_still_learns(small_experiment, tmp_path):
    exp = with_config(small_experiment, method="fedavg", rounds=2)
    sim = Simulator(exp, tmp_path, progress=False)
    _crash(sim, {0, 3}, exc=MemoryError)
    summary = sim.run()
    assert len(summary["dropped"]) == 4  # 2 clients x 2 rounds
    assert {d["client"] for d in summary["dropped"]} == {0, 3}
    assert summary["test"]["both"]["macro_auc"] > 0.7  # the three survivors still learn


def test_too_few_clients_stop_the_run_with_a_resumable_checkpoint(small_experiment, tmp_path):
    exp = with_config(small_experiment, method="fedavg", rounds=2, min_clients=4)
    full = Simulator(exp, tmp_path / "full", progress=False).run()

    sim = Simulator(exp, tmp_path / "run", progress=False)
    _crash(sim, {1, 2}, rounds={2})  # round 2: only 3 of 5 reply, min_clients=4
    with pytest.raises(AdamodalError, match=r"round 2 \(train\): only 3 of 5 .*min_clients=4.*--resume"):
        sim.run()
    assert (tmp_path / "run" / CHECKPOINT).exists() and not (tmp_path / "run" / "summary.json").exists()
    # the clients are fixed: the resumed run ends exactly like one that never failed
    resumed = Simulator(exp, tmp_path / "run", progress=False).run(resume=True)
    assert _strip_times(resumed) == _strip_times(full)


def test_a_failure_in_round_one_is_resumable_too(small_experiment, tmp_path):
    exp = with_config(small_experiment, method="fedavg", rounds=1, min_clients=5)
    sim = Simulator(exp, tmp_path, progress=False)
    _crash(sim, {4})
    with pytest.raises(AdamodalError, match="only 4 of 5"):
        sim.run()
    summary = Simulator(exp, tmp_path, progress=False).run(resume=True)
    assert summary["dropped"] == [] and summary["rounds"] == 1


def test_a_late_reply_is_dropped_as_a_timeout(small_experiment, tmp_path):
    """The timeout is measured on the clients' clock; a fake clock makes client 2 take 100 s."""
    exp = with_config(small_experiment, method="fedavg", rounds=1, client_timeout=30.0)
    sim = Simulator(exp, tmp_path, progress=False)
    assert isinstance(sim.clients, InProcessClients)
    now = [0.0]
    sim.clients.clock = lambda: now[0]
    original = sim.method.client_step

    def slow(phase, rnd, ctx, msg):
        if ctx.cid == 2:
            now[0] += 100.0
        return original(phase, rnd, ctx, msg)

    sim.method.client_step = slow
    summary = sim.run()
    assert [(d["client"], d["reason"].split(":")[0]) for d in summary["dropped"]] == [(2, "timeout")]
    assert "client_timeout=30" in summary["dropped"][0]["reason"]


def test_the_loop_drops_failures_from_any_clients_runtime(small_experiment, tmp_path):
    """A Clients implementation (e.g. Flower) reports a lost node as a ClientFailure."""
    exp = with_config(small_experiment, method="fedavg", rounds=1)
    sim = Simulator(exp, tmp_path, progress=False)
    step = sim.clients.step

    def lossy(phase, rnd, p_idx, messages):
        replies = step(phase, rnd, p_idx, messages)
        replies[3] = ClientFailure("node lost")
        return replies

    sim.clients.step = lossy
    summary = sim.run()
    assert summary["dropped"] == [{"round": 1, "phase": "train", "client": 3, "reason": "node lost"}]


def test_checkpoint_holds_rng_state_metrics_and_client_state(small_experiment, tmp_path):
    """Resuming needs more than the global weights: per-client state (local, adamodal's
    personal parts), metrics so far, dropped clients; random draws are derived from
    (seed, round, client, phase), so no generator state has to be stored."""
    import torch

    exp = with_config(small_experiment, method="local", rounds=1)
    sim = Simulator(exp, tmp_path, progress=False)
    _crash(sim, {0})
    sim.run()
    payload = torch.load(tmp_path / CHECKPOINT, weights_only=False)
    assert payload["round"] == 1
    assert sorted(payload["clients"]) == [1, 2, 3, 4]
    assert len(payload["state"]["records"]) == 2 * 5 and len(payload["state"]["history"]) == 2
    assert payload["state"]["dropped"][0]["client"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("method", method_names())
def test_every_method_resumes_to_the_same_summary(experiment_for, tmp_path, method):
    """Killed during round 2, resumed: identical summary for every method (methods added
    later included), so whatever state a method keeps is in its checkpoint."""
    exp = experiment_for(method, rounds=2, local_epochs=1)
    full = Simulator(exp, tmp_path / "full", progress=False).run()
    crashing = Simulator(exp, tmp_path / "crash", progress=False)
    original = crashing.run_round

    def run_round(rnd: int) -> None:
        if rnd == 2:
            raise KeyboardInterrupt
        original(rnd)

    crashing.run_round = run_round
    with pytest.raises(KeyboardInterrupt):
        crashing.run()
    resumed = Simulator(exp, tmp_path / "crash", progress=False).run(resume=True)
    assert _strip_times(resumed) == _strip_times(full)
