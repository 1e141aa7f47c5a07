"""Rank policies: each round, an integer rank per adapted layer per selected client."""

from policies.base import RankPolicy
from policies.registry import POLICIES, PolicyConfig, build_policy

__all__ = ["RankPolicy", "POLICIES", "PolicyConfig", "build_policy"]
