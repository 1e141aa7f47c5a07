"""Shared fixtures: tiny scenarios that run in seconds on the tiny-random backbone."""

from __future__ import annotations

import pytest

from fedsim.config import scenario_from_dict

TINY = {
    "name": "tiny",
    "seed": 3,
    "rounds": 2,
    "engine": "inline",
    "model": {"backbone": "tiny-random"},
    "data": {"eval_samples": 64, "eval_full_final": False, "partition": {"kind": "dirichlet", "alpha": 0.5}},
    "clients": {"num_clients": 6, "per_round": 3},
    "adapter": {"max_rank": 8},
    "train": {"local_steps": 2, "batch_size": 8},
}


def tiny_scenario(**overrides):
    """TINY with nested overrides, e.g. tiny_scenario(policy={"name": "fixed", "rank": 2})."""
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in TINY.items()}
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return scenario_from_dict(raw, "test scenario")


@pytest.fixture
def tiny():
    return tiny_scenario
