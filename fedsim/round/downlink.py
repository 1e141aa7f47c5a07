"""Stage `downlink`: each selected client's train message, and the bytes it costs.

Each client's download is counted on its own (a unicast of its truncated payload) and `bytes_down` sums
them over the round's clients: a physical broadcast of the full-rank adapter would cost the largest once.

A client gets the global adapter truncated to its ranks (plus what its federated algorithm sends
down, e.g. SCAFFOLD's server control variate), metered as float32 as sent; the state the simulator
carries for it (`memory.` keys) rides along unmetered.
"""

from __future__ import annotations

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, RecordDict

from fedsim.adapter_state import AdapterState, payload_bits, truncate
from fedsim.round.messages import to_array_record

ABSENT_NODE = 0  # destination of a client whose SuperNode is gone: its message is not sent, the client is dropped


def train_messages(
    global_state: AdapterState,
    algorithm,
    layout,
    clients: np.ndarray,
    ranks: np.ndarray,
    node_of_client: dict[int, int],
    server_round: int,
    scenario_yaml: str,
) -> tuple[list[Message], np.ndarray]:
    """(messages, bytes_down per client: 0 for a client without a node, whose message is never sent)."""
    messages, bytes_down = [], []
    for client, client_ranks in zip(clients, ranks):
        payload = truncate(global_state, client_ranks) | algorithm.downlink(int(client), client_ranks)
        bytes_down.append(payload_bits(layout.on_air(payload), 32) // 8 if node_of_client[int(client)] != ABSENT_NODE else 0)
        payload |= algorithm.memory(int(client), client_ranks)
        config = ConfigRecord({"server-round": server_round, "client-id": int(client), "scenario": scenario_yaml})
        content = RecordDict({"arrays": to_array_record(payload), "config": config})
        messages.append(Message(content, dst_node_id=node_of_client[int(client)], message_type=MessageType.TRAIN, group_id=str(server_round)))
    return messages, np.array(bytes_down)
