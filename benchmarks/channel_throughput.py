"""Channel draws per second: 1,000 clients x 100 rounds through each preset (draw + uplink metering).

Run: .venv/bin/python benchmarks/channel_throughput.py [--clients 1000] [--rounds 100]

A "draw" is one client-round: its large-scale SNR, fading, rate, packets/HARQ, losses and the
Transmission record the ledger keeps. For scale, the same output prints the time per
federated round that the channel costs, to compare with training (seconds per round).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from channels import ChannelConfig, build_channel
from channels.presets import PRESETS


def measure(config: dict, clients: int, rounds: int, payload_bits: int) -> tuple[float, float]:
    channel = build_channel(ChannelConfig.model_validate(config), seed=0)
    rng = np.random.default_rng(0)
    ids = np.arange(clients)
    bits = np.full(clients, payload_bits)
    dropped = 0
    start = time.perf_counter()
    for r in range(1, rounds + 1):
        states = channel.draw(r, ids, rng)
        sent = channel.uplink(states, bits, rng)
        dropped += sum(not t.delivered for t in sent)
    elapsed = time.perf_counter() - start
    return clients * rounds / elapsed, dropped / (clients * rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--payload-bits", type=int, default=3_300_000, help="upload size (default: MiniLM LoRA r=8 q,v + head, float32)")
    args = parser.parse_args()
    print(f"channel throughput: {args.clients} clients x {args.rounds} rounds, {args.payload_bits} bits per upload, TDMA (full band each)")
    print(f"{'configuration':<40} {'draws/s':>12} {'ms/round':>10} {'dropped':>8}")
    configs = {f"preset {name}": {"preset": name, "access": "tdma"} for name in PRESETS}
    configs["harsh + distance + rho=0.9 + HARQ 2"] = {
        "preset": "harsh",
        "access": "tdma",
        "large_scale": "distance",
        "correlation": 0.9,
        "harq_retransmissions": 2,
    }
    for label, config in configs.items():
        rate, dropped = measure(config, args.clients, args.rounds, args.payload_bits)
        print(f"{label:<40} {rate:>12,.0f} {1e3 * args.clients / rate:>10.2f} {dropped:>8.1%}")


if __name__ == "__main__":
    main()
