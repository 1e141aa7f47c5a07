"""The Flower ServerApp: owns the round loop and writes the run directory.

`run_server(grid, scenario, out_dir)` is the whole server side. The simulation
engines call it from `fedsim.runner` (clients map to simulated nodes without
queries); a deployment (`flwr run`) gets the module-level `app`, which reads the
scenario and output directory from the run config and asks each SuperNode for its
partition-id.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp
from tqdm.auto import tqdm

from channels import build_channel
from fedsim.client_errors import CLIENT_ERRORS_LOG
from fedsim.cohort import pack, unpack
from fedsim.config import Scenario, load_scenario
from fedsim.ledger import ALGORITHM_STATE, RunClaim, RunDirectory, check_out_path, claim_run_dir
from fedsim.provenance import environment
from fedsim.round.downlink import ABSENT_NODE
from fedsim.runtime import get_runtime
from fedsim.strategy import RankAdaptiveStrategy, check_node_map
from fedsim.types import ERROR_LINE_PREFIX, FedsimError
from policies import build_policy

NODE_WAIT_S = 120.0


def _await_nodes(grid: Grid, count: int, wait_s: float) -> list[int]:
    """The grid's node ids, sorted, once `count` have registered (or `wait_s` has passed)."""
    deadline = time.monotonic() + wait_s
    while len(list(grid.get_node_ids())) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return sorted(grid.get_node_ids())


def discover_nodes(grid: Grid, num_clients: int, wait_s: float = NODE_WAIT_S) -> dict[int, int]:
    """Map client index -> node id by asking each node for its partition-id; every client must be served."""
    mapping, _ = query_partitions(grid, _await_nodes(grid, num_clients, wait_s), num_clients, wait_s)
    check_node_map(mapping, num_clients)
    return mapping


def simulated_nodes(grid: Grid, num_clients: int, wait_s: float = NODE_WAIT_S) -> dict[int, int]:
    """Client index -> node id on a simulation engine (inline, Flower's Ray simulation), with no message.

    There every client's data is found from the `client-id` its train message carries (the runtime holds
    all partitions), so any simulated node can serve any client: client k goes to the k-th node id in
    increasing order. Start-up then costs one `get_node_ids` call at any population, where asking each
    node for its partition-id (`discover_nodes`, which the deployment engine needs: there a SuperNode holds
    one client's data) took one actor call per node: ~20 minutes for 1,000 clients on a loaded 2-core machine.
    """
    nodes = _await_nodes(grid, num_clients, wait_s)
    mapping = {client: nodes[client] for client in range(min(num_clients, len(nodes)))}
    check_node_map(mapping, num_clients)
    return mapping


def query_partitions(grid: Grid, node_ids: list[int], num_clients: int, timeout: float) -> tuple[dict[int, int], set[int]]:
    """Ask `node_ids` for their partition-id; returns client index -> node id for those that answered, and
    the nodes that answered without an error (whatever partition-id they gave).

    `timeout` bounds the wait for the next reply, not for all of them: a simulation of 1,000 clients
    answers its queries one actor call at a time, which on a busy machine takes minutes in all.
    """
    queries = [Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=node, message_type=MessageType.QUERY) for node in node_ids]
    mapping: dict[int, int] = {}
    answered: set[int] = set()
    for reply in send_and_collect(grid, queries, timeout=None, idle_timeout=timeout):
        if not reply.has_error():
            answered.add(reply.metadata.src_node_id)
            partition = int(reply.content["node"]["partition-id"])
            if 0 <= partition < num_clients:
                mapping[partition] = reply.metadata.src_node_id
    return mapping, answered


