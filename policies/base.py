"""The `RankPolicy` seam, shaped like a stable-baselines3 algorithm: one class per policy, one interface.

Each round the simulator builds an `Observation` and asks for an integer rank per
(selected client, adapted layer). After the round it calls `feedback` with the
reward, which learning policies use and the others ignore.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.types import FedsimError, Observation


class RankPolicy(ABC):
    """Base class of rank policies.

    Subclasses implement `ranks`. Policies with learned state override
    `state_dict`/`load_state_dict`; `save`/`load` write JSON (and safetensors when
    there are tensors), never pickle.
    """

    name: str = "base"

    def __init__(self, config: Any):
        self.config = config

    @abstractmethod
    def ranks(self, observation: Observation) -> np.ndarray:
        """Integer ranks, shape [observation.n_clients, observation.n_layers], each in [0, max_rank]."""

    def feedback(self, reward: float, info: dict) -> None:
        """Called once per round after evaluation. Non-learning policies ignore it."""

    def reset(self) -> None:
        """Called at the start of each federated run (episode)."""

    # --- persistence -----------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        meta = {"policy": self.name, "config": self.config.model_dump(mode="json"), "state": self.state_dict()}
        (path / "policy.json").write_text(json.dumps(meta, indent=2, sort_keys=True))

    def load(self, path: str | Path) -> "RankPolicy":
        path = Path(path)
        meta_file = path / "policy.json"
        if not meta_file.is_file():
            raise FedsimError(f"policy checkpoint {path}: no policy.json there; expected a directory written by policy.save()")
        try:
            meta = json.loads(meta_file.read_text())
        except json.JSONDecodeError as exc:
            raise FedsimError(f"policy checkpoint {meta_file}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if meta.get("policy") != self.name:
            raise FedsimError(f"policy checkpoint {path}: holds policy '{meta.get('policy')}', but the scenario asks for '{self.name}'")
        self.load_state_dict(meta.get("state", {}))
        return self


def clip_ranks(ranks: np.ndarray, max_rank: int) -> np.ndarray:
    """Round and clip to the integer range every policy must honour."""
    return np.clip(np.rint(np.asarray(ranks, dtype=float)), 0, max_rank).astype(np.int64)
