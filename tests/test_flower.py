"""Flower's simulation engine (Ray) with the real MiniLM backbone: same ledger as the inline engine."""

from __future__ import annotations

import pytest

from fedsim.runner import run_scenario


@pytest.mark.flower
@pytest.mark.minilm
def test_flower_simulation_with_minilm_matches_inline_engine(tmp_path, tiny):
    scenario = tiny(
        engine="flower",
        model={"backbone": "minilm"},
        rounds=2,
        clients={"num_clients": 4, "per_round": 2},
        train={"local_steps": 2, "batch_size": 8},
        data={"eval_samples": 48, "eval_full_final": False},
    )
    summary = run_scenario(scenario, tmp_path / "flower", progress=False)
    run_scenario(scenario.model_copy(update={"engine": "inline"}), tmp_path / "inline", progress=False)
    for name in ("rounds.csv", "clients.csv"):
        assert (tmp_path / "flower" / name).read_bytes() == (tmp_path / "inline" / name).read_bytes(), name
    assert summary["final_accuracy"] > 0
    assert (tmp_path / "flower" / "adapter" / "adapter_model.safetensors").is_file()