class NodeDirectory:
    """Which SuperNode serves which client, kept current between rounds.

    A SuperNode that dies keeps its node id until the SuperLink stops listing it; one that
    restarts registers under a new id. Before each round the directory drops clients whose
    node is no longer listed and asks each node listed since the start for its partition-id until
    it answers, so a returning SuperNode serves its client in the next round (or, if it misses the
    query while still loading its ClientApp, in the first round after it answers) and an unchanged
    federation costs one `get_node_ids` call per round. A round's queries share one wait that ends
    `query_timeout_s` after the last reply, so a listed node that never answers delays each round by
    at most `query_timeout_s`.
    """

    def __init__(self, grid: Grid, initial: dict[int, int], num_clients: int, query_timeout_s: float):
        self.grid = grid
        self.num_clients = num_clients
        self.query_timeout_s = query_timeout_s
        self.node_of_client = dict(initial)
        # Nodes never asked again. Those listed now are settled by the start-up mapping: `discover_nodes` fails unless every
        # client is served, so an unmapped one is surplus, and on a simulation a node needs no partition-id.
        self.settled = set(grid.get_node_ids()) | set(initial.values())

    def refresh(self) -> dict[int, int]:
        live = set(self.grid.get_node_ids())
        self.node_of_client = {c: n for c, n in self.node_of_client.items() if n in live}
        self.settled &= live
        unsettled = sorted(live - self.settled)
        if unsettled:
            # Settled only once it answers: one that missed the query (still loading its ClientApp) is asked next round too.
            mapping, answered = query_partitions(self.grid, unsettled, self.num_clients, self.query_timeout_s)
            self.node_of_client.update(mapping)
            self.settled |= answered
        return self.node_of_client

    def routing(self) -> dict[int, int]:
        """Client -> node for every client; clients without a node get ABSENT_NODE."""
        return {c: self.node_of_client.get(c, ABSENT_NODE) for c in range(self.num_clients)}


def content_wire_bytes(message: Message) -> int:
    """Bytes of the message content as Flower ships it: its serialized objects, deduplicated by object id.

    Flower transfers a message as a tree of content-addressed objects (RecordDict, records,
    Arrays and their chunks) pushed and pulled over HTTP. This sums the serialized size of the
    content's objects, so it is the same on every engine; the envelope (metadata: ids, node
    ids, timestamps, ~0.2 kB) and HTTP framing are not counted.
    """
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    return sum(len(obj.deflate()) for obj in get_all_nested_objects(message.content).values())


REPLY_POLL_S = 0.1


def send_and_collect(grid: Grid, messages: list[Message], timeout: float | None, idle_timeout: float | None = None) -> list[Message]:
    """Push `messages`, then pull replies until all came, `timeout` seconds passed (None = wait for all),
    or, with `idle_timeout`, no reply came for that long.

    The same push/pull as Flower's `Grid.send_and_receive`, polled every REPLY_POLL_S instead of
    its fixed 3 s sleep (flwr 1.42 HttpGrid), so a deployed round ends as soon as its last reply lands.
    """
    return push_and_pull(grid, messages, timeout, idle_timeout)[1]


def send_and_match(grid: Grid, messages: list[Message], timeout: float | None) -> list[Message | None]:
    """`send_and_collect`, answering with each message's reply in the messages' order (None where none came)."""
    ids, replies = push_and_pull(grid, messages, timeout)
    by_id = {reply.metadata.reply_to_message_id: reply for reply in replies}
    return [by_id.get(message_id) for message_id in ids]


def push_and_pull(grid: Grid, messages: list[Message], timeout: float | None, idle_timeout: float | None = None) -> tuple[list[str], list[Message]]:
    """The pushed messages' ids (in their order) and the replies that came (in arrival order)."""
    if not messages:
        return [], []
    ids = list(grid.push_messages(messages))
    pending = set(ids)
    deadline = time.monotonic() + timeout if timeout else float("inf")
    last_progress = time.monotonic()
    replies: list[Message] = []
    while pending:
        arrived = list(grid.pull_messages(sorted(pending)))
        replies.extend(arrived)
        pending -= {m.metadata.reply_to_message_id for m in arrived}
        now = time.monotonic()
        if arrived:
            last_progress = now
        if not pending or now >= deadline or (idle_timeout is not None and now - last_progress >= idle_timeout):
            break
        time.sleep(REPLY_POLL_S)
    return ids, replies


