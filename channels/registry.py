"""Channel registry: a new channel model is one file plus one line here."""

from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field

from channels.awgn import AWGNChannel, AWGNConfig
from channels.base import Channel

CHANNELS: dict[str, tuple[type, type[Channel]]] = {
    "awgn": (AWGNConfig, AWGNChannel),
}

# The scenario's `channel:` section: one config class per kind, chosen by `kind`.
_configs = tuple(cfg for cfg, _ in CHANNELS.values())
ChannelConfig = _configs[0] if len(_configs) == 1 else Annotated[Union[_configs], Field(discriminator="kind")]  # type: ignore[valid-type]


def build_channel(config) -> Channel:
    _, channel_cls = CHANNELS[config.kind]
    return channel_cls(config)
