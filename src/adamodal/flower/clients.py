"""The server's view of the SuperNodes: the engine's :class:`Clients` over a Flower Grid.

Each phase is one push of messages and a pull of their replies (``send_and_receive``). A
SuperNode that answers with an error, does not answer within ``timeout`` seconds, or is
offline becomes a
:class:`~adamodal.runtime.clients.ClientFailure` (the server loop records it in ``dropped``);
when fewer than ``min_clients`` replies arrive the run stops with :class:`TooFewClients`,
leaving the previous round's checkpoint to resume from.

Which SuperNode plays which client is learned by asking each node (a ``query`` message);
a site whose SuperNode restarts (a new node id) is picked up again at the next phase. With
site-local data the server knows no client beforehand (``infos=None``): it takes each site's
answer as its :class:`~adamodal.runtime.sites.Declaration` and waits until every SuperNode
online has answered and none has joined for :data:`SETTLE_S` seconds.

A SuperNode that let a phase's deadline pass is not waited for again in the same round (its
later phases count as dropped at once), and is asked again from the next round: a site that
went down costs one ``timeout`` per round, not one per phase, until the SuperLink notices
it is offline (Flower: about a minute without heartbeats).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from flwr.app import ConfigRecord, RecordDict
from flwr.app import Message as FlowerMessage
from flwr.serverapp import Grid

from adamodal.errors import AdamodalError
from adamodal.flower.records import eval_from_records, from_records, records_nbytes, to_records
from adamodal.methods.base import ClientInfo, Message
from adamodal.runtime.clients import ClientEval, ClientFailure, Clients
from adamodal.runtime.sites import Declaration


class TooFewClients(AdamodalError):
    """Fewer than ``min_clients`` clients could take part: the run cannot go on."""


class _Received(Message):
    """A reply with its size as received (bytes counted from the Flower records)."""

    wire_nbytes: int = 0

    def nbytes(self) -> int:
        return self.wire_nbytes


#: seconds between pulls for replies (Flower's own ``send_and_receive`` waits 3 s, which adds up
#: to 3 s to every phase of every round)
POLL_S = 0.2
#: seconds without a new SuperNode after which a server that learns its clients from the sites
#: stops waiting for more (every site's SuperNode is normally up before the run is submitted)
SETTLE_S = 2.0


def send_and_receive(grid: Grid, messages: list[FlowerMessage], timeout: float, poll_s: float = POLL_S,
                     enough: Callable[[list[FlowerMessage]], bool] | None = None) -> list[FlowerMessage]:
    """Push ``messages``, then pull replies every ``poll_s`` until all came, ``enough(replies)``
    holds, or ``timeout``."""
    if not messages:
        return []
    pending = set(grid.push_messages(messages))
    deadline = time.monotonic() + timeout
    replies: list[FlowerMessage] = []
    while pending:
        got = list(grid.pull_messages(pending))
        replies.extend(got)
        pending -= {m.metadata.reply_to_message_id for m in got}
        if not pending or time.monotonic() >= deadline or (enough is not None and got and enough(replies)):
            break
        time.sleep(poll_s)
    return replies


def _failure(reply: FlowerMessage) -> str:
    err = reply.error
    return f"client error {err.code}: {err.reason}"


class FlowerClients(Clients):
    """Clients on SuperNodes, reached through ``grid``; ``infos`` is the server's scenario, or
    ``None`` when the sites declare their clients (site-local data; see :meth:`adopt`)."""

    def __init__(self, grid: Grid, infos: list[ClientInfo] | None, *, timeout: float, min_clients: int,
                 log: Callable[[str], None] = print) -> None:
        self.grid = grid
        self.learning = infos is None
        self.infos = {c.cid: c for c in infos or []}
        self.declared: dict[int, Declaration] = {}  # cid -> the site's own declaration
        self.timeout = float(timeout)
        self.min_clients = int(min_clients)
        self.log = log
        self.nodes: dict[int, int] = {}  # cid -> node id
        self.asked: set[int] = set()  # node ids already asked who they are
        self.refused: dict[int, str] = {}  # node id -> why it was not accepted
        self.silent: dict[int, int] = {}  # node id -> the round in which it missed a deadline

    # ---- which node is which client ---------------------------------------------------
    def discover(self, wait_s: float = 0.0) -> dict[int, int]:
        """Ask every new SuperNode which client it is, for up to ``wait_s`` seconds until
        every client of the scenario has one (learning: until the clients are settled)."""
        deadline = time.monotonic() + wait_s
        last_change = time.monotonic()
        while True:
            online = set(self.grid.get_node_ids())
            new = sorted(online - self.asked)
            if new:
                self._ask(new, online)
                last_change = time.monotonic()
            if self.learning:
                settled = (not (online - self.asked) and self.nodes and time.monotonic() - last_change >= SETTLE_S
                           and set(self.nodes) == set(range(max(self.nodes) + 1)))
                if settled or time.monotonic() >= deadline:
                    return self.nodes
            elif len(self.nodes) == len(self.infos) or time.monotonic() >= deadline:
                return self.nodes
            time.sleep(0.5)

    def adopt(self, infos: list[ClientInfo]) -> None:
        """The clients the run goes on with (learned from the sites' declarations): from now on
        a site that rejoins must declare the same."""
        self.infos = {c.cid: c for c in infos}
        self.learning = False

    def _ask(self, node_ids: list[int], online: set[int]) -> None:
        msgs = [FlowerMessage(RecordDict({"hello": ConfigRecord({})}), dst_node_id=n, message_type="query")
                for n in node_ids]

        def every_client_answered(got: list[FlowerMessage]) -> bool:
            # a node listed online may be a dead one the SuperLink has not noticed yet (a site
            # restarted with a new node id): once every client has a node, stop waiting
            claimed = {int(r.content.config_records["client"]["cid"]) for r in got
                       if not r.has_error() and "client" in r.content.config_records}
            known = {cid for cid, n in self.nodes.items() if n in online and n not in node_ids}
            return not self.learning and set(self.infos) <= claimed | known

        replies = {r.metadata.src_node_id: r
                   for r in send_and_receive(self.grid, msgs, self.timeout, enough=every_client_answered)}
        for n in node_ids:
            self.asked.add(n)
            reply = replies.get(n)
            if reply is None:
                self.asked.discard(n)  # ask again next time
                continue
            if reply.has_error():
                self.refused[n] = _failure(reply)
                self.log(f"SuperNode {n} refused: {self.refused[n]}")
                continue
            c = reply.content.config_records["client"]
            cid, group, num_train = int(c["cid"]), str(c["group"]), int(c["num_train"])
            info = self.infos.get(cid)
            if self.learning:  # the site's word is all the server knows of its data
                self.declared[cid] = Declaration(
                    cid, group, tuple(m for m in str(c["modalities"]).split(",") if m), num_train,
                    str(c.get("task", "")), tuple(str(x) for x in c.get("classes", [])))
            elif info is None or info.group != group or info.num_train != num_train:
                expected = "not in the scenario" if info is None else f"{info.group} with {info.num_train} training samples"
                raise AdamodalError(
                    f"SuperNode {n} says it is client {cid} ({group}, {num_train} training samples) but the "
                    f"server's scenario has client {cid} {expected}: the site's data or config differ from the server's")
            old = self.nodes.get(cid)
            if old is not None and old != n and old in online:
                raise AdamodalError(f"two SuperNodes ({old} and {n}) both claim client {cid}; "
                                    f"give each site its own --client-id")
            self.nodes[cid] = n
            self.log(f"client {cid} ({group}) is SuperNode {n}")

    # ---- the Clients interface ---------------------------------------------------------
    def nbytes(self, msg: Message) -> int:
        return msg.nbytes() if isinstance(msg, _Received) else records_nbytes(to_records(msg))

    def _exchange(self, out: dict[int, RecordDict], message_type: str, rnd: int) -> dict[int, FlowerMessage | str]:
        """Send one message per client; a reply, or why there is none, per client."""
        if len(self.nodes) < len(self.infos):
            self.discover()  # a site may have (re)started its SuperNode
        online = set(self.grid.get_node_ids())
        result: dict[int, FlowerMessage | str] = {}
        msgs = []
        for cid, content in out.items():
            node = self.nodes.get(cid)
            if node is None:
                result[cid] = "no SuperNode has joined for this client"
            elif node not in online:
                result[cid] = f"SuperNode {node} is offline"
            elif self.silent.get(node) == rnd:
                result[cid] = f"SuperNode {node} did not reply earlier in round {rnd}"
            else:
                msgs.append(FlowerMessage(content, dst_node_id=node, message_type=message_type, group_id=str(rnd)))
        by_node = {self.nodes[cid]: cid for cid in out if cid in self.nodes}
        for reply in send_and_receive(self.grid, msgs, self.timeout):
            cid = by_node.get(reply.metadata.src_node_id)
            if cid is not None:
                result[cid] = reply
                self.silent.pop(reply.metadata.src_node_id, None)
        for m in msgs:
            cid = by_node[m.metadata.dst_node_id]
            if cid not in result:
                result[cid] = f"no reply within {self.timeout:g} s"
                self.silent[m.metadata.dst_node_id] = rnd
        return result

    def step(self, phase: str, rnd: int, p_idx: int, messages: dict[int, Message]) -> dict[int, Message | ClientFailure]:
        control = {"phase": phase, "round": rnd, "phase_index": p_idx}
        out = {cid: to_records(m, control) for cid, m in messages.items()}
        replies: dict[int, Message | ClientFailure] = {}
        for cid, reply in self._exchange(out, "train", rnd).items():
            if isinstance(reply, str):
                replies[cid] = ClientFailure(reply)
            elif reply.has_error():
                replies[cid] = ClientFailure(_failure(reply))
            else:
                try:
                    m = from_records(reply.content)
                except AdamodalError as exc:
                    replies[cid] = ClientFailure(str(exc))
                    continue
                received = _Received(m.arrays, m.scalars)
                received.wire_nbytes = records_nbytes(reply.content)
                replies[cid] = received
        failed = {cid: r.reason for cid, r in replies.items() if isinstance(r, ClientFailure)}
        for cid, reason in sorted(failed.items()):
            self.log(f"round {rnd} {phase}: client {cid} dropped ({reason})")
        ok = len(replies) - len(failed)
        if failed and ok < self.min_clients:
            why = "; ".join(f"client {c}: {r}" for c, r in sorted(failed.items()))
            raise TooFewClients(
                f"round {rnd} ({phase}): only {ok} of {len(replies)} clients replied, fewer than "
                f"min_clients={self.min_clients} ({why})")
        return replies

    def evaluate(self, rnd: int, messages: dict[int, Message], server_tests: bool) -> dict[int, ClientEval]:
        out = {cid: to_records(m, {"round": rnd, "server_tests": server_tests}) for cid, m in messages.items()}
        evals: dict[int, ClientEval] = {}
        for cid, reply in sorted(self._exchange(out, "evaluate", rnd).items()):
            if isinstance(reply, str) or reply.has_error():
                self.log(f"round {rnd} evaluate: client {cid} not evaluated "
                         f"({reply if isinstance(reply, str) else _failure(reply)})")
                continue
            try:
                evals[cid] = eval_from_records(reply.content)
            except AdamodalError as exc:
                self.log(f"round {rnd} evaluate: client {cid} not evaluated ({exc})")
        return evals

    def state(self) -> dict[int, dict[str, Any]]:
        return {}  # client state stays on the SuperNodes
