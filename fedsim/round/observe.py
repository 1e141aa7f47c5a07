"""Stages `observe` and `decide`: what the rank policy sees of the round, and its answer checked."""

from __future__ import annotations

import numpy as np

from fedsim.types import FedsimError


def client_data_stats(runtime, backbone: str) -> np.ndarray:
    """[num_clients, 2]: token entropy (bits) and OOV ([UNK]) rate of each client's tokenised shard, as AirLLM observes."""
    from fedsim.hub import load_tokenizer

    unk = load_tokenizer(backbone).unk_token_id
    stats = []
    for indices in runtime.partitions:
        tokens = np.concatenate([np.asarray(runtime.train.token_ids[i]) for i in indices])
        _, counts = np.unique(tokens, return_counts=True)
        p = counts / counts.sum()
        stats.append((float(-(p * np.log2(p)).sum()), float(np.mean(tokens == unk)) if unk is not None else 0.0))
    return np.array(stats)


def channel_deadline(channel) -> float:
    """The channel's upload deadline in seconds (inf when it has none)."""
    deadline = getattr(channel, "deadline_s", None)
    if deadline is None:
        deadline = getattr(getattr(channel, "config", None), "deadline_s", None)
    return float(deadline) if deadline else float("inf")


def checked_ranks(ranks, shape: tuple[int, int], max_rank: int, policy_name: str) -> np.ndarray:
    """The policy's ranks as int64 [clients, layers]; anything else is the policy's bug, said in one line."""
    ranks = np.asarray(ranks)
    numeric = ranks.dtype.kind in "iufb"
    whole = numeric and bool(np.all(np.isfinite(ranks))) and bool(np.all(ranks == np.round(ranks)))
    if ranks.shape != shape or not whole or (ranks.size and (ranks.min() < 0 or ranks.max() > max_rank)):
        seen = f"in [{ranks.min()}, {ranks.max()}]" if numeric and ranks.size else f"of dtype {ranks.dtype}"
        what = "" if whole or not numeric else " (not whole numbers)"
        raise FedsimError(f"policy '{policy_name}' returned ranks of shape {ranks.shape} {seen}{what}; expected {shape}, whole numbers in [0, {max_rank}]")
    return ranks.astype(np.int64)
