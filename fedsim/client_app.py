"""The Flower ClientApp: one simulated edge client per SuperNode (partition-id = client index).

The scenario travels in each train message, so the same ClientApp serves the
simulation engine, the inline engine and a real deployment.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import yaml
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from channels.quantization import quantize_payload
from fedsim.config import Scenario, scenario_from_dict
from fedsim.runtime import get_runtime
from fedsim.strategy import from_array_record, to_array_record
from fedsim.training import local_train

app = ClientApp()


@lru_cache(maxsize=4)
def _scenario(text: str) -> Scenario:
    return scenario_from_dict(yaml.safe_load(text), "scenario from the server")


def set_threads(scenario: Scenario) -> None:
    threads = scenario.threads or torch.get_num_threads()
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@app.query()
def identify(message: Message, context: Context) -> Message:
    """Tell the server which client (data partition) this node is."""
    partition_id = int(context.node_config.get("partition-id", -1))
    return Message(RecordDict({"node": ConfigRecord({"partition-id": partition_id})}), reply_to=message)


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
    # The upload goes on the air quantised (codes + per-tensor scales when bits_per_param < 32).
    channel = scenario.channel
    rounding_rng = np.random.default_rng([scenario.seed, server_round, client_id, 7031])
    upload = quantize_payload(upload, channel.bits_per_param, channel.rounding, rounding_rng)
    content = RecordDict({"arrays": to_array_record(upload), "metrics": MetricRecord({**metrics, "client-id": client_id})})
    return Message(content, reply_to=message)
