"""The ServerApp's run with the ClientApp answering in this process (no Flower processes):
the full Flower code path gives the in-process simulator's numbers, and a client that stops
answering is dropped or stops the run according to ``min_clients``."""

from __future__ import annotations

import json

import pytest

from adamodal.config import resolve
from adamodal.flower.app import app_pyproject
from adamodal.flower.clients import TooFewClients
from adamodal.flower.server_app import ERROR_FILE, run_server
from adamodal.runtime.simulator import CHECKPOINT, Simulator, prepare
from tests.flower.loopback import LoopbackGrid

TINY = {"clients.multimodal": 1, "clients.image_only": 1, "clients.text_only": 1, "data.max_items": 300,
        "rounds": 2, "partition": "iid", "local_epochs": 1, "device": "cpu", "seed": 0, "eval.max_rows": 300}


def _run(tmp_path, dies=None, **overrides):
    cfg = resolve({}, {**TINY, **overrides})
    rc = app_pyproject(cfg, tmp_path / "out", timeout=5, wait=0)["tool"]["flwr"]["app"]["config"]
    return cfg, run_server(LoopbackGrid(rc, 3, tmp_path / "state", dies), rc)


@pytest.mark.parametrize(("method", "extra"), [
    ("adamodal", {}),
    ("local", {}),  # no server model: clients score the test set
    ("prototype", {}),  # a first phase that asks every client
    ("retrieval", {"split.public": 0.1}),  # the ServerApp hands the method its public set
])
def test_the_flower_code_path_equals_the_simulator(tmp_path, method, extra):
    cfg, summary = _run(tmp_path, method=method, **extra)
    ref = Simulator(prepare(cfg, progress=False), tmp_path / "ref", progress=False).run()
    assert summary["groups"] == ref["groups"] and summary["test"] == ref["test"]
    # Flower frames each array (name, dtype, shape): 1-2% more for int8 uploads, two arrays a parameter
    assert ref["bytes_up"] <= summary["bytes_up"] <= ref["bytes_up"] * 1.02


def test_a_silent_client_is_dropped_when_min_clients_allows(tmp_path):
    _, summary = _run(tmp_path, dies={1002: 2}, min_clients=2)
    assert {(d["round"], d["client"]) for d in summary["dropped"]} == {(2, 2)}
    assert "no reply within" in summary["dropped"][0]["reason"]
    assert "text_only" not in summary["groups"]


def test_too_few_clients_stop_the_run_with_a_resumable_checkpoint(tmp_path):
    with pytest.raises(TooFewClients, match="min_clients=3"):
        _run(tmp_path, dies={1002: 2}, min_clients=3)
    out = tmp_path / "out"
    assert "client 2: no reply within 5 s" in (out / ERROR_FILE).read_text()
    assert (out / CHECKPOINT).exists() and not (out / "summary.json").exists()
    assert [json.loads(x)["round"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [0] * 3 + [1] * 3
