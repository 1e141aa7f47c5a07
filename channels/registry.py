"""Channel registry: a new channel model is one file plus one line here.

The scenario's `channel:` section is `channels.wireless.ChannelConfig`, one composable
model whose blocks (fading, large-scale SNR, access, ...) are registered in `channels.blocks`.
"""

from __future__ import annotations

from channels.base import Channel
from channels.wireless import ChannelConfig, WirelessChannel

CHANNELS: dict[str, tuple[type, type[Channel]]] = {
    "wireless": (ChannelConfig, WirelessChannel),
}


def build_channel(config: ChannelConfig, seed: int = 0) -> Channel:
    """The channel for a scenario's `channel:` section; `seed` fixes client placement and per-client draws."""
    return WirelessChannel(config, seed)