def run_train_round(grid: Grid, strategy: RankAdaptiveStrategy, server_round: int, routing: dict[int, int], timeout: float | None, ranks=None):
    """One round through the grid: send to reachable clients, wait until `timeout`, aggregate what came back.
    `ranks` (a gymnasium agent's action) replaces asking the strategy's policy."""
    messages = strategy.configure_train(server_round, routing, ranks=ranks)
    cohort = strategy.scenario.train.engine == "cohort"
    clients = [int(c) for c in strategy.pending.clients]
    sent = [(c, m) for c, m in zip(clients, messages) if m.metadata.dst_node_id != ABSENT_NODE]
    wire_down = {c: content_wire_bytes(m) for c, m in sent}
    client_of_node = {m.metadata.dst_node_id: c for c, m in sent}
    replies = send_and_collect(grid, [m for _, m in sent], timeout) if sent and not cohort else []
    if sent and cohort:  # `train.cohort` messages of train.cohort_size clients (all by default), each answered as one reply per client
        batch = [m for _, m in sent]
        size = strategy.scenario.train.cohort_size or len(batch)
        groups = [batch[i : i + size] for i in range(0, len(batch), size)]
        answers = send_and_match(grid, [pack(group) for group in groups], timeout)
        replies = [reply for group, answer in zip(groups, answers) for reply in unpack([answer] if answer is not None else [], group)]
    wire_up = {client_of_node[r.metadata.src_node_id]: content_wire_bytes(r) for r in replies if not r.has_error() and r.metadata.src_node_id in client_of_node}
    result = strategy.aggregate_train(server_round, replies)
    for record in result.client_rows:
        record.extra["wire_bytes_down"] = wire_down.get(record.client, 0)
        record.extra["wire_bytes_up"] = wire_up.get(record.client, 0)
    result.row.extra["wire_bytes_down"] = sum(wire_down.values())
    result.row.extra["wire_bytes_up"] = sum(wire_up.values())
    return result


def build_strategy(scenario: Scenario, policy=None) -> RankAdaptiveStrategy:
    """The round logic for `scenario`, wired to its channel and policy (or the `policy` given)."""
    policy = policy if policy is not None else build_policy(scenario.policy)
    return RankAdaptiveStrategy(scenario, get_runtime(scenario), build_channel(scenario.channel, scenario.seed), policy)


def run_server(
    grid: Grid,
    scenario: Scenario,
    out_dir: Path,
    progress: bool = True,
    round_timeout_s: float | None = None,
    log_rounds: bool = False,
    simulated: bool = False,
) -> dict:
    """Run every round of `scenario` through `grid` into `out_dir`.

    `round_timeout_s` is the deployment's round deadline: replies that have not arrived by
    then are dropped ("no-reply") and the round closes with those that came (None = wait for all).
    `simulated`: the grid is a simulation engine's, so clients map to nodes without queries (`simulated_nodes`).
    """
    from fedsim.threads import use_threads

    use_threads(scenario.threads)
    run_dir = RunDirectory(out_dir)
    started = time.time()
    strategy = build_strategy(scenario)  # a bad policy checkpoint fails here, before the run directory exists
    strategy.error_log = Path(out_dir) / CLIENT_ERRORS_LOG
    # A checkpoint's sizes and action map win over the scenario's (policy.load), so config.yaml records the policy that acted.
    run_dir.start(scenario.model_copy(update={"policy": strategy.policy.config}).to_yaml())
    num_clients = scenario.clients.num_clients
    initial = simulated_nodes(grid, num_clients) if simulated else discover_nodes(grid, num_clients)
    nodes = NodeDirectory(grid, initial, num_clients, min(round_timeout_s or NODE_WAIT_S, NODE_WAIT_S))

    bar = tqdm(range(1, scenario.rounds + 1), desc=scenario.name, unit="round", disable=not progress, dynamic_ncols=True)
    for server_round in bar:
        round_start = time.time()
        if server_round > 1:
            nodes.refresh()
        routing = nodes.routing()
        if log_rounds:
            served = sum(node != ABSENT_NODE for node in routing.values())
            print(f"[fedsim] round {server_round}/{scenario.rounds} started: {served}/{num_clients} clients have a SuperNode", flush=True)
        result = run_train_round(grid, strategy, server_round, routing, round_timeout_s)
        loss, accuracy, n_eval = strategy.evaluate(server_round)
        row = {"round": server_round, "accuracy": accuracy, "loss": loss, "eval_examples": n_eval, **strategy.validation_metrics, **result.row.as_row()}
        run_dir.add_round(row, [r.as_row() for r in result.client_rows], time.time() - round_start)
        bar.set_postfix(acc=f"{accuracy:.3f}", MB_up=f"{strategy.cum_bytes_up / 1e6:.2f}")
        if log_rounds:
            print(
                f"[fedsim] round {server_round}/{scenario.rounds}: {strategy.runtime.task.metric} {accuracy:.4f}, loss {loss:.4f}, "
                f"dropped {row['clients_dropped']}/{row['clients_selected']}, {time.time() - round_start:.1f} s",
                flush=True,
            )

    return finish_run(run_dir, strategy, out_dir, started)


