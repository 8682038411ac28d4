"""A Grid that delivers messages to the ClientApp in this process: the whole Flower code path
(records, node discovery, ClientApp handlers, context.state) without Flower's processes."""

from __future__ import annotations

from flwr.app import Context, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from adamodal.flower import client_app

HANDLERS = {"query": client_app.describe, "train": client_app.train, "evaluate": client_app.evaluate}


class LoopbackGrid:
    def __init__(self, run_config: dict, n_clients: int, state_path, dies: dict[int, int] | None = None) -> None:
        """``dies``: node id -> the round from which that node no longer answers."""
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
        self.contexts = {
            1000 + cid: Context(run_id=1, node_id=1000 + cid, node_config={"partition-id": cid, "state-path": str(state_path)},
                                state=RecordDict(), run_config=run_config)
            for cid in range(n_clients)
        }
        self.dies = dies or {}

    def get_node_ids(self):
        return list(self.contexts)

    def push_messages(self, messages):
        """Deliver at once; the replies wait for :meth:`pull_messages`."""
        self.replies = getattr(self, "replies", {})
        self.count = getattr(self, "count", 0)
        ids = []
        for m in messages:
            node = m.metadata.dst_node_id
            self.count += 1
            m.metadata.__dict__["_message_id"] = f"{node}-{self.count}"
            ids.append(m.metadata.message_id)
            if m.metadata.group_id and int(m.metadata.group_id) >= self.dies.get(node, 10**9):
                continue  # a dead node never answers
            reply = HANDLERS[m.metadata.message_type](m, self.contexts[node])
            reply.metadata.__dict__["_src_node_id"] = node
            self.replies[m.metadata.message_id] = reply
        return ids

    def pull_messages(self, message_ids):
        return [self.replies.pop(i) for i in list(message_ids) if i in self.replies]
