"""Policy registry: a new policy is one file plus one line here."""

from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field

from policies.adalora import AdaLoraConfig, AdaLoraPolicy
from policies.airllm import AirLlmConfig, AirLlmPolicy
from policies.base import RankPolicy
from policies.channel_greedy import ChannelGreedyConfig, ChannelGreedyPolicy
from policies.fixed import FixedConfig, FixedPolicy
from policies.ppo import PpoConfig, PpoPolicy

POLICIES: dict[str, tuple[type, type[RankPolicy]]] = {
    "fixed": (FixedConfig, FixedPolicy),
    "channel-greedy": (ChannelGreedyConfig, ChannelGreedyPolicy),
    "adalora": (AdaLoraConfig, AdaLoraPolicy),
    "ppo": (PpoConfig, PpoPolicy),
    "airllm": (AirLlmConfig, AirLlmPolicy),
}

_configs = tuple(cfg for cfg, _ in POLICIES.values())
PolicyConfig = _configs[0] if len(_configs) == 1 else Annotated[Union[_configs], Field(discriminator="name")]  # type: ignore[valid-type]


def build_policy(config) -> RankPolicy:
    _, policy_cls = POLICIES[config.name]
    policy = policy_cls(config)
    checkpoint = getattr(config, "checkpoint", None)
    if checkpoint:
        policy.load(checkpoint)
    return policy