def finish_run(run_dir: RunDirectory, strategy: RankAdaptiveStrategy, out_dir: Path, started: float) -> dict:
    """Seal a run whose rounds all ran: the adapter, the algorithm's state, then summary.json (last, so that a
    directory without it is never mistaken for a finished run)."""
    rounds, scenario, runtime = run_dir.rounds, strategy.scenario, strategy.runtime
    # Tolerated client errors or non-finite updates that left nothing to aggregate are a failed run (a numeric
    # fault in every client is not a result); a channel that lost every update is a result (the global adapter
    # stayed as initialised), so that run finishes normally.
    faults = {c["drop_reason"] for c in run_dir.clients} & {"client-error", "non-finite"}
    if not any(r["updates_aggregated"] for r in rounds) and faults:
        raise FedsimError(
            f"no update was aggregated in any of the {len(rounds)} rounds: clients failed or sent non-finite updates "
            f"(drop_reason {', '.join(sorted(faults))} in {out_dir}/clients.csv); the run is not finished"
        )
    run_dir.save_adapter(lambda d: _export_adapter(strategy, d))
    run_dir.save_arrays(ALGORITHM_STATE, strategy.algorithm.state_dict(), {"algorithm": scenario.algorithm.name})
    summary = {
        "scenario": scenario.name,
        "seed": scenario.seed,
        "rounds": scenario.rounds,
        "metric": runtime.task.metric,  # what the `accuracy` columns and fields hold (fedsim.tasks)
        "final_accuracy": rounds[-1]["accuracy"],
        "final_loss": rounds[-1]["loss"],
        "final_eval_examples": rounds[-1]["eval_examples"],
        "test_examples": len(runtime.test),  # the whole test set, so a report can tell a subset from all of it
        "first_round_accuracy": rounds[0]["accuracy"],
        "first_round_eval_examples": rounds[0]["eval_examples"],
        # Over the rounds evaluated on round 1's examples only: with eval_full_final the last round is measured on the
        # whole test set and the others on a subset, and a maximum over both would compare two measurements.
        "best_accuracy": max(r["accuracy"] for r in rounds if r["eval_examples"] == rounds[0]["eval_examples"]),
        "best_accuracy_eval_examples": rounds[0]["eval_examples"],
        "total_bytes_up": strategy.cum_bytes_up,
        "total_bytes_down": strategy.cum_bytes_down,
        "total_uplink_latency_s": float(sum(r["uplink_latency_s"] for r in rounds)),
        "total_energy_j": float(sum(r["energy_j"] for r in rounds)),
        "clients_dropped": int(sum(r["clients_dropped"] for r in rounds)),
        "layers": runtime.model.layer_names,
        **storage_summary(runtime.model, rounds),
        "environment": environment(),  # the code, libraries and CPU that made these numbers (fedsim.provenance)
        "wall_s": round(time.time() - started, 2),
    }
    run_dir.finish(summary)
    return summary


