"""The round, shaped like a Flower strategy: `configure_train`, `aggregate_train`, `evaluate`.

Each hook runs stages of `fedsim.round` (see its docstring for the list) and keeps what lasts across
rounds: the global adapter, the byte totals, the random streams, what the policy saw last.
Whoever owns the round loop (the ServerApp, or a gymnasium Env) calls the hooks in that order.

Why not a subclass of `flwr.serverapp.strategy.Strategy`: Flower's `Strategy.start()` owns the round
loop and passes one `ArrayRecord` to every client, while here each client gets its own truncation
of the global adapter, the loop is also driven step by step by the RL environment
(`fedsim.rl.env`), and a round yields ledger rows, not a `MetricRecord`. The hook names and their
order are Flower's, so a Flower user finds the round where they expect it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from flwr.app import Message

from channels import Channel
from fedsim.adapter_state import AdapterState, truncate
from fedsim.adapters import adapter_kind
from fedsim.aggregators import wants_fisher
from fedsim.algorithms import build_algorithm
from fedsim.availability import load_trace
from fedsim.config import Scenario
from fedsim.payload import MEMORY_PREFIX
from fedsim.round.downlink import ABSENT_NODE, train_messages
from fedsim.round.layout import UploadLayout
from fedsim.round.merge import client_importance, merge_round
from fedsim.round.observe import channel_deadline, checked_ranks, client_data_stats
from fedsim.round.record import ByteTotals, ClientRecord, RoundRecord, client_record, drop_reason, reward_info, round_record
from fedsim.round.replies import collect_replies
from fedsim.round.select import ClientSampler
from fedsim.round.uplink import meter_uplink
from fedsim.runtime import Runtime
from fedsim.sensitivity import sensitivity_betas
from fedsim.training import evaluate
from fedsim.types import ChannelStates, FedsimError, Observation
from policies import RankPolicy


@dataclass
class PendingRound:
    """What `configure_train` decided, kept for `aggregate_train`."""

    server_round: int
    clients: np.ndarray
    states: ChannelStates
    ranks: np.ndarray  # [clients, layers]
    bytes_down: np.ndarray
    nodes: list[int]
    layer_weights: np.ndarray  # the reward's layer shares: the global adapter's singular-value mass the round started from


@dataclass
class PreparedRound:
    """A round's clients, channel and observation, drawn before the policy decides."""

    server_round: int
    clients: np.ndarray
    states: ChannelStates
    observation: Observation


@dataclass
class RoundResult:
    row: RoundRecord
    client_rows: list[ClientRecord]


