"""Policy registry: a new policy is one file (or package) plus one line here.

Each entry names the policy's config class, imported now (configs are light: pydantic and numpy),
and its policy class as "module:Class", imported when a policy is built, so that loading or
validating a scenario never imports torch, diffusers or stable-baselines3.
"""

from __future__ import annotations

from importlib import import_module
from typing import Annotated, Union

from pydantic import Field

from fedsim.types import add_named, load_entry_point_pairs
from policies.adalora import AdaLoraConfig
from policies.airllm.config import AirLlmConfig
from policies.base import RankPolicy
from policies.channel_greedy import ChannelGreedyConfig
from policies.fixed import FixedConfig
from policies.ppo import PpoConfig

POLICIES: dict[str, tuple[type, type[RankPolicy] | str]] = {
    "fixed": (FixedConfig, "policies.fixed:FixedPolicy"),
    "channel-greedy": (ChannelGreedyConfig, "policies.channel_greedy:ChannelGreedyPolicy"),
    "adalora": (AdaLoraConfig, "policies.adalora:AdaLoraPolicy"),
    "ppo": (PpoConfig, "policies.ppo:PpoPolicy"),
    "airllm": (AirLlmConfig, "policies.airllm.policy:AirLlmPolicy"),
}

ENTRY_POINT_GROUP = "fedsim.policies"  # a distribution's entry point here names a (config class, policy class) pair


def config_union():
    """The pydantic type of a scenario's `policy:` section: the registered configs, told apart by `name`."""
    configs = tuple(cfg for cfg, _ in POLICIES.values())
    return configs[0] if len(configs) == 1 else Annotated[Union[configs], Field(discriminator="name")]  # type: ignore[valid-type]  # noqa: UP007


PolicyConfig = config_union()


def add_policy(config_cls: type, policy_cls: type[RankPolicy] | str) -> str:
    """Register a policy (the registry's part of `fedsim.register_policy`); returns its name.

    `config_cls` is a pydantic model whose `name` field is a one-value Literal (the name a scenario
    writes); `policy_cls` a RankPolicy subclass taking that config, or "module:Class".
    """
    return add_named(POLICIES, config_cls, policy_cls, "policy", base=RankPolicy)


def load_entry_points() -> list[str]:
    """Register the policies that installed distributions declare under ENTRY_POINT_GROUP (a broken one is skipped
    with one line on stderr); returns their names."""
    return load_entry_point_pairs(ENTRY_POINT_GROUP, add_policy, "policy")


def policy_class(name: str) -> type[RankPolicy]:
    target = POLICIES[name][1]
    if not isinstance(target, str):
        return target
    module, _, attribute = target.partition(":")
    return getattr(import_module(module), attribute)


def build_policy(config) -> RankPolicy:
    policy = policy_class(config.name)(config)
    checkpoint = getattr(config, "checkpoint", None)
    if checkpoint:
        policy.load(checkpoint)
    return policy