def storage_summary(model, rounds: list[dict]) -> dict:
    """Client-side storage (both adapter kinds) and the split of the traffic, for summary.json."""
    from fedsim.nano import client_storage

    client_params, model_params = client_storage(model)
    totals = {
        f"total_{key}": int(sum(r.get(key, 0) for r in rounds))
        for key in ("bytes_up_adapter", "bytes_up_fisher", "bytes_up_control", "bytes_up_activations", "bytes_down_gradients")
    }
    return {"client_params": client_params, "model_params": model_params, "client_params_ratio": client_params / model_params, **totals}


def _export_adapter(strategy: RankAdaptiveStrategy, directory: Path) -> None:
    from fedsim.adapter_state import load_payload, truncate

    model = strategy.runtime.model
    load_payload(model, truncate(strategy.global_state, [model.max_rank] * len(model.layers)))
    model.save_adapter(directory)


# Deployment entry point (`flwr run`): the run config names the scenario file and the output directory.
app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    from fedsim.quiet import quiet_frameworks
    from fedsim.warm_node import shorten_object_pulls

    quiet_frameworks()
    shorten_object_pulls("flwr.superlink.grid.http_grid")  # replies land in milliseconds on a deployment too
    cfg = context.run_config
    if not str(cfg.get("scenario", "")):
        raise FedsimError("run config needs scenario=PATH (for example --run-config 'scenario=\"scenarios/quickstart.yaml\"')")
    overrides = [s.strip() for s in str(cfg.get("set", "")).split(";") if s.strip()]
    scenario = load_scenario(str(resolve_app_path(str(cfg["scenario"]))), overrides)
    out = Path(str(cfg.get("out", "")) or f"runs/{scenario.name}-deploy-{context.run_id}")
    timeout = float(cfg.get("round-timeout", 0) or 0) or None
    print(f"[fedsim] scenario {scenario.name}: {scenario.rounds} rounds, {scenario.clients.num_clients} clients -> {out.resolve()}", flush=True)
    claim = None
    try:
        if not cfg.get("claimed", False):
            claim = claim_for_flwr_run(out, overwrite=bool(cfg.get("overwrite", False)))
        summary = run_server(grid, scenario, out, progress=False, round_timeout_s=timeout, log_rounds=True)
    except FedsimError as exc:  # the one line `fedsim deploy-local` reports; Flower still sees the run fail
        print(f"{ERROR_LINE_PREFIX}{exc}", flush=True)
        raise
    finally:
        if claim is not None:
            claim.release()
    print(
        f"[fedsim] finished: final {summary['metric']} {summary['final_accuracy']:.4f}, {summary['clients_dropped']} updates dropped, run directory {out.resolve()}",
        flush=True,
    )


def claim_for_flwr_run(out: Path, overwrite: bool) -> RunClaim:
    """A plain `flwr run` claims its run directory here, as `fedsim run` does: a finished run, or one another run is
    writing, is refused (one line, in the run config's own words) unless `overwrite=true`; the claim's lock is held
    until the run ends. `fedsim deploy-local` claims the directory itself before it submits, and says so (`claimed=true`)."""
    try:
        check_out_path(out, overwrite=overwrite)
        return claim_run_dir(out, overwrite=overwrite)
    except FedsimError as exc:
        raise FedsimError(str(exc).replace("--out ", "out=", 1).replace("pass --overwrite", "pass overwrite=true in --run-config")) from None


def resolve_app_path(path: str) -> Path:
    """A relative scenario path names a file inside the Flower app (the FAB carries scenarios/*.yaml).

    Flower installs the FAB in its own directory and puts that directory first on sys.path;
    the current directory is the fallback (a scenario file placed on the SuperLink's machine).
    """
    candidate = Path(path).expanduser()
    if candidate.is_absolute():
        return candidate
    for entry in sys.path:
        if entry and (Path(entry) / "pyproject.toml").is_file() and (Path(entry) / candidate).is_file():
            return Path(entry) / candidate
    return candidate
