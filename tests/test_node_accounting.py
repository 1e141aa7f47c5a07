"""What a round charges to clients whose SuperNode is missing or silent, and how a missing one comes back."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
from conftest import tiny_scenario
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedsim.client_app import app as client_app
from fedsim.inline_grid import InlineGrid
from fedsim.round.downlink import ABSENT_NODE
from fedsim.server_app import NodeDirectory, build_strategy, run_train_round, simulated_nodes


class HungNodeGrid(InlineGrid):
    """The inline engine with one SuperNode that takes its message and never replies, as a hung device does."""

    hung = ABSENT_NODE

    def push_messages(self, messages):
        ids = list(super().push_messages(messages))
        for message_id, message in zip(ids, messages):
            if message.metadata.dst_node_id == self.hung:
                self._replies.pop(message_id)
        return ids


def test_a_client_whose_message_was_never_sent_is_charged_no_compute():
    """No SuperNode, no training: the round's compute energy is that of the clients the message reached, the silent
    one included (it was expected to train), and the absent client's schedule does not stretch the round."""
    scenario = tiny_scenario(
        rounds=1,
        clients={"num_clients": 4, "per_round": 4},
        channel={"compute": {"enabled": True, "speed_sigma": 1.0}, "deadline_s": 100.0},
    )
    strategy = build_strategy(scenario)
    train = scenario.train
    ids = np.arange(4)
    scheduled_s, _ = strategy.channel.compute.cost(ids, train.local_steps * np.minimum(train.batch_size, strategy.shard_sizes[ids]))
    absent = int(np.argmax(scheduled_s))
    silent = (absent + 1) % 4
    grid = HungNodeGrid(client_app, 4)
    routing = simulated_nodes(grid, 4)
    grid.hung = routing[silent]
    routing[absent] = ABSENT_NODE

    result = run_train_round(grid, strategy, 1, routing, 2.0)

    rows = {r.client: r for r in result.client_rows}
    assert rows[absent].drop_reason == "no-node" and rows[silent].drop_reason == "no-reply"
    # The learning policies' reward reads the same reasons as the ledger (it once saw no-reply for both).
    assert strategy.round_info["drop_reasons"] == [r.drop_reason for r in result.client_rows]
    assert rows[absent].compute_s == 0 and rows[absent].compute_energy_j == 0 and rows[absent].energy_j == 0
    assert rows[silent].compute_energy_j > 0 and rows[silent].compute_s == pytest.approx(scheduled_s[silent])
    reached = [r for r in result.client_rows if r.client != absent]
    assert result.row.compute_energy_j == pytest.approx(sum(r.compute_energy_j for r in reached))
    assert result.row.energy_j == pytest.approx(sum(r.energy_j for r in reached))
    assert max(r.compute_s for r in reached) < scheduled_s[absent]
    assert result.row.uplink_latency_s < scheduled_s[absent]


class QueryGrid:
    """The Grid methods NodeDirectory calls; each node answers its partition-id query after missing its first
    `misses[node]` queries (still loading its ClientApp), or never when that is None."""

    def __init__(self, partition_of_node: dict[int, int], misses: dict[int, int | None]):
        self.partition_of_node = partition_of_node
        self.misses = dict(misses)
        self.queries: list[int] = []
        self.replies: dict[str, Message] = {}
        self.ids = itertools.count()

    def get_node_ids(self):
        return list(self.partition_of_node)

    def push_messages(self, messages):
        out = []
        for message in messages:
            message_id = str(next(self.ids))
            message.metadata.__dict__["_message_id"] = message_id
            out.append(message_id)
            node = message.metadata.dst_node_id
            self.queries.append(node)
            left = self.misses.get(node, 0)
            if left is None or left > 0:
                self.misses[node] = None if left is None else left - 1
                continue
            content = RecordDict({"node": ConfigRecord({"partition-id": self.partition_of_node[node]})})
            self.replies[message_id] = Message(content, reply_to=message)
        return out

    def pull_messages(self, message_ids):
        return [self.replies.pop(i) for i in message_ids if i in self.replies]


@pytest.fixture
def server_identity(monkeypatch):
    """The ServerApp's identity, which Flower's runtimes set before `main` and a reply's metadata reads."""
    for name in ("_task_id", "_run_id", "_node_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)


def test_a_rejoining_node_that_misses_its_query_is_asked_again_until_it_answers(server_identity):
    grid = QueryGrid({11: 0, 22: 1}, {})
    directory = NodeDirectory(grid, {0: 11, 1: 22}, 3, query_timeout_s=0.2)
    grid.partition_of_node[33] = 2  # client 2's SuperNode restarts under a new id, still importing torch
    grid.misses[33] = 1

    directory.refresh()
    assert directory.routing()[2] == ABSENT_NODE
    directory.refresh()
    assert directory.routing() == {0: 11, 1: 22, 2: 33}
    directory.refresh()  # answered: never asked again, nor were the nodes mapped at the start
    assert grid.queries == [33, 33]


def test_a_listed_node_that_never_answers_costs_at_most_the_query_timeout_per_round(server_identity):
    grid = QueryGrid({11: 0, 22: 1}, {})
    directory = NodeDirectory(grid, {0: 11, 1: 22}, 3, query_timeout_s=0.2)
    grid.partition_of_node[44] = 2  # client 2's SuperNode joins but its ClientApp hangs
    grid.misses[44] = None
    for _ in range(3):
        started = time.monotonic()
        directory.refresh()
        assert time.monotonic() - started < 0.2 + 1.5  # one idle wait, not one per query or per earlier round
        assert directory.routing()[2] == ABSENT_NODE
    assert grid.queries == [44, 44, 44]
