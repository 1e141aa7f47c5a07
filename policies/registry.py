"""Policy registry: a new policy is one file (or package) plus one line here.

Each entry names the policy's config class, imported now (configs are light: pydantic and numpy),
and its policy class as "module:Class", imported when a policy is built, so that loading or
validating a scenario never imports torch, diffusers or stable-baselines3.
"""

from __future__ import annotations

from importlib import import_module
from typing import Annotated, Union

from pydantic import Field

from policies.adalora import AdaLoraConfig
from policies.airllm.config import AirLlmConfig
from policies.base import RankPolicy
from policies.channel_greedy import ChannelGreedyConfig
from policies.fixed import FixedConfig
from policies.ppo import PpoConfig

POLICIES: dict[str, tuple[type, str]] = {
    "fixed": (FixedConfig, "policies.fixed:FixedPolicy"),
    "channel-greedy": (ChannelGreedyConfig, "policies.channel_greedy:ChannelGreedyPolicy"),
    "adalora": (AdaLoraConfig, "policies.adalora:AdaLoraPolicy"),
    "ppo": (PpoConfig, "policies.ppo:PpoPolicy"),
    "airllm": (AirLlmConfig, "policies.airllm.policy:AirLlmPolicy"),
}

_configs = tuple(cfg for cfg, _ in POLICIES.values())
PolicyConfig = _configs[0] if len(_configs) == 1 else Annotated[Union[_configs], Field(discriminator="name")]  # type: ignore[valid-type]  # noqa: UP007


def policy_class(name: str) -> type[RankPolicy]:
    module, _, attribute = POLICIES[name][1].partition(":")
    return getattr(import_module(module), attribute)


def build_policy(config) -> RankPolicy:
    policy = policy_class(config.name)(config)
    checkpoint = getattr(config, "checkpoint", None)
    if checkpoint:
        policy.load(checkpoint)
    return policy
