"""Channel registry: a new channel model is one file plus one line here (or `fedsim.register_channel`).

The scenario's `channel:` section is told apart by its `model` field (default `wireless`, so
existing scenarios need not write it): `channels.wireless.ChannelConfig` for the composable
wireless model, whose blocks (fading, large-scale SNR, access, ...) register in `channels.blocks`.
"""

from __future__ import annotations

from typing import Annotated, Union

from pydantic import Discriminator, Tag

from channels.base import Channel
from channels.wireless import ChannelConfig, WirelessChannel
from fedsim.types import add_named, load_entry_point_pairs

DEFAULT_MODEL = "wireless"

CHANNELS: dict[str, tuple[type, type[Channel]]] = {
    "wireless": (ChannelConfig, WirelessChannel),
}


def _model_of(data) -> str:
    model = data.get("model", DEFAULT_MODEL) if isinstance(data, dict) else getattr(data, "model", DEFAULT_MODEL)
    return model if model in CHANNELS else DEFAULT_MODEL  # an unknown model fails on the wireless config's `model` literal


def config_union():
    """The pydantic type of a scenario's `channel:` section: the registered configs, told apart by `model`."""
    configs = [Annotated[cfg, Tag(name)] for name, (cfg, _) in CHANNELS.items()]
    return ChannelConfig if len(configs) == 1 else Annotated[Union[tuple(configs)], Discriminator(_model_of)]  # type: ignore[valid-type]  # noqa: UP007


def add_channel(config_cls: type, channel_cls: type[Channel]) -> str:
    """Register a channel model under its config's `model` (a one-value Literal with that default); returns it."""
    return add_named(CHANNELS, config_cls, channel_cls, "channel", key="model", base=Channel)


ENTRY_POINT_GROUP = "fedsim.channels"  # a distribution's entry point here names a (config class, channel class) pair


def load_entry_points() -> list[str]:
    """Register the channel models that installed distributions declare under ENTRY_POINT_GROUP (a broken one is skipped
    with one line on stderr); returns their names."""
    return load_entry_point_pairs(ENTRY_POINT_GROUP, add_channel, "channel")


def build_channel(config, seed: int = 0) -> Channel:
    """The channel for a scenario's `channel:` section; `seed` fixes client placement and per-client draws."""
    return CHANNELS[getattr(config, "model", DEFAULT_MODEL)][1](config, seed)
