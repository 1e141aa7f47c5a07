"""`airllm`: PPO + DDIM rank policy (the algorithm, top to bottom: `policies/airllm/policy.py`).

The configuration imports without torch; the policy and its networks load on first use.
"""

from policies.airllm.config import AirLlmConfig

__all__ = ["AirLlmConfig", "AirLlmPolicy"]


def __getattr__(name: str):
    from importlib import import_module

    policy = import_module("policies.airllm.policy")  # not `from policies.airllm import policy`: that would ask this hook again
    try:
        return getattr(policy, name)
    except AttributeError:
        raise AttributeError(f"module 'policies.airllm' has no attribute {name!r}") from None
