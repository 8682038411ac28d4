"""Clients in worker processes (``workers``): the sequential results exactly, the same
failures, and a dead worker is an error, never a wait."""

from __future__ import annotations

import json
import os
import signal
import time

import numpy as np
import pytest
import torch

from adamodal.errors import ConfigError
from adamodal.methods.base import Message
from adamodal.runtime import workers
from adamodal.runtime.clients import ClientFailure, InProcessClients
from adamodal.runtime.simulator import Simulator
from adamodal.runtime.workers import WorkerClients, WorkerError, local_clients, resolve_workers
from tests.conftest import with_config


def _run(exp, out) -> tuple[str, dict, Simulator]:
    sim = Simulator(exp, out, progress=False)
    if isinstance(sim.clients, WorkerClients):
        sim.clients.wait_for_workers = True  # the workers take every phase, however fast they start
    summary = sim.run()
    comparable = {k: v for k, v in summary.items() if k not in ("wall_s", "time_s")}
    return json.dumps(comparable, sort_keys=True), sim.clients.state(), sim


def _same_states(a: dict, b: dict) -> bool:
    return sorted(a) == sorted(b) and all(
        sorted(a[c]) == sorted(b[c]) and all(np.array_equal(a[c][k], b[c][k]) for k in a[c]) for c in a)


# fedavg: one global model; local: a whole model kept per client (client state); adamodal: six
# phases in round 1, with the server's clustering between them
@pytest.mark.parametrize("method", ["fedavg", "local", "adamodal"])
def test_two_workers_give_exactly_the_sequential_run(small_experiment, tmp_path, method):
    one, states_one, _ = _run(with_config(small_experiment, method=method, rounds=2, workers=1), tmp_path / "1")
    two, states_two, sim = _run(with_config(small_experiment, method=method, rounds=2, workers=2), tmp_path / "2")
    assert isinstance(sim.clients, WorkerClients) and sim.clients.worker_calls > 0
    assert two == one
    assert _same_states(states_two, states_one)
    assert any(states_one.values()) == (method == "local")  # the state comparison compared something


def test_automatic_workers_take_over_mid_run_with_the_clients_state(small_experiment, tmp_path, monkeypatch):
    """``workers=0`` starts in process; with the threshold at zero the workers start after the
    first evaluation and take over (with every client's state) once ready."""
    one, states_one, _ = _run(with_config(small_experiment, method="local", rounds=4, workers=1), tmp_path / "1")
    monkeypatch.setattr(workers, "AUTO_MIN_REMAINING_S", 0.0)
    monkeypatch.setattr(workers, "available_cores", lambda: 2)
    exp = with_config(small_experiment, method="local", rounds=4, workers=0)
    # on a machine whose cores are busy with other work, workers would not help: none start
    monkeypatch.setattr(workers, "idle_cores", lambda: 1)
    busy = Simulator(exp, tmp_path / "busy", progress=False)
    busy.run()
    assert busy.clients.pool is None and busy.clients.worker_calls == 0 and busy.clients.local_calls > 0
    monkeypatch.setattr(workers, "idle_cores", lambda: 2)
    sim = Simulator(exp, tmp_path / "auto", progress=False)
    assert isinstance(sim.clients, WorkerClients) and sim.clients.pool is None  # nothing started yet
    sim.clients.wait_for_workers = True  # take over as soon as possible, whatever the machine's load
    summary = sim.run()
    assert sim.clients.worker_calls > 0 and sim.clients.local_calls > 0
    assert json.dumps({k: v for k, v in summary.items() if k not in ("wall_s", "time_s")}, sort_keys=True) == one
    assert _same_states(sim.clients.state(), states_one)


def test_a_run_resumed_with_workers_ends_like_one_resumed_in_process(small_experiment, tmp_path):
    """Round 1 in process, then resumed for round 2 in workers (the clients' state goes from
    the checkpoint to the workers), against both rounds' parts in process."""
    ends = {}
    for first, then in ((1, 1), (1, 2)):
        out = tmp_path / f"{first}-{then}"
        Simulator(with_config(small_experiment, method="local", rounds=1, workers=first), out, progress=False).run()
        sim = Simulator(with_config(small_experiment, method="local", rounds=2, workers=then), out, progress=False)
        summary = sim.run(resume=True)
        ends[then] = json.dumps({k: v for k, v in summary.items() if k not in ("wall_s", "time_s")}, sort_keys=True)
    assert sim.clients.worker_calls > 0
    assert ends[2] == ends[1]


def test_a_client_that_raises_in_a_worker_fails_as_it_does_in_process(small_experiment, tmp_path):
    exp = with_config(small_experiment, method="fedavg", workers=2)
    sim = Simulator(exp, tmp_path, progress=False)
    sim.method.init_server()
    messages = sim.method.configure("train", 1, [c.cid for c in exp.clients])
    bad = next(iter(messages.values())).arrays
    messages[3] = Message({k: np.full_like(v, np.nan) for k, v in bad.items()})  # a corrupted broadcast
    local = InProcessClients(sim.method, exp.clients, exp.test_as_client, exp.test, exp.spec, exp.cfg, sim.device)
    expected = local.step("train", 1, 0, messages)
    got = sim.clients.step("train", 1, 0, messages)
    sim.clients.close()
    assert list(got) == list(expected)  # replies in the clients' order
    assert isinstance(got[3], ClientFailure) and got[3] == expected[3]
    assert "invalid message from the server" in got[3].reason
    for cid in (0, 1, 2, 4):
        assert all(np.array_equal(got[cid].arrays[k], expected[cid].arrays[k]) for k in expected[cid].arrays)


