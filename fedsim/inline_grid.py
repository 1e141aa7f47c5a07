"""A Flower `Grid` that delivers messages by calling the ClientApp in this process.

It is the `engine: inline` path: the same ServerApp logic and the same ClientApp
handlers as the simulation engine, without Ray's start-up cost. Nodes carry the
node config the simulation engine gives them (partition-id, num-partitions).
"""

from __future__ import annotations

from collections.abc import Iterable
from uuid import uuid4

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from fedsim.client_errors import client_error_reply

FIRST_NODE_ID = 1000  # any ids other than the SuperLink's


class InlineGrid(Grid):
    def __init__(self, client_app: ClientApp, num_nodes: int, run_id: int = 1):
        self.client_app = client_app
        self.run_id = run_id
        # The ServerApp's own identity, as Flower's runtimes set it before calling `main`.
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, run_id, SUPERLINK_NODE_ID
        self.contexts = {
            FIRST_NODE_ID + i: Context(run_id, FIRST_NODE_ID + i, {"partition-id": i, "num-partitions": num_nodes}, RecordDict(), {}) for i in range(num_nodes)
        }
        self._replies: dict[str, Message] = {}

    def set_run(self, run) -> None:  # the inline engine has one run; nothing to look up
        pass

    @property
    def run(self):
        return None

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            message_id = str(uuid4())
            message.metadata.__dict__["_message_id"] = message_id
            context = self.contexts[message.metadata.dst_node_id]
            try:
                reply = self.client_app(message, context)
            except Exception as exc:  # an error reply naming the cause in one line, as on the simulation engine
                reply = client_error_reply(message, exc, context)
            self._replies[message_id] = reply
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))
