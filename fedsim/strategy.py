"""The round logic, shaped like a Flower strategy: `configure_train`, `aggregate_train`, `evaluate`.

Each round: sample clients, draw their channel, ask the policy for ranks, send
each client the global adapter truncated to its ranks (metered on the
downlink), then meter every reply on the uplink, drop what the channel loses,
aggregate what arrived, and evaluate. Whoever owns the round loop (the
ServerApp, or a gymnasium Env) calls these hooks in that order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.common.constant import ErrorCode

from channels import Channel
from channels.quantization import dequantize_payload, encoded_bits
from fedsim.adapter_state import FISHER_PREFIX, HEAD_KEYS, AdapterState, payload_bits, payload_params, truncate
from fedsim.aggregation import Aggregated, aggregate
from fedsim.algorithms import build_algorithm
from fedsim.algorithms.base import MEMORY_PREFIX
from fedsim.config import Scenario
from fedsim.nano import server_side_keys
from fedsim.runtime import Runtime
from fedsim.training import evaluate
from fedsim.types import ChannelStates, FedsimError, Observation
from policies import RankPolicy


def to_array_record(payload: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({key: Array(value) for key, value in payload.items()})


def from_array_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {key: record[key].numpy() for key in record}


@dataclass
class PendingRound:
    """What `configure_train` decided, kept for `aggregate_train`."""

    server_round: int
    clients: np.ndarray
    states: ChannelStates
    ranks: np.ndarray  # [clients, layers]
    bytes_down: np.ndarray
    nodes: list[int]
    layer_importance: np.ndarray  # what the policy observed when it chose `ranks`


@dataclass
class RoundResult:
    row: dict
    client_rows: list[dict]


class RankAdaptiveStrategy:
    """Federated LoRA with per-client, per-layer ranks chosen by a `RankPolicy`, metered by a `Channel`."""

    def __init__(self, scenario: Scenario, runtime: Runtime, channel: Channel, policy: RankPolicy):
        self.scenario = scenario
        self.runtime = runtime
        self.channel = channel
        channel.set_data_sizes([len(p) for p in runtime.partitions])  # for access: fdma-proportional
        self.policy = policy
        self.scenario_yaml = scenario.to_yaml()
        self.global_state: AdapterState = runtime.initial_state.copy()
        self.algorithm = build_algorithm(scenario.algorithm, scenario.aggregation.method, scenario.clients.num_clients)
        self.algorithm.setup(self.global_state)
        n_layers = runtime.n_layers
        self.params_per_rank = np.array(runtime.model.params_per_rank())
        # Nano mode: the head lives on the server, so it is neither broadcast nor uploaded (not metered),
        # and a policy's bit budget carries no fixed head cost.
        self.server_side_keys = server_side_keys(scenario)
        self.head_params = 0 if self.server_side_keys else runtime.model.head_param_count()
        # Independent streams, so that e.g. a policy asking for more randomness never shifts client sampling.
        self.rng_sampling = np.random.default_rng([scenario.seed, 7010])
        self.rng_channel = np.random.default_rng([scenario.seed, 7011])
        self.rng_aggregation = np.random.default_rng([scenario.seed, 7012])
        self.rng_availability = np.random.default_rng([scenario.seed, 7013])
        self.clients_online: int | None = None  # this round's online clients (clients.availability < 1)
        self.last_ranks = np.full((scenario.clients.num_clients, n_layers), scenario.adapter.max_rank)
        self.last_loss, self.last_accuracy = float("nan"), float("nan")
        self.layer_importance = np.zeros(n_layers)
        self.cum_bytes_up = 0
        self.cum_bytes_down = 0
        self.cum_bytes_delivered = 0
        self.pending: PendingRound | None = None
        self.prepared: tuple | None = None
        self._data_stats: np.ndarray | None = None
        self.round_info: dict = {}
        self.last_reward = float("nan")
        self.validation_metrics: dict[str, float] = {}  # val_loss, val_accuracy, reward (with a validation split)
        self.last_info: dict = {}

    # --- configure --------------------------------------------------------------------------
    def sample_clients(self) -> np.ndarray:
        c = self.scenario.clients
        if c.availability >= 1.0:  # everyone online: no availability draw, so the streams are as before
            return np.sort(self.rng_sampling.choice(c.num_clients, size=c.per_round, replace=False))
        online = np.zeros(0, dtype=np.int64)
        while not len(online):  # nobody online: the server waits for the next check-in
            online = np.flatnonzero(self.rng_availability.random(c.num_clients) < c.availability)
        self.clients_online = len(online)
        return np.sort(self.rng_sampling.choice(online, size=min(c.per_round, len(online)), replace=False))

    def client_data_stats(self) -> np.ndarray:
        """[num_clients, 2]: token entropy (bits) and OOV ([UNK]) rate of each client's tokenised shard, as AirLLM observes."""
        if self._data_stats is None:
            from fedsim.model import load_tokenizer

            unk = load_tokenizer(self.scenario.model.backbone).unk_token_id
            stats = []
            for indices in self.runtime.partitions:
                tokens = np.concatenate([np.asarray(self.runtime.train.token_ids[i]) for i in indices])
                _, counts = np.unique(tokens, return_counts=True)
                p = counts / counts.sum()
                stats.append((float(-(p * np.log2(p)).sum()), float(np.mean(tokens == unk)) if unk is not None else 0.0))
            self._data_stats = np.array(stats)
        return self._data_stats

    def channel_deadline(self) -> float:
        """The channel's upload deadline in seconds (inf when it has none)."""
        deadline = getattr(self.channel, "deadline_s", None)
        if deadline is None:
            deadline = getattr(getattr(self.channel, "config", None), "deadline_s", None)
        return float(deadline) if deadline else float("inf")

    def prepare_round(self, server_round: int) -> Observation:
        """Sample this round's clients, draw their channel and build what the policy observes."""
        clients = self.sample_clients()
        states = self.channel.draw(server_round, clients, self.rng_channel)
        self.prepared = (server_round, clients, states, self.observe(server_round, states))
        return self.prepared[3]

    def observe(self, server_round: int, states: ChannelStates) -> Observation:
        return Observation(
            round=server_round,
            total_rounds=self.scenario.rounds,
            channel=states,
            layer_names=self.runtime.model.layer_names,
            max_rank=self.scenario.adapter.max_rank,
            # What one rank component and the fixed part cost on the uplink, as sent: SCAFFOLD sends each twice.
            params_per_rank=self.params_per_rank * self.algorithm.upload_copies,
            fixed_params=self.head_params * self.algorithm.upload_copies,
            bits_per_param=self.channel.bits_per_param,
            last_ranks=self.last_ranks[states.client_ids],
            last_loss=self.last_loss,
            last_accuracy=self.last_accuracy,
            layer_importance=self.layer_importance,
            data_stats=self.client_data_stats()[states.client_ids],
            deadline_s=self.channel_deadline(),
        )

    def configure_train(self, server_round: int, node_of_client: dict[int, int], ranks: np.ndarray | None = None) -> list[Message]:
        """Send the round's train messages; `ranks` (from a gymnasium agent) overrides asking the policy."""
        if self.prepared is None or self.prepared[0] != server_round:
            self.prepare_round(server_round)
        _, clients, states, observation = self.prepared
        self.prepared = None
        ranks = np.asarray(self.policy.ranks(observation) if ranks is None else ranks)
        expected = (len(clients), len(self.params_per_rank))
        if ranks.shape != expected or ranks.min() < 0 or ranks.max() > self.scenario.adapter.max_rank:
            raise RuntimeError(
                f"policy '{self.policy.name}' returned ranks of shape {ranks.shape} in [{ranks.min()}, {ranks.max()}]; expected {expected} in [0, max_rank]"
            )
        ranks = ranks.astype(np.int64)
        messages, bytes_down = [], []
        for client, client_ranks in zip(clients, ranks):
            payload = truncate(self.global_state, client_ranks) | self.algorithm.downlink(int(client), client_ranks)
            bytes_down.append(payload_bits(self.on_air(payload), 32) // 8)  # the broadcast is float32, as sent
            payload |= self.algorithm.memory(int(client), client_ranks)  # the client's own state, carried for it
            config = ConfigRecord({"server-round": server_round, "client-id": int(client), "scenario": self.scenario_yaml})
            content = RecordDict({"arrays": to_array_record(payload), "config": config})
            messages.append(Message(content, dst_node_id=node_of_client[int(client)], message_type=MessageType.TRAIN, group_id=str(server_round)))
        nodes = [node_of_client[int(c)] for c in clients]
        self.pending = PendingRound(server_round, clients, states, ranks, np.array(bytes_down), nodes, observation.layer_importance.copy())
        return messages

    # --- aggregate --------------------------------------------------------------------------
    def aggregate_train(self, server_round: int, replies: list[Message]) -> RoundResult:
        pending = self.pending
        assert pending is not None and pending.server_round == server_round
        received: dict[int, tuple[dict, dict]] = {}
        errors: dict[int, str] = {}
        by_node = {node: int(c) for c, node in zip(pending.clients, pending.nodes)}
        for reply in replies:
            if reply.has_error():
                if reply.error.code in CLIENT_FAILURES:  # else the node or message was lost: a plain no-reply
                    errors[by_node.get(reply.metadata.src_node_id, -1)] = _one_line(reply.error.reason)
                continue
            metrics = dict(reply.content["metrics"])
            received[int(metrics["client-id"])] = (from_array_record(reply.content["arrays"]), metrics)
        if errors and not self.scenario.tolerate_client_errors:
            client, cause = next(iter(sorted(errors.items())))
            more = f" (and {len(errors) - 1} more client(s))" if len(errors) > 1 else ""
            raise FedsimError(
                f"round {server_round}: client {client} failed{more}: {cause}; set tolerate_client_errors: true to log such failures as dropped updates instead"
            )

        bits_per_param = self.channel.bits_per_param
        # Bits are those of the arrays the client sent (quantised codes and scales); the server
        # aggregates their dequantised values, so quantisation error is real.
        encoded = [received.get(int(c), (None, None))[0] for c in pending.clients]
        adapter_bits = np.array([encoded_bits(self.on_air(e)) if e is not None else 0 for e in encoded])
        fisher_bits = np.array(
            [encoded_bits({k: v for k, v in self.on_air(e).items() if k.startswith(FISHER_PREFIX)}) if e is not None else 0 for e in encoded]
        )
        control_bits = np.array(
            [
                encoded_bits({k: v for k, v in self.on_air(e).items() if k.startswith(self.algorithm.upload_prefix)})
                if e is not None and self.algorithm.upload_prefix
                else 0
                for e in encoded
            ]
        )
        # Nano mode: every local step also sent activations up and got gradients down (split computation).
        replied = [received.get(int(c), (None, {}))[1] for c in pending.clients]
        activation_bytes = np.array([int(m.get("bytes-up-activations", 0)) if m else 0 for m in replied])
        gradient_bytes = np.array([int(m.get("bytes-down-gradients", 0)) if m else 0 for m in replied])
        up_bits = adapter_bits + 8 * activation_bytes
        uploads = [self.decode_upload(e, r) if e is not None else None for e, r in zip(encoded, pending.ranks)]
        # A NaN/inf update would poison the global adapter (and the SVD): never aggregated, logged as non-finite.
        # Over the air, a client would not superpose it, so it is left out of the AirComp sum too.
        finite = [u is None or all(np.isfinite(v).all() for v in u.values()) for u in uploads]
        uploads = [u if ok else None for u, ok in zip(uploads, finite)]
        for client, e, ok in zip(pending.clients, encoded, finite):  # the client keeps its new state, whatever the channel does
            if e is not None and ok:
                self.algorithm.remember(int(client), {k: v for k, v in e.items() if k.startswith(MEMORY_PREFIX)})
        samples = np.full(len(pending.clients), self.scenario.train.local_steps * self.scenario.train.batch_size)
        superposition = None
        if self.channel.mode == "aircomp":
            sizes = np.array([float(received[int(c)][1]["num-examples"]) if int(c) in received else 0.0 for c in pending.clients])
            transmissions, superposition = self.channel.superpose(
                uploads, sizes, pending.states, self.rng_channel, self.upload_shapes([self.scenario.adapter.max_rank] * self.runtime.n_layers), samples
            )
        else:
            transmissions = self.channel.uplink(pending.states, up_bits, self.rng_channel, samples)
        downlinks = self.channel.downlink(pending.states, (pending.bytes_down + gradient_bytes) * 8)

        delivered_uploads, weights, client_rows = [], [], []
        sensitivities, sensitivity_weights = [], []
        for k, client in enumerate(pending.clients):
            upload, metrics = uploads[k], received.get(int(client), (None, None))[1]
            tx = transmissions[k]
            delivered = upload is not None and tx.delivered
            if delivered:
                reason = ""
            elif int(client) in errors:
                reason = "client-error"
            elif int(client) not in received:
                reason = "no-reply"
            elif not tx.delivered and tx.drop_reason:
                reason = tx.drop_reason
            else:
                reason = "non-finite" if not finite[k] else tx.drop_reason
            if delivered:
                delivered_uploads.append(upload)
                weights.append(float(metrics["num-examples"]))
                if "sensitivity" in metrics:
                    sensitivities.append(np.asarray(metrics["sensitivity"], dtype=float))
                    sensitivity_weights.append(weights[-1])
            self.last_ranks[client] = pending.ranks[k]
            client_rows.append(
                {
                    "round": server_round,
                    "client": int(client),
                    "ranks": " ".join(str(int(r)) for r in pending.ranks[k]),
                    "mean_rank": float(pending.ranks[k].mean()),
                    "params_up": payload_params(upload) if upload is not None else 0,
                    "bytes_up": int(up_bits[k] // 8),
                    "bytes_down": int(pending.bytes_down[k] + gradient_bytes[k]),
                    "bytes_up_adapter": int(adapter_bits[k] // 8),
                    "bytes_up_fisher": int(fisher_bits[k] // 8),
                    "bytes_up_control": int(control_bits[k] // 8),
                    "bytes_up_activations": int(activation_bytes[k]),
                    "bytes_down_gradients": int(gradient_bytes[k]),
                    "snr_db": float(pending.states.snr_db[k]),
                    "fading_gain": float(pending.states.fading_gain[k]),
                    "bandwidth_hz": float(pending.states.bandwidth_hz[k]),
                    "rate_bps": float(pending.states.rate_bps[k]),
                    "latency_s": tx.latency_s,
                    "energy_j": tx.energy_j,
                    "delivered": int(delivered),
                    "drop_reason": reason,
                    "packets": tx.packets,
                    "retransmissions": tx.retransmissions,
                    "compute_s": tx.compute_s,
                    "compute_energy_j": tx.compute_energy_j,
                    "num_examples": int(metrics["num-examples"]) if metrics else 0,
                    "train_loss": float(metrics["train-loss"]) if metrics else float("nan"),
                    **{f"{name}": float(values[k]) for name, values in pending.states.extra.items()},
                    **({"error": errors[int(client)]} if int(client) in errors else {}),
                }
            )

        if superposition is not None:
            merged = Aggregated(*self.apply_superposition(superposition.aggregate), 0.0)
        else:
            agg = self.scenario.aggregation
            merged = aggregate(self.global_state, delivered_uploads, weights, agg.method, self.rng_aggregation, agg.average)
        merged = self.algorithm.server_update(self.global_state, merged, delivered_uploads, weights)
        self.global_state, self.layer_importance, truncated_fraction = merged
        if sensitivities:  # the clients' AdaLoRA sensitivity replaces the server-side singular values
            self.layer_importance = np.average(sensitivities, axis=0, weights=sensitivity_weights)
        bytes_up = int(up_bits.sum() // 8)
        bytes_down = int(pending.bytes_down.sum() + gradient_bytes.sum())
        self.cum_bytes_up += bytes_up
        self.cum_bytes_down += bytes_down
        bytes_delivered = int(sum(r["bytes_up"] for r in client_rows if r["delivered"]))
        self.cum_bytes_delivered += bytes_delivered
        train_losses = [r["train_loss"] for r in client_rows if r["delivered"]]
        row = {
            "round": server_round,
            "bytes_up": bytes_up,
            "bytes_down": bytes_down,
            "bytes_up_adapter": int(adapter_bits.sum() // 8),
            "bytes_up_fisher": int(fisher_bits.sum() // 8),
            "bytes_up_control": int(control_bits.sum() // 8),
            "bytes_up_activations": int(activation_bytes.sum()),
            "bytes_down_gradients": int(gradient_bytes.sum()),
            "cum_bytes_up": self.cum_bytes_up,
            "cum_bytes_down": self.cum_bytes_down,
            "uplink_latency_s": self.channel.round_latency(transmissions),
            "downlink_latency_s": max((t.latency_s for t in downlinks), default=0.0),
            "energy_j": float(sum(t.energy_j for t in transmissions)),
            "mean_rank": float(pending.ranks.mean()),
            "clients_selected": len(pending.clients),
            "clients_dropped": len(pending.clients) - len(delivered_uploads),
            "updates_aggregated": len(delivered_uploads),  # 0: the global adapter was kept as it was
            "truncated_fraction": truncated_fraction,
            "train_loss": float(np.mean(train_losses)) if train_losses else float("nan"),
            "bytes_delivered": bytes_delivered,
            "cum_bytes_delivered": self.cum_bytes_delivered,
            "packets": int(sum(t.packets for t in transmissions)),
            "retransmissions": int(sum(t.retransmissions for t in transmissions)),
            "compute_energy_j": float(sum(t.compute_energy_j for t in transmissions)),
        }
        if self.scenario.clients.availability < 1.0:
            row["clients_online"] = self.clients_online
        if superposition is not None:
            row["aircomp_mse"] = superposition.mse
            row["aircomp_mse_noise"] = superposition.mse_noise
            row["aircomp_mse_truncation"] = superposition.mse_truncation
        full_params = (int(self.params_per_rank.sum()) * self.scenario.adapter.max_rank + self.head_params) * self.algorithm.upload_copies
        self.round_info = {  # what a learning policy's reward needs (policies.common.round_reward)
            "bits_up": up_bits.astype(float),
            "bits_full": np.full(len(up_bits), float(full_params * bits_per_param)),
            "rate_bps": np.asarray(pending.states.rate_bps, dtype=float),
            "latency_s": np.array([t.latency_s for t in transmissions]),
            "energy_j": np.array([t.energy_j for t in transmissions]),
            "drop_reasons": [r["drop_reason"] for r in client_rows],
            "delivered": np.array([bool(r["delivered"]) for r in client_rows]),
            "deadline_s": self.channel_deadline(),
            "ranks": pending.ranks,
            "max_rank": self.scenario.adapter.max_rank,
            "layer_importance": pending.layer_importance,
        }
        self.pending = None
        return RoundResult(row, client_rows)

    def upload_shapes(self, ranks) -> dict[str, tuple[int, ...]]:
        """Shapes of the tensors in a payload at per-layer `ranks` (what the server expects back)."""
        shapes: dict[str, tuple[int, ...]] = {}
        for i, rank in enumerate(ranks):
            if rank > 0:
                shapes[f"A.{i}"] = (int(rank), self.global_state.A[i].shape[1])
                shapes[f"B.{i}"] = (self.global_state.B[i].shape[0], int(rank))
        if self.scenario.aggregation.method == "fisher":  # the Fisher estimate has the factors' shapes
            shapes |= {f"{FISHER_PREFIX}{key}": shape for key, shape in shapes.items()}
        for key in HEAD_KEYS:
            shapes[key] = tuple(self.global_state.head[key].shape)
        return shapes | self.algorithm.upload_shapes(shapes)

    def on_air(self, encoded: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The arrays of a message that cross the air: not the server-side head of nano mode, nor the state the
        simulator carries for a client (`memory.` keys)."""
        return {k: v for k, v in encoded.items() if k not in self.server_side_keys and not k.startswith(MEMORY_PREFIX)}

    def decode_upload(self, encoded: dict[str, np.ndarray], ranks) -> dict[str, np.ndarray]:
        """The float32 values the client sent: its changes (`average: updates`) or its adapter (`models`)."""
        decoded = dequantize_payload(self.on_air(encoded), self.channel.bits_per_param, self.upload_shapes(ranks))
        return decoded | {k: np.asarray(encoded[k], dtype=np.float32) for k in self.server_side_keys if k in encoded}

    def apply_superposition(self, superposed: dict[str, np.ndarray]) -> tuple[AdapterState, np.ndarray]:
        """AirComp: the received (noisy) zero-padded average of what the clients sent is added to the global
        adapter (`average: updates`, the clients sent changes) or replaces it (`models`); unsent layers keep theirs."""
        state = self.global_state.copy()
        importance = np.zeros(len(state.A))
        base = 1.0 if self.scenario.aggregation.average == "updates" else 0.0
        for i in range(len(state.A)):
            if f"A.{i}" in superposed:
                state.A[i] = (base * state.A[i].astype(np.float64) + superposed[f"A.{i}"]).astype(np.float32)
                state.B[i] = (base * state.B[i].astype(np.float64) + superposed[f"B.{i}"]).astype(np.float32)
                importance[i] = float(np.linalg.svd(state.B[i].astype(np.float64) @ state.A[i], compute_uv=False).sum())
        for key in HEAD_KEYS:
            if key in superposed:
                state.head[key] = (base * state.head[key].astype(np.float64) + superposed[key]).astype(np.float32)
        return state, importance

    # --- evaluate ---------------------------------------------------------------------------
    def evaluate(self, server_round: int) -> tuple[float, float, int]:
        """Centralised evaluation of the global adapter: (loss, accuracy, examples)."""
        final = server_round == self.scenario.rounds and self.scenario.data.eval_full_final
        indices = np.arange(len(self.runtime.test)) if final else self.runtime.eval_subset
        full = truncate(self.global_state, [self.scenario.adapter.max_rank] * self.runtime.n_layers)
        loss, accuracy = evaluate(self.runtime, full, indices)
        # What the policy sees and is rewarded by: the validation split when there is one, never the
        # test split the run reports (without one, the test metrics, as before; learning then is refused).
        if len(self.runtime.validation):
            seen_loss, seen_accuracy = evaluate(self.runtime, full, self.runtime.validation, split="train")
            self.validation_metrics = {"val_loss": seen_loss, "val_accuracy": seen_accuracy}
        else:
            seen_loss, seen_accuracy = loss, accuracy
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


# Error codes of a client that ran and failed; NODE_UNAVAILABLE and the *_UNAVAILABLE codes are transport losses.
CLIENT_FAILURES = {
    ErrorCode.UNKNOWN,
    ErrorCode.LOAD_CLIENT_APP_EXCEPTION,
    ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
    ErrorCode.MOD_FAILED_PRECONDITION,
    ErrorCode.CLIENT_APP_CRASHED,
}


def _one_line(reason) -> str:
    """The last non-empty line of an error reason (Flower may carry a whole traceback there)."""
    lines = [line.strip() for line in str(reason or "").splitlines() if line.strip()]
    return lines[-1] if lines else "unknown error"


def check_node_map(node_of_client: dict[int, int], num_clients: int) -> None:
    missing = sorted(set(range(num_clients)) - set(node_of_client))
    if missing:
        raise FedsimError(f"no SuperNode serves client(s) {missing[:5]}; start one per client with partition-id 0..{num_clients - 1}")