def test_a_worker_that_dies_is_a_clear_error_not_a_hang(small_experiment, tmp_path):
    exp = with_config(small_experiment, method="fedavg", workers=2)
    sim = Simulator(exp, tmp_path, progress=False)
    sim.method.init_server()
    messages = sim.method.configure("train", 1, [c.cid for c in exp.clients])
    clients = sim.clients
    clients.step("train", 1, 0, messages)
    victim = clients.pool.procs.procs[1]
    os.kill(victim.pid, signal.SIGKILL)
    victim.join(10)
    start = time.monotonic()
    with pytest.raises(WorkerError, match=r"worker process 1 \(clients .*\) was killed by signal 9.*--resume"):
        clients.step("train", 1, 0, messages)
    assert time.monotonic() - start < 10
    assert not clients.pool.procs.procs[0].is_alive()  # the other worker was stopped too
    clients.close()


def test_the_number_of_workers_follows_the_device_and_batching(small_experiment, monkeypatch):
    monkeypatch.setattr(workers, "available_cores", lambda: 8)
    cfg = dict(small_experiment.cfg)
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert resolve_workers({**cfg, "workers": 0}, cpu, 20) == (8, True)  # automatic: per core, on demand
    assert resolve_workers({**cfg, "workers": 0}, cpu, 3) == (3, True)  # never more than clients
    assert resolve_workers({**cfg, "workers": 0}, gpu, 20) == (1, False)  # one GPU: in process
    assert resolve_workers({**cfg, "workers": 0, "batch_clients": 20}, cpu, 20) == (1, False)
    assert resolve_workers({**cfg, "workers": 1}, cpu, 20) == (1, False)
    assert resolve_workers({**cfg, "workers": 4}, gpu, 20) == (4, False)  # asked for: granted
    with pytest.raises(ConfigError, match="workers=2 and batch_clients=4"):
        resolve_workers({**cfg, "workers": 2, "batch_clients": 4}, cpu, 20)
    exp = with_config(small_experiment, workers=1)
    sim = Simulator(exp, "unused", progress=False)
    assert type(local_clients(sim.method, exp.clients, exp.test_as_client, exp.test, exp.spec, exp.cfg,
                              cpu)) is InProcessClients


def test_a_phase_interrupted_in_the_main_process_still_stops_the_workers(small_experiment, tmp_path):
    """Ctrl-C while replies are still coming: closing neither waits for state the pipes can no
    longer deliver in order nor leaves a worker behind."""
    exp = with_config(small_experiment, method="local", workers=2)
    sim = Simulator(exp, tmp_path, progress=False)
    sim.method.init_server()
    messages = sim.method.configure("train", 1, [c.cid for c in exp.clients])
    clients = sim.clients

    def interrupt(n: int) -> None:
        raise KeyboardInterrupt

    clients._bar = lambda desc, total: interrupt  # the first worker's reply "is interrupted"
    with pytest.raises(KeyboardInterrupt):
        clients.step("train", 1, 0, messages)
    procs = list(clients.pool.procs.procs)
    start = time.monotonic()
    clients.close()
    assert time.monotonic() - start < 15
    assert procs and not any(p.is_alive() for p in procs)


def test_workers_evaluate_while_the_caller_scores_the_server_model(small_experiment, tmp_path, monkeypatch):
    """``begin_evaluate``: in the workers the requests go out at once (the server scores its own
    model meanwhile) and the collected result is the in-process one; in process nothing runs
    before the result is asked for (a client may reuse the server model's instance)."""
    exp = with_config(small_experiment, method="fedavg", workers=2)
    sim = Simulator(exp, tmp_path / "w", progress=False)
    sim.method.init_server()
    messages = {c.cid: sim.method.eval_message(c.cid) for c in exp.clients}
    clients = sim.clients
    clients.step("train", 1, 0, sim.method.configure("train", 1, sorted(messages)))  # workers in use
    collect = clients.begin_evaluate(1, messages, False)
    assert clients.pool.busy  # already sent: the workers evaluate while the caller goes on
    in_workers = collect()
    assert not clients.pool.busy
    clients.close()

    local = Simulator(with_config(small_experiment, method="fedavg", workers=1), tmp_path / "1", progress=False)
    local.method.init_server()
    local.clients.step("train", 1, 0, local.method.configure("train", 1, sorted(messages)))
    calls = []
    real = local.clients.evaluate
    monkeypatch.setattr(local.clients, "evaluate", lambda *a: calls.append(a) or real(*a))
    later = local.clients.begin_evaluate(1, {c: local.method.eval_message(c) for c in messages}, False)
    assert calls == []  # nothing ran yet
    in_process = later()
    assert len(calls) == 1
    assert sorted(in_process) == sorted(in_workers)
    for cid in in_process:
        assert in_process[cid].metrics == in_workers[cid].metrics


