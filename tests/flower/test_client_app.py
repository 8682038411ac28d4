"""The ClientApp's handlers called directly (no processes): they compute what the in-process
clients compute, keep state in Flower's context, and a resumed run finds the site's state."""

from __future__ import annotations

import os
import stat
import tempfile

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, RecordDict
from flwr.app import Message as FlowerMessage
from flwr.supercore.task_identity import TaskIdentity

from adamodal.config import resolve
from adamodal.flower import client_app
from adamodal.flower.app import CONFIG_KEY
from adamodal.flower.records import from_records, to_records
from adamodal.methods import get_method_class
from adamodal.methods.base import Message
from adamodal.runtime.clients import InProcessClients
from adamodal.runtime.simulator import prepare

TINY = {"clients.multimodal": 1, "clients.image_only": 1, "clients.text_only": 1, "data.max_items": 300,
        "rounds": 2, "partition": "iid", "local_epochs": 1, "device": "cpu", "method": "local"}


@pytest.fixture(scope="module")
def cfg():
    return resolve({}, TINY)


@pytest.fixture(autouse=True)
def _own_temp_folder(tmp_path, monkeypatch):
    """The handlers keep a per-run cache file in the temp folder: each test gets its own."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()


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


def _same_tensors(a, b) -> bool:
    return all((x is None and y is None) or (x.dtype == y.dtype and torch.equal(x, y))
               for x, y in zip((a.x_img, a.x_txt, a.m_img, a.m_txt, a.y), (b.x_img, b.x_txt, b.m_img, b.m_txt, b.y),
                               strict=True))


def test_the_cache_file_round_trips_and_is_loaded_instead_of_preparing(cfg, tmp_path, monkeypatch):
    monkeypatch.setattr(client_app, "_CACHE", {})
    path = tmp_path / "run7-node101.pt"
    first = client_app.load_client(cfg.to_toml(), 1, "", path)
    assert path.exists()
    _, spec, infos, _, _, classes = client_app._prepare(cfg, 1, "")
    saved = client_app._read_cache(path, (cfg.to_toml(), "", 1))
    assert saved is not None and saved[1] == spec and saved[2] == infos and saved[4] is None
    assert saved[5] == classes == first.classes

    def no_prepare(*a):
        raise AssertionError("prepared again instead of read from the cache file")

    monkeypatch.setattr(client_app, "_prepare", no_prepare)
    client_app._CACHE.clear()
    again = client_app.load_client(cfg.to_toml(), 1, "", path)
    a, b = first.data, again.data
    assert (b.cid, b.group, b.modalities) == (a.cid, a.group, a.modalities)
    assert all(_same_tensors(getattr(a, s), getattr(b, s)) for s in ("train", "val", "test"))
    assert _same_tensors(first.server_view, again.server_view)
    assert again.method.spec == spec


class _Payload:
    """Unpickling this runs code: it would create the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_planted_cache_file_runs_no_code_and_the_cache_is_rebuilt(cfg, tmp_path, monkeypatch):
    monkeypatch.setattr(client_app, "_CACHE", {})
    path, marker = tmp_path / "run7-node101.pt", tmp_path / "pwned"
    key = (cfg.to_toml(), "", 1)
    torch.save({"key": key, "value": _Payload(marker)}, path)
    side = client_app.load_client(cfg.to_toml(), 1, "", path)
    assert not marker.exists()
    assert side.data.cid == 1 and len(side.data.train) > 0
    payload = torch.load(path, weights_only=True)  # rewritten: plain data only
    assert payload["key"] == key and not marker.exists()


def test_the_cache_folder_is_private_or_not_used(tmp_path, caplog):
    folder = client_app._cache_folder()
    assert folder is not None and folder.parent == tmp_path / "tmp"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and folder.stat().st_uid == os.getuid()

    folder.chmod(0o777)  # opened to others (or made by someone else): not used
    assert client_app._cache_folder() is None
    assert "not a folder private to this user" in caplog.text

    folder.rmdir()
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    folder.symlink_to(tmp_path / "elsewhere")  # a link someone planted in the temp folder
    assert client_app._cache_folder() is None
