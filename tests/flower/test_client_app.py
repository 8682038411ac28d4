"""The ClientApp's handlers called directly (no processes): they compute what the in-process
clients compute, keep state in Flower's context, and a resumed run finds the site's state."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, RecordDict
from flwr.app import Message as FlowerMessage
from flwr.supercore.task_identity import TaskIdentity

from adamodal.config import resolve
from adamodal.engine.clients import InProcessClients
from adamodal.engine.simulator import prepare
from adamodal.flower import client_app
from adamodal.flower.app import CONFIG_KEY
from adamodal.flower.records import from_records, to_records
from adamodal.methods import get_method_class
from adamodal.methods.base import Message

TINY = {"clients.multimodal": 1, "clients.image_only": 1, "clients.text_only": 1, "data.max_items": 300,
        "rounds": 2, "partition": "iid", "local_epochs": 1, "device": "cpu", "method": "local"}


@pytest.fixture(scope="module")
def cfg():
    return resolve({}, TINY)


def _context(cfg, state_path, cid=1, resume=False) -> Context:
    run_config = {CONFIG_KEY: cfg.to_toml(), "out-dir": "/runs/x", "resume": resume}
    return Context(run_id=7, node_id=100 + cid, node_config={"partition-id": cid, "state-path": str(state_path)},
                   state=RecordDict(), run_config=run_config)


def _train_msg(rnd: int, payload: Message) -> FlowerMessage:
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 7, 0, 1
    return FlowerMessage(to_records(payload, {"round": rnd, "phase": "train", "phase_index": 0}),
                         dst_node_id=101, message_type="train")


def test_query_names_the_client(cfg, tmp_path):
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 7, 0, 1
    msg = FlowerMessage(RecordDict({"hello": ConfigRecord({})}), dst_node_id=101, message_type="query")
    reply = client_app.describe(msg, _context(cfg, tmp_path))
    info = reply.content.config_records["client"]
    assert (info["cid"], info["group"]) == (1, "image_only")


def test_train_matches_the_in_process_client_and_state_survives_a_resume(cfg, tmp_path):
    exp = prepare(cfg, progress=False)
    method = get_method_class("local")(cfg, exp.spec, exp.infos())
    local = InProcessClients(method, exp.clients, exp.test_as_client, exp.test, exp.spec, cfg, method.device)
    expected = local.step("train", 1, 0, {1: Message()})[1]

    ctx = _context(cfg, tmp_path)
    got = from_records(client_app.train(_train_msg(1, Message()), ctx).content)
    assert got.scalars == expected.scalars
    state = {k: a.numpy() for k, a in ctx.state.array_records[client_app.STATE_KEY].items()}
    assert state and all(np.array_equal(state[k], v) for k, v in local.states[1].items())

    # a new Flower run (empty context.state): a fresh run starts from nothing, a resumed one
    # from what the site saved after round 1
    fresh, resumed = _context(cfg, tmp_path), _context(cfg, tmp_path, resume=True)
    side = client_app.load_client(cfg.to_toml(), 1, "")
    assert client_app._context(side, fresh, 0, 1).state == {}
    restored = client_app._context(side, resumed, 0, 1).state
    assert restored.keys() == state.keys() and all(np.array_equal(restored[k], state[k]) for k in state)