def test_idle_cores_counts_only_other_work_since_the_last_reading(monkeypatch):
    """A job that ended before this run does not count (the load average would count it for
    minutes); this process's own core counts as idle; too short an interval falls back."""
    monkeypatch.setattr(workers, "available_cores", lambda: 4)
    monkeypatch.setattr(workers.os, "cpu_count", lambda: 4)
    monkeypatch.setattr(workers.os, "getloadavg", lambda: (5.0, 5.0, 5.0))
    readings = iter([
        (2.0, 2.0, 8.0, 2.0),  # 2 s: 2 of 8 core-seconds busy, all of them this process's
        (4.0, 8.0, 16.0, 4.0),  # 2 s more: 6 of 8 busy, 2 ours -> 2 cores of other work
        (4.1, 8.1, 16.4, 4.1),  # 0.1 s: too short to measure -> the load average (5: 4 busy)
    ])
    monkeypatch.setattr(workers, "_reading", lambda: next(readings))
    monkeypatch.setattr(workers, "_last_reading", (0.0, 0.0, 0.0, 0.0))
    assert workers.idle_cores() == 4
    assert workers.idle_cores() == 2
    assert workers.idle_cores() == 1


def test_automatic_workers_start_during_the_first_phase_when_its_clients_are_slow(small_experiment, monkeypatch):
    """The decision comes after each client, not after the phase: with few long rounds the
    workers would otherwise not be ready before the last round began."""
    monkeypatch.setattr(workers, "available_cores", lambda: 2)
    monkeypatch.setattr(workers, "idle_cores", lambda: 2)
    exp = with_config(small_experiment, method="fedavg", rounds=2, workers=0)
    clients = Simulator(exp, "unused", progress=False).clients
    assert isinstance(clients, WorkerClients) and clients.pool is None
    clients.client_done(1, 9.0, 4)  # the run's first client pays one-time costs: not judged
    assert clients.pool is None
    clients.client_done(1, 0.01, 4)  # 0.01 s x 4 clients x 2 rounds: not worth workers
    assert clients.pool is None
    clients.client_done(1, 5.0, 4)  # 5 s x 4 clients x 2 rounds = 40 s >= AUTO_MIN_REMAINING_S
    assert clients.pool is not None
    clients.close()


def test_an_evaluation_does_not_wait_for_workers_still_starting(small_experiment, tmp_path):
    """Under ``workers=N`` an evaluation runs in process while the workers start (the same
    numbers), and the workers take over once they are ready."""
    exp = with_config(small_experiment, method="fedavg", workers=2)
    sim = Simulator(exp, tmp_path, progress=False)
    sim.method.init_server()
    clients = sim.clients
    messages = {c.cid: sim.method.eval_message(c.cid) for c in exp.clients}
    if clients.pool.ready(block=False):
        clients.close()
        pytest.skip("the workers were ready at once: nothing to check")
    evals = clients.begin_evaluate(0, messages, False)()
    assert clients.local_calls == 1 and clients.worker_calls == 0 and not clients.in_use
    assert sorted(evals) == sorted(messages)
    clients.wait_for_workers = True
    clients.step("train", 1, 0, sim.method.configure("train", 1, sorted(messages)))  # waits for them
    assert clients.in_use and clients.worker_calls == 1
    clients.close()


def test_a_phase_runs_clients_here_while_the_workers_start_then_hands_over(small_experiment, tmp_path, monkeypatch):
    """While the workers start, this process trains the phase's clients one at a time; the
    workers take the rest once ready, and every reply is the one the sequential run gives."""
    exp = with_config(small_experiment, method="fedavg", workers=2)
    sim = Simulator(exp, tmp_path / "2", progress=False)
    sim.method.init_server()
    clients = sim.clients
    real_ready, answers = clients.pool.ready, iter([False, False])  # "still starting" for two clients

    def ready(block: bool) -> bool:
        answer = next(answers, None)
        return real_ready(block=True) if answer is None else answer

    monkeypatch.setattr(clients.pool, "ready", ready)
    cids = [c.cid for c in exp.clients]
    mixed = clients.step("train", 1, 0, sim.method.configure("train", 1, cids))
    assert clients.local_calls == 2 and clients.worker_calls == 1 and clients.in_use
    clients.close()
    one = Simulator(with_config(small_experiment, method="fedavg", workers=1), tmp_path / "1", progress=False)
    one.method.init_server()
    alone = one.clients.step("train", 1, 0, one.method.configure("train", 1, cids))
    assert list(mixed) == cids == list(alone)
    for cid in cids:
        assert sorted(mixed[cid].arrays) == sorted(alone[cid].arrays)
        assert all(np.array_equal(mixed[cid].arrays[k], alone[cid].arrays[k]) for k in alone[cid].arrays), cid
