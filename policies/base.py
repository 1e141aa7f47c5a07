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
    # Config fields that map the network's output to ranks: the weights were trained for the checkpoint's
    # values, so `load` restores them (and refuses a scenario that sets another value explicitly).
    ACTION_MAP: tuple[str, ...] = ()

    def __init__(self, config: Any):
        self.config = config

    @abstractmethod
    def ranks(self, observation: Observation) -> np.ndarray:
        """Integer ranks, shape [observation.n_clients, observation.n_layers], each in [0, max_rank]."""

    def feedback(self, reward: float, info: dict) -> None:
        """Called once per round after evaluation. Non-learning policies ignore it."""

    def reset(self) -> None:
        """Called at the start of each federated run (episode)."""

    def reward(self, info: dict) -> float:
        """Score a finished round (see policies.common.round_reward); the config's `reward:` section, if any, decides how."""
        from policies.common import RewardConfig, round_reward

        return round_reward(getattr(self.config, "reward", None) or RewardConfig(), info)

    # --- persistence -----------------------------------------------------------------------
    def state_dict(self) -> dict:
        """JSON-able state (hyperparameters, shapes, counters)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def tensors(self) -> dict:
        """Named torch tensors to store in weights.safetensors (network weights)."""
        return {}

    def load_tensors(self, tensors: dict, source: Path) -> None:
        pass

    def save(self, path: str | Path) -> None:
        """Write policy.json (and weights.safetensors when there are tensors) into the directory `path`.

        Each file is written under a temporary name and renamed into place, policy.json last, so an
        interrupted save never leaves a truncated file; a weights file a tensor-less policy does not
        need is removed. (`fedsim train-policy` saves into a staging directory, swapped in whole.)
        """
        import os

        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.tensors().items()}
        meta = {"policy": self.name, "config": self.config.model_dump(mode="json"), "state": self.state_dict()}
        text = json.dumps(meta, indent=2, sort_keys=True)  # before anything is written: a state JSON cannot hold fails here
        weights, meta_file = path / "weights.safetensors", path / "policy.json"
        temporary = [path / f".{name}.tmp-{os.getpid()}" for name in (weights.name, meta_file.name)]
        try:
            temporary[1].write_text(text, encoding="utf-8")
            if tensors:
                save_file(tensors, str(temporary[0]))
                # safetensors creates its file 0600; give it the mode the umask gives any new file, as policy.json has.
                os.chmod(temporary[0], temporary[1].stat().st_mode & 0o777)
                os.replace(temporary[0], weights)
            os.replace(temporary[1], meta_file)
        finally:
            for tmp in temporary:
                tmp.unlink(missing_ok=True)
        if not tensors:
            weights.unlink(missing_ok=True)

    def load(self, path: str | Path) -> RankPolicy:
        path = Path(path)
        meta_file = path / "policy.json"
        if not meta_file.is_file():
            raise FedsimError(f"policy checkpoint {path}: no policy.json there; expected a directory written by policy.save()")

        def no_constant(name: str):  # Python's json reads NaN/Infinity, which JSON does not have
            raise ValueError(f"{name} is not a JSON number")

        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"), parse_constant=no_constant)
        except json.JSONDecodeError as exc:
            raise FedsimError(f"policy checkpoint {meta_file}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise FedsimError(f"policy checkpoint {meta_file}: not valid JSON ({(str(exc).splitlines() or [type(exc).__name__])[0][:120]})") from None
        except OSError as exc:
            raise FedsimError(f"policy checkpoint {meta_file}: cannot read it ({exc.strerror or exc})") from None
        if not isinstance(meta, dict):
            raise FedsimError(f"policy checkpoint {meta_file}: expected a JSON object (policy, config, state), found a {type(meta).__name__}")
        if meta.get("policy") != self.name:
            raise FedsimError(f"policy checkpoint {path}: holds policy {meta.get('policy')!r}, but the scenario asks for '{self.name}'")
        if not isinstance(meta.get("state", {}), dict):
            raise FedsimError(f"policy checkpoint {meta_file}: 'state' must be a mapping")
        asked = {key: getattr(self.config, key) for key in self.ACTION_MAP if key in self.config.model_fields_set}
        try:
            self.load_state_dict(meta.get("state", {}))
        except FedsimError:
            raise
        except (TypeError, ValueError, KeyError, AttributeError, IndexError, OverflowError) as exc:  # a state of the wrong shape
            raise FedsimError(f"policy checkpoint {meta_file}: invalid 'state' ({type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:120]})") from None
        self._restore_action_map(meta.get("config"), asked, path)
        weights = path / "weights.safetensors"
        if weights.is_file():
            import torch
            from safetensors.torch import load_file

            try:
                tensors = load_file(str(weights))
            except Exception as exc:  # safetensors raises its own error types for truncated or garbled files
                raise FedsimError(f"policy checkpoint {weights}: unreadable safetensors file ({str(exc).splitlines()[0][:120]})") from None
            for key, tensor in tensors.items():
                if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                    raise FedsimError(f"policy checkpoint {weights}: '{key}' holds NaN or infinite values; retrain the policy or use another checkpoint")
            self.load_tensors(tensors, weights)
        elif self.tensors():
            raise FedsimError(f"policy checkpoint {path}: no weights.safetensors, but policy '{self.name}' has learned weights")
        return self

    def _restore_action_map(self, saved: Any, asked: dict, path: Path) -> None:
        saved = {key: saved[key] for key in self.ACTION_MAP if key in saved} if isinstance(saved, dict) else {}
        saved |= {key: getattr(self.config, key) for key in self.ACTION_MAP if key not in saved}  # set by load_state_dict
        for key, value in asked.items():
            if value != saved[key]:
                raise FedsimError(
                    f"policy.{key}={value!r} differs from {saved[key]!r}, which checkpoint {path} was trained with; "
                    f"allowed: {saved[key]!r}, or leave policy.{key} out"
                )
        try:
            self.config = type(self.config).model_validate({**self.config.model_dump(), **saved})
        except Exception as exc:
            raise FedsimError(f"policy checkpoint {path}: invalid action map {saved} ({str(exc).splitlines()[0][:120]})") from None


def clip_ranks(ranks: np.ndarray, max_rank: int) -> np.ndarray:
    """Round and clip to the integer range every policy must honour."""
    return np.clip(np.rint(np.asarray(ranks, dtype=float)), 0, max_rank).astype(np.int64)


def assign_tensors(targets: dict, tensors: dict, source: Path) -> None:
    """Copy `tensors` into the named `targets` (torch tensors), refusing a missing, extra or mis-shaped entry."""
    import torch

    missing, extra = sorted(set(targets) - set(tensors)), sorted(set(tensors) - set(targets))
    if missing or extra:
        which = f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}"
        raise FedsimError(f"policy checkpoint {source}: weights do not match this policy ({which}); was it saved with other sizes?")
    with torch.no_grad():
        for key, target in targets.items():
            if tuple(target.shape) != tuple(tensors[key].shape):
                raise FedsimError(f"policy checkpoint {source}: '{key}' has shape {tuple(tensors[key].shape)}, this policy needs {tuple(target.shape)}")
            target.copy_(tensors[key])