class RankAdaptiveStrategy:
    """Federated LoRA with per-client, per-layer ranks chosen by a `RankPolicy`, metered by a `Channel`."""

    def __init__(self, scenario: Scenario, runtime: Runtime, channel: Channel, policy: RankPolicy):
        self.scenario = scenario
        self.runtime = runtime
        self.channel = channel
        self.shard_sizes = np.array([len(p) for p in runtime.partitions], dtype=np.int64)
        channel.set_data_sizes(self.shard_sizes)  # for access: fdma-proportional
        self.policy = policy
        self.scenario_yaml = scenario.to_yaml()
        self.global_state: AdapterState = runtime.initial_state.copy()
        self.algorithm = build_algorithm(scenario.algorithm, scenario.aggregation.method, scenario.clients.num_clients)
        self.algorithm.setup(self.global_state)
        n_layers = runtime.n_layers
        self.params_per_rank = np.array(runtime.model.params_per_rank())
        # Nano mode: the head lives on the server, so it is neither broadcast nor uploaded (not metered),
        # and a policy's bit budget carries no fixed head cost.
        keys = adapter_kind(scenario).server_side
        self.head_params = 0 if keys else runtime.model.head_param_count()
        self.layout = UploadLayout(self.global_state, self.algorithm, wants_fisher(scenario), keys)
        head_tensors = 0 if keys else len(self.global_state.head)
        self.upload_tensors = (2 * n_layers + head_tensors) * self.algorithm.upload_copies + 2 * n_layers * self.layout.fisher
        c = scenario.clients
        trace = load_trace(c.availability_trace, c.num_clients, scenario.rounds) if c.availability_trace else None
        self.sampler = ClientSampler(c.num_clients, c.per_round, c.availability, scenario.seed, trace)
        self.rng_channel = np.random.default_rng([scenario.seed, 7011])
        self.rng_aggregation = np.random.default_rng([scenario.seed, 7012])
        self.deadline_s = channel_deadline(channel)
        self.last_ranks = np.full((c.num_clients, n_layers), scenario.adapter.max_rank)
        self.last_loss, self.last_accuracy = float("nan"), float("nan")
        self.layer_importance = np.zeros(n_layers)  # what policies observe (sensitivity, when the policy asks for it)
        self.importance_round = 0  # the last round whose delivered updates measured it
        self.singular_mass = np.zeros(n_layers)  # of the global adapter, every layer: the reward's layer weights
        self.wants_sensitivity = sensitivity_betas(scenario) is not None
        self.totals = ByteTotals()
        self.pending: PendingRound | None = None
        self.prepared: PreparedRound | None = None
        self._data_stats: np.ndarray | None = None
        self.round_info: dict = {}
        self.last_reward = float("nan")
        self.validation_metrics: dict[str, float] = {}  # val_loss, val_accuracy, reward (with a validation split)
        self.last_info: dict = {}
        self.error_log: Path | None = None  # the run directory's client_errors.log (set by the ServerApp)

    @property
    def cum_bytes_up(self) -> int:
        return self.totals.up

    @property
    def cum_bytes_down(self) -> int:
        return self.totals.down

    # --- configure --------------------------------------------------------------------------
    def prepare_round(self, server_round: int) -> Observation:
        """Stages select, channel and observe: this round's clients, their channel, what the policy sees."""
        clients = self.sampler.sample(server_round)
        states = self.channel.draw(server_round, clients, self.rng_channel)
        self.prepared = PreparedRound(server_round, clients, states, self.observe(server_round, states))
        return self.prepared.observation

    def scheduled_samples(self, clients: np.ndarray) -> np.ndarray:
        """Examples each client processes in its local training: a shard smaller than a batch is the whole batch at every step."""
        train = self.scenario.train
        return train.local_steps * np.minimum(train.batch_size, self.shard_sizes[np.asarray(clients, dtype=np.int64)])

    def observe(self, server_round: int, states: ChannelStates) -> Observation:
        if self._data_stats is None:
            self._data_stats = client_data_stats(self.runtime, self.scenario.model.backbone)
        return Observation(
            round=server_round,
            total_rounds=self.scenario.rounds,
            channel=states,
            layer_names=self.runtime.model.layer_names,
            max_rank=self.scenario.adapter.max_rank,
            # What one rank component and the fixed part cost on the uplink, as sent: SCAFFOLD sends each twice,
            # Fisher merging adds an estimate of every factor.
            params_per_rank=self.params_per_rank * (self.algorithm.upload_copies + self.layout.fisher),
            fixed_params=self.head_params * self.algorithm.upload_copies,
            upload_tensors=self.upload_tensors,
            bits_per_param=self.scenario.quantization.bits_per_param,
            last_ranks=self.last_ranks[states.client_ids],
            last_loss=self.last_loss,
            last_accuracy=self.last_accuracy,
            layer_importance=self.layer_importance,
            importance_round=self.importance_round,
            data_stats=self._data_stats[states.client_ids],
            deadline_s=self.deadline_s,
            compute_s=self.channel.compute_seconds(states.client_ids, self.scheduled_samples(states.client_ids)),
            sequential_uploads=self.channel.sequential_uploads,
            over_the_air=self.channel.mode == "aircomp",
        )

    def configure_train(self, server_round: int, node_of_client: dict[int, int], ranks: np.ndarray | None = None) -> list[Message]:
        """Stages decide and downlink; `ranks` (from a gymnasium agent) overrides asking the policy."""
        if self.prepared is None or self.prepared.server_round != server_round:
            self.prepare_round(server_round)
        prepared, self.prepared = self.prepared, None
        clients, observation = prepared.clients, prepared.observation
        ranks = self.policy.ranks(observation) if ranks is None else ranks
        ranks = checked_ranks(ranks, (len(clients), len(self.params_per_rank)), self.scenario.adapter.max_rank, self.scenario.policy.name)
        messages, bytes_down = train_messages(self.global_state, self.algorithm, self.layout, clients, ranks, node_of_client, server_round, self.scenario_yaml)
        nodes = [node_of_client[int(c)] for c in clients]
        self.pending = PendingRound(server_round, clients, prepared.states, ranks, bytes_down, nodes, self.singular_mass.copy())
        return messages

    # --- aggregate --------------------------------------------------------------------------
    def aggregate_train(self, server_round: int, replies: list[Message]) -> RoundResult:
        """Stages replies, uplink, aggregate and record."""
        pending = self.pending
        assert pending is not None and pending.server_round == server_round
        client_of_node = {node: int(c) for c, node in zip(pending.clients, pending.nodes)}
        got = collect_replies(replies, client_of_node, server_round, self.scenario.tolerate_client_errors, self.error_log)
        # One whose message was never sent (no SuperNode) trained on none, so it is charged no compute; one that got it is
        # charged its schedule even without a reply (no-reply, client-error): how far it got is unknown here.
        samples = np.where(np.asarray(pending.nodes) == ABSENT_NODE, 0, self.scheduled_samples(pending.clients))
        bits = self.scenario.quantization.bits_per_param
        # Packet losses, HARQ resends and AirComp noise draw from a stream of their own, per round: how many draws they take
        # depends on the ranks and on earlier outcomes, and taken from rng_channel they shifted every later round's fading,
        # so two policies (or two HARQ settings) on one seed saw different channels.
        losses = np.random.default_rng([self.scenario.seed, 7013, server_round])
        uplink = meter_uplink(pending, got, self.layout, self.channel, bits, self.algorithm, samples, self.scenario.adapter.max_rank, losses)
        for client, encoded, ok in zip(pending.clients, uplink.encoded, uplink.finite):  # the client keeps its new state, whatever the channel does
            if encoded is not None and ok:
                self.algorithm.remember(int(client), {k: v for k, v in encoded.items() if k.startswith(MEMORY_PREFIX)})

        delivered_uploads, weights, client_rows = [], [], []
        sensitivities, reported_weights, trained_ranks = [], [], []  # AdaLoRA reports of the delivered clients
        for k, client in enumerate(int(c) for c in pending.clients):
            delivered = uplink.uploads[k] is not None and uplink.transmissions[k].delivered
            if delivered:
                metrics = got.metrics(client)
                delivered_uploads.append(uplink.uploads[k])
                weights.append(float(metrics["num-examples"]))
                if "sensitivity" in metrics:
                    sensitivities.append(np.asarray(metrics["sensitivity"], dtype=float))
                    reported_weights.append(weights[-1])
                    trained_ranks.append(pending.ranks[k])
            self.last_ranks[client] = pending.ranks[k]
            reason = drop_reason(delivered, client, got, uplink.transmissions[k], uplink.finite[k], pending.nodes[k] != ABSENT_NODE)
            client_rows.append(client_record(server_round, k, client, pending, uplink, got, delivered, reason))

        merged = merge_round(
            self.global_state, delivered_uploads, weights, uplink.superposition, self.scenario.aggregation, self.algorithm, self.rng_aggregation
        )
        self.global_state, self.singular_mass, truncated_fraction = merged
        if self.wants_sensitivity:  # the clients' AdaLoRA sensitivity replaces the server-side singular values
            self.layer_importance = client_importance(sensitivities, reported_weights, trained_ranks, self.layer_importance)
            if sensitivities:
                self.importance_round = server_round
        else:
            self.layer_importance = self.singular_mass
            if delivered_uploads:
                self.importance_round = server_round
        self.totals.add(pending, uplink, client_rows)
        latency = self.channel.round_latency(uplink.transmissions)
        row = round_record(server_round, pending, uplink, client_rows, len(delivered_uploads), truncated_fraction, latency, self.totals)
        if not self.scenario.clients.always_online:
            row.extra["clients_online"] = self.sampler.online
        if uplink.superposition is not None:
            row.extra["aircomp_mse"] = uplink.superposition.mse
            row.extra["aircomp_mse_noise"] = uplink.superposition.mse_noise
            row.extra["aircomp_mse_truncation"] = uplink.superposition.mse_truncation
        copies = self.algorithm.upload_copies
        full_params = int(self.params_per_rank.sum()) * self.scenario.adapter.max_rank * (copies + self.layout.fisher) + self.head_params * copies
        full_bits = full_params * self.scenario.quantization.bits_per_param
        self.round_info = reward_info(pending, uplink, client_rows, full_bits, self.deadline_s, self.scenario.adapter.max_rank)
        self.pending = None
        return RoundResult(row, client_rows)

    # --- evaluate ---------------------------------------------------------------------------
    def evaluate(self, server_round: int) -> tuple[float, float, int]:
        """Centralised evaluation of the global adapter: (loss, accuracy, examples)."""
        final = server_round == self.scenario.rounds and self.scenario.data.eval_full_final
        indices = np.arange(len(self.runtime.test)) if final else self.runtime.eval_subset
        full = truncate(self.global_state, [self.scenario.adapter.max_rank] * self.runtime.n_layers)
        loss, accuracy = evaluate(self.runtime, full, indices)
        # What the policy sees and is rewarded by: the validation split when there is one, never the
        # test split the run reports. Without one it sees NaN (learning is then refused, and a frozen
        # policy's loss features read 0): the test metrics would leak into its decisions.
        if len(self.runtime.validation):
            seen_loss, seen_accuracy = evaluate(self.runtime, full, self.runtime.validation, split="train")
            self.validation_metrics = {"val_loss": seen_loss, "val_accuracy": seen_accuracy}
        else:
            seen_loss, seen_accuracy = float("nan"), float("nan")
        info = {
            **self.round_info,
            "round": server_round,
            "done": server_round == self.scenario.rounds,
            "loss": seen_loss,
            "accuracy": seen_accuracy,
            "last_accuracy": self.last_accuracy,
        }
        self.last_info = info  # per-client reward terms are computed from it (fedsim.rl.env.ClientSlotsVecEnv)
        self.last_reward = self.policy.reward(info) if self.round_info else -seen_loss
        if self.validation_metrics:
            self.validation_metrics["reward"] = self.last_reward
        self.policy.feedback(self.last_reward, info)
        self.last_loss, self.last_accuracy = seen_loss, seen_accuracy
        return loss, accuracy, len(indices)


def check_node_map(node_of_client: dict[int, int], num_clients: int) -> None:
    missing = sorted(set(range(num_clients)) - set(node_of_client))
    if missing:
        raise FedsimError(f"no SuperNode serves client(s) {missing[:5]}; start one per client with partition-id 0..{num_clients - 1}")
