"""The Flower ServerApp: owns the round loop and writes the run directory.

`run_server(grid, scenario, out_dir)` is the whole server side. The simulation
engine gets it through `make_server_app`; a deployment (`flwr run`) gets the
module-level `app`, which reads the scenario and output directory from the run
config.
"""

from __future__ import annotations

import time
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp
from tqdm.auto import tqdm

from channels import build_channel
from fedsim.config import Scenario, load_scenario
from fedsim.ledger import RunDirectory
from fedsim.runtime import get_runtime
from fedsim.strategy import RankAdaptiveStrategy, check_node_map
from fedsim.types import FedsimError
from policies import build_policy

NODE_WAIT_S = 120.0


def discover_nodes(grid: Grid, num_clients: int, wait_s: float = NODE_WAIT_S) -> dict[int, int]:
    """Map client index -> node id by asking each node for its partition-id."""
    deadline = time.monotonic() + wait_s
    while len(list(grid.get_node_ids())) < num_clients and time.monotonic() < deadline:
        time.sleep(0.05)
    node_ids = sorted(grid.get_node_ids())
    queries = [
        Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=node, message_type=MessageType.QUERY) for node in node_ids
    ]
    mapping: dict[int, int] = {}
    for reply in grid.send_and_receive(queries, timeout=wait_s):
        if not reply.has_error():
            mapping[int(reply.content["node"]["partition-id"])] = reply.metadata.src_node_id
    check_node_map(mapping, num_clients)
    return mapping


def run_server(grid: Grid, scenario: Scenario, out_dir: Path, progress: bool = True) -> dict:
    import torch

    if scenario.threads:
        torch.set_num_threads(scenario.threads)
    run_dir = RunDirectory(out_dir)
    run_dir.start(scenario.to_yaml())
    started = time.time()
    runtime = get_runtime(scenario)
    strategy = RankAdaptiveStrategy(scenario, runtime, build_channel(scenario.channel, scenario.seed), build_policy(scenario.policy))
    nodes = discover_nodes(grid, scenario.clients.num_clients)

    bar = tqdm(range(1, scenario.rounds + 1), desc=scenario.name, unit="round", disable=not progress, dynamic_ncols=True)
    for server_round in bar:
        round_start = time.time()
        messages = strategy.configure_train(server_round, nodes)
        replies = list(grid.send_and_receive(messages))
        result = strategy.aggregate_train(server_round, replies)
        loss, accuracy, n_eval = strategy.evaluate(server_round)
        row = {"round": server_round, "accuracy": accuracy, "loss": loss, "eval_examples": n_eval, **result.row}
        run_dir.add_round(row, result.client_rows, time.time() - round_start)
        bar.set_postfix(acc=f"{accuracy:.3f}", MB_up=f"{strategy.cum_bytes_up / 1e6:.2f}")

    run_dir.save_adapter(lambda d: _export_adapter(strategy, d))
    rounds = run_dir.rounds
    summary = {
        "scenario": scenario.name,
        "seed": scenario.seed,
        "rounds": scenario.rounds,
        "final_accuracy": rounds[-1]["accuracy"],
        "final_loss": rounds[-1]["loss"],
        "first_round_accuracy": rounds[0]["accuracy"],
        "best_accuracy": max(r["accuracy"] for r in rounds),
        "total_bytes_up": strategy.cum_bytes_up,
        "total_bytes_down": strategy.cum_bytes_down,
        "total_uplink_latency_s": float(sum(r["uplink_latency_s"] for r in rounds)),
        "total_energy_j": float(sum(r["energy_j"] for r in rounds)),
        "clients_dropped": int(sum(r["clients_dropped"] for r in rounds)),
        "layers": runtime.model.layer_names,
        "wall_s": round(time.time() - started, 2),
    }
    run_dir.finish(summary)
    return summary


def _export_adapter(strategy: RankAdaptiveStrategy, directory: Path) -> None:
    from fedsim.adapter_state import load_payload, truncate

    model = strategy.runtime.model
    load_payload(model, truncate(strategy.global_state, [model.max_rank] * len(model.layers)))
    model.save_adapter(directory)


def make_server_app(scenario: Scenario, out_dir: Path, progress: bool = True, result: dict | None = None) -> ServerApp:
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        summary = run_server(grid, scenario, out_dir, progress)
        if result is not None:
            result.update(summary)

    return server


# Deployment entry point (`flwr run`): the run config names the scenario file and the output directory.
app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    if "scenario" not in cfg:
        raise FedsimError("run config needs scenario=PATH (for example --run-config 'scenario=\"scenarios/quickstart.yaml\"')")
    overrides = [s for s in str(cfg.get("set", "")).split(";") if s]
    scenario = load_scenario(str(cfg["scenario"]), overrides)
    out = Path(str(cfg.get("out", f"runs/{scenario.name}-deploy")))
    run_server(grid, scenario, out, progress=True)
