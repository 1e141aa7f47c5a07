"""The Flower ClientApp: one simulated edge client per SuperNode (partition-id = client index).

The scenario travels in each train message, so the same ClientApp serves the
simulation engine, the inline engine and a real deployment.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import yaml
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from channels.quantization import quantize_payload
from fedsim.adapters import adapter_kind
from fedsim.aggregation import update_keys
from fedsim.client_errors import guard_client_errors
from fedsim.cohort import cohort_train
from fedsim.config import Scenario, scenario_from_dict
from fedsim.payload import MEMORY_PREFIX
from fedsim.round.messages import from_array_record, to_array_record
from fedsim.runtime import get_runtime
from fedsim.threads import use_threads
from fedsim.training import local_train

app = ClientApp(mods=[guard_client_errors])  # a raising client replies "Type: message" on every engine


@lru_cache(maxsize=4)
def _scenario(text: str) -> Scenario:
    return scenario_from_dict(yaml.safe_load(text), "scenario from the server")


def set_threads(scenario: Scenario) -> None:
    use_threads(scenario.threads)


@app.query()
def identify(message: Message, context: Context) -> Message:
    """Tell the server which client (data partition) this node is."""
    partition_id = int(context.node_config.get("partition-id", -1))
    return Message(RecordDict({"node": ConfigRecord({"partition-id": partition_id})}), reply_to=message)


def _on_air(scenario: Scenario, upload: dict, received: dict, client_id: int, server_round: int) -> dict:
    """The upload as it goes on the air: quantised (codes + per-tensor scales when bits_per_param < 32).

    With `aggregation.average: updates` the client sends its change to what it received
    (`fedsim.aggregation.update_keys`), as FedAvg clients do: quantising the change rather than
    the weights keeps the quantisation error proportional to the update.
    """
    q = scenario.quantization
    rounding_rng = np.random.default_rng([scenario.seed, server_round, client_id, 7031])
    if scenario.aggregation.average == "updates":
        # nano's head too, though it stays on the server: the merge adds the mean change of every such key.
        changes = set(update_keys(received))
        upload = {k: (v - received[k] if k in changes else v) for k, v in upload.items()}
    # Not on the air: nano's head (it never leaves the server) and the client's own state (`memory.` keys), which the
    # simulator carries for it between rounds.
    server_side = {k: v for k, v in upload.items() if k in adapter_kind(scenario).server_side or k.startswith(MEMORY_PREFIX)}
    sent = {k: v for k, v in upload.items() if k not in server_side}
    return quantize_payload(sent, q.bits_per_param, q.rounding, rounding_rng) | server_side


@app.train()
def train(message: Message, context: Context) -> Message:
    config = message.content["config"]
    scenario = _scenario(str(config["scenario"]))
    set_threads(scenario)
    client_id = int(config["client-id"])
    runtime = get_runtime(scenario)
    payload = from_array_record(message.content["arrays"])
    server_round = int(config["server-round"])
    upload, metrics = local_train(runtime, payload, client_id, server_round)
    upload = _on_air(scenario, upload, payload, client_id, server_round)
    content = RecordDict({"arrays": to_array_record(upload), "metrics": MetricRecord({**metrics, "client-id": client_id})})
    return Message(content, reply_to=message)


@app.train("cohort")
def train_cohort(message: Message, context: Context) -> Message:
    """Train several clients together (`train.engine: cohort`); one reply carries every client's upload."""
    config = message.content["config"]
    scenario = _scenario(str(config["scenario"]))
    set_threads(scenario)
    client_ids = [int(c) for c in config["client-ids"]]
    server_round = int(config["server-round"])
    payloads = [from_array_record(message.content[f"arrays.{cid}"]) for cid in client_ids]
    results = cohort_train(get_runtime(scenario), payloads, client_ids, server_round)
    content = RecordDict()
    for cid, payload, (upload, metrics) in zip(client_ids, payloads, results):
        content[f"arrays.{cid}"] = to_array_record(_on_air(scenario, upload, payload, cid, server_round))
        content[f"metrics.{cid}"] = MetricRecord({**metrics, "client-id": cid})
    return Message(content, reply_to=message)
