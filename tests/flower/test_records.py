"""Flower runtime pieces without processes: records, byte counts, the server's client view
against a fake Grid, command lines, certificates."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Error, RecordDict
from flwr.app import Message as FlowerMessage

from adamodal.cli import main
from adamodal.errors import AdamodalError, ConfigError
from adamodal.flower.clients import FlowerClients, TooFewClients
from adamodal.flower.processes import check_security, superlink_command, supernode_command
from adamodal.flower.records import (
    control_of,
    eval_from_records,
    eval_to_records,
    from_records,
    records_nbytes,
    to_records,
)
from adamodal.methods.base import ClientInfo, Message
from adamodal.metrics import STATS, metric_stats
from adamodal.runtime.clients import ClientEval, ClientFailure


def _message() -> Message:
    rng = np.random.default_rng(0)
    return Message({"w": rng.normal(size=(3, 4)).astype(np.float32), "n": np.arange(5, dtype=np.int64),
                    "flag": np.array([True, False]), "scalar": np.array(2.5, dtype=np.float32),
                    "transposed": np.ones((2, 3), np.float64).T}, {"num_examples": 7, "loss": 0.25, "phase": "x", "ok": True})


def test_message_round_trip_is_exact():
    msg = _message()
    rd = to_records(msg, {"round": 2, "phase": "train"})
    back = from_records(rd)
    assert set(back.arrays) == set(msg.arrays)
    for k, a in msg.arrays.items():
        assert back.arrays[k].dtype == a.dtype and back.arrays[k].shape == a.shape
        np.testing.assert_array_equal(back.arrays[k], a)
    assert back.scalars == msg.scalars
    assert control_of(rd) == {"round": 2, "phase": "train"}


def test_bytes_are_payload_plus_npy_headers():
    msg = _message()
    wire = records_nbytes(to_records(msg))
    # the raw payload, plus one .npy header (64-128 bytes) per array
    assert msg.nbytes() + 5 * 64 <= wire <= msg.nbytes() + 5 * 128


def test_malformed_message_is_a_clear_error():
    with pytest.raises(AdamodalError, match="no 'arrays' record"):
        from_records(RecordDict({"scalars": ConfigRecord({})}))


def test_eval_round_trip():
    rng = np.random.default_rng(0)
    scores = rng.dirichlet(np.ones(3), size=6).astype(np.float32)
    stats = metric_stats(scores, np.arange(6) % 3, "multiclass", 3)
    server = metric_stats(scores[:2], np.array([0, 1]), "multiclass", 3)
    ev = ClientEval({"macro_auc": 0.75, "accuracy": float("nan"), "n": 6}, stats, server,
                    {"both": {"macro_auc": 0.5, "accuracy": 0.25, "n": 40}})
    back = eval_from_records(eval_to_records(ev))
    pickled = pickle.loads(pickle.dumps(ev))  # plain data: a worker process can return it
    assert pickled.metrics["n"] == 6 and np.array_equal(pickled.stats["pos"], stats["pos"])
    for k in STATS:  # every statistic, dtype and shape kept exactly
        for a, b in ((back.stats[k], stats[k]), (back.server_stats[k], server[k])):
            assert a.dtype == b.dtype and a.shape == b.shape
            np.testing.assert_array_equal(a, b)
    assert back.metrics["macro_auc"] == 0.75 and back.metrics["n"] == 6 and np.isnan(back.metrics["accuracy"])
    assert back.test_metrics == ev.test_metrics
    ev.test_metrics = None
    assert eval_from_records(eval_to_records(ev)).test_metrics is None
    rd = eval_to_records(ev)
    del rd.array_records["arrays"]["stats.pos"]
    with pytest.raises(AdamodalError, match="stats lacks pos"):
        eval_from_records(rd)
    rd = eval_to_records(ev)
    rd.config_records["scalars"]["metrics.n"] = float("nan")  # not a count
    with pytest.raises(AdamodalError, match="malformed evaluation report"):
        eval_from_records(rd)


class FakeGrid:
    """Nodes 10, 11, 12 play clients 0, 1, 2; ``silent`` nodes never answer, ``broken`` ones
    answer with an error."""

    def __init__(self, silent=(), broken=(), claims=None):
        from flwr.supercore.task_identity import TaskIdentity

        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1  # as in a ServerApp
        self.silent, self.broken = set(silent), set(broken)
        self.claims = claims or {10: 0, 11: 1, 12: 2}
        self.sent: list[FlowerMessage] = []

    def get_node_ids(self):
        return list(self.claims)

    def send_and_receive(self, messages, *, timeout=None):
        out = []
        for m in messages:
            self.sent.append(m)
            node = m.metadata.dst_node_id
            m.metadata.__dict__["_message_id"] = f"m{len(self.sent)}"
            if node in self.silent:
                continue
            if node in self.broken:
                out.append(FlowerMessage(Error(code=0, reason="boom"), reply_to=m))
                continue
            if m.metadata.message_type == "query":
                cid = self.claims[node]
                content = RecordDict({"client": ConfigRecord({"cid": cid, "group": "multimodal", "num_train": 5})})
            else:
                content = to_records(Message({"w": np.ones(2, np.float32)}, {"num_examples": 5}))
            reply = FlowerMessage(content, reply_to=m)
            reply.metadata.__dict__["_src_node_id"] = node
            out.append(reply)
        return out

    def push_messages(self, messages):
        messages = list(messages)
        self.pending = {r.metadata.reply_to_message_id: r for r in self.send_and_receive(messages)}
        return [m.metadata.message_id for m in messages]

    def pull_messages(self, message_ids):
        return [self.pending.pop(i) for i in list(message_ids) if i in self.pending]


INFOS = [ClientInfo(c, "multimodal", ("image", "text"), 5) for c in range(3)]


def _clients(grid, min_clients=1):
    fc = FlowerClients(grid, INFOS, timeout=1, min_clients=min_clients, log=lambda s: None)
    fc.discover(0)
    return fc


def test_nodes_are_mapped_to_clients_and_replies_collected():
    fc = _clients(FakeGrid())
    assert fc.nodes == {0: 10, 1: 11, 2: 12}
    replies = fc.step("train", 1, 0, {c: Message({"w": np.zeros(2, np.float32)}) for c in range(3)})
    assert all(isinstance(r, Message) for r in replies.values())
    assert fc.nbytes(replies[0]) == records_nbytes(to_records(replies[0]))


def test_silent_and_failing_clients_are_dropped_with_a_reason():
    grid = FakeGrid()
    fc = _clients(grid, min_clients=1)
    grid.silent, grid.broken = {11}, {12}
    replies = fc.step("train", 2, 0, {c: Message() for c in range(3)})
    assert isinstance(replies[0], Message)
    assert isinstance(replies[1], ClientFailure) and "no reply within" in replies[1].reason
    assert isinstance(replies[2], ClientFailure) and "boom" in replies[2].reason


def test_a_node_silent_in_a_round_is_not_waited_for_again_until_the_next_round():
    grid = FakeGrid()
    fc = _clients(grid, min_clients=1)
    grid.silent = {11}
    fc.step("train", 2, 0, {c: Message() for c in range(3)})
    sent = len(grid.sent)
    later = fc.step("train", 2, 1, {c: Message() for c in range(3)})
    assert len(grid.sent) == sent + 2  # node 11 got nothing in the rest of round 2
    assert "did not reply earlier in round 2" in later[1].reason
    grid.silent = set()  # back in round 3
    assert all(isinstance(r, Message) for r in fc.step("train", 3, 0, {c: Message() for c in range(3)}).values())
    assert fc.silent == {}


def test_too_few_replies_stop_the_run():
    grid = FakeGrid()
    fc = _clients(grid, min_clients=3)
    grid.silent = {12}
    with pytest.raises(TooFewClients, match=r"round 2 \(train\): only 2 of 3 clients replied.*min_clients=3"):
        fc.step("train", 2, 0, {c: Message() for c in range(3)})


def test_a_node_claiming_a_client_the_server_does_not_know_is_an_error():
    with pytest.raises(AdamodalError, match="says it is client 7"):
        _clients(FakeGrid(claims={10: 0, 11: 7}))


def test_security_must_be_chosen_explicitly(tmp_path):
    with pytest.raises(ConfigError, match="--insecure"):
        check_security(None, False)
    with pytest.raises(ConfigError, match="not both"):
        check_security(tmp_path, True)
    with pytest.raises(ConfigError, match="ca.crt: certificate file not found"):
        supernode_command(superlink="h:1", client_id=0, data=None, certificates=tmp_path, insecure=False)
    assert "--insecure" in superlink_command(host="127.0.0.1", port=1, certificates=None, insecure=True)
    assert main(["flower", "supernode", "--client-id", "0"]) == 2


def test_certificates_chain_and_commands(tmp_path):
    from cryptography import x509

    assert main(["flower", "certs", str(tmp_path / "c"), "--nodes", "2", "--host", "link.example.org"]) == 0
    d = tmp_path / "c"
    ca = x509.load_pem_x509_certificate((d / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((d / "server.crt").read_bytes())
    server.verify_directly_issued_by(ca)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "link.example.org" in sans.get_values_for_type(x509.DNSName)
    assert (d / "node_1" / "ca.crt").read_bytes() == (d / "ca.crt").read_bytes()
    link = superlink_command(host="0.0.0.0", port=9092, certificates=d, insecure=False)
    assert link[link.index("--ssl-certfile") + 1] == str(d / "server.crt")
    node = supernode_command(superlink="h:9092", client_id=1, data=tmp_path, certificates=d, insecure=False)
    assert node[node.index("--root-certificates") + 1] == str(d / "ca.crt")
    assert "client-id=1" in node[node.index("--node-config") + 1]
    assert main(["flower", "certs", str(d)]) == 1  # never overwritten silently


def test_app_folder_is_a_valid_flower_app_carrying_the_config(tmp_path, capsys):
    import tomllib

    from flwr.cli.config_utils import load_and_validate

    from adamodal.config import resolve
    from adamodal.flower.app import CONFIG_KEY

    assert main(["flower", "app", str(tmp_path / "app"), "--out", str(tmp_path / "run"),
                 "--set", "rounds=3", "method=adamodal"]) == 0
    assert "num-supernodes=20" in capsys.readouterr().out
    config, warnings = load_and_validate(tmp_path / "app" / "pyproject.toml")
    run_config = config["tool"]["flwr"]["app"]["config"]
    assert config["tool"]["flwr"]["app"]["components"]["serverapp"] == "adamodal.flower.server_app:app"
    cfg = resolve(tomllib.loads(run_config[CONFIG_KEY]))
    assert (cfg["rounds"], cfg["method"]) == (3, "adamodal")
    assert run_config["out-dir"] == str((tmp_path / "run").resolve())


def test_a_supernode_runs_its_clientapp_warm_unless_asked_otherwise(tmp_path):
    warm = supernode_command(superlink="h:1", client_id=2, data=None, certificates=None, insecure=True, port=9301)
    assert warm[1:3] == ["-m", "adamodal.flower.warm"]
    assert warm[warm.index("--runtime-api-address") + 1] == "127.0.0.1:9301"
    flower = warm[warm.index("--") + 1:]
    assert Path(flower[0]).name == "flower-supernode" and "--isolation" not in flower  # added when started
    per_message = supernode_command(superlink="h:1", client_id=2, data=None, certificates=None, insecure=True,
                                    port=9301, clientapp="per-message")
    assert per_message == flower
    with pytest.raises(ConfigError, match="--clientapp cold"):
        supernode_command(superlink="h:1", client_id=2, data=None, certificates=None, insecure=True, clientapp="cold")


def test_the_warm_runner_needs_the_supernode_command(capsys):
    from adamodal.flower import warm

    with pytest.raises(SystemExit) as exc:
        warm.main(["--runtime-api-address", "127.0.0.1:9300"])
    assert exc.value.code == 2 and "flower-supernode command after --" in capsys.readouterr().err
